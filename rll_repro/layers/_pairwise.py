"""Float32 emulation and exact pairwise distances shared by the two papers' pair losses.

Caffe runs the custom loss layers as sequential float32 C++. The ports compute in float64 and round
to float32 (``Float32Rounding``) at the points where Caffe stores a float, so a pair on a strict
``> 0`` boundary in Caffe's float32 arithmetic is on it here too; the remaining difference is
Caffe's own summation noise (a few ulp). With float64 inputs nothing is rounded (Caffe with
``Dtype = double``).

Distances come from the Gram matrix (``|f_i|^2 + |f_j|^2 - 2 f_i.f_j`` in float64: no N*N*D tensor);
exact duplicates get distance 0 exactly, as Caffe's ``f_i - f_j`` does.
"""
from __future__ import annotations

import numpy as np
import torch

F64 = torch.float64


def rounder(dtype: torch.dtype):
    """``r(x)``: round a float64 tensor to float32 and back when emulating float32, else identity."""
    if dtype == torch.float32:
        return lambda x: x.to(torch.float32).to(F64)
    return lambda x: x


def as_float(value, dtype: torch.dtype) -> float:
    """A proto ``float`` field's value as the layer holds it (float32), widened to Python float."""
    return float(np.float32(value))


def duplicate_mask(f: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: rows i and j are bitwise-equal embeddings (incl. the diagonal)."""
    _, inverse = torch.unique(f, dim=0, return_inverse=True)
    return inverse[:, None] == inverse[None, :]


def pair_distances(f64: torch.Tensor, r) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d2, d, dup) for all ordered pairs of the rows of ``f64`` (float64, N x D).

    d2 is Caffe's ``dot(f_i - f_j, f_i - f_j)`` stored as float (``r``), d = float(sqrt(d2)), and
    ``dup`` marks exact duplicates (d2 = 0 exactly; their difference vector is 0).
    """
    sq = (f64 * f64).sum(1)
    d2 = torch.addmm(sq[:, None] + sq[None, :], f64, f64.T, alpha=-2.0).clamp_min_(0.0)
    dup = duplicate_mask(f64)
    d2 = r(d2.masked_fill_(dup, 0.0))
    return d2, r(torch.sqrt(d2)), dup


def apply_pair_coefficients(f64: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """g_i = sum_j a_ij (f_i - f_j) in Gram form: f_i * rowsum(a)_i - (a @ f)_i (float64)."""
    return f64 * a.sum(1, keepdim=True) - a @ f64


def labels_equal(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: y_i == y_j, exact float equality as in Caffe (integers compared exactly)."""
    y = labels.reshape(-1)
    if y.is_floating_point():
        y = y.to(F64)
    return y[:, None] == y[None, :]


def upper_pairs_mean(values: torch.Tensor) -> torch.Tensor:
    """Sum over the i < j pairs of an (N, N) float64 matrix divided by P = N(N-1)/2."""
    n = values.shape[0]
    p = n * (n - 1) // 2
    return torch.triu(values, diagonal=1).sum() / p
