"""Atomic file output, and .npy/.npz reading that a damaged or hostile file cannot crash.

Writing: to a temporary file beside the target, fsync, then rename. A reader never sees a
half-written caffemodel, solverstate, .mat, .npz or JSON file, and a kill at any moment leaves
either the old file or the new one. The file gets the mode ``open()`` would give it (0666 less the
umask), not mkstemp's 0600. Temporary files are named ``.<name>.<host>-<pid>.<random>.tmp``; the
ones a killed process left behind (same host, pid no longer running) are removed the next time
this process writes into that directory. Errors name the target, never the temporary file.

Reading (:func:`read_npy`, :func:`read_npz`): the .npy header is parsed here (no pickles), its
shape is checked against the bytes the file really holds and against
:func:`rll_repro.limits.check_allocation` before anything is allocated, and every zip/zlib/header
failure becomes a one-line :class:`~rll_repro.errors.FormatError` naming the file.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import IO, BinaryIO, Iterator

_TMP_SUFFIX = ".tmp"
_HOST = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])[:16] or "host"
# .<target name>.<host>-<pid>.<mkstemp's 8 random characters>.tmp
_TMP_PATTERN = re.compile(r"^\..*\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.tmp$")
_NAME_BYTES_IN_TMP = 100  # keep .<name>.<host>-<pid>.<random>.tmp under NAME_MAX (255 bytes)
_swept_dirs: set[bytes] = set()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), since setting it
    to read it back races with other threads creating files."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's) or cannot tell: keep the file
    return True


def remove_stale_temporaries(directory: str | os.PathLike | bytes) -> list[bytes]:
    """Remove this host's temporary files in ``directory`` whose writing process is gone; return their paths."""
    removed = []
    with contextlib.suppress(OSError):
        with os.scandir(os.fsencode(directory)) as entries:
            for entry in entries:
                name = os.fsdecode(entry.name)
                match = _TMP_PATTERN.match(name) if name.endswith(_TMP_SUFFIX) else None
                if not match or match["host"] != _HOST:
                    continue
                pid = int(match["pid"])
                if pid == os.getpid() or _pid_alive(pid):
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(entry.path)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success give it the umask's mode and rename it over ``path``.

    The path is handled as bytes (os.fsencode), so a name from a non-UTF-8 command line (surrogate
    escapes) is written as given. An OSError of the writing itself names ``path``."""
    raw = os.fsencode(path)
    parent = os.path.dirname(raw) or b"."
    name = os.path.basename(raw)
    try:
        os.makedirs(parent, exist_ok=True)
        if parent not in _swept_dirs:
            _swept_dirs.add(parent)
            remove_stale_temporaries(parent)
        prefix = b"." + name[:_NAME_BYTES_IN_TMP] + f".{_HOST}-{os.getpid()}.".encode()
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=_TMP_SUFFIX.encode(), dir=parent)
    except OSError as exc:
        raise _renamed(exc, path) from None
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, raw)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError) and exc.filename in (None, tmp):
            raise _renamed(exc, path) from None  # about the output (full disk, read-only, ...)
        raise  # about something else (the caller read another file): unchanged


def _renamed(exc: OSError, path) -> OSError:
    """The same OSError naming the target file (not the temporary one, nor none at all)."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), os.fsdecode(os.fsencode(path)))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_save_npy(path: str | os.PathLike, array) -> None:
    """``numpy.save(path, array)`` atomically (no pickles)."""
    import numpy as np

    with atomic_write(path, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


# ------------------------------------------------------------------------------------------------
# Reading .npy / .npz

_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER_BYTES = 1 << 16  # numpy writes ~128 bytes; its own reader refuses > 10,000 by default


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _npy_header(stream: BinaryIO, where: str):
    """(dtype, shape, fortran_order) from an .npy header, each checked; FormatError naming ``where``."""
    import ast

    import numpy as np

    from rll_repro.errors import FormatError

    magic = _read_exact(stream, 8)
    if len(magic) < 8 or not magic.startswith(_NPY_MAGIC):
        raise FormatError(f"{where}: not a NumPy .npy array (no \\x93NUMPY header)")
    major = magic[6]
    if major not in (1, 2, 3):
        raise FormatError(f"{where}: unknown .npy format version {major}.{magic[7]}")
    size_bytes = 2 if major == 1 else 4
    raw_len = _read_exact(stream, size_bytes)
    if len(raw_len) < size_bytes:
        raise FormatError(f"{where}: truncated .npy header")
    header_len = int.from_bytes(raw_len, "little")
    if header_len > _MAX_HEADER_BYTES:
        raise FormatError(f"{where}: .npy header claims {header_len} bytes (a real one has ~100)")
    header = _read_exact(stream, header_len)
    if len(header) < header_len:
        raise FormatError(f"{where}: truncated .npy header")
    try:
        text = header.decode("utf-8" if major == 3 else "latin-1")
        meta = ast.literal_eval(text)
    except (UnicodeDecodeError, SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise FormatError(f"{where}: damaged .npy header (not a Python literal)") from None
    if not isinstance(meta, dict) or set(meta) != {"descr", "fortran_order", "shape"}:
        raise FormatError(f"{where}: damaged .npy header (needs exactly descr, fortran_order, shape)")
    shape, fortran = meta["shape"], meta["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(d) is int for d in shape):
        raise FormatError(f"{where}: damaged .npy header (shape {str(shape)[:80]} is not a tuple of integers)")
    if not isinstance(fortran, bool):
        raise FormatError(f"{where}: damaged .npy header (fortran_order is not True/False)")
    try:
        descr = meta["descr"]
        dtype = np.dtype(descr if isinstance(descr, str) else np.lib.format.descr_to_dtype(descr))
    except (TypeError, ValueError, SyntaxError, KeyError, IndexError, AttributeError, OverflowError,
            RecursionError, MemoryError):  # numpy parses some dtype strings with ast itself
        raise FormatError(f"{where}: damaged .npy header (dtype {str(meta['descr'])[:80]} is not a NumPy dtype)") from None
    if dtype.hasobject:
        raise FormatError(f"{where}: holds Python objects (a pickle); only plain numeric arrays are read")
    return dtype, shape, fortran, 8 + size_bytes + header_len


def _read_npy_stream(stream: BinaryIO, where: str, total: int | None):
    """One array from an .npy byte stream of ``total`` bytes (if known): the shape must fit in them."""
    import numpy as np

    from rll_repro.errors import FormatError
    from rll_repro.limits import check_allocation

    dtype, shape, fortran, header_end = _npy_header(stream, where)
    count = check_allocation(shape, dtype.itemsize, where)
    nbytes = count * dtype.itemsize
    if total is not None and nbytes > total - header_end:
        raise FormatError(f"{where}: truncated .npy data: shape {shape} {dtype} needs {nbytes} bytes, "
                          f"the file holds {max(total - header_end, 0)}")
    array = np.empty(count, dtype=dtype)  # checked above: within the limit and the bytes stated
    buffer = memoryview(array.view(np.uint8) if dtype.itemsize else np.zeros(0, np.uint8))
    got = 0
    while got < nbytes:
        n = stream.readinto(buffer[got:got + (1 << 24)])
        if not n:
            raise FormatError(f"{where}: truncated .npy data: shape {shape} {dtype} needs {nbytes} bytes, "
                              f"the file holds {got}")
        got += n
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def read_npy(path: str | os.PathLike, what: str = "an array") -> "np.ndarray":
    """The array of an .npy file (no pickles). A missing file raises FileNotFoundError; an empty,
    damaged, truncated or oversized one a FormatError naming the file."""
    from rll_repro.errors import FormatError

    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not size:
            raise FormatError(f"{path}: empty file (expected an .npy file of {what})")
        head = f.read(8)
        if head.startswith(b"PK"):
            raise FormatError(f"{path}: a zip archive (.npz), not an .npy file of {what}")
        f.seek(0)
        try:
            return _read_npy_stream(f, str(path), size)
        except OSError as exc:
            raise FormatError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_npz(path: str | os.PathLike, what: str = "arrays") -> dict:
    """All arrays of an .npz archive by key, read eagerly (no pickles). A missing file raises
    FileNotFoundError; an empty, non-zip, damaged or oversized file a FormatError naming the file."""
    import lzma
    import struct
    import zipfile
    import zlib

    from rll_repro.errors import FormatError

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        raise FormatError(f"{path}: empty file (expected an .npz archive of {what})")
    if not head.startswith(b"PK"):
        kind = "a NumPy .npy file" if head.startswith(_NPY_MAGIC) else "not a zip archive"
        raise FormatError(f"{path}: {kind}; expected an .npz archive of {what} (numpy.savez)")
    out = {}
    member = None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                member = info.filename
                if info.is_dir():
                    continue
                if not member.endswith(".npy"):
                    raise FormatError(f"{path}: member {member!r} is not an .npy array; expected an .npz "
                                      f"archive of {what} (numpy.savez)")
                with archive.open(info) as stream:
                    out[member[:-4]] = _read_npy_stream(stream, f"{path}: array {member[:-4]!r}", info.file_size)
    except FormatError:
        raise
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError, struct.error, OverflowError) as exc:
        where = f" (member {member!r})" if member else ""
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise FormatError(f"{path}: damaged .npz archive of {what}{where}: {reason}") from None
    return out
