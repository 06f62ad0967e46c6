"""MATLAB imresize: compared with a slow float64 transcription of MATLAB's documented algorithm."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rll_repro.data import imresize
from rll_repro.data.resize import contributions
from rll_repro.errors import DataError


# ---- independent float64 reference: one output pixel at a time, as imresize.m documents it ----
def _cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1
    if ax <= 2:
        return -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2
    return 0.0


def _mirror(j: int, n: int) -> int:
    """1-based index folded into 1..n with the edge pixel repeated (MATLAB's aux = [1:n, n:-1:1])."""
    while j < 1 or j > n:
        j = 1 - j if j < 1 else 2 * n + 1 - j
    return j


def _ref_1d(vec, out_len: int, scale: float, antialias: bool = True) -> list[float]:
    n = len(vec)
    shrink = scale < 1 and antialias
    width = 4 / scale if shrink else 4.0
    out = []
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = math.ceil(width) + 2
        weights, values = [], []
        for k in range(taps):
            j = left + k
            w = scale * _cubic(scale * (u - j)) if shrink else _cubic(u - j)
            weights.append(w)
            values.append(vec[_mirror(j, n) - 1])
        total = sum(weights)
        out.append(sum(w / total * v for w, v in zip(weights, values)))
    return out


def _ref_2d(img: np.ndarray, rows: int, cols: int, antialias: bool = True) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    s_r, s_c = rows / img.shape[0], cols / img.shape[1]
    out = np.empty((rows, cols, img.shape[2]))
    for ch in range(img.shape[2]):
        a = img[:, :, ch]
        if s_r <= s_c:  # smaller scale first (order does not change float64 results beyond rounding)
            a = np.array([_ref_1d(a[:, c], rows, s_r, antialias) for c in range(a.shape[1])]).T
            a = np.array([_ref_1d(a[r], cols, s_c, antialias) for r in range(rows)])
        else:
            a = np.array([_ref_1d(a[r], cols, s_c, antialias) for r in range(a.shape[0])])
            a = np.array([_ref_1d(a[:, c], rows, s_r, antialias) for c in range(cols)]).T
        out[:, :, ch] = a
    return out[:, :, 0] if squeeze else out


CASES = [((8, 8), (4, 4)), ((10, 7), (13, 5)), ((9, 11), (9, 11)), ((5, 6), (16, 3)), ((24, 17), (7, 29)),
         ((3, 3), (10, 10)), ((20, 20), (3, 2)), ((31, 27), (27, 31))]


@pytest.mark.parametrize("in_size,out_size", CASES)
def test_imresize_float64_matches_the_documented_algorithm(in_size, out_size):
    """float64 input: agreement to 1e-10 (only summation order differs)."""
    img = np.random.default_rng(sum(in_size) * 7 + sum(out_size)).uniform(0, 255, in_size)
    ours = imresize(img, out_size)
    ref = _ref_2d(img, *out_size)
    assert ours.dtype == np.float64 and ours.shape == out_size
    assert np.abs(ours - ref).max() < 1e-10


def test_imresize_color_uint8_gives_float32_close_to_the_float64_algorithm():
    """uint8 HxWx3 -> float32 (never rounded to integers); each pass rounds once to float32, so the
    result stays within 1e-4 (a few float32 ulps at 255) of the float64 algorithm."""
    img = np.random.default_rng(1).integers(0, 256, (23, 19, 3)).astype(np.uint8)
    ours = imresize(img, (17, 30))
    ref = _ref_2d(img, 17, 30)
    assert ours.dtype == np.float32 and ours.shape == (17, 30, 3)
    assert np.abs(ours - ref).max() < 1e-4


def test_imresize_without_antialiasing_uses_the_plain_kernel():
    img = np.random.default_rng(2).uniform(0, 1, (12, 12))
    assert np.abs(imresize(img, (5, 7), antialiasing=False) - _ref_2d(img, 5, 7, antialias=False)).max() < 1e-12
    assert np.abs(imresize(img, (5, 7)) - imresize(img, (5, 7), antialiasing=False)).max() > 1e-3


def test_antialiasing_widens_the_kernel_by_one_over_scale():
    """Shrinking 4x: width 16 -> ceil(16) + 2 = 18 taps before all-zero columns are removed."""
    w, idx = contributions(40, 10, 0.25)
    assert w.shape[1] >= 16 and np.allclose(w.sum(axis=1), 1.0)
    w1, _ = contributions(40, 10, 0.25, antialiasing=False)
    assert w1.shape[1] <= 6


def test_boundary_indices_are_mirrored_with_the_edge_repeated():
    """MATLAB's aux = [1:n, n:-1:1]: 1-based index 0 -> 1, -1 -> 2 (0-based 0 and 1)."""
    w, idx = contributions(6, 12, 2.0)
    # first output pixel: u = 0.25, taps left = floor(0.25 - 2) = -2 .. 3 -> -2,-1,0,1,2,3 (1-based)
    # mirrored -> 3,2,1,1,2,3; columns of all-zero weight are removed afterwards
    full = np.array([-2, -1, 0, 1, 2, 3])
    mirrored = np.array([_mirror(j, 6) for j in full]) - 1
    assert list(mirrored) == [2, 1, 0, 0, 1, 2]
    assert set(idx[0]) <= set(mirrored)


def test_no_clamping_overshoot_survives():
    """Upsampling a 0/255 step with the bicubic kernel overshoots; MATLAB keeps it (float output)."""
    img = np.zeros((4, 8), dtype=np.float32)
    img[:, 4:] = 255
    out = imresize(img, (4, 32))
    assert out.max() > 255 and out.min() < 0


def test_same_size_is_an_exact_identity():
    img = np.random.default_rng(3).uniform(-5, 300, (7, 9, 3)).astype(np.float32)
    assert np.array_equal(imresize(img, (7, 9)), img)


def test_one_unknown_size_uses_the_known_scale_and_ceil():
    """imresize(A, [256 NaN]): both dims use 256/rows; the other size is ceil(scale * cols)."""
    img = np.random.default_rng(4).uniform(0, 255, (10, 7))
    out = imresize(img, (16, None))
    assert out.shape == (16, math.ceil(16 / 10 * 7))
    assert np.abs(out - imresize(img, scale=1.6)).max() == 0


def test_bad_sizes_raise_data_error():
    with pytest.raises(DataError):
        imresize(np.zeros((4, 4)), (0, 3))
    with pytest.raises(DataError):
        imresize(np.zeros(4), (2, 2))


def test_second_opinion_bicubic_pytorch_port():
    """Second opinion only: the PyPI port ``bicubic_pytorch`` (MATLAB imresize in torch, float32
    coordinates and accumulation). Agreement within 5e-3 on 0..255 data: its float32 position
    arithmetic moves sample points by ~1e-5 px (the difference we see is that, not the algorithm)."""
    bp = pytest.importorskip("bicubic_pytorch")
    import torch

    rng = np.random.default_rng(5)
    for (h, w), (oh, ow) in [((8, 8), (4, 4)), ((37, 29), (17, 41)), ((256, 256), (227, 227)), ((30, 30), (7, 5))]:
        img = rng.uniform(0, 255, (h, w))
        theirs = bp.imresize(torch.from_numpy(img)[None, None], sizes=(oh, ow)).squeeze().double().numpy()
        assert np.abs(imresize(img, (oh, ow)) - theirs).max() < 5e-3


def test_clamp_boundary_variant_of_older_releases():
    """Older imresize.m clamped indices (replicating the edge) instead of mirroring; both offered."""
    img = np.random.default_rng(6).uniform(0, 255, (12, 10))
    mirror, clamp = imresize(img, (4, 3)), imresize(img, (4, 3), boundary="clamp")
    assert np.abs(mirror - clamp).max() > 1e-3  # antialiased taps reach 2+ pixels outside
    w, idx = contributions(12, 4, 1 / 3, boundary="clamp")
    assert idx.min() == 0 and idx.max() == 11 and np.allclose(w.sum(axis=1), 1)
