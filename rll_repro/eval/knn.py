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

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rll_repro.errors import DataError

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

    Self-retrieval with ``exclude_self`` takes the symmetric path (:func:`_symmetric_ranks`: each
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
        return _symmetric_ranks(Q, ql, block_rows, progress)
    positives = _Positives(ql, gl)
    Qt, Gt = torch.from_numpy(np.ascontiguousarray(Q)), torch.from_numpy(np.ascontiguousarray(G))
    ranks = np.empty(nq, dtype=np.int64)
    block_rows = max(1, min(block_rows, nq))
    sim = torch.empty(block_rows, ng, dtype=torch.float32)
    mask = np.empty((block_rows, ng), dtype=np.bool_)
    workers = max(1, min(torch.get_num_threads(), 8))
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        _rank_blocks(Qt, Gt, ranks, sim, mask, pool, workers, positives, ql, gl, exclude_self,
                     block_rows, progress)
    finally:
        if pool is not None:
            pool.shutdown()
    return ranks


SYMMETRIC_TILE_COLS = 8192  # columns per similarity tile of the symmetric path (b x 8192 float32)
SYMMETRIC_MIN_ROWS = 64  # rows (and columns) per product at least: tiny ones go to other BLAS kernels
BAND_ROWS = 512  # rows per product of pass 1 (few calls: small multi-threaded products suffer under load)


def _even_bounds(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """start:stop cut into ceil(len / size) nearly equal parts (no small remainder)."""
    parts = max(1, -(-(stop - start) // size))
    edges = [start + (stop - start) * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _symmetric_ranks(X: np.ndarray, labels: np.ndarray, block_rows: int, progress) -> np.ndarray:
    """:func:`first_hit_ranks` of X against itself, self excluded, each pair's similarity computed once.

    The items are put in label order (a stable permutation), so the positives of every row lie in a
    narrow band around the diagonal. Pass 1 computes that band only (products of 512-row slices with
    the columns of their classes) and finds each row's best positive: similarity s_p, lowest original
    index p among equals, how many positives tie at it. Pass 2 walks the staircase of blocks (rows
    r0:r1, columns r0:n) once, positives (and self) masked out: every block counts, for its rows
    and (transposed, beyond the diagonal block) for its columns, how many similarities are > s_p
    and >= s_p. rank = #(> s_p) + #(j < p, s_j == s_p); the second term is nonzero only in rows where
    some non-positive ties with s_p, and those rows (rare outside synthetic data) are recomputed in
    original order. Positives' similarities come from pass 1 only and the others' from pass 2 only,
    so the ranks are consistent whatever the BLAS does. They equal the plain path's wherever the
    similarity of (i, j) is the same float32 number wherever a product computes it (s_ij == s_ji).
    This machine's MKL sgemm gives that for products of 64 rows or more (checked: identical ranks on
    60,502 x 512 SOP-like features, labels sorted and shuffled); matrix-vector kernels (one row) do
    not, hence every product here has at least ``SYMMETRIC_MIN_ROWS`` // 2 rows (even cuts; rows to
    recompute are padded). Where a BLAS's last bit depends on the block shape (MKL's AVX2 path), a
    near tie within one ulp may rank differently, exactly as the plain path's ranks then depend on
    ``block_rows``. tests/test_eval_knn.py compares both paths on exactly representable features.
    """
    torch = _torch()
    n = X.shape[0]
    blocks = _even_bounds(0, n, max(block_rows, SYMMETRIC_MIN_ROWS))
    b = max(r1 - r0 for r0, r1 in blocks)
    perm = np.argsort(labels, kind="stable")
    lab = labels[perm]
    first = np.searchsorted(lab, lab, side="left")  # class extent of each permuted item
    last = np.searchsorted(lab, lab, side="right")
    Xp = torch.from_numpy(np.ascontiguousarray(X[perm]))
    big = np.iinfo(np.int64).max
    best = np.full(n, -np.inf, dtype=np.float32)
    p = np.full(n, big, dtype=np.int64)
    for r0, r1 in _even_bounds(0, n, BAND_ROWS):  # pass 1: the band of positives
        lo, hi = int(first[r0]), int(last[r1 - 1])
        band = torch.mm(Xp[r0:r1], Xp[lo:hi].T).numpy()
        rows = np.arange(r1 - r0)
        cols = np.arange(lo, hi)
        pos = (cols[None, :] >= first[r0:r1, None]) & (cols[None, :] < last[r0:r1, None])
        pos[rows, r0 + rows - lo] = False  # not itself
        masked = np.where(pos, band, np.float32(-np.inf))
        best[r0:r1] = masked.max(axis=1)
        at_best = pos & (masked == best[r0:r1, None])
        p[r0:r1] = np.where(at_best, perm[lo:hi][None, :], big).min(axis=1)
    has = np.isfinite(best)
    thr = np.where(has, best, np.float32(np.inf)).astype(np.float32)
    greater = np.zeros(n, dtype=np.int64)  # non-positives above s_p
    at_least = np.zeros(n, dtype=np.int64)  # non-positives at or above s_p
    width = max(SYMMETRIC_TILE_COLS, b)
    buf = torch.empty(b * width, dtype=torch.float32)
    mask = np.empty(b * width, dtype=np.bool_)
    workers = max(1, min(torch.get_num_threads(), 8))
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for r0, r1 in blocks:  # pass 2: the staircase, each block once
            k = r1 - r0
            band_end = int(last[r1 - 1])  # positives of these rows (and they themselves) lie before it
            for c0, c1 in _even_bounds(r0, n, width):
                s = buf[:k * (c1 - c0)].view(k, c1 - c0)
                torch.mm(Xp[r0:r1], Xp[c0:c1].T, out=s)
                sn = s.numpy()
                if c0 < band_end:  # mask the pairs of one class (pass 1 ranked them)
                    cols = np.arange(c0, min(c1, band_end))
                    same = (cols[None, :] >= first[r0:r1, None]) & (cols[None, :] < last[r0:r1, None])
                    sn[:, :cols.size][same] = -np.inf
                off = max(r1 - c0, 0)  # columns beyond the diagonal block count for their own rows too
                g_rows, a_rows, g_cols, a_cols = _count_tile(pool, workers, sn, mask[:sn.size].reshape(sn.shape),
                                                             thr[r0:r1], thr[c0 + off:c1], off)
                greater[r0:r1] += g_rows
                at_least[r0:r1] += a_rows
                greater[c0 + off:c1] += g_cols
                at_least[c0 + off:c1] += a_cols
            if progress is not None:
                progress.update(k)
    finally:
        if pool is not None:
            pool.shutdown()
    rank = greater
    tied = np.flatnonzero(has & (at_least > greater))  # a non-positive ties with s_p: index order decides
    if tied.size:
        Xt = torch.from_numpy(np.ascontiguousarray(X))
        cols = np.arange(n)
        for c0 in range(0, tied.size, b):
            t = tied[c0:c0 + b]
            orig = perm[t]
            padded = np.resize(orig, max(t.size, min(SYMMETRIC_MIN_ROWS, n)))  # a matrix product, see above
            s = torch.mm(Xt[padded], Xt.T).numpy()[:t.size]
            other = labels[None, :] != lab[t, None]
            rank[t] += ((s == best[t, None]) & (cols[None, :] < p[t, None]) & other).sum(axis=1)
    ranks = np.empty(n, dtype=np.int64)
    ranks[perm] = np.where(has, rank, n - 1)  # no positive: self (last, same class) is the first hit
    return ranks


COUNT_CHUNK_ROWS = 16  # rows compared at a time: their similarities stay in cache for every compare


def _count_tile(pool, workers, sn, mask, thr_rows, thr_cols, off):
    """Per row of the tile ``sn``: #(> thr_rows), #(>= thr_rows); per column from ``off`` on: the same
    against thr_cols. Row ranges go to the worker threads (numpy releases the GIL), each in chunks of
    ``COUNT_CHUNK_ROWS`` rows so that the four compares read memory once."""
    k = sn.shape[0]
    bounds = np.linspace(0, k, min(workers, k) + 1).astype(np.int64)
    t_rows, t_cols = thr_rows[:, None], thr_cols[None, :]
    out = [None] * (len(bounds) - 1)

    def work(i: int) -> None:
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        g_rows, a_rows = np.empty(hi - lo, np.int64), np.empty(hi - lo, np.int64)
        g_cols, a_cols = np.zeros(t_cols.shape[1], np.int64), np.zeros(t_cols.shape[1], np.int64)
        for c in range(lo, hi, COUNT_CHUNK_ROWS):
            e = min(c + COUNT_CHUNK_ROWS, hi)
            sub, m = sn[c:e], mask[c:e]
            for compare, dest in ((np.greater, g_rows), (np.greater_equal, a_rows)):
                compare(sub, t_rows[c:e], out=m)
                dest[c - lo:e - lo] = m.view(np.uint8).sum(axis=1, dtype=np.int32)
            mm = m[:, off:]
            for compare, dest in ((np.greater, g_cols), (np.greater_equal, a_cols)):
                compare(sub[:, off:], t_cols, out=mm)
                dest += mm.view(np.uint8).sum(axis=0, dtype=np.int32)
        out[i] = (g_rows, a_rows, g_cols, a_cols)

    if pool is None or len(out) == 1:
        for i in range(len(out)):
            work(i)
    else:
        list(pool.map(work, range(len(out))))
    return (np.concatenate([c[0] for c in out]), np.concatenate([c[1] for c in out]),
            sum(c[2] for c in out), sum(c[3] for c in out))


def _similarity_block(Qt, Gt, sim, start: int, stop: int, exclude_self: bool):
    """Rows ``start:stop`` of Q·Gᵀ computed into the reused buffer ``sim``; with ``exclude_self`` the
    query itself scores -inf (MATLAB's test scripts set Dist(i,i) = +inf, ranking self last)."""
    s = sim[: stop - start]
    _torch().mm(Qt[start:stop], Gt.T, out=s)
    if exclude_self:
        rows = _torch().arange(stop - start)
        s[rows, start + rows] = float("-inf")
    return s


def _rank_blocks(Qt, Gt, ranks, sim, mask, pool, workers, positives, ql, gl, exclude_self,
                 block_rows, progress) -> None:
    """The block loop of :func:`first_hit_ranks`; writes ``ranks`` in place."""
    nq, ng = Qt.shape[0], Gt.shape[0]
    cols = np.arange(ng)
    for start in range(0, nq, block_rows):
        stop = min(start + block_rows, nq)
        b = stop - start
        s = _similarity_block(Qt, Gt, sim, start, stop, exclude_self)
        rows = np.arange(b)
        sn = s.numpy()
        # best positive: highest similarity, lowest gallery index among equals
        best, p, n_tied = _best_positive(sn, rows, start, positives, ql, gl, exclude_self)
        has = np.isfinite(best)
        thr = np.where(has, best, np.inf).astype(np.float32)[:, None]
        # rank = #(strictly greater) + #(ties of lower index); only the best positive and positives
        # tied with it at or above s_p (p is the lowest index among them) leave the second term 0
        above, at_or_above = _count_rows(pool, workers, sn, thr, mask[:b])
        rank = np.where(has, above, 0)
        tied = np.flatnonzero(has & (at_or_above - above > n_tied))
        if tied.size:
            eq = (sn[tied] == thr[tied]) & (cols[None, :] < p[tied, None])
            rank[tied] += eq.sum(axis=1)
        if exclude_self:
            # self sits last (position ng-1) and is same-class: the first hit is never later than that
            rank = np.where(has, rank, ng - 1)
        else:
            rank = np.where(has, rank, ng)
        ranks[start:stop] = rank
        if progress is not None:
            progress.update(b)


def _count_rows(pool, workers, sn, thr, mask) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sn``: how many entries are > and >= its threshold. Rows are split over the worker
    threads (numpy releases the GIL), each in chunks of ``COUNT_CHUNK_ROWS`` rows, so that both
    compares read memory once."""
    b = sn.shape[0]
    parts = min(workers if pool is not None else 1, b)
    bounds = np.linspace(0, b, parts + 1).astype(np.int64)
    above, at_or_above = np.empty(b, dtype=np.int64), np.empty(b, dtype=np.int64)

    def work(i: int) -> None:
        for c in range(int(bounds[i]), int(bounds[i + 1]), COUNT_CHUNK_ROWS):
            e = min(c + COUNT_CHUNK_ROWS, int(bounds[i + 1]))
            for compare, dest in ((np.greater, above), (np.greater_equal, at_or_above)):
                compare(sn[c:e], thr[c:e], out=mask[c:e])
                dest[c:e] = mask[c:e].view(np.uint8).sum(axis=1, dtype=np.int32)

    if pool is None or parts == 1:
        for i in range(parts):
            work(i)
    else:
        list(pool.map(work, range(parts)))
    return above, at_or_above


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
