"""Small C kernels, built with the machine's C compiler on first use and loaded with ctypes.

The pair losses' per-pair arithmetic (rll_repro/layers/pair_kernels.c), the BatchNorm -> Scale ->
ReLU chains of a CPU train step (layers/batchnorm_chain.c), pooling gradients (layers/pool_kernels.c)
and the Recall@K counts (rll_repro/eval/count_kernels.c) are one pass in C where PyTorch or numpy
make one pass per operation; everything else stays PyTorch. A kernel source is compiled once
per source text, compiler and flags into ``$RLL_REPRO_CACHE_DIR`` (default
``$XDG_CACHE_HOME/rll_repro`` or ``~/.cache/rll_repro``; the system's temporary folder if that cannot
be written), written atomically, so concurrent processes and a kill mid-build are harmless. A
folder or library that another user owns, or that others may write, is never loaded from.

The flags keep IEEE semantics: no fast-math, ``-ffp-contract=off`` (no fused multiply-add, whatever
the CPU) and the baseline instruction set of the target, so every machine performs the same float
operations (libm's powf/exp are the C library's own). Where no compiler works (or
``RLL_REPRO_NATIVE=0``), :func:`load` returns None and callers keep their PyTorch path;
:func:`status` says why.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from rll_repro.fileio import atomic_write_bytes

FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno")
BUILD_TIMEOUT_S = 120
_lock = threading.Lock()
_loaded: dict[tuple[Path, bool], ctypes.CDLL | None] = {}  # by (source, openmp)
_why: dict[tuple[Path, bool], str] = {}


def enabled() -> bool:
    """False when ``RLL_REPRO_NATIVE=0`` (PyTorch paths only)."""
    return os.environ.get("RLL_REPRO_NATIVE", "1").strip() not in ("0", "false", "no", "off")


def plain_cpu_float32(t) -> bool:
    """A real float32 CPU tensor whose memory C may read: not meta, fake or functorch-wrapped (those
    keep their PyTorch paths), and native kernels not turned off."""
    import torch

    if t.dtype != torch.float32 or t.device.type != "cpu" or not enabled():
        return False
    return not (isinstance(t, torch._subclasses.fake_tensor.FakeTensor)
                or torch._C._functorch.is_functorch_wrapped_tensor(t))


def pointer(t, what: str):
    """The data pointer of a contiguous CPU tensor for a C kernel (None stays None); anything else
    would be read out of bounds by C, so it raises ValueError naming ``what``."""
    if t is None:
        return None
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{what} take contiguous CPU tensors, got {t.device} strides {t.stride()}")
    return t.data_ptr()


def threads() -> int:
    """The OpenMP threads a kernel may use: torch's intra-op count (the kernels share its runtime)."""
    import torch

    return torch.get_num_threads()


def _compiler() -> str | None:
    cc = os.environ.get("CC", "").strip()
    for candidate in ([cc] if cc else []) + ["cc", "gcc", "clang"]:
        found = shutil.which(candidate.split()[0]) if candidate else None
        if found:
            return candidate
    return None


def _cache_dirs() -> list[Path]:
    explicit = os.environ.get("RLL_REPRO_CACHE_DIR")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs = [Path(explicit)] if explicit else [Path(base) / "rll_repro"]
    return dirs + [Path(tempfile.gettempdir()) / f"rll_repro-{os.getuid() if hasattr(os, 'getuid') else 'user'}"]


def _version(cc: str) -> str:
    try:
        out = subprocess.run(cc.split() + ["--version"], capture_output=True, timeout=30, check=False)
        return out.stdout.decode(errors="replace").splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _private(path: Path, folder: bool) -> None:
    """Raises OSError unless ``path`` is ours (and, a folder, writable by us alone): a shared
    temporary folder could otherwise hand us another user's library."""
    if folder:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or (folder and info.st_mode & 0o022)):
        raise OSError(f"{path} is not private to this user (owner {info.st_uid}, mode {oct(info.st_mode & 0o777)})")


def _build(source: Path, cc: str, flags: tuple[str, ...]) -> ctypes.CDLL:
    text = source.read_bytes()
    key = hashlib.sha256(b"\0".join([text, " ".join(flags).encode(), cc.encode(), _version(cc).encode(),
                                     sys.platform.encode(), platform.machine().encode()])).hexdigest()[:16]
    name = f"{source.stem}-{key}.so"
    errors = []
    for folder in _cache_dirs():
        target = folder / name
        try:
            _private(folder, folder=True)
        except OSError as exc:
            errors.append(str(exc))
            continue
        if target.is_file():
            try:
                _private(target, folder=False)
                return ctypes.CDLL(str(target))
            except OSError as exc:  # damaged or foreign: rebuild it
                errors.append(f"{target}: {exc}")
        try:
            with tempfile.TemporaryDirectory(prefix="rll_repro-build-") as tmp:
                out = Path(tmp) / name
                proc = subprocess.run(cc.split() + list(flags) + [str(source), "-o", str(out), "-lm"],
                                      capture_output=True, timeout=BUILD_TIMEOUT_S, check=False)
                if proc.returncode != 0:
                    message = proc.stderr.decode(errors="replace").strip().splitlines()
                    raise RuntimeError(f"{cc} failed on {source.name}: {message[-1] if message else proc.returncode}")
                atomic_write_bytes(target, out.read_bytes())
            return ctypes.CDLL(str(target))
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{folder}: {exc}")
    raise RuntimeError("; ".join(errors))


def load(source: str | os.PathLike, openmp: bool = False) -> ctypes.CDLL | None:
    """The shared library built from the C file ``source`` (cached), or None where it cannot be built
    or native kernels are turned off. ``openmp``: built with -fopenmp where the compiler has it (the
    library then uses the process's OpenMP runtime: PyTorch's, which is loaded first and has the same
    soname), else without (its pragmas ignored: one thread)."""
    key = (Path(source), bool(openmp))
    if not enabled():
        return None
    with _lock:
        if key not in _loaded:
            cc = _compiler()
            try:
                if cc is None:
                    raise RuntimeError("no C compiler found (cc, gcc, clang or $CC)")
                try:
                    _loaded[key] = _build(key[0], cc, FLAGS + (("-fopenmp",) if openmp else ()))
                except RuntimeError:
                    if not openmp:
                        raise
                    _loaded[key] = _build(key[0], cc, FLAGS)  # no OpenMP in this toolchain
            except Exception as exc:  # noqa: BLE001 - any failure to build leaves the PyTorch path
                _loaded[key], _why[key] = None, str(exc) or type(exc).__name__
        return _loaded[key]


class Kernels:
    """The functions of one C source with their ctypes signatures, loaded on first use (None where
    :func:`load` gives none or native kernels are turned off, checked at every call)."""

    def __init__(self, source: str | os.PathLike, signatures: dict, restypes: dict | None = None,
                 openmp: bool = False):
        self.source, self.signatures, self.restypes, self.openmp = Path(source), signatures, restypes or {}, openmp
        self._lib = None

    def get(self) -> ctypes.CDLL | None:
        if not enabled():
            return None
        if self._lib is None:
            lib = load(self.source, self.openmp)
            if lib is not None:
                for name, argtypes in self.signatures.items():
                    fn = getattr(lib, name)
                    fn.argtypes, fn.restype = argtypes, self.restypes.get(name)
            self._lib = lib if lib is not None else False
        return self._lib or None

    def status(self) -> str:
        return status(self.source, self.openmp)


def status(source: str | os.PathLike, openmp: bool = False) -> str:
    """One line: whether the kernels of ``source`` (built as :func:`load` builds them) are in use, and
    why not."""
    if not enabled():
        return "off (RLL_REPRO_NATIVE=0)"
    lib = load(source, openmp)
    why = _why.get((Path(source), bool(openmp)), "unknown")
    return f"built ({lib._name})" if lib is not None else f"not available: {why}"
