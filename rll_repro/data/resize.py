"""MATLAB ``imresize`` (Image Processing Toolbox), re-implemented from its documented algorithm.

``imresize(image, (rows, cols))`` matches MATLAB's default call ``imresize(A, [rows cols])``:

* **bicubic kernel** with a = -0.5 (Keys): ``1.5|x|^3 - 2.5|x|^2 + 1`` on ``|x| <= 1`` and
  ``-0.5|x|^3 + 2.5|x|^2 - 4|x| + 2`` on ``1 < |x| <= 2``; kernel width 4.
* **scale per dimension** ``out/in`` when both sizes are given; with one size ``None`` (MATLAB's
  ``NaN``) both dimensions use the known ratio and the other size is ``ceil(scale * in)``.
* **antialiasing when shrinking** (scale < 1): the kernel becomes ``scale * k(scale * x)`` and its
  width ``4 / scale``.
* **MATLAB's contributions()**: output pixel ``x`` (1-based) maps to ``u = x/scale + 0.5(1 - 1/scale)``;
  taps ``left = floor(u - width/2)`` … ``left + ceil(width) + 1``; weights normalised to sum 1 per
  output pixel; out-of-range taps are **mirrored** through ``aux = [1..n, n..1]`` with
  ``mod(index - 1, 2n)`` (edge pixels repeated, not reflected about them); all-zero tap columns
  removed. (Releases before the implicit-expansion rewrite of imresize.m clamped the indices
  instead, ``min(max(1, idx), n)``; ``boundary="clamp"`` gives that variant.)
* **dimension order**: the dimension with the smaller scale is resized first (MATLAB
  ``sort(scale)``; rows first on ties).
* **no clamping**: float output may leave [0, 255]. Each 1-D pass accumulates in float64 over
  the taps in MATLAB's order and is rounded once to the working precision (float32 for
  uint8/float32 input, as MATLAB's ``imresize(single(...))`` keeps class single between passes;
  float64 input stays float64). MATLAB's mex accumulation precision is not documented, so the
  last float32 bit may differ from MATLAB (at most ~1 ulp per pass).

uint8 input is converted to float32 first (the original scripts call ``single(imread(...))``
before resizing), so the result is never rounded to integers.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from rll_repro.errors import DataError


def cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's bicubic kernel (a = -0.5), float64."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))


def triangle(x: np.ndarray) -> np.ndarray:
    """MATLAB's bilinear kernel."""
    return (x + 1) * ((-1 <= x) & (x < 0)) + (1 - x) * ((0 <= x) & (x <= 1))


_KERNELS = {"bicubic": (cubic, 4.0), "cubic": (cubic, 4.0), "bilinear": (triangle, 2.0), "linear": (triangle, 2.0)}


@functools.lru_cache(maxsize=256)
def contributions(in_length: int, out_length: int, scale: float, method: str = "bicubic",
                  antialiasing: bool = True, boundary: str = "mirror") -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions()``: (weights float64 [out, P], 0-based input indices int64 [out, P])."""
    kernel, width = _KERNELS[method]
    if scale < 1 and antialiasing:
        def h(x):
            return scale * kernel(scale * x)

        width = width / scale
    else:
        h = kernel
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = h(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    indices = indices.astype(np.int64)
    if boundary == "clamp":
        indices = np.clip(indices, 1, in_length)
    else:
        aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
        indices = aux[np.mod(indices - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    weights, indices = weights[:, keep], indices[:, keep] - 1
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices


@functools.lru_cache(maxsize=256)
def weight_matrix(in_length: int, out_length: int, scale: float, method: str = "bicubic",
                  antialiasing: bool = True, boundary: str = "mirror"):
    """The pass as a sparse ``out x in`` float64 CSR matrix, taps stored in MATLAB's order
    (repeated mirrored indices are kept as separate entries and summed in that order)."""
    import scipy.sparse

    weights, indices = contributions(in_length, out_length, scale, method, antialiasing, boundary)
    taps = weights.shape[1]
    return scipy.sparse.csr_matrix(
        (weights.ravel(), indices.ravel(), np.arange(0, weights.size + 1, taps)),
        shape=(out_length, in_length),
    )


def resize_along(image: np.ndarray, axis: int, matrix, out_dtype) -> np.ndarray:
    """One 1-D pass along ``axis``: ``out[i] = sum_p w[i, p] * image[idx[i, p]]``, accumulated in float64."""
    moved = np.moveaxis(image, axis, 0)
    rest = moved.shape[1:]
    rows = np.ascontiguousarray(moved, dtype=np.float64).reshape(moved.shape[0], -1)  # one copy
    out = (matrix @ rows).astype(out_dtype, copy=False).reshape((matrix.shape[0],) + rest)
    return np.moveaxis(out, 0, axis)


def output_size_and_scale(in_size: tuple[int, int], output_size=None, scale=None):
    """MATLAB's size/scale rules: returns ((rows, cols), (scale_rows, scale_cols))."""
    if scale is not None:
        if np.isscalar(scale):
            scale = (float(scale), float(scale))
        scale = tuple(float(s) for s in scale)
        size = tuple(int(math.ceil(s * n)) for s, n in zip(scale, in_size))
        return size, scale
    if output_size is None or len(output_size) != 2:
        raise DataError("imresize: give output_size=(rows, cols) or scale")
    rows, cols = output_size
    if rows is None and cols is None:
        raise DataError("imresize: output_size (None, None) has no known dimension")
    if rows is None or cols is None:
        known = 0 if rows is not None else 1
        s = float(output_size[known]) / in_size[known]
        size = [0, 0]
        size[known] = int(output_size[known])
        size[1 - known] = int(math.ceil(s * in_size[1 - known]))
        return tuple(size), (s, s)
    return (int(rows), int(cols)), (rows / in_size[0], cols / in_size[1])


def imresize(image: np.ndarray, output_size=None, *, scale=None, method: str = "bicubic",
             antialiasing: bool = True, boundary: str = "mirror") -> np.ndarray:
    """MATLAB ``imresize(image, [rows cols])`` for HxW or HxWxC numpy input; float output (see module doc)."""
    image = np.asarray(image)
    if image.ndim < 2:
        raise DataError(f"imresize: expected an HxW or HxWxC image, got shape {image.shape}")
    if boundary not in ("mirror", "clamp"):
        raise DataError(f"imresize: boundary must be 'mirror' or 'clamp', not {boundary!r}")
    if method not in _KERNELS:
        raise DataError(f"imresize: unknown method {method!r} (bicubic or bilinear)")
    work = np.float64 if image.dtype == np.float64 else np.float32
    image = image.astype(work, copy=False)
    in_size = image.shape[:2]
    if min(in_size) < 1:
        raise DataError(f"imresize: empty image of shape {image.shape}")
    size, scales = output_size_and_scale(in_size, output_size, scale)
    if min(size) < 1:
        raise DataError(f"imresize: output size {size} must be positive")
    order = sorted(range(2), key=lambda d: scales[d])  # stable: rows first on ties
    out = image
    for dim in order:
        if size[dim] == in_size[dim] and scales[dim] == 1.0:
            continue  # MATLAB's weights are exactly [0 0 1 0 0 0] here: the pass is an exact identity
        matrix = weight_matrix(in_size[dim], size[dim], scales[dim], method, antialiasing, boundary)
        out = resize_along(out, dim, matrix, work)
    return out if out is not image else image.copy()
