"""Pairwise distances and helpers shared by the two papers' pair losses (Gram-matrix form, by blocks).

Caffe runs the custom loss layers as sequential float32 C++. The ports do the elementwise pair
arithmetic in the input's dtype, so each float operation Caffe performs is the same correctly
rounded float32 operation here (a pair on a strict ``> 0`` boundary in Caffe is on it here too);
sums are accumulated in float64 and rounded once, and the (pairs) x (N, D) products run in float64.
The remaining difference to Caffe is its own summation-order noise (a few ulp).

Every per-pair quantity of these losses is symmetric in (i, j), so the pairs are visited once, as a
**staircase of row blocks** (:class:`PairBlocks`): block row ``r0:r1`` holds the pairs (i, j) with
i in r0:r1 and j in r0:N, i.e. its diagonal block (both orders, i == j included) and everything to
the right of it (each unordered pair once). The Gram products, the elementwise work and the memory
are about half of the full N x N matrices'; the gradient product still touches every (i, j) once
per endpoint (:meth:`PairBlocks.apply`).

Distances: ``d2 = |f_i|^2 + |f_j|^2 - 2 f_i.f_j`` in float64 (no N*N*D tensor), one value per pair
(the diagonal block is made bitwise symmetric). Pairs whose Gram value is within the Gram form's
rounding error of 0 (d2 < 1e-6 (|f_i|^2 + |f_j|^2)) are recomputed from ``f_i - f_j`` exactly as
Caffe does, so exact duplicates get d2 = 0 exactly, and their gradient terms use that difference too
(the unit direction's 1/(d + 1e-6) would amplify the Gram form's cancellation error). The number of
such pairs is data dependent; to stay free of host synchronisation (any device, ``meta``, fake
tensors) each block row recomputes at most ``NEAR_PER_ROW_BLOCK`` of them (a fixed-size
``nonzero_static``; a diagonal-block pair counts twice); pairs beyond that (a batch of many
duplicates) keep their float64 Gram value (absolute error ~1e-16 |f|^2, gradient term in Gram form).
"""
from __future__ import annotations

import torch

from rll_repro.layers import _pair_native

F64 = torch.float64
NEAR = 1e-6  # relative Gram d2 below which a pair is recomputed from its difference vector
MIN_BLOCK = 256  # rows per block row, at least (the diagonal blocks are computed in both orders)
ROW_BLOCKS = 8  # block rows, at most
NEAR_PER_ROW_BLOCK = 64  # recomputed (near-duplicate) pairs per block row, at most
SPARSE_DENSITY = 0.08  # nonzero coefficients per pair entry (times threads) below which the C product beats the GEMM


def row_blocks(n: int) -> list[tuple[int, int]]:
    """The block rows (r0, r1) of the staircase over n samples."""
    b = max(MIN_BLOCK, -(-n // ROW_BLOCKS))
    return [(r0, min(n, r0 + b)) for r0 in range(0, n, b)]


class BlockRow:
    """Pairs (i, j), i in r0:r1, j in r0:n (local index (i - r0, j - r0)); columns 0:k are the
    diagonal block (k = r1 - r0). ``d2``: (k, n - r0) squared distances in f's dtype; ``near_i``,
    ``near_j``: local indices of the recomputed pairs (padding entries are (0, 0), the diagonal);
    ``diff``: their f_i - f_j in float64."""

    def __init__(self, r0: int, r1: int, d2: torch.Tensor, near_i: torch.Tensor, near_j: torch.Tensor,
                 diff: torch.Tensor):
        self.r0, self.r1, self.k = r0, r1, r1 - r0
        self.d2, self.near_i, self.near_j, self.diff = d2, near_i, near_j, diff

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        """The (i, i) entries of a block-row-shaped tensor (a view)."""
        return x[:, :self.k].diagonal()

    def pair_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over both orders of the block row's pairs (diagonal block once, the rest twice), float64."""
        return x[:, :self.k].sum(dtype=F64) + 2.0 * x[:, self.k:].sum(dtype=F64)


class PairBlocks:
    """Caffe's per-pair squared distances of the rows of ``f`` (N x D), as the staircase of
    :class:`BlockRow` (``self.rows``)."""

    def __init__(self, f: torch.Tensor, native: bool = False):
        n, dim = f.shape
        self.n, self.native = n, native
        if native:  # the C passes read rows in place
            f = f.contiguous()
        f64 = f.to(F64)
        self.f64 = f64
        if native:  # the same steps in one pass each (pair_kernels.c)
            sq = _pair_native.squared_norms(f)
        else:
            sq = torch.bmm(f64.view(n, 1, dim), f64.view(n, dim, 1)).view(n)  # |f_i|^2 without an N x D temporary
        near_scale = (sq * NEAR).to(f.dtype)
        self.rows = []
        for r0, r1 in row_blocks(n):
            k = r1 - r0
            g = torch.addmm(sq[r0:r1, None], f64[r0:r1], f64[r0:].T, alpha=-2.0)
            if native:  # only the near pairs found (the count is known here)
                d2, idx = _pair_native.gram_distances(g, sq[r0:], near_scale[r0:], min(k, NEAR_PER_ROW_BLOCK))
                if not len(idx):
                    self.rows.append(BlockRow(r0, r1, d2, idx[:, 0], idx[:, 1], f64.new_empty(0, dim)))
                    continue
            else:
                g.add_(sq[None, r0:]).clamp_min_(0.0)
                diag = g[:, :k]
                diag.copy_(torch.minimum(diag, diag.T))  # one value per pair
                diag.diagonal().zero_()
                d2 = g.to(f.dtype)
                near = d2 < near_scale[r0:r1, None] + near_scale[None, r0:]
                near[:, :k].diagonal().zero_()
                idx = torch.nonzero_static(near, size=min(k, NEAR_PER_ROW_BLOCK), fill_value=0)
            ni, nj = idx[:, 0], idx[:, 1]
            diff = f64[ni + r0] - f64[nj + r0]  # exact; rounded to f's dtype it is Caffe's f_i - f_j
            d32 = diff.to(f.dtype)
            d2.index_put_((ni, nj), (d32 * d32).sum(1, dtype=F64).to(f.dtype))
            self.rows.append(BlockRow(r0, r1, d2, ni, nj, diff))

    def sparse_pays(self, nonzeros: int) -> bool:
        """Whether the C product over ``nonzeros`` active pair entries (of the block rows) beats the
        dense float64 GEMMs at this thread count."""
        entries = sum(blk.d2.numel() for blk in self.rows)
        return nonzeros * torch.get_num_threads() <= SPARSE_DENSITY * entries

    def apply(self, coefficients) -> torch.Tensor:
        """g_i = sum_j a_ij (f_i - f_j) in float64, (N, D). ``coefficients`` yields, per block row,
        ``(a_row, a_col)`` of the block row's shape: ``a_row[i, j]`` = a_ij (row i's coefficient of
        the pair) and ``a_col[i, j]`` = a_ji (row j's; only its columns k: are read; pass the same
        tensor twice when a is symmetric); they may be overwritten. Gram form rowsum(a) f_i - a f,
        except for the recomputed pairs, whose (large-coefficient) terms use the difference vector."""
        n, dim = self.f64.shape
        f64 = self.f64
        af = torch.empty(n, dim, dtype=F64, device=f64.device)  # sum_j a_ij f_j (minus the recomputed terms)
        rowsum = torch.zeros(n, dtype=F64, device=f64.device)
        for blk, (a_row, a_col) in zip(self.rows, coefficients):
            r0, r1, k = blk.r0, blk.r1, blk.k
            ni, nj = blk.near_i, blk.near_j
            m = a_row.to(F64)
            m.diagonal().zero_()  # (i, i): no pair (its Gram-form term would be rounding noise)
            c_row = m[ni, nj]
            m[ni, nj] = 0.0  # padding entries (0, 0) are the diagonal
            rowsum[r0:r1] += m.sum(1)
            if r0 == 0:
                torch.mm(m, f64, out=af[:r1])
            else:
                af[r0:r1].addmm_(m, f64[r0:])
            c_col = None
            if r1 < n:
                if a_col is not a_row:
                    m = a_col.to(F64)
                    c_col = m[ni, nj]
                    m[ni, nj] = 0.0
                rowsum[r1:] += m[:, k:].sum(0)
                if r0 == 0:
                    torch.mm(m[:, k:].T, f64[:r1], out=af[r1:])
                else:
                    af[r1:].addmm_(m[:, k:].T, f64[r0:r1])
            self._add_near_terms(blk, af, c_row, c_row if c_col is None else c_col)
        return self._combine(rowsum, af)

    def apply_sparse(self, kernel) -> torch.Tensor:
        """:meth:`apply` where the C pass adds each block row's terms itself, over its nonzero
        coefficients only: ``kernel(number, blk, f, af, rowsum)`` (the block row's position, the
        block row, then f, af and rowsum from row r0 on) adds them and returns the near pairs' (a_row,
        a_col) for the difference-vector terms added here."""
        n, dim = self.f64.shape
        af = torch.zeros(n, dim, dtype=F64, device=self.f64.device)
        rowsum = torch.zeros(n, dtype=F64, device=self.f64.device)
        for number, blk in enumerate(self.rows):
            r0 = blk.r0
            c_row, c_col = kernel(number, blk, self.f64[r0:], af[r0:], rowsum[r0:])
            self._add_near_terms(blk, af, c_row, c_col)
        return self._combine(rowsum, af)

    def _add_near_terms(self, blk: BlockRow, af, c_row, c_col) -> None:
        """g_i += c (f_i - f_j) of the recomputed pairs, as -c (f_i - f_j) into af (and g_j for the
        pairs right of the diagonal block: those in it are in a_row in both orders)."""
        ni, nj = blk.near_i, blk.near_j
        if not len(ni):  # native blocks list only the near pairs found (none, usually)
            return
        af.index_add_(0, ni + blk.r0, blk.diff * -c_row[:, None])
        if blk.r1 < self.n:
            af.index_add_(0, nj + blk.r0, blk.diff * torch.where(nj >= blk.k, c_col, 0.0)[:, None])

    def _combine(self, rowsum, af) -> torch.Tensor:
        """g = f * rowsum - af (float64; native: rounded to float32 in the same pass)."""
        if self.native:
            return _pair_native.combine_gradient(self.f64, rowsum, af)
        return torch.mul(self.f64, rowsum[:, None]).sub_(af)


def sum64(x: torch.Tensor, dim=None, keepdim: bool = False, init: float = 0.0) -> torch.Tensor:
    """``init + sum(x)`` accumulated in float64 and rounded once to x's dtype (Caffe accumulates the
    same terms in float, starting from ``init``)."""
    total = x.sum(dtype=F64) if dim is None else x.sum(dim, keepdim=keepdim, dtype=F64)
    return (total + init).to(x.dtype)
