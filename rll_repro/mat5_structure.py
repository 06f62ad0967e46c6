"""Structure check of a MATLAB v5 (and v6/v7) .mat file, before scipy's C reader sees it.

scipy's v5 reader (``scipy.io.matlab._mio5_utils``, Cython) trusts the sizes and counts a file
states; a damaged file can crash the interpreter with a segmentation fault inside it. This module
walks the file's element tree in Python -- every tag inside its parent, every count consistent
with the array's dimensions, bounded nesting and sizes -- and raises a one-line FormatError at the
first inconsistency. It returns the file with every ``miCOMPRESSED`` element replaced by the
element it holds, so scipy reads plain, already checked bytes (each element is inflated once,
and never past the size its own tag states or the allocation limit).

Why a check and not a child process: a .mat list is read once per run but in many tests and
tools; a subprocess per read costs a Python start and scipy import (~0.5 s) and pickling the
result back, where this walk costs a few milliseconds for a list file. The layout rules are the
MAT-file format document's (MathWorks, "MAT-File Format", v5 section) as scipy's reader applies
them.
"""
from __future__ import annotations

import math
import struct
import zlib

from rll_repro.errors import FormatError
from rll_repro.limits import check_allocation

# data types (miXXX)
MI_INT8, MI_UINT8, MI_INT16, MI_UINT16, MI_INT32, MI_UINT32 = 1, 2, 3, 4, 5, 6
MI_SINGLE, MI_DOUBLE, MI_INT64, MI_UINT64 = 7, 9, 12, 13
MI_MATRIX, MI_COMPRESSED, MI_UTF8, MI_UTF16, MI_UTF32 = 14, 15, 16, 17, 18
_ITEMSIZE = {MI_INT8: 1, MI_UINT8: 1, MI_INT16: 2, MI_UINT16: 2, MI_INT32: 4, MI_UINT32: 4,
             MI_SINGLE: 4, MI_DOUBLE: 8, MI_INT64: 8, MI_UINT64: 8, MI_UTF8: 1, MI_UTF16: 2, MI_UTF32: 4}
_NUMERIC_TYPES = {MI_INT8, MI_UINT8, MI_INT16, MI_UINT16, MI_INT32, MI_UINT32, MI_SINGLE, MI_DOUBLE,
                  MI_INT64, MI_UINT64}
_CHAR_TYPES = {MI_INT8, MI_UINT8, MI_INT16, MI_UINT16, MI_UTF8, MI_UTF16, MI_UTF32} | _NUMERIC_TYPES
_FLAGS, _DIMS, _NAME, _MATRIX = frozenset({MI_UINT32}), frozenset({MI_INT32}), frozenset({MI_INT8, MI_UINT8}), frozenset({MI_MATRIX})
_INDEX_TYPES = frozenset({MI_INT32, MI_UINT32})

# array classes (mxXXX_CLASS)
MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE = 1, 2, 3, 4, 5
# 6 .. 15: double, single, int8, uint8, int16, uint16, int32, uint32, int64, uint64
MX_FUNCTION, MX_OPAQUE = 16, 17

MAX_DEPTH = 64  # cells of cells of structs ...; real files nest a few levels
MAX_DIMS = 32  # scipy's _MAT_MAXDIMS


class _Reader:
    def __init__(self, where: str, endian: str):
        self.where = where
        self.e = endian
        self.pair = struct.Struct(endian + "II")

    def fail(self, offset: int, what: str):
        raise FormatError(f"{self.where}: damaged MATLAB v5 file at byte {offset}: {what}")

    def tag(self, buf: bytes, pos: int, end: int):
        """(mdtype, nbytes, data start, next element) of the element at ``pos``; within ``end``."""
        if pos + 8 > end:
            self.fail(pos, "element tag runs past its container")
        first, second = self.pair.unpack_from(buf, pos)
        if first >> 16:  # small data element: 2-byte size, 2-byte type, data in the next 4 bytes
            if first >> 16 > 4:
                self.fail(pos, f"small data element of {first >> 16} bytes (at most 4)")
            return first & 0xFFFF, first >> 16, pos + 4, pos + 8
        data = pos + 8
        if data + second > end:
            self.fail(pos, f"element of {second} bytes runs past its container ({end - data} left)")
        nxt = data + second + (-second % 8)
        return first, second, data, nxt if nxt < end else end


def check_v5(data: bytes, where: str) -> bytes:
    """``data`` (a whole v5 .mat file) checked and with its compressed elements inflated."""
    if len(data) < 128:
        raise FormatError(f"{where}: truncated MATLAB v5 header ({len(data)} of 128 bytes)")
    marker = data[126:128]
    if marker not in (b"IM", b"MI"):
        raise FormatError(f"{where}: not a MATLAB v5 .mat file (no IM/MI endian marker)")
    reader = _Reader(where, "<" if marker == b"IM" else ">")
    out = [data[:128]]
    pos, end = 128, len(data)
    while pos < end:
        if end - pos < 8 and not data[pos:].strip(b"\x00"):
            break  # zero padding at the end of the file
        mdtype, nbytes, start, nxt = reader.tag(data, pos, end)
        if mdtype == MI_COMPRESSED:
            inner = _inflate(data[start:start + nbytes], reader, pos)
            _check_top(inner, reader, pos)
            out.append(inner)
            nxt = start + nbytes  # compressed elements are not padded
        elif mdtype == MI_MATRIX:
            _check_matrix(data, start, start + nbytes, reader, 0)
            out.append(data[pos:start + nbytes] + b"\x00" * (-nbytes % 8))
        else:
            reader.fail(pos, f"top-level element of type {mdtype} (expected a matrix)")
        pos = nxt
    return b"".join(out)


def _inflate(payload: bytes, reader: _Reader, offset: int) -> bytes:
    """The element a miCOMPRESSED payload holds, inflated no further than its own tag's size."""
    d = zlib.decompressobj()
    try:
        head = d.decompress(payload, 8)
        while len(head) < 8 and d.unconsumed_tail:
            head += d.decompress(d.unconsumed_tail, 8 - len(head))
        if len(head) < 8:
            reader.fail(offset, "compressed element holds no element")
        mdtype, nbytes = struct.unpack(reader.e + "II", head)
        if mdtype != MI_MATRIX:
            reader.fail(offset, f"compressed element holds type {mdtype}, not a matrix")
        check_allocation((nbytes,), 1, f"{reader.where}: compressed element at byte {offset}")
        body = d.decompress(d.unconsumed_tail, nbytes) if nbytes else b""
        while len(body) < nbytes and d.unconsumed_tail:
            body += d.decompress(d.unconsumed_tail, nbytes - len(body))
    except zlib.error as exc:
        reader.fail(offset, f"compressed element does not inflate ({exc})")
    if len(body) < nbytes:
        reader.fail(offset, f"compressed element inflates to {len(body)} of the {nbytes} bytes it states")
    return head + body + b"\x00" * (-nbytes % 8)


def _check_top(inner: bytes, reader: _Reader, offset: int) -> None:
    mdtype, nbytes, start, _ = reader.tag(inner, 0, len(inner))
    if mdtype != MI_MATRIX:
        reader.fail(offset, f"compressed element holds type {mdtype}, not a matrix")
    try:
        _check_matrix(inner, start, start + nbytes, reader, 0)
    except FormatError as exc:
        raise FormatError(f"{exc} (inside the compressed element at byte {offset})") from None


def _sub(buf: bytes, pos: int, end: int, reader: _Reader, types, what: str):
    """(mdtype, nbytes, data start, next) of a sub-element that must be one of ``types``."""
    mdtype, nbytes, start, nxt = reader.tag(buf, pos, end)
    if mdtype not in types:
        reader.fail(pos, f"{what} has type {mdtype}")
    return mdtype, nbytes, start, nxt


def _check_matrix(buf: bytes, pos: int, end: int, reader: _Reader, depth: int) -> None:
    """One miMATRIX payload ``buf[pos:end]`` (recursively for cells, structs, objects). Numeric
    and char data must hold exactly the values their dimensions state, so no array scipy makes
    from a checked file is larger than the bytes behind it."""
    if depth > MAX_DEPTH:
        reader.fail(pos, f"arrays nested more than {MAX_DEPTH} deep")
    if pos == end:
        return  # an empty matrix: scipy reads it as a 0 x 0 double
    _, nbytes, start, pos = _sub(buf, pos, end, reader, _FLAGS, "array flags")
    if nbytes != 8:
        reader.fail(start - 8, f"array flags of {nbytes} bytes (expected 8)")
    flags, nzmax = reader.pair.unpack_from(buf, start)
    mclass, is_complex = flags & 0xFF, flags & 0x800
    if mclass == MX_OPAQUE:
        for what in ("opaque name", "opaque type system", "opaque class name"):
            _, _, _, pos = _sub(buf, pos, end, reader, _NAME, what)
        _, nbytes, start, pos = _sub(buf, pos, end, reader, _MATRIX, "opaque contents")
        _check_matrix(buf, start, start + nbytes, reader, depth + 1)
        return
    _, nbytes, start, pos = _sub(buf, pos, end, reader, _DIMS, "dimensions")
    ndims = nbytes >> 2
    if nbytes & 3 or not 1 <= ndims <= MAX_DIMS:
        reader.fail(start - 8, f"dimensions element of {nbytes} bytes (1 to {MAX_DIMS} int32)")
    dims = struct.unpack_from(f"{reader.e}{ndims}i", buf, start)
    if min(dims) < 0:
        reader.fail(start - 8, f"negative dimension in {list(dims)}")
    count = math.prod(dims)
    _, _, _, pos = _sub(buf, pos, end, reader, _NAME, "array name")
    if mclass == MX_CHAR or 6 <= mclass <= 15:
        types = _CHAR_TYPES if mclass == MX_CHAR else _NUMERIC_TYPES
        mdtype, nbytes, start, pos = _sub(buf, pos, end, reader, types, "real part")
        if mdtype != MI_UTF8 and nbytes != count * _ITEMSIZE[mdtype]:
            reader.fail(start - 8, f"real part holds {nbytes // _ITEMSIZE[mdtype]} values for dimensions {list(dims)}")
        if is_complex:
            mdtype, nbytes, start, pos = _sub(buf, pos, end, reader, types, "imaginary part")
            if mdtype != MI_UTF8 and nbytes != count * _ITEMSIZE[mdtype]:
                reader.fail(start - 8, f"imaginary part holds {nbytes // _ITEMSIZE[mdtype]} values for "
                            f"dimensions {list(dims)}")
    elif mclass == MX_CELL:
        if count > (end - pos) >> 3:
            reader.fail(pos, f"{count} cell elements cannot fit in {end - pos} bytes")
        for _ in range(count):
            _, nbytes, start, pos = _sub(buf, pos, end, reader, _MATRIX, "cell element")
            _check_matrix(buf, start, start + nbytes, reader, depth + 1)
    elif mclass == MX_SPARSE:
        _check_sparse(buf, pos, end, reader, dims, nzmax, is_complex)
    elif mclass in (MX_STRUCT, MX_OBJECT):
        if mclass == MX_OBJECT:
            _, _, _, pos = _sub(buf, pos, end, reader, _NAME, "object class name")
        _, nbytes, start, pos = _sub(buf, pos, end, reader, _DIMS, "field name length")
        if nbytes != 4:
            reader.fail(start - 8, f"field name length of {nbytes} bytes (expected 4)")
        (name_len,) = struct.unpack_from(reader.e + "i", buf, start)
        _, nbytes, start, pos = _sub(buf, pos, end, reader, _NAME, "field names")
        if name_len <= 0 and nbytes:
            reader.fail(start - 8, f"field names of length {name_len}")
        if name_len > 0 and nbytes % name_len:
            reader.fail(start - 8, f"{nbytes} bytes of field names are not a multiple of {name_len}")
        fields = nbytes // name_len if name_len > 0 else 0
        if fields and count > (end - pos) // 8 // fields:
            reader.fail(pos, f"{count} x {fields} struct fields cannot fit in {end - pos} bytes")
        for _ in range(count * fields):
            _, nbytes, start, pos = _sub(buf, pos, end, reader, _MATRIX, "struct field")
            _check_matrix(buf, start, start + nbytes, reader, depth + 1)
    elif mclass == MX_FUNCTION:
        _, nbytes, start, pos = _sub(buf, pos, end, reader, _MATRIX, "function handle workspace")
        _check_matrix(buf, start, start + nbytes, reader, depth + 1)
    else:
        reader.fail(pos, f"unknown array class {mclass}")


def _check_sparse(buf, pos, end, reader, dims, nzmax, is_complex) -> None:
    import numpy as np

    if len(dims) != 2:
        reader.fail(pos, f"sparse array of {len(dims)} dimensions (must be 2)")
    rows, cols = dims
    parts = {}
    for part in ("row indices", "column starts", "values", "imaginary values")[: 3 + is_complex]:
        mdtype, nbytes, start, pos = _sub(buf, pos, end, reader,
                                          _INDEX_TYPES if "indices" in part or "starts" in part
                                          else _NUMERIC_TYPES, part)
        parts[part] = (mdtype, nbytes, start)
    _, ir_bytes, ir_start = parts["row indices"]
    _, jc_bytes, jc_start = parts["column starts"]
    if jc_bytes != 4 * (cols + 1):
        reader.fail(jc_start - 8, f"sparse column starts hold {jc_bytes // 4} values for {cols} columns")
    jc = np.frombuffer(buf, dtype=reader.e + "i4", count=cols + 1, offset=jc_start)
    ir = np.frombuffer(buf, dtype=reader.e + "i4", count=ir_bytes // 4, offset=ir_start)
    nnz = int(jc[-1])
    if jc[0] != 0 or (np.diff(jc) < 0).any() or nnz > ir.size:
        reader.fail(jc_start - 8, "sparse column starts are not 0 .. non-decreasing .. at most the row-index count")
    if nnz and (ir[:nnz].min() < 0 or ir[:nnz].max() >= rows):
        reader.fail(ir_start - 8, f"sparse row index outside 0..{rows - 1}")
    for part in ("values", "imaginary values")[: 1 + is_complex]:
        mdtype, nbytes, start = parts[part]
        if nbytes // _ITEMSIZE[mdtype] < nnz:
            reader.fail(start - 8, f"sparse {part} hold {nbytes // _ITEMSIZE[mdtype]} of {nnz} values")
