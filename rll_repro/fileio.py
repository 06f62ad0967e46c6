"""Atomic file output: write to a temporary file beside the target, fsync, then rename.

A reader never sees a half-written caffemodel, solverstate, .mat, .npz or JSON file, and a kill at
any moment leaves either the old file or the new one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_npz(path: str | os.PathLike, what: str = "arrays") -> dict:
    """All arrays of an .npz archive by key, read eagerly (no pickles). A missing file raises
    FileNotFoundError; an empty, non-zip or damaged file a FormatError naming the file."""
    import zipfile

    import numpy as np

    from rll_repro.errors import FormatError

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        raise FormatError(f"{path}: empty file (expected an .npz archive of {what})")
    if not head.startswith(b"PK"):
        kind = "a NumPy .npy file" if head.startswith(b"\x93NUMPY") else "not a zip archive"
        raise FormatError(f"{path}: {kind}; expected an .npz archive of {what} (numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: damaged .npz archive of {what} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
