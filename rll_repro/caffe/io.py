"""Read and write every Caffe file kind, with one-line errors naming the file and what is wrong.

Kinds: net prototxt and solver prototxt (protobuf text format), caffemodel (binary NetParameter),
solverstate (binary SolverState), binaryproto (binary BlobProto, e.g. a mean image).

* Text files must be UTF-8 (as protobuf's text parser requires); syntax errors and unknown fields
  are reported as ``file:line:column: what``. Like Caffe, ``#`` starts a comment, ``//`` does not.
* Binary files are identified from their top-level protobuf fields before they are parsed, so a
  solverstate passed as a caffemodel, a truncated download or a PNG gives a clear message.
* Nets are upgraded the way Caffe's ``UpgradeNetAsNeeded`` does (V0/V1 -> V2 ``layer``, net-level
  inputs -> an Input layer); solvers the way ``UpgradeSolverAsNeeded`` does (see
  :mod:`rll_repro.caffe.upgrade`). A V2 caffemodel or any solverstate is returned exactly as
  read, so ``write_caffemodel(read_caffemodel(f))`` reproduces a Caffe-written file byte for byte.
* Writes are atomic (temporary file + rename).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from google.protobuf import message as _pb_message
from google.protobuf import text_format

from rll_repro.caffe import caffe_pb2
from rll_repro.caffe.upgrade import net_needs_upgrade, solver_needs_upgrade, upgrade_net, upgrade_solver
from rll_repro.caffe.weights import _read_varint, blob_to_array
from rll_repro.errors import FormatError
from rll_repro.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "read_net_prototxt", "read_solver_prototxt", "read_caffemodel", "read_solverstate", "read_binaryproto",
    "write_net_prototxt", "write_solver_prototxt", "write_caffemodel", "write_solverstate", "write_binaryproto",
    "parse_net_text", "parse_solver_text", "detect_kind", "upgrade_net", "upgrade_solver", "KIND_NAMES",
]

KIND_NAMES = {
    "net_prototxt": "net prototxt",
    "solver_prototxt": "solver prototxt",
    "caffemodel": "caffemodel",
    "solverstate": "solverstate",
    "binaryproto": "binaryproto (BlobProto)",
}

# Top-level (field number, wire type) pairs each binary kind may contain; wire types: 0 varint,
# 1 fixed64, 2 length-delimited, 5 fixed32.
_ALLOWED = {
    "caffemodel": {(1, 2), (2, 2), (3, 2), (4, 0), (4, 2), (5, 0), (6, 2), (7, 0), (8, 2), (100, 2), (200, 2)},
    "solverstate": {(1, 0), (2, 2), (3, 2), (4, 0)},
    "binaryproto": {(1, 0), (2, 0), (3, 0), (4, 0), (5, 2), (5, 5), (6, 2), (6, 5), (7, 2),
                    (8, 2), (8, 1), (9, 2), (9, 1)},
}
_REQUIRED = {  # at least one of these must be present
    "caffemodel": {(2, 2), (100, 2)},
    "solverstate": {(1, 0), (3, 2)},
    "binaryproto": {(5, 2), (5, 5), (7, 2), (8, 2), (8, 1)},
}
_MAGIC = [
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Caffe HDF5 snapshots and MATLAB v7.3 files are not read here)"),
    (b"PK\x03\x04", "a zip archive (an .npz?)"),
    (b"\x93NUMPY", "a NumPy .npy file"),
    (b"MATLAB", "a MATLAB .mat file"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "a gzip file (decompress it first)"),
    (b"\x80\x02", "a Python pickle (a PyTorch .pt?)"),
]


# ----------------------------------------------------------------------------------------------
# Raw bytes and kind detection


def _read_bytes(path, expected: str) -> bytes:
    path = Path(path)
    data = path.read_bytes()  # FileNotFoundError etc. are reported by the CLI
    if not data:
        raise FormatError(f"{path}: empty file (expected a {KIND_NAMES[expected]})")
    return data


def _scan_fields(data: bytes) -> tuple[set[tuple[int, int]], str | None]:
    """Top-level (field, wire type) pairs, and a problem description if the bytes are not protobuf."""
    seen: set[tuple[int, int]] = set()
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        try:
            key, pos = _read_varint(data, pos)
        except ValueError:
            return seen, f"truncated at byte {start} of {end}"
        field, wire = key >> 3, key & 7
        if field == 0 or wire in (3, 4, 6, 7):
            return seen, f"invalid protobuf data at byte {start}"
        if wire == 0:
            try:
                _, pos = _read_varint(data, pos)
            except ValueError:
                return seen, f"truncated inside field {field} (file ends at byte {end})"
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            try:
                size, pos = _read_varint(data, pos)
            except ValueError:
                return seen, f"truncated inside field {field} (file ends at byte {end})"
            pos += size
        if pos > end:
            return seen, f"truncated: field {field} at byte {start} needs {pos - end} more bytes than the file has"
        seen.add((field, wire))
    return seen, None


def _binary_kind(data: bytes) -> tuple[str | None, str | None]:
    """(kind, problem): the binary kind the top-level fields fit, or a description of what is wrong."""
    fields, problem = _scan_fields(data)
    if problem is None:
        for kind, allowed in _ALLOWED.items():
            if fields <= allowed and fields & _REQUIRED[kind]:
                return kind, None
    return None, problem


def _not_protobuf_reason(data: bytes) -> str:
    other = _known_other_format(data)
    if other is not None:
        return other
    _, problem = _binary_kind(data)
    if problem is not None:
        return f"not a Caffe protobuf file ({problem})"
    return "not a Caffe file (its protobuf fields fit no Caffe message)"


def _is_binary(data: bytes) -> bool:
    """Text prototxts never hold NUL bytes and are UTF-8; serialised blobs nearly always break both."""
    return b"\x00" in data or not _is_utf8(data)


def _looks_like_text(data: bytes, share: float = 0.9) -> bool:
    """No NUL and at least ``share`` printable ASCII in the first 4 KiB."""
    head = data[:4096]
    if b"\x00" in head:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable >= share * len(head)


def _known_other_format(data: bytes) -> str | None:
    """What the file is by its magic bytes (PNG, .mat, .npz, ...), or None."""
    return next((what for magic, what in _MAGIC if data.startswith(magic)), None)


def detect_kind(path) -> str:
    """'net_prototxt', 'solver_prototxt', 'caffemodel', 'solverstate' or 'binaryproto'.

    Raises FormatError (naming the problem) if the file is none of these.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise FormatError(f"{path}: empty file")
    other = _known_other_format(data)
    if other is not None:
        raise FormatError(f"{path}: {other}, not a Caffe file")
    kind, _ = _binary_kind(data)
    if kind is not None and _is_binary(data):
        return kind
    if _looks_like_text(data) or _is_utf8(data):
        text = _decode_text(data, path)
        net_error = solver_error = None
        try:
            _parse_text(text, caffe_pb2.NetParameter(), path)
        except FormatError as exc:
            net_error = exc
        try:
            _parse_text(text, caffe_pb2.SolverParameter(), path)
        except FormatError as exc:
            solver_error = exc
        if net_error is None:
            return "net_prototxt"
        if solver_error is None:
            return "solver_prototxt"
        looks_solver = "solver" in path.name.lower() or re.search(r"^\s*(base_lr|lr_policy|net)\s*:", text, re.M)
        raise solver_error if looks_solver else net_error
    if kind is not None:
        return kind
    if _looks_like_text(data, share=0.7):  # mostly ASCII: text in another encoding (GBK, Latin-1)
        _decode_text(data, path)  # raises the encoding error with line:column
    raise FormatError(f"{path}: {_not_protobuf_reason(data)}")


# ----------------------------------------------------------------------------------------------
# Text


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    col = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, col


def _decode_text(data: bytes, path) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        raise FormatError(
            f"{path}:{line}:{col}: not UTF-8 text (byte 0x{data[exc.start]:02x}); prototxt files must be "
            "UTF-8 -- re-save it as UTF-8 (was it written as GBK or Latin-1?)"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


_PARSE_PREFIX = re.compile(r"^\d+:\d+\s*:\s*")
_LONG_WORD = re.compile(r"\S{61,}")
_MAX_REASON = 300


def _short_context(reason: str) -> str:
    """The parser's message with long quoted context cut (protobuf echoes the whole offending
    token, which on a damaged file can be a line of kilobytes)."""
    reason = _LONG_WORD.sub(lambda m: m.group(0)[:60] + "...", reason)
    return reason if len(reason) <= _MAX_REASON else reason[:_MAX_REASON] + "..."


def _parse_text(text: str, msg, where):
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        reason = _short_context(_PARSE_PREFIX.sub("", str(exc).splitlines()[0] if str(exc) else "syntax error"))
        if "got /" in reason or "'/'" in reason:
            reason += " (prototxt comments start with '#', not '//')"
        line, col = exc.GetLine(), exc.GetColumn()
        location = f"{where}:{line}:{col}" if line is not None else f"{where}"
        raise FormatError(f"{location}: {reason}") from None
    return msg


def _read_text(path, message_type, expected: str):
    data = _read_bytes(path, expected)
    if _is_binary(data):
        kind, _ = _binary_kind(data)
        if kind is not None:
            raise FormatError(f"{path}: this is a binary {KIND_NAMES[kind]}, not a text {KIND_NAMES[expected]}")
        if b"\x00" in data[:4096]:
            raise FormatError(f"{path}: {_not_protobuf_reason(data)}, not a text {KIND_NAMES[expected]}")
    text = _decode_text(data, path)
    if not re.sub(r"#[^\n]*", "", text).strip():
        raise FormatError(f"{path}: contains no fields (expected a {KIND_NAMES[expected]})")
    try:
        return _parse_text(text, message_type(), path)
    except FormatError as original:
        other_type, other = ((caffe_pb2.SolverParameter, "solver_prototxt") if expected == "net_prototxt"
                             else (caffe_pb2.NetParameter, "net_prototxt"))
        try:
            _parse_text(text, other_type(), path)
        except FormatError:
            raise original from None
        raise FormatError(f"{path}: this is a {KIND_NAMES[other]}, not a {KIND_NAMES[expected]}") from None


def parse_net_text(text: str, where: str = "<string>", upgrade: bool = True) -> caffe_pb2.NetParameter:
    """A NetParameter from prototxt text (upgraded to V2 unless ``upgrade=False``)."""
    net = _parse_text(text, caffe_pb2.NetParameter(), where)
    return upgrade_net(net, where) if upgrade and net_needs_upgrade(net) else net


def parse_solver_text(text: str, where: str = "<string>", upgrade: bool = True) -> caffe_pb2.SolverParameter:
    """A SolverParameter from prototxt text (old solver_type upgraded unless ``upgrade=False``)."""
    solver = _parse_text(text, caffe_pb2.SolverParameter(), where)
    return upgrade_solver(solver, where) if upgrade and solver_needs_upgrade(solver) else solver


def read_net_prototxt(path, upgrade: bool = True) -> caffe_pb2.NetParameter:
    """A net prototxt as a V2 NetParameter (Caffe's ReadNetParamsFromTextFileOrDie)."""
    net = _read_text(path, caffe_pb2.NetParameter, "net_prototxt")
    return upgrade_net(net, str(path)) if upgrade and net_needs_upgrade(net) else net


def read_solver_prototxt(path, upgrade: bool = True) -> caffe_pb2.SolverParameter:
    """A solver prototxt (Caffe's ReadSolverParamsFromTextFileOrDie: solver_type -> type)."""
    solver = _read_text(path, caffe_pb2.SolverParameter, "solver_prototxt")
    return upgrade_solver(solver, str(path)) if upgrade and solver_needs_upgrade(solver) else solver


def write_net_prototxt(path, net: caffe_pb2.NetParameter) -> None:
    atomic_write_text(path, text_format.MessageToString(net))


def write_solver_prototxt(path, solver: caffe_pb2.SolverParameter) -> None:
    atomic_write_text(path, text_format.MessageToString(solver))


# ----------------------------------------------------------------------------------------------
# Binary


def _read_binary(path, message, expected: str):
    data = _read_bytes(path, expected)
    kind, problem = _binary_kind(data)
    if kind != expected:
        if kind is not None:
            raise FormatError(f"{path}: this is a {KIND_NAMES[kind]}, not a {KIND_NAMES[expected]}")
        if _looks_like_text(data) and _is_utf8(data):
            raise FormatError(f"{path}: this is a text file (a prototxt?), not a binary {KIND_NAMES[expected]}")
        raise FormatError(f"{path}: {_not_protobuf_reason(data)}; expected a {KIND_NAMES[expected]}")
    try:
        message.ParseFromString(data)
    except _pb_message.DecodeError as exc:
        raise FormatError(f"{path}: corrupt {KIND_NAMES[expected]} (protobuf: {exc})") from None
    return message


def read_caffemodel(path, upgrade: bool = True) -> caffe_pb2.NetParameter:
    """A caffemodel as a NetParameter with V2 layers (V0/V1 files upgraded like Caffe does)."""
    net = _read_binary(path, caffe_pb2.NetParameter(), "caffemodel")
    return upgrade_net(net, str(path)) if upgrade and net_needs_upgrade(net) else net


def write_caffemodel(path, net: caffe_pb2.NetParameter) -> None:
    """Caffe's WriteProtoToBinaryFile, atomically."""
    atomic_write_bytes(path, net.SerializeToString())


def read_solverstate(path) -> caffe_pb2.SolverState:
    return _read_binary(path, caffe_pb2.SolverState(), "solverstate")


def write_solverstate(path, state: caffe_pb2.SolverState) -> None:
    atomic_write_bytes(path, state.SerializeToString())


def read_binaryproto_blob(path) -> caffe_pb2.BlobProto:
    return _read_binary(path, caffe_pb2.BlobProto(), "binaryproto")


def read_binaryproto(path) -> np.ndarray:
    """A binaryproto (e.g. a mean file) as an array with Caffe's shape (legacy blobs are 4-D)."""
    return blob_to_array(read_binaryproto_blob(path), str(path))


def write_binaryproto(path, array, legacy_shape: bool = False) -> None:
    from rll_repro.caffe.weights import array_to_blob

    atomic_write_bytes(path, array_to_blob(array, legacy_shape=legacy_shape).SerializeToString())


def read_any(path):
    """(kind, message) for any Caffe file kind (auto-detected)."""
    kind = detect_kind(path)
    reader = {
        "net_prototxt": read_net_prototxt,
        "solver_prototxt": read_solver_prototxt,
        "caffemodel": read_caffemodel,
        "solverstate": read_solverstate,
        "binaryproto": read_binaryproto_blob,
    }[kind]
    return kind, reader(path)
