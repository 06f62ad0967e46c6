"""Pairwise distances and helpers shared by the two papers' pair losses (Gram-matrix form).

Caffe runs the custom loss layers as sequential float32 C++. The ports do the elementwise (N, N)
arithmetic in the input's dtype, so each float operation Caffe performs is the same correctly
rounded float32 operation here (a pair on a strict ``> 0`` boundary in Caffe is on it here too);
sums are accumulated in float64 and rounded once, and the two (N, N) x (N, D) products run in
float64. The remaining difference to Caffe is its own summation-order noise (a few ulp).

Distances: ``d2 = |f_i|^2 + |f_j|^2 - 2 f_i.f_j`` in float64 (no N*N*D tensor). Pairs whose Gram
value is within the Gram form's rounding error of 0 (d2 < 1e-6 (|f_i|^2 + |f_j|^2)) are recomputed
from ``f_i - f_j`` exactly as Caffe does (in chunks), so exact duplicates get d2 = 0 exactly.
"""
from __future__ import annotations

import torch

F64 = torch.float64
NEAR = 1e-6  # relative Gram d2 below which a pair is recomputed from its difference vector
CHUNK = 4096  # pairs per chunk in that recomputation


def pair_sq_distances(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d2, f64): Caffe's ``dot(f_i - f_j, f_i - f_j)`` for all ordered pairs of the rows of ``f``
    (N x D), as an (N, N) tensor of ``f.dtype`` (diagonal 0), and ``f`` as float64."""
    f64 = f.to(F64)
    sq = (f64 * f64).sum(1)
    scale = sq[:, None] + sq[None, :]
    d2 = torch.addmm(scale, f64, f64.T, alpha=-2.0).clamp_min_(0.0)
    d2.fill_diagonal_(0.0)
    near = d2 < NEAR * scale
    near |= near.T.clone()
    near.fill_diagonal_(False)
    if bool(near.any()):
        i, j = near.nonzero(as_tuple=True)
        for start in range(0, len(i), CHUNK):  # chunks of near pairs, not a loop over samples
            a, b = i[start:start + CHUNK], j[start:start + CHUNK]
            diff = f[a] - f[b]
            d2[a, b] = (diff * diff).sum(1, dtype=F64)
    return d2.to(f.dtype), f64


def apply_pair_coefficients(f64: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """g_i = sum_j a_ij (f_i - f_j) in Gram form: f_i * rowsum(a)_i - (a @ f)_i, in float64."""
    a64 = a.to(F64)
    return f64 * a64.sum(1, keepdim=True) - a64 @ f64


def labels_equal(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: y_i == y_j, exact float equality as in Caffe (integers compared exactly)."""
    y = labels.reshape(-1)
    return y[:, None] == y[None, :]


def sum64(x: torch.Tensor, dim=None, keepdim: bool = False, init: float = 0.0) -> torch.Tensor:
    """``init + sum(x)`` accumulated in float64 and rounded once to x's dtype (Caffe accumulates the
    same terms in float, starting from ``init``)."""
    total = x.sum(dtype=F64) if dim is None else x.sum(dim, keepdim=keepdim, dtype=F64)
    return (total + init).to(x.dtype)
