"""Allocation guard: refuse any array a file or net definition asks for beyond a size limit.

A corrupt header (an .npy shape, a caffemodel blob's dims, a net input's shape) can claim terabytes;
every reader checks the claimed size here before allocating, so the user gets a one-line error
naming the file or blob instead of an exhausted machine. The limit defaults to 16 GiB per array and
is raised (or lowered) with the environment variable ``RLL_REPRO_MAX_BLOB_BYTES`` (bytes, or with a
K/M/G/T suffix, powers of 1024).
"""
from __future__ import annotations

import math
import operator
import os
from typing import Iterable, Type

from rll_repro.errors import FormatError, RLLReproError

ENV_VAR = "RLL_REPRO_MAX_BLOB_BYTES"
DEFAULT_MAX_BLOB_BYTES = 16 << 30
# Caffe's Blob refuses more than kMaxBlobAxes = 32 axes (blob.hpp); so does every reader here.
MAX_BLOB_AXES = 32

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in _SUFFIXES and text[-1:] else ""
    number = text[: len(text) - len(unit)].strip()
    try:
        value = float(number) * _SUFFIXES[unit]
    except ValueError:
        raise RLLReproError(f"{ENV_VAR}={text!r}: not a byte count (e.g. 17179869184 or 16G)") from None
    if not math.isfinite(value) or value < 0:
        raise RLLReproError(f"{ENV_VAR}={text!r}: not a byte count (e.g. 17179869184 or 16G)")
    return int(value)


def max_blob_bytes() -> int:
    """The current per-array limit in bytes (read from the environment on every call)."""
    raw = os.environ.get(ENV_VAR)
    return DEFAULT_MAX_BLOB_BYTES if raw is None or not raw.strip() else _parse_bytes(raw)


# Kept for readers that want the default as a constant; the live value is max_blob_bytes().
MAX_BLOB_BYTES = DEFAULT_MAX_BLOB_BYTES


def _human(nbytes: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"


def check_shape(shape: Iterable, what: str, error: Type[RLLReproError] = FormatError) -> tuple:
    """``shape`` as a tuple of ints after checking it is a list of at most 32 non-negative integers
    (Caffe's Blob::Reshape rules); otherwise ``error`` naming ``what``."""
    dims = tuple(shape)
    if len(dims) > MAX_BLOB_AXES:
        raise error(f"{what}: {len(dims)} axes (Caffe's blobs have at most {MAX_BLOB_AXES})")
    out = []
    for dim in dims:
        try:
            dim = operator.index(dim)
        except TypeError:
            raise error(f"{what}: shape {dims} has a non-integer dimension") from None
        if dim < 0:
            raise error(f"{what}: shape {dims} has a negative dimension")
        out.append(dim)
    return tuple(out)


def check_allocation(shape: Iterable, itemsize: int, what: str,
                     error: Type[RLLReproError] = FormatError) -> int:
    """Number of elements of an array of ``shape`` with ``itemsize``-byte items, after refusing
    (``error`` naming ``what``) a shape that is not Caffe-valid or whose size exceeds the limit.
    Checked in exact integer arithmetic, so no product can overflow."""
    dims = check_shape(shape, what, error)
    count = math.prod(dims)
    nbytes = count * int(itemsize)
    limit = max_blob_bytes()
    if nbytes > limit:
        raise error(f"{what}: shape {dims} needs {_human(nbytes)}, over the {_human(limit)} limit "
                    f"per array (raise it with {ENV_VAR}=<bytes> if this is intended)")
    return count
