"""Freed host memory kept for reuse between training steps, as Caffe keeps its blobs.

Caffe allocates every blob once (SyncedMemory) and reuses it each iteration. PyTorch's CPU tensors
come from malloc, and glibc hands large freed blocks back to the kernel (blocks above the mmap
threshold are unmapped, a free heap top above the trim threshold is trimmed), so every step faults
its activations in again: on the SOP train net at batch 32, about 500,000 page faults (2 GB) a step,
a fifth of the CPU step on these machines (bench/bench_net.py prints the count). :func:`retain_freed_memory`
tells glibc's malloc to keep them: blocks up to 1 GiB come from the heap, and up to 2 GiB of free
heap top is kept. The process's resident size then stays at its peak (as Caffe's does) instead of
falling between steps; results are unaffected.

It is process-wide: the ``rll-repro`` command calls it at start, and a CPU solver when it is built;
library users running their own CPU loops may call it themselves. Elsewhere than glibc it does
nothing and returns False. ``RLL_REPRO_RETAIN_MEMORY=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30  # blocks up to this size come from the heap (and are kept when freed)
TRIM_THRESHOLD = 2**31 - 1  # free heap top kept before it is returned to the kernel (mallopt takes an int)
TOP_PAD = 64 << 20  # extra heap requested at a time

_applied: bool | None = None


def _glibc():
    """The C library when it is glibc (it has gnu_get_libc_version), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def retain_freed_memory() -> bool:
    """Keep freed host memory for reuse (module docstring); True when glibc took the settings.
    Idempotent: the settings are made once per process."""
    global _applied
    if _applied is None:
        libc = None if os.environ.get("RLL_REPRO_RETAIN_MEMORY", "1") == "0" else _glibc()
        _applied = bool(libc) and all(
            libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
            for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                 (M_TOP_PAD, TOP_PAD)))
    return _applied
