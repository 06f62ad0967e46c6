"""Recall@K on a torch device (a GPU), with the same MATLAB ranking rules as :mod:`rll_repro.eval.knn`.

Rank of the best positive p of query q = #{j: s_qj > s_qp} + #{j < p: s_qj == s_qp}: its position in
a stable descending sort of the row's float32 similarities (MATLAB's ``sort``). In self-retrieval the
query itself goes last (similarity -inf, the scripts' +inf distance), so it is a hit only at the last
position; a query without any same-label item gets rank ``len(gallery)``. Rows are processed in
blocks of ``block_rows`` (one block x gallery float32 buffer at a time), all on the features'
device, with no host read until the ranks are returned. On a CPU the numpy/threaded
:func:`rll_repro.eval.knn.first_hit_ranks` is faster; on a GPU the matmuls differ from the CPU's by
float32 rounding, which can reorder near-ties.
"""
from __future__ import annotations

import torch

from rll_repro.errors import DataError


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``x / sqrt(sum(x.^2))`` per row (no epsilon), in float32."""
    x = x.to(torch.float32)
    return x / torch.sqrt((x * x).sum(1, keepdim=True))


def first_hit_ranks(query: torch.Tensor, q_labels: torch.Tensor, gallery: torch.Tensor | None = None,
                    g_labels: torch.Tensor | None = None, *, block_rows: int = 2048,
                    normalized: bool = False) -> torch.Tensor:
    """0-based rank of each query's first same-label gallery item (int64 tensor on the device).
    ``gallery=None``: self-retrieval, the query itself excluded (put last)."""
    same = gallery is None
    Q = query if normalized else normalize_rows(query)
    G = Q if same else (gallery if normalized else normalize_rows(gallery))
    if Q.dim() != 2 or G.dim() != 2 or Q.shape[1] != G.shape[1]:
        raise DataError(f"features must be (items, dims) with equal dims, got {tuple(Q.shape)} and {tuple(G.shape)}")
    ql = q_labels.reshape(-1).to(Q.device)
    gl = ql if same else g_labels.reshape(-1).to(Q.device)
    nq, ng = Q.shape[0], G.shape[0]
    if ql.numel() != nq or gl.numel() != ng:
        raise DataError(f"{ql.numel()} query labels for {nq} queries, {gl.numel()} gallery labels for {ng} items")
    index = torch.arange(ng, device=Q.device)
    ranks = []
    for start in range(0, nq, block_rows):
        stop = min(start + block_rows, nq)
        s = Q[start:stop] @ G.T
        if same:
            rows = torch.arange(stop - start, device=Q.device)
            s[rows, start + rows] = float("-inf")
        positive = ql[start:stop, None] == gl[None, :]
        pos_sim = torch.where(positive, s, torch.full_like(s, float("-inf")))
        best = pos_sim.max(dim=1, keepdim=True).values
        at_best = positive & (pos_sim == best)
        first = torch.where(at_best, index, torch.full_like(index, ng)).min(dim=1, keepdim=True).values
        rank = (s > best).sum(1) + ((s == best) & (index < first)).sum(1)
        ranks.append(torch.where(at_best.any(1), rank, torch.full_like(rank, ng)))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64, device=Q.device)


def recall_at_k(features: torch.Tensor, labels: torch.Tensor, ks, *, gallery: torch.Tensor | None = None,
                g_labels: torch.Tensor | None = None, block_rows: int = 2048) -> dict[str, torch.Tensor]:
    """Recall@K in percent as 0-d tensors on the device (self-retrieval, or queries x ``gallery``)."""
    ranks = first_hit_ranks(features, labels, gallery, g_labels, block_rows=block_rows)
    n_gallery = (features if gallery is None else gallery).shape[0]
    out = {}
    for k in ks:
        if k > n_gallery:
            raise DataError(f"Recall@{k} needs at least {k} gallery items per query, have {n_gallery}")
        out[f"R@{k}"] = 100.0 * (ranks < k).to(torch.float64).mean()
    return out
