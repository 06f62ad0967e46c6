"""MATLAB .mat files, v5 and v7.3 (HDF5) alike: ``loadmat(path)`` and ``savemat(path, variables)``.

Both versions read into the same plain Python structures, so nothing downstream cares which
version a file is:

========================  ===================================================================
MATLAB                    Python
========================  ===================================================================
numeric ``m x n [x ...]`` ``numpy.ndarray`` with MATLAB's shape (never squeezed; ``m x n``
                          stays 2-D), dtype of the MATLAB class (double -> float64, single ->
                          float32, int*/uint* alike); complex -> complex dtype
logical                   ``numpy.ndarray`` of uint8 (0/1): scipy's v5 reader drops the logical
                          flag, so v7.3 follows it for equality
char ``1 x n``            ``str`` (v7.3 stores UTF-16 code units; surrogate pairs are decoded)
char ``m x n``, m > 1     ``list`` of m row strings (MATLAB's char matrix of padded rows)
char ``0 x 0``            ``""``
char N-d (N > 2)          ``numpy.ndarray`` of single characters with MATLAB's shape
cell ``n x 1`` / ``1 x n``  flat ``list`` (MATLAB linear order)
cell ``m x n``, m,n > 1   ``list`` of m rows, each a ``list`` of n elements (``c[i][j] = C{i,j}``)
empty cell                ``[]``
struct ``1 x 1``          ``dict`` field -> value (MATLAB field order)
struct array              ``list`` of dicts (nested like a cell of the same shape)
sparse                    ``scipy.sparse.csc_matrix``
classdef/function/etc.    :class:`MatlabObject` (its class name only; not needed by this project)
========================  ===================================================================

In v7.3 files, MATLAB stores each variable as an HDF5 dataset whose shape is MATLAB's shape
reversed (column-major), with a ``MATLAB_class`` attribute; cell elements are object references
into the ``#refs#`` group, empty arrays are a uint64 dims vector with ``MATLAB_empty = 1``. The
writer reproduces that layout (512-byte MATLAB header in the HDF5 user block, ``MATLAB_class``,
``MATLAB_int_decode``, ``MATLAB_fields``, ``#refs#`` with its canonical empty ``a``), checked with
the independent ``mat73`` reader (not against MATLAB itself, which is not available here).

Writing (``savemat``): ``str`` -> char row; ``list``/``tuple`` -> ``N x 1`` cell; an object
``numpy.ndarray`` -> a cell of exactly that shape (use it for ``N x 2`` path + box cells); ``dict``
-> scalar struct; numeric arrays keep their shape (1-D becomes a column, ``N x 1``); Python
int/float -> ``1 x 1`` double; bool arrays -> logical. ``loadmat(savemat(x)) == x`` for every value
built from these rules.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from rll_repro.errors import FormatError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_CLASS_TO_DTYPE = {
    "double": np.float64, "single": np.float32, "logical": np.uint8,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
    "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64,
}
_DTYPE_TO_CLASS = {np.dtype(v): k for k, v in _CLASS_TO_DTYPE.items() if k != "logical"}


@dataclasses.dataclass(frozen=True)
class MatlabObject:
    """A MATLAB value this reader does not unpack (classdef object, string, function handle)."""

    class_name: str


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def mat_version(path: str | os.PathLike) -> str:
    """'v5' or 'v7.3' from the file header; FormatError for anything that is not a .mat."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(528)
    if len(head) >= 520 and head[512:520] == HDF5_SIGNATURE:
        return "v7.3"
    if head[:8] == HDF5_SIGNATURE:
        raise FormatError(f"{path}: an HDF5 file without MATLAB's 512-byte header, not a MATLAB v7.3 .mat file")
    if len(head) >= 128 and head[126:128] in (b"IM", b"MI"):
        return "v5"
    raise FormatError(f"{path}: not a MATLAB .mat file (no v5 header and no v7.3 HDF5 signature)")


def loadmat(path: str | os.PathLike, variables: list[str] | None = None) -> dict[str, Any]:
    """Read a v5 or v7.3 .mat file into plain structures (see the module docstring).

    ``variables`` restricts reading to those names (all when None); names not in the file are
    simply absent from the result (callers give the one-line error, see rll_repro.data.lists).
    """
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path}: is a directory, not a .mat file")
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    version = mat_version(path)
    if version == "v7.3":
        return _load_v73(path, variables)
    return _load_v5(path, variables)


def _load_v5(path: Path, variables):
    """scipy's reader on bytes checked first by :mod:`rll_repro.mat5_structure` (scipy's C code
    can crash the interpreter on a damaged file)."""
    import io

    import scipy.io

    from rll_repro.mat5_structure import check_v5

    checked = check_v5(path.read_bytes(), str(path))
    try:
        raw = scipy.io.loadmat(
            io.BytesIO(checked), squeeze_me=False, chars_as_strings=False, struct_as_record=True,
            mat_dtype=False, variable_names=variables,
        )
    except Exception as exc:  # scipy raises many kinds (ValueError, TypeError, MatReadError ...)
        raise FormatError(f"{path}: cannot read as MATLAB v5 .mat: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    try:
        return {k: _canon_v5(v) for k, v in raw.items() if not k.startswith("__")}
    except (ValueError, TypeError, IndexError) as exc:  # e.g. sparse parts scipy accepted but cannot use
        raise FormatError(f"{path}: cannot read as MATLAB v5 .mat: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None


def _canon_v5(value):
    import scipy.io.matlab as sm
    import scipy.sparse

    if scipy.sparse.issparse(value):
        return scipy.sparse.csc_matrix(value)
    if isinstance(value, (sm.MatlabFunction, sm.MatlabOpaque)):
        return MatlabObject(type(value).__name__)
    if isinstance(value, sm.MatlabObject):
        return MatlabObject(str(value.classname))
    if not isinstance(value, np.ndarray):
        return value
    if value.dtype.kind == "U":
        codes = np.ascontiguousarray(value, dtype="<U1").view(np.uint32).reshape(value.shape)  # UCS-4 code points
        return _chars_to_python(codes, value.shape)
    if value.dtype.names is not None:  # struct array
        names = value.dtype.names
        items = [{n: _canon_v5(value[idx][n]) for n in names} for idx in np.ndindex(*value.shape)]
        if len(items) == 1:
            return items[0]
        return _shape_like_cell(items, value.shape, order="C")
    if value.dtype == object:
        items = [_canon_v5(value[idx]) for idx in np.ndindex(*value.shape)]
        return _shape_like_cell(items, value.shape, order="C")
    if value.dtype == bool:
        return value.astype(np.uint8)
    return value


def _shape_like_cell(items: list, shape: tuple, order: str):
    """Lay out cell/struct elements (given in ``order`` over MATLAB ``shape``) as Python lists."""
    if len(items) == 0:
        return []
    if len(shape) <= 2 and (len(shape) < 2 or shape[0] == 1 or shape[1] == 1):
        return list(items)  # vector: linear order is the same in C and F
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    arr = arr.reshape(shape, order=order)
    return _nested(arr)


def _nested(arr: np.ndarray):
    if arr.ndim == 1:
        return list(arr)
    return [_nested(arr[i]) for i in range(arr.shape[0])]


def _chars_to_python(codes: np.ndarray, shape: tuple):
    """Code units with MATLAB ``shape`` -> str (row), list of rows (matrix) or ndarray (N-d)."""
    codes = np.asarray(codes).reshape(shape)
    if codes.size == 0:
        return ""

    def row(units) -> str:
        units = np.asarray(units, dtype=np.uint32)
        if units.size and units.max() > 0xFFFF:
            return "".join(map(chr, units))
        return units.astype("<u2").tobytes().decode("utf-16-le", errors="surrogatepass")

    if codes.ndim == 2:
        if codes.shape[0] == 1:
            return row(codes[0])
        return [row(r) for r in codes]
    out = np.empty(codes.shape, dtype="<U1")
    for idx in np.ndindex(*codes.shape):
        out[idx] = chr(int(codes[idx]))
    return out


def _load_v73(path: Path, variables):
    """Every variable (HDF5 root member not starting with '#') read into plain structures; any
    failure of h5py on a damaged file, listing the variables included, is a FormatError."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except Exception as exc:
        raise FormatError(f"{path}: cannot open as MATLAB v7.3 (HDF5) .mat: {_first_line(exc)}") from None
    with handle:
        try:
            names = [name for name in handle if not name.startswith("#")]
        except Exception as exc:  # a damaged group index: h5py raises RuntimeError, KeyError, OSError ...
            raise FormatError(f"{path}: cannot list the variables of the MATLAB v7.3 file: {_first_line(exc)}") from None
        out = {}
        for name in names:
            if variables is not None and name not in variables:
                continue
            try:
                out[name] = _canon_h5(handle, handle[name])
            except FormatError as exc:
                raise FormatError(f"{path}: variable {name!r}: {exc}") from None
            except Exception as exc:
                raise FormatError(f"{path}: variable {name!r} cannot be read: {_first_line(exc)}") from None
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


# The MATLAB attributes (MATLAB_class, MATLAB_empty, MATLAB_sparse, MATLAB_fields ...) are a few
# bytes; a damaged file can state an attribute of terabytes, whose read takes minutes: refuse it.
_MAX_ATTR_BYTES = 1 << 16
_MAX_REF_DEPTH = 64


def _check_size(shape, itemsize: int, what: str, limit: int | None = None) -> None:
    from rll_repro.limits import check_allocation

    if limit is not None and math.prod(shape or ()) * itemsize > limit:
        raise FormatError(f"{what} states {math.prod(shape or ())} values of {itemsize} bytes (at most {limit} bytes)")
    check_allocation(shape or (), itemsize, what)


def _attr(obj, key: str):
    """A (small) attribute's value, or None; its size is checked before it is read."""
    import h5py

    oid = obj.id
    name = key.encode("ascii")
    if not h5py.h5a.exists(oid, name):
        return None
    attr = h5py.h5a.open(oid, name)
    _check_size(attr.shape, attr.dtype.itemsize, f"attribute {key}", _MAX_ATTR_BYTES)
    return obj.attrs[key]


def _attr_str(obj, key: str) -> str | None:
    return _ll_attr_str(obj.id, key.encode("ascii"))


def _ll_attr_str(oid, key: bytes) -> str | None:
    """A string attribute read with h5py's low-level API (the high-level one costs ~0.1 ms a call)."""
    import h5py

    if not h5py.h5a.exists(oid, key):
        return None
    attr = h5py.h5a.open(oid, key)
    _check_size(attr.shape, attr.dtype.itemsize, f"attribute {key.decode('ascii')}", _MAX_ATTR_BYTES)
    value = np.empty(attr.shape, dtype=attr.dtype)
    attr.read(value)
    value = value.ravel()[0] if value.shape else value[()]
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return b"".join(value.ravel().tolist()).decode("ascii", "replace")
    return str(value)


def _fast_leaf(oid):
    """char / numeric dataset behind a cell reference, read with the low-level API; None -> slow path."""
    import h5py

    if not isinstance(oid, h5py.h5d.DatasetID) or h5py.h5a.exists(oid, b"MATLAB_empty"):
        return None
    cls = _ll_attr_str(oid, b"MATLAB_class")
    if cls != "char" and cls not in _CLASS_TO_DTYPE:
        return None
    dtype = oid.dtype
    if dtype.names is not None or dtype.kind not in "iuf":
        return None
    shape = oid.shape
    _check_size(shape, dtype.itemsize, "dataset")
    data = np.empty(shape, dtype=dtype)
    if data.size:
        oid.read(h5py.h5s.ALL, h5py.h5s.ALL, data)
    if cls == "char":
        return _chars_to_python(data.T, shape[::-1])
    arr = np.ascontiguousarray(data.T)
    if arr.ndim < 2:
        arr = arr.reshape((1,) * (2 - arr.ndim) + arr.shape)
    return arr.astype(np.uint8) if cls == "logical" else arr


def _deref_all(root, refs: np.ndarray, depth: int = 0) -> list:
    import h5py

    out = []
    fid = root.id
    for ref in refs.ravel(order="C"):
        if not ref:
            raise FormatError("a cell element is a null reference")
        oid = h5py.h5r.dereference(ref, fid)
        value = _fast_leaf(oid)
        out.append(_canon_h5(root, root[ref], depth=depth + 1) if value is None else value)
    return out


def _read_dataset(obj):
    """The whole dataset, after checking its size against the allocation limit."""
    _check_size(obj.shape, obj.dtype.itemsize, "dataset")
    return obj[()]


def _canon_h5(root, obj, matlab_class: str | None = None, depth: int = 0):
    import h5py

    if depth > _MAX_REF_DEPTH:
        raise FormatError(f"cells or structs nested more than {_MAX_REF_DEPTH} deep (a reference cycle?)")
    cls = _attr_str(obj, "MATLAB_class") or matlab_class
    if isinstance(obj, h5py.Group):
        if _attr(obj, "MATLAB_sparse") is not None:
            return _sparse_h5(obj, cls)
        if cls == "struct" or cls is None:
            return _struct_h5(root, obj, depth)
        return MatlabObject(cls)
    # dataset
    empty_attr = _attr(obj, "MATLAB_empty")
    empty = empty_attr is not None and np.asarray(empty_attr).size > 0 and int(np.asarray(empty_attr).ravel()[0]) == 1
    if empty or cls == "canonical empty":
        dims = tuple(int(d) for d in np.asarray(_read_dataset(obj)).ravel()) if obj.shape != () else (0, 0)
        if len(dims) < 2:
            dims = (0, 0)
        if cls == "char":
            return ""
        if cls in ("cell", "struct"):
            return []
        dtype = np.dtype(_CLASS_TO_DTYPE.get(cls, np.float64))
        if any(d < 0 for d in dims):
            raise FormatError(f"empty array with dimensions {list(dims)}")
        _check_size(dims, dtype.itemsize, "empty array")
        return np.zeros(dims, dtype=dtype)
    data = _read_dataset(obj)
    if obj.dtype == h5py.ref_dtype or (data.dtype == object and cls == "cell"):
        refs = np.asarray(data)
        shape = refs.shape[::-1]
        items = _deref_all(root, refs, depth)
        # h5 C-order over reversed dims == MATLAB column-major order over MATLAB dims
        if cls in (None, "cell"):
            return _shape_like_cell(items, shape, order="F")
        return MatlabObject(cls)
    if cls == "char":
        arr = np.asarray(data)
        return _chars_to_python(arr.T, arr.shape[::-1])
    if cls not in _CLASS_TO_DTYPE:
        return MatlabObject(cls or "unknown")
    arr = np.asarray(data)
    if arr.dtype.names and "real" in arr.dtype.names:
        arr = arr["real"] + 1j * arr["imag"]
    arr = np.ascontiguousarray(arr.T)
    if arr.ndim < 2:
        arr = arr.reshape((1,) * (2 - arr.ndim) + arr.shape)
    if cls == "logical":
        arr = arr.astype(np.uint8)
    return arr


def _struct_h5(root, group, depth: int = 0):
    import h5py

    fields_attr = _attr(group, "MATLAB_fields")
    if fields_attr is not None:
        names = [b"".join(np.asarray(f).ravel().tolist()).decode("ascii") for f in fields_attr]
    else:
        names = list(group.keys())
    names = [n for n in names if n in group] + [n for n in group.keys() if n not in names]
    children = {n: group[n] for n in names}
    is_array = bool(children) and all(
        isinstance(c, h5py.Dataset) and c.dtype == h5py.ref_dtype and _attr(c, "MATLAB_class") is None
        for c in children.values()
    )
    if not is_array:
        return {n: _canon_h5(root, c, depth=depth + 1) for n, c in children.items()}
    shape = next(iter(children.values())).shape
    flat = {n: _deref_all(root, np.asarray(_read_dataset(c)), depth) for n, c in children.items()}
    count = math.prod(shape)
    if any(len(v) != count for v in flat.values()):
        raise FormatError(f"struct array fields of different sizes ({', '.join(names)})")
    items = [{n: flat[n][i] for n in names} for i in range(count)]
    if count == 1:
        return items[0]
    return _shape_like_cell(items, shape[::-1], order="F")


def _sparse_h5(group, cls):
    import scipy.sparse

    nrows = int(np.asarray(_attr(group, "MATLAB_sparse")).ravel()[0])
    jc = np.asarray(_read_dataset(group["jc"]), dtype=np.int64).ravel()
    ir = np.asarray(_read_dataset(group["ir"]), dtype=np.int64).ravel() if "ir" in group else np.zeros(0, np.int64)
    data = _read_dataset(group["data"]) if "data" in group else np.zeros(0)
    if (nrows < 0 or jc.size == 0 or jc[0] != 0 or (np.diff(jc) < 0).any() or jc[-1] > min(ir.size, np.size(data))
            or (ir.size and (ir.min() < 0 or ir.max() >= nrows))):
        raise FormatError("sparse array with inconsistent jc/ir/data")
    if getattr(data, "dtype", None) is not None and data.dtype.names and "real" in data.dtype.names:
        data = data["real"] + 1j * data["imag"]
    data = np.asarray(data, dtype=_CLASS_TO_DTYPE.get(cls, np.float64) if cls != "logical" else np.bool_)
    return scipy.sparse.csc_matrix((data, ir, jc), shape=(nrows, len(jc) - 1))


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def savemat(path: str | os.PathLike, variables: dict[str, Any], version: str = "v5") -> None:
    """Write ``variables`` (plain structures, see the module docstring) as a v5 or v7.3 file, atomically."""
    from rll_repro.fileio import atomic_write

    path = Path(path)
    for name in variables:
        if not (isinstance(name, str) and name.isidentifier() and len(name) <= 63):
            raise FormatError(f"{path}: {name!r} is not a valid MATLAB variable name")
    if version not in ("v5", "v7.3"):
        raise FormatError(f"{path}: unknown .mat version {version!r} (use 'v5' or 'v7.3')")
    with atomic_write(path, "wb" if version == "v5" else "w+b") as handle:
        if version == "v5":
            import scipy.io

            scipy.io.savemat(
                handle, {k: _to_scipy(v) for k, v in variables.items()},
                do_compression=True, oned_as="column", long_field_names=True,
            )
        else:
            _write_v73(handle, variables)


def _to_scipy(value):
    if isinstance(value, str):
        return value if value else np.zeros((0, 0), dtype="<U1")
    if isinstance(value, (bool, np.bool_)):
        return np.array([[bool(value)]])
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return np.array([[float(value)]]) if isinstance(value, (int, float)) else np.array([[value]])
    if isinstance(value, dict):
        return {k: _to_scipy(v) for k, v in value.items()}
    if _is_sparse(value):
        return value.tocsc()
    if isinstance(value, (list, tuple)):
        arr = np.empty((len(value), 1) if value else (0, 0), dtype=object)
        for i, item in enumerate(value):
            arr[i, 0] = _to_scipy(item)
        return arr
    if isinstance(value, np.ndarray) and value.dtype == object:
        arr = np.empty(value.shape if value.ndim >= 2 else (value.size, 1), dtype=object)
        flat = value.reshape(arr.shape)
        for idx in np.ndindex(*arr.shape):
            arr[idx] = _to_scipy(flat[idx])
        return arr
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":  # N-d char array
        joined = np.empty(value.shape[:-1], dtype=f"<U{value.shape[-1]}")
        for idx in np.ndindex(*joined.shape):
            joined[idx] = "".join(value[idx])
        return joined
    if isinstance(value, np.ndarray):
        if value.ndim < 2:
            value = value.reshape(-1, 1) if value.ndim == 1 else value.reshape(1, 1)
        return value
    raise FormatError(f"cannot write a {type(value).__name__} to a .mat file")


def _is_sparse(value) -> bool:
    import scipy.sparse

    return scipy.sparse.issparse(value)


def _matlab_header(version_text: str) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S %Y")
    text = f"MATLAB {version_text} MAT-file, Platform: GLNXA64, Created on: {now} HDF5 schema 1.00 ."
    return text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


class _V73Writer:
    def __init__(self, h5):
        self.h5 = h5
        self.refs = h5.create_group("#refs#")
        self.counter = 0
        empty = self.refs.create_dataset("a", data=np.array([0, 0], dtype=np.uint64))
        empty.attrs["MATLAB_class"] = np.bytes_("canonical empty")
        empty.attrs["MATLAB_empty"] = np.uint8(1)
        self.counter = 1

    def _ref_name(self) -> str:
        # MATLAB names #refs# members a, b, ..., z, A, ..., Z, then two letters; any unique name works
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        n, name = self.counter, ""
        while True:
            name = alphabet[n % 52] + name
            n = n // 52 - 1
            if n < 0:
                break
        self.counter += 1
        return name

    def write(self, parent, name: str, value):
        import h5py

        if isinstance(value, str):
            if not value:
                return self._empty(parent, name, "char", (0, 0))
            units = np.frombuffer(value.encode("utf-16-le", "surrogatepass"), dtype="<u2")
            ds = parent.create_dataset(name, data=units.reshape(-1, 1))
            ds.attrs["MATLAB_class"] = np.bytes_("char")
            ds.attrs["MATLAB_int_decode"] = np.int32(2)
            return ds
        if isinstance(value, dict):
            group = parent.create_group(name)
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            vlen = h5py.vlen_dtype(np.dtype("S1"))
            fields = np.empty(len(value), dtype=object)
            for i, key in enumerate(value):
                fields[i] = np.frombuffer(key.encode("ascii"), dtype="S1")
            group.attrs.create("MATLAB_fields", fields, dtype=vlen)
            for key, item in value.items():
                self.write(group, key, item)
            return group
        if isinstance(value, (list, tuple)):
            cell = np.empty((len(value), 1), dtype=object)
            for i, item in enumerate(value):
                cell[i, 0] = item
            return self._cell(parent, name, cell)
        if isinstance(value, np.ndarray) and value.dtype == object:
            cell = value if value.ndim >= 2 else value.reshape(-1, 1)
            return self._cell(parent, name, cell)
        if _is_sparse(value):
            return self._sparse(parent, name, value.tocsc())
        if isinstance(value, (bool, np.bool_)):
            value = np.array([[bool(value)]])
        elif isinstance(value, (int, float)):
            value = np.array([[float(value)]])
        elif isinstance(value, (np.integer, np.floating, np.complexfloating)):
            value = np.array([[value]])
        if not isinstance(value, np.ndarray):
            raise FormatError(f"cannot write a {type(value).__name__} to a .mat file")
        if value.ndim < 2:
            value = value.reshape(-1, 1) if value.ndim == 1 else value.reshape(1, 1)
        if value.dtype.kind == "U":  # N-d char array
            cls = "char"
            data = np.vectorize(ord, otypes=[np.uint16])(value) if value.size else value.astype(np.uint16)
        elif value.dtype == bool:
            cls, data = "logical", value.astype(np.uint8)
        elif value.dtype.kind == "c":
            base = np.float32 if value.dtype == np.complex64 else np.float64
            cls = _DTYPE_TO_CLASS[np.dtype(base)]
            data = np.empty(value.shape, dtype=[("real", base), ("imag", base)])
            data["real"], data["imag"] = value.real, value.imag
        elif value.dtype in _DTYPE_TO_CLASS:
            cls, data = _DTYPE_TO_CLASS[value.dtype], value
        else:
            raise FormatError(f"cannot write a numpy {value.dtype} array to a .mat file")
        if value.size == 0:
            return self._empty(parent, name, cls, value.shape)
        ds = parent.create_dataset(name, data=np.ascontiguousarray(data.T))
        ds.attrs["MATLAB_class"] = np.bytes_(cls)
        if cls in ("logical", "char"):
            ds.attrs["MATLAB_int_decode"] = np.int32(1 if cls == "logical" else 2)
        return ds

    def _sparse(self, parent, name, mat):
        group = parent.create_group(name)
        dtype = np.dtype(mat.dtype)
        cls = "logical" if dtype == bool else _DTYPE_TO_CLASS.get(dtype, "double")
        group.attrs["MATLAB_class"] = np.bytes_(cls)
        group.attrs["MATLAB_sparse"] = np.uint64(mat.shape[0])
        data = mat.data.astype(np.uint8) if cls == "logical" else mat.data
        if mat.nnz:
            group.create_dataset("data", data=data)
            group.create_dataset("ir", data=mat.indices.astype(np.uint64))
        group.create_dataset("jc", data=mat.indptr.astype(np.uint64))
        return group

    def _empty(self, parent, name, cls, shape):
        ds = parent.create_dataset(name, data=np.array(shape, dtype=np.uint64))
        ds.attrs["MATLAB_class"] = np.bytes_(cls)
        ds.attrs["MATLAB_empty"] = np.uint8(1)
        return ds

    def _cell(self, parent, name, cell: np.ndarray):
        import h5py

        if cell.size == 0:
            return self._empty(parent, name, "cell", cell.shape)
        refs = np.empty(cell.shape[::-1], dtype=h5py.ref_dtype)
        flat_refs = refs.reshape(-1)  # C order over reversed dims == MATLAB column-major
        for i, item in enumerate(cell.ravel(order="F")):
            flat_refs[i] = self.write(self.refs, self._ref_name(), item).ref
        ds = parent.create_dataset(name, data=refs, dtype=h5py.ref_dtype)
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
        return ds


def _write_v73(handle, variables: dict[str, Any]) -> None:
    import h5py

    with h5py.File(handle, "w", userblock_size=512, libver="earliest") as h5:
        writer = _V73Writer(h5)
        for name, value in variables.items():
            writer.write(h5, name, value)
    handle.flush()
    handle.seek(0)
    handle.write(_matlab_header("7.3"))
    handle.seek(0, os.SEEK_END)
