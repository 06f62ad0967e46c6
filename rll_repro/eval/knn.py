"""Blocked similarity search with MATLAB's ranking rules, in bounded memory.

The original test scripts (SPEC rll §5, osm_caa §6) L2-normalise features with ``x / sqrt(sum(x.^2))``
(no epsilon), take the similarity as the single-precision dot product, the distance as its negative,
set the self-distance to ``+inf`` and sort each row with MATLAB's ``sort(..., 'ascend')``, which is
*stable*: equal distances keep the lower index first. Everything here reproduces that order exactly
on the float32 similarities it computes, without ever holding the full n x n matrix: rows are
processed in blocks of ``block_rows`` (one ``block_rows x n`` float32 buffer, reused).

* :func:`first_hit_ranks` -- the rank of the first same-class item of every query (all Recall@K need).
  Query x gallery, per block: one matmul, a gather of the positives' similarities, one pass counting
  the items above and at-or-above them (cache-sized row chunks). Self-retrieval (SOP, CUB, Cars):
  each block of X·Xᵀ computed once and counted for its rows and its columns (symmetry).
* :func:`knn` -- the k nearest neighbours (blocked matmul + top-k), stable tie order.
* :func:`stable_order_desc` -- the full stable ranking of a few rows (re-id protocols).
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rll_repro.errors import DataError
from rll_repro.eval import counts, workers
from rll_repro.eval.symmetric import MIN_ROWS as SYMMETRIC_MIN_ROWS, symmetric_ranks

DEFAULT_BLOCK_ROWS = 2048  # 2048 x 60,502 float32 = 496 MB per block; fewer, larger matmuls


def l2_normalize(features: np.ndarray, what: str = "features") -> np.ndarray:
    """MATLAB's ``x / sqrt(sum(x.^2))`` per row in float32, no epsilon.

    A zero or non-finite row would become NaN in MATLAB and silently poison the ranking; here it
    is a :class:`DataError` naming the row.
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise DataError(f"{what}: expected a 2-D array (items x dims), got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{what}: row {row} has zero or non-finite norm ({int(bad.sum())} such rows); "
                        "cannot L2-normalise without epsilon")
    return x / norms[:, None]


def _torch():
    import torch

    return torch


def _labels(labels, n: int, what: str) -> np.ndarray:
    lab = np.asarray(labels).reshape(-1)
    if lab.shape[0] != n:
        raise DataError(f"{what}: {lab.shape[0]} labels for {n} feature rows")
    return lab


class _Positives:
    """Where each query's same-label gallery items are: gallery indices sorted by label."""

    def __init__(self, q_labels: np.ndarray, g_labels: np.ndarray):
        self.order = np.argsort(g_labels, kind="stable")
        sorted_labels = g_labels[self.order]
        self.start = np.searchsorted(sorted_labels, q_labels, side="left")
        self.counts = np.searchsorted(sorted_labels, q_labels, side="right") - self.start

    def table(self, rows: slice) -> np.ndarray:
        """(rows x max count) gallery indices of each query's positives, ascending, padded with -1."""
        start, counts = self.start[rows], self.counts[rows]
        width = max(int(counts.max(initial=0)), 1)
        offsets = np.arange(width)
        valid = offsets[None, :] < counts[:, None]
        if not len(self.order):
            return np.full((len(start), width), -1, dtype=np.int64)
        take = np.minimum(start[:, None] + offsets[None, :], len(self.order) - 1)
        return np.where(valid, self.order[take], -1).astype(np.int64)


SPARSE_POSITIVES_MAX = 256  # above this many same-label items per query, use a dense label mask


def _best_positive(sn, rows, start, positives, ql, gl, exclude_self):
    """(similarity, lowest index, how many tie at it) of each block row's most similar same-label item."""
    b = sn.shape[0]
    big = np.iinfo(np.int64).max
    if int(positives.counts[start:start + b].max(initial=0)) <= SPARSE_POSITIVES_MAX:
        pos = positives.table(slice(start, start + b))
        if exclude_self:
            pos = np.where(pos == (start + rows)[:, None], -1, pos)
        found = counts.best_positive(sn, pos, _torch().get_num_threads())
        if found is not None:  # the same in one C pass
            return found
        valid = pos >= 0
        pos_sim = np.where(valid, sn[rows[:, None], np.maximum(pos, 0)], -np.inf)
        best = pos_sim.max(axis=1)
        at_best = valid & (pos_sim == best[:, None])
        return best, np.where(at_best, pos, big).min(axis=1), at_best.sum(axis=1)
    same = gl[None, :] == ql[start:start + b, None]  # few large classes: one dense pass instead
    if exclude_self:
        same[rows, start + rows] = False
    masked = np.where(same, sn, -np.inf)
    best = masked.max(axis=1)
    at_best = same & (masked == best[:, None])
    p = np.where(at_best.any(axis=1), at_best.argmax(axis=1), big)
    return best, p, at_best.sum(axis=1)


def first_hit_ranks(query: np.ndarray, q_labels, gallery: np.ndarray | None = None, g_labels=None,
                    *, exclude_self: bool | None = None, block_rows: int = DEFAULT_BLOCK_ROWS,
                    normalized: bool = False, progress=None, symmetric: bool | None = None) -> np.ndarray:
    """0-based rank of the first gallery item sharing the query's label, in MATLAB's stable order.

    ``gallery=None`` means query == gallery (SOP, CUB, Cars): the query itself is put last (distance
    +inf), as the original scripts do; it then counts as a same-class hit only if K reaches the last
    position. Queries without any same-class item get rank ``len(gallery)`` (never a hit).
    Rank of the best positive p of row q = #{j: s_j > s_p} + #{j < p: s_j == s_p}: exactly its position
    under a stable descending sort of that row's float32 similarities.

    Self-retrieval with ``exclude_self`` takes the symmetric path (:func:`.symmetric.symmetric_ranks`: each
    block of X·Xᵀ computed once, for its rows and its columns) unless ``symmetric=False``.
    """
    torch = _torch()
    same = gallery is None
    if exclude_self is None:
        exclude_self = same
    Q = query if normalized else l2_normalize(query, "query features")
    G = Q if same else (gallery if normalized else l2_normalize(gallery, "gallery features"))
    if Q.shape[1] != G.shape[1]:
        raise DataError(f"query features have {Q.shape[1]} dims but gallery features {G.shape[1]}")
    nq, ng = Q.shape[0], G.shape[0]
    ql = _labels(q_labels, nq, "query labels")
    gl = ql if same else _labels(g_labels, ng, "gallery labels")
    if exclude_self and nq != ng:
        raise DataError("exclude_self needs query and gallery to be the same items")
    if same and exclude_self and symmetric is not False and nq >= SYMMETRIC_MIN_ROWS:
        return symmetric_ranks(torch, Q, ql, block_rows, progress)
    positives = _Positives(ql, gl)
    Qt, Gt = torch.from_numpy(np.ascontiguousarray(Q)), torch.from_numpy(np.ascontiguousarray(G))
    ranks = np.empty(nq, dtype=np.int64)
    block_rows = max(1, min(block_rows, nq))
    sim = torch.empty(block_rows, ng, dtype=torch.float32)
    # the counts: one C pass per block on torch's threads, else numpy on a pool (one mask buffer each)
    n_workers = 0 if counts.native_rows() else workers.worker_count(block_rows)
    masks = [counts.mask_buffer(COUNT_CHUNK_ROWS, ng) for _ in range(n_workers)]
    with ThreadPoolExecutor(n_workers) if n_workers else contextlib.nullcontext() as pool:
        for start in range(0, nq, block_rows):
            stop = min(start + block_rows, nq)
            ranks[start:stop] = _rank_block(Qt, Gt, sim, pool, masks, positives, ql, gl, exclude_self, start, stop)
            if progress is not None:
                progress.update(stop - start)
    return ranks


COUNT_CHUNK_ROWS = 32  # rows compared at a time: their similarities stay in cache for both compares


def _similarity_block(Qt, Gt, sim, start: int, stop: int, exclude_self: bool):
    """Rows ``start:stop`` of Q·Gᵀ computed into the reused buffer ``sim``; with ``exclude_self`` the
    query itself scores -inf (MATLAB's test scripts set Dist(i,i) = +inf, ranking self last)."""
    s = sim[: stop - start]
    _torch().mm(Qt[start:stop], Gt.T, out=s)
    if exclude_self:
        rows = _torch().arange(stop - start)
        s[rows, start + rows] = float("-inf")
    return s


def _rank_block(Qt, Gt, sim, pool, masks, positives, ql, gl, exclude_self, start: int, stop: int) -> np.ndarray:
    """First-hit ranks of query rows start:stop (:func:`first_hit_ranks`): one product with torch's
    threads into ``sim``, then the counts: in C on torch's threads (``pool`` None), or split over the
    pool's threads (one mask buffer each)."""
    ng = Gt.shape[0]
    b = stop - start
    sn = _similarity_block(Qt, Gt, sim, start, stop, exclude_self).numpy()
    rows = np.arange(b)
    # best positive: highest similarity, lowest gallery index among equals
    best, p, n_tied = _best_positive(sn, rows, start, positives, ql, gl, exclude_self)
    has = np.isfinite(best)
    thr = np.where(has, best, np.inf).astype(np.float32)[:, None]
    # rank = #(strictly greater) + #(ties of lower index); only the best positive and positives
    # tied with it at or above s_p (p is the lowest index among them) leave the second term 0
    if pool is None:  # one C pass over the block on torch's own OpenMP threads
        above, at_or_above = counts.rows_above(sn, thr, None, _torch().get_num_threads())
    else:
        above, at_or_above = np.empty(b, dtype=np.int64), np.empty(b, dtype=np.int64)
        edges = np.linspace(0, b, min(len(masks), b) + 1).astype(np.int64)

        def count(i: int) -> None:  # numpy releases the GIL: the row ranges run in parallel
            for c in range(int(edges[i]), int(edges[i + 1]), COUNT_CHUNK_ROWS):
                e = min(c + COUNT_CHUNK_ROWS, int(edges[i + 1]))
                above[c:e], at_or_above[c:e] = counts.rows_above(sn[c:e], thr[c:e], masks[i])

        list(pool.map(count, range(len(edges) - 1)))
    rank = np.where(has, above, 0)
    tied = np.flatnonzero(has & (at_or_above - above > n_tied))
    if tied.size:
        eq = (sn[tied] == thr[tied]) & (np.arange(ng)[None, :] < p[tied, None])
        rank[tied] += eq.sum(axis=1)
    # no positive: with exclude_self, self sits last (position ng-1) and is same-class
    return np.where(has, rank, ng - 1 if exclude_self else ng)


def recall_from_ranks(ranks: np.ndarray, ks, n_gallery: int) -> dict[str, float]:
    """Recall@K in percent = 100 * #(first hit within the K nearest) / #queries (every query counts)."""
    out = {}
    for k in ks:
        if k > n_gallery:
            raise DataError(f"Recall@{k} needs at least {k} gallery items per query, have {n_gallery}")
        out[f"R@{k}"] = 100.0 * float(np.count_nonzero(ranks < k)) / len(ranks) if len(ranks) else float("nan")
    return out


def knn(query: np.ndarray, k: int, gallery: np.ndarray | None = None, *, exclude_self: bool | None = None,
        block_rows: int = DEFAULT_BLOCK_ROWS, normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar gallery items of every query -> (similarities, indices), both (nq, k).

    Order is MATLAB's stable ascending sort of the distance -similarity: descending similarity, ties
    by lower index. ``torch.topk`` picks ties arbitrarily, so the k+1-th value is fetched too; rows whose
    k-th and k+1-th values tie are re-ranked exactly with a stable sort, and every row's top k is put in
    (value desc, index asc) order. With ``gallery=None`` the query itself is excluded (ranked last).
    """
    torch = _torch()
    same = gallery is None
    if exclude_self is None:
        exclude_self = same
    Q = query if normalized else l2_normalize(query, "query features")
    G = Q if same else (gallery if normalized else l2_normalize(gallery, "gallery features"))
    nq, ng = Q.shape[0], G.shape[0]
    if Q.shape[1] != G.shape[1]:
        raise DataError(f"query features have {Q.shape[1]} dims but gallery features {G.shape[1]}")
    if not 1 <= k <= ng:
        raise DataError(f"k={k} is outside 1..{ng} (gallery size)")
    Qt, Gt = torch.from_numpy(np.ascontiguousarray(Q)), torch.from_numpy(np.ascontiguousarray(G))
    out_v = np.empty((nq, k), dtype=np.float32)
    out_i = np.empty((nq, k), dtype=np.int64)
    block_rows = max(1, min(block_rows, nq))
    sim = torch.empty(block_rows, ng, dtype=torch.float32)
    kk = min(k + 1, ng)
    for start in range(0, nq, block_rows):
        stop = min(start + block_rows, nq)
        s = _similarity_block(Qt, Gt, sim, start, stop, exclude_self)
        v, i = torch.topk(s, kk, dim=1, largest=True, sorted=True)
        v, i = v.numpy(), i.numpy()
        if kk > k:
            boundary = v[:, k - 1] == v[:, k]
            if boundary.any():
                t = np.flatnonzero(boundary)
                full = s.numpy()[t]
                order = np.argsort(-full, axis=1, kind="stable")[:, :kk]
                i[t] = order
                v[t] = np.take_along_axis(full, order, axis=1)
        v, i = v[:, :k], i[:, :k]
        # (value desc, index asc) inside the top k: topk already sorts by value; only rows with
        # equal neighbours need their indices put in order
        tie_rows = np.flatnonzero((v[:, 1:] == v[:, :-1]).any(axis=1)) if k > 1 else np.empty(0, np.int64)
        if tie_rows.size:
            order = _lex_desc(v[tie_rows], i[tie_rows])
            v[tie_rows] = np.take_along_axis(v[tie_rows], order, axis=1)
            i[tie_rows] = np.take_along_axis(i[tie_rows], order, axis=1)
        out_v[start:stop] = v
        out_i[start:stop] = i
    return out_v, out_i


def _lex_desc(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Per-row order sorting by value descending, then index ascending."""
    first = np.argsort(indices, axis=1, kind="stable")
    v1 = np.take_along_axis(values, first, axis=1)
    second = np.argsort(-v1, axis=1, kind="stable")
    return np.take_along_axis(first, second, axis=1)


def stable_order_desc(scores: np.ndarray) -> np.ndarray:
    """Row-wise MATLAB ``sort(-scores, 'ascend')`` / ``sort(scores, 'descend')`` indices (stable)."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")


def stable_order_asc(distances: np.ndarray) -> np.ndarray:
    """Row-wise MATLAB ``sort(distances, 'ascend')`` indices (stable; NaN last like MATLAB)."""
    return np.argsort(np.asarray(distances), axis=-1, kind="stable")
