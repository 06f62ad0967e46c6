"""The pair losses' per-pair passes in C (pair_kernels.c, built by :mod:`rll_repro.native`) for float32
CPU tensors; the layers fall back to their PyTorch passes elsewhere (GPU, meta and fake tensors,
float64, no compiler, ``RLL_REPRO_NATIVE=0``). Both compute the same float32 operations in the same
order (see pair_kernels.c); this module only checks layouts and passes pointers, and the thread
count (each pass splits its rows into chunks fixed by the block's size and runs them on torch's
OpenMP threads: the same results for every thread count)."""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from rll_repro import native

SOURCE = Path(__file__).with_name("pair_kernels.c")
CPU = torch.device("cpu")  # explicit: a user's torch.set_default_device must not move these buffers
_i64, _f32, _f64, _int, _ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "rll_weights": [_i64, _i64, _ptr, _ptr, _f32, _f32, _f32, _f32, _f32, _f32, _int, _f32, _f32,
                    _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _int],
    "rll_coefficients": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _f32, _int, _ptr, _ptr, _int],
    "osm_terms": [_i64, _i64, _ptr, _ptr, _ptr, _f32, _f32, _f32, _f64, _ptr, _ptr, _int],
    "osm_coefficients": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _f32, _f32, _f32, _f64, _f64, _ptr, _int],
    "squared_norms": [_i64, _i64, _ptr, _ptr, _int],
    "gram_distances": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _int],
    "combine_gradient": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _int],
    "l2_normalize_forward": [_i64, _i64, _ptr, _f64, _ptr, _ptr, _int],
    "l2_normalize_backward": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _int],
    "rll_sparse_gradient": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _f32, _int, _int, _i64, _ptr, _ptr,
                            _ptr, _i64, _ptr, _ptr, _ptr, _int],
    "osm_sparse_gradient": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _f32, _f32, _f32, _f64, _f64, _int, _i64, _ptr,
                            _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _int],
}
_KERNELS = native.Kernels(SOURCE, _SIGNATURES, {"gram_distances": _i64, "rll_weights": _i64, "osm_terms": _i64},
                          openmp=True)
_kernels = _KERNELS.get  # the loaded kernels, or None (not built here, or RLL_REPRO_NATIVE=0)


def status() -> str:
    """Whether the pair kernels are in use here (one line, with the reason when not)."""
    return _KERNELS.status()


def usable(emb: torch.Tensor) -> bool:
    """Whether the C passes run for these embeddings: a real float32 CPU tensor and the kernels built."""
    return native.plain_cpu_float32(emb) and _kernels() is not None


def class_ids(labels: torch.Tensor) -> torch.Tensor | None:
    """int64 ids with equal ids exactly where ``labels`` compare equal (torch's ==), or None where that
    cannot be kept (floating labels holding NaN, which equal nothing)."""
    y = labels.reshape(-1)
    if not y.is_floating_point():
        return y.to(torch.int64).contiguous()
    if bool(torch.isnan(y).any()):
        return None
    return torch.unique(y, return_inverse=True)[1].to(torch.int64).contiguous()


_threads = native.threads


def _allocated(result: int) -> int:
    """A pass's count, or MemoryError where its chunk buffers could not be allocated (-1)."""
    if result < 0:
        raise MemoryError("pair kernels: no memory for the per-chunk accumulators")
    return result


def _p(t: torch.Tensor | None):
    return native.pointer(t, "pair kernels")


def rll_weights(d2, y, pb, nb, tp, tn, bp, bn, value_bounds, row_all, row_pos, col_all, col_pos, total):
    """Pass 1 of one block row (pair_kernels.c ``rll_weights``): (w float32 of d2's shape, its nonzero
    count). ``value_bounds`` is None where the value's thresholds are the weights' ones."""
    k, m = d2.shape
    w = torch.empty_like(d2)
    same_bounds = value_bounds is None
    vlo, vhi = (0.0, 0.0) if same_bounds else value_bounds
    nonzeros = _kernels().rll_weights(k, m, _p(d2), _p(y), pb, nb, tp, tn, bp, bn, int(same_bounds), vlo, vhi,
                                      _p(w), _p(row_all), _p(row_pos), _p(col_all), _p(col_pos), _p(total), _threads())
    return w, _allocated(nonzeros)


def rll_coefficients(d2, w, y, sp, sn, share, lam: float, unit: bool, with_columns: bool):
    """Pass 2 (``rll_coefficients``): (a_row, a_col) in float64; a_col is None without columns."""
    k, m = d2.shape
    a_row = torch.empty(k, m, dtype=torch.float64, device=CPU)
    a_col = torch.empty(k, m, dtype=torch.float64, device=CPU) if with_columns else None
    _kernels().rll_coefficients(k, m, _p(d2), _p(w), _p(y), _p(sp), _p(sn), _p(share), lam, int(unit),
                                _p(a_row), _p(a_col), _threads())
    return a_row, a_col


def _near_outputs(near):
    count = near.shape[0]  # zeroed: each side writes only its own pairs' entries
    return count, *(torch.zeros(count, dtype=torch.float64, device=CPU) for _ in range(2))


def rll_sparse_gradient(d2, w, y, sp, sn, share, lam: float, unit: bool, columns: bool, f, af, rowsum, near):
    """Pass 2 fused with the product over the nonzero coefficients (``rll_sparse_gradient``); f, af,
    rowsum from the block row's first row on; returns the near pairs' (a_row, a_col)."""
    k, m = d2.shape
    count, near_row, near_col = _near_outputs(near)
    _kernels().rll_sparse_gradient(k, m, _p(d2), _p(w), _p(y), _p(sp), _p(sn), _p(share), lam, int(unit),
                                   int(columns), f.shape[1], _p(f), _p(af), _p(rowsum), count, _p(near),
                                   _p(near_row), _p(near_col), _threads())
    return near_row, near_col


def osm_terms(d2, y, s, margin, mean, sigma, inv_divider, sums):
    """Pass 1 of OSM+CAA (``osm_terms``): (raw float32, its nonzero count); adds to ``sums`` (3 float64)."""
    k, m = d2.shape
    raw = torch.empty_like(d2)
    nonzeros = _kernels().osm_terms(k, m, _p(d2), _p(y), _p(s), margin, mean, sigma, inv_divider, _p(raw), _p(sums),
                                    _threads())
    return raw, _allocated(nonzeros)


def osm_coefficients(d2, raw, y, s, margin, alpha, eps_neg, twice_pos, twice_neg):
    """Pass 2 of OSM+CAA (``osm_coefficients``): the symmetric a (float64)."""
    k, m = d2.shape
    a = torch.empty(k, m, dtype=torch.float64, device=CPU)
    _kernels().osm_coefficients(k, m, _p(d2), _p(raw), _p(y), _p(s), margin, alpha, eps_neg, twice_pos,
                                twice_neg, _p(a), _threads())
    return a


def osm_sparse_gradient(d2, raw, y, s, margin, alpha, eps_neg, twice_pos, twice_neg, columns: bool, f, af,
                        rowsum, near):
    """OSM's pass 2 fused with the sparse product (``osm_sparse_gradient``), as rll_sparse_gradient."""
    k, m = d2.shape
    count, near_row, near_col = _near_outputs(near)
    _kernels().osm_sparse_gradient(k, m, _p(d2), _p(raw), _p(y), _p(s), margin, alpha, eps_neg, twice_pos,
                                   twice_neg, int(columns), f.shape[1], _p(f), _p(af), _p(rowsum), count,
                                   _p(near), _p(near_row), _p(near_col), _threads())
    return near_row, near_col


def squared_norms(f):
    """|f_i|^2 (float64) of float32 rows (``squared_norms``)."""
    f = f.contiguous()
    out = torch.empty(f.shape[0], dtype=torch.float64, device=CPU)
    _kernels().squared_norms(f.shape[0], f.shape[1], _p(f), _p(out), _threads())
    return out


def gram_distances(g, sq, near_scale, cap: int):
    """(d2 float32, the near pairs found: (count <= cap, 2) int64) of a Gram block (``gram_distances``)."""
    k, m = g.shape
    d2 = torch.empty(k, m, dtype=torch.float32, device=CPU)
    near = torch.empty(cap, 2, dtype=torch.int64, device=CPU)
    found = _kernels().gram_distances(k, m, _p(g), _p(sq), _p(near_scale), _p(d2), cap, _p(near), _threads())
    return d2, near[:_allocated(found)]


def combine_gradient(f64, rowsum, af):
    """float32 f * rowsum - af (``combine_gradient``)."""
    n, dim = f64.shape
    out = torch.empty(n, dim, dtype=torch.float32, device=CPU)
    _kernels().combine_gradient(n, dim, _p(f64), _p(rowsum), _p(af), _p(out), _threads())
    return out


def l2_normalize_forward(x2, eps: float):
    """(y, scale (n, 1)) of Caffe's L2 Normalization of the float32 rows of ``x2``."""
    n, dim = x2.shape
    x2 = x2.contiguous()
    y = torch.empty_like(x2)
    scale = torch.empty(n, 1, dtype=torch.float32, device=CPU)
    _kernels().l2_normalize_forward(n, dim, _p(x2), eps, _p(y), _p(scale), _threads())
    return y, scale


def l2_normalize_backward(y2, g2, scale):
    """Caffe's L2 Normalization backward of float32 rows (``l2_normalize_backward``)."""
    n, dim = y2.shape
    g2 = g2.contiguous()
    out = torch.empty_like(g2)
    _kernels().l2_normalize_backward(n, dim, _p(y2.contiguous()), _p(g2), _p(scale), _p(out), _threads())
    return out
