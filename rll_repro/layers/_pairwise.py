"""Pairwise distances and helpers shared by the two papers' pair losses (Gram-matrix form).

Caffe runs the custom loss layers as sequential float32 C++. The ports do the elementwise (N, N)
arithmetic in the input's dtype, so each float operation Caffe performs is the same correctly
rounded float32 operation here (a pair on a strict ``> 0`` boundary in Caffe is on it here too);
sums are accumulated in float64 and rounded once, and the two (N, N) x (N, D) products run in
float64. The remaining difference to Caffe is its own summation-order noise (a few ulp).

Distances: ``d2 = |f_i|^2 + |f_j|^2 - 2 f_i.f_j`` in float64 (no N*N*D tensor). Pairs whose Gram
value is within the Gram form's rounding error of 0 (d2 < 1e-6 (|f_i|^2 + |f_j|^2)) are recomputed
from ``f_i - f_j`` exactly as Caffe does (in chunks), so exact duplicates get d2 = 0 exactly, and
their gradient terms use that difference too (the unit direction's 1/(d + 1e-6) would amplify the
Gram form's cancellation error). Pathological batches (all rows equal) cost O(N^2 D) time there,
still in chunks of bounded memory.
"""
from __future__ import annotations

import torch

F64 = torch.float64
NEAR = 1e-6  # relative Gram d2 below which a pair is recomputed from its difference vector
CHUNK = 4096  # pairs per chunk in that recomputation


class PairGeometry:
    """Caffe's per-pair squared distances of the rows of ``f`` (N x D) in Gram form.

    ``d2``: (N, N) tensor of ``f.dtype``, ``dot(f_i - f_j, f_i - f_j)`` (diagonal 0, symmetric);
    ``f64``: f as float64; ``near``: (i, j) index tensors of the pairs recomputed from their
    difference vector (None if there are none).
    """

    def __init__(self, f: torch.Tensor):
        f64 = f.to(F64)
        sq = (f64 * f64).sum(1)
        scale = sq[:, None] + sq[None, :]
        d2 = torch.addmm(scale, f64, f64.T, alpha=-2.0).clamp_min_(0.0)
        d2.fill_diagonal_(0.0)
        near = d2 < scale.mul_(NEAR)
        near.fill_diagonal_(False)
        self.near = None
        if bool(near.any()):
            near |= near.T.clone()  # the Gram matrix need not be bitwise symmetric
            self.near = near.nonzero(as_tuple=True)
            for a, b in self._chunks():
                diff = f[a] - f[b]
                d2[a, b] = (diff * diff).sum(1, dtype=F64)
        d2 = d2.to(f.dtype)
        self.d2 = torch.minimum(d2, d2.T)  # one distance per pair, as Caffe computes it once
        self.f64 = f64

    def _chunks(self):
        i, j = self.near
        for start in range(0, len(i), CHUNK):  # chunks of near pairs, not a loop over samples
            yield i[start:start + CHUNK], j[start:start + CHUNK]

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        """g_i = sum_j a_ij (f_i - f_j), in float64: Gram form (diag(rowsum a) - a) @ f, except for
        the near pairs, whose (large-coefficient) terms use the difference vector itself."""
        m = a.to(F64, copy=True).neg_()
        if self.near is not None:
            near_a = -m[self.near]
            m[self.near] = 0.0
        m.diagonal().sub_(m.sum(1))  # rowsum of a (diagonal of a is 0)
        g = m @ self.f64
        if self.near is not None:
            start = 0
            for i, j in self._chunks():
                coef = near_a[start:start + len(i), None]
                g.index_add_(0, i, coef * (self.f64[i] - self.f64[j]))
                start += len(i)
        return g


def labels_equal(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: y_i == y_j, exact float equality as in Caffe (integers compared exactly)."""
    y = labels.reshape(-1)
    return y[:, None] == y[None, :]


def sum64(x: torch.Tensor, dim=None, keepdim: bool = False, init: float = 0.0) -> torch.Tensor:
    """``init + sum(x)`` accumulated in float64 and rounded once to x's dtype (Caffe accumulates the
    same terms in float, starting from ``init``)."""
    total = x.sum(dtype=F64) if dim is None else x.sum(dim, keepdim=keepdim, dtype=F64)
    return (total + init).to(x.dtype)
