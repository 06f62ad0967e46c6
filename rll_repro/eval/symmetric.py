"""Self-retrieval first-hit ranks (SOP, CUB, Cars) with each pair's similarity computed once.

MATLAB's scripts rank row q of X·Xᵀ (self set to distance +inf, stable sort). The rank of q's best
positive p is #{j: s_qj > s_p} + #{j < p: s_qj == s_p}; over non-positives, s_qj > s_p counts for row
q and, read the other way, for row j against its own s_p. So the upper triangle of X·Xᵀ is enough:

1. The items are put in label order (a stable permutation; no copy when they already are), so every
   row's positives lie in a narrow band around the diagonal. Pass 1 computes that band only and
   finds each row's best positive: similarity s_p, lowest original index p among equals.
2. Pass 2 walks the upper triangle in tiles: rows r0:r1 (a row block of at most ``ROW_BLOCK``),
   columns r0:n cut into column tiles of whole row blocks (at most ``TILE_COLS`` wide), taken column
   tile by column tile so that concurrent tasks share their columns in cache; the diagonal block is
   computed in both orders. Positives and self are set to -inf, and every tile counts for each of its
   rows, and (beyond the diagonal block) for each of its columns, how many similarities are > s_p
   and >= s_p (:mod:`.counts`). Tiles go to worker threads, each with its own single-threaded
   product (:mod:`.workers`): a tile is counted while it is in cache.
3. rank = #(> s_p) + #(j < p, s_j == s_p); the second term is nonzero only in rows where a
   non-positive ties with s_p, and those rows (rare outside synthetic data) are recomputed in
   original order.

Positives' similarities come from pass 1 only and the others' from pass 2 only, so the ranks are
consistent whatever the BLAS does. They equal the plain path's (:func:`.knn.first_hit_ranks` with
``symmetric=False``) wherever the float32 similarity of (i, j) is the same number whichever product
computes it (s_ij == s_ji). This machine's MKL sgemm gives that for products of 64 rows or more on
one thread or several (checked: identical ranks on 30,000 and 60,502 x 512 SOP-like features);
matrix-vector kernels (one row) do not, hence every product here has at least ``MIN_ROWS`` // 2 rows
and columns (even cuts, column tiles of whole row blocks; rows to recompute are padded). Where a BLAS's last bit depends on the block shape (MKL's
AVX2 path), a near tie within one ulp may rank differently, exactly as the plain path's ranks then
depend on ``block_rows``. tests/test_eval_knn.py compares both paths on exactly representable features.
"""
from __future__ import annotations

import numpy as np

from rll_repro.eval import counts, workers

ROW_BLOCK = 1020  # rows per tile at most
TILE_COLS = 2040  # columns per tile at most (a row's mask is then one group of 255 words, see counts)
TILE_WIDTH = 4  # row blocks per column tile at most (small row blocks: several column tiles)
MIN_ROWS = 64  # rows (and columns) per product at least: tiny ones go to other BLAS kernels
BAND_ROWS = 512  # rows per product of pass 1
CHUNK_ROWS = 64  # tile rows compared at a time (at most counts.LANE_MAX)
SPARSE_CLASS_MAX = 256  # pass 1 gathers each row's class up to this size, else masks the whole band


def even_bounds(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """start:stop cut into ceil(len / size) nearly equal parts (no small remainder)."""
    parts = max(1, -(-(stop - start) // size))
    edges = [start + (stop - start) * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _class_runs(lab: np.ndarray, r0: int, r1: int) -> list[tuple[int, int]]:
    """The runs of equal labels among the (label-sorted) rows r0:r1."""
    cuts = np.flatnonzero(lab[r0 + 1:r1] != lab[r0:r1 - 1]) + r0 + 1
    edges = [r0, *cuts.tolist(), r1]
    return list(zip(edges[:-1], edges[1:]))


def _best_positives(torch, Xp, perm, first, last):
    """Pass 1: per permuted row, the best positive's similarity (-inf: none) and lowest original index."""
    n = Xp.shape[0]
    big = np.iinfo(np.int64).max
    best = np.full(n, -np.inf, dtype=np.float32)
    p = np.full(n, big, dtype=np.int64)
    width = int((last - first).max(initial=1))
    for r0, r1 in even_bounds(0, n, BAND_ROWS):
        lo, hi = int(first[r0]), int(last[r1 - 1])
        band = torch.mm(Xp[r0:r1], Xp[lo:hi].T).numpy()
        rows = np.arange(r1 - r0)
        if width <= SPARSE_CLASS_MAX:  # gather each row's class (at most `width` columns)
            cols = first[r0:r1, None] + np.arange(width)[None, :]
            pos = (cols < last[r0:r1, None]) & (cols != (r0 + rows)[:, None])
            vals = np.where(pos, band[rows[:, None], np.minimum(cols, hi - 1) - lo], np.float32(-np.inf))
            k = vals.argmax(axis=1)  # the first maximum: lowest column, and within a class the
            best[r0:r1] = vals[rows, k]  # permutation keeps the original order (stable sort)
            p[r0:r1] = np.where(np.isfinite(best[r0:r1]), perm[np.minimum(cols[rows, k], n - 1)], big)
            continue
        cols = np.arange(lo, hi)
        pos = (cols[None, :] >= first[r0:r1, None]) & (cols[None, :] < last[r0:r1, None])
        pos[rows, r0 + rows - lo] = False  # not itself
        masked = np.where(pos, band, np.float32(-np.inf))
        best[r0:r1] = masked.max(axis=1)
        at_best = pos & (masked == best[r0:r1, None])
        p[r0:r1] = np.where(at_best, perm[lo:hi][None, :], big).min(axis=1)
    return best, p


def symmetric_ranks(torch, X: np.ndarray, labels: np.ndarray, block_rows: int, progress) -> np.ndarray:
    """First-hit ranks of X (unit rows, float32) against itself, self excluded (module docstring)."""
    n = X.shape[0]
    row_block = max(min(block_rows, ROW_BLOCK), MIN_ROWS)
    if n < 2 or bool(np.all(labels[1:] >= labels[:-1])):  # already in label order (test lists are):
        perm = np.arange(n)  # no permuted copy of the features
        Xp = torch.from_numpy(np.ascontiguousarray(X))
    else:
        perm = np.argsort(labels, kind="stable")
        Xp = torch.from_numpy(np.ascontiguousarray(X[perm]))
    lab = labels[perm]
    first = np.searchsorted(lab, lab, side="left")  # class extent of each permuted item
    last = np.searchsorted(lab, lab, side="right")
    best, p = _best_positives(torch, Xp, perm, first, last)
    has = np.isfinite(best)
    thr = np.where(has, best, np.float32(np.inf)).astype(np.float32)
    rows = even_bounds(0, n, row_block)
    b = max(r1 - r0 for r0, r1 in rows)
    per = max(1, min(TILE_WIDTH, TILE_COLS // b))  # row blocks per column tile: tiles start at row
    col_tiles = [(rows[i][0], rows[min(i + per, len(rows)) - 1][1]) for i in range(0, len(rows), per)]
    tasks = [(r0, r1, max(c0, r0), c1)  # edges, so no tile is a sliver of a few columns (see above);
             for c0, c1 in col_tiles for r0, r1 in rows if r0 < c1]  # by column tile: shared columns
    width = max(c1 - c0 for _, _, c0, c1 in tasks)
    runs = {r0: _class_runs(lab, r0, r1) for r0, r1 in rows}
    total = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in tasks)
    done_pairs = [0, 0]  # pairs counted, rows reported to progress
    def make_state():
        return (torch.empty(b * width, dtype=torch.float32), counts.mask_buffer(CHUNK_ROWS, width),
                np.zeros(n, np.int64), np.zeros(n, np.int64))

    def count(state, task):
        buf, mask, greater, at_least = state
        r0, r1, c0, c1 = task
        s = buf[:(r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
        torch.mm(Xp[r0:r1], Xp[c0:c1].T, out=s)
        sn = s.numpy()
        if c0 < int(last[r1 - 1]):  # positives (and self) of these rows: ranked by pass 1
            for a, e in runs[r0]:
                lo, hi = max(int(first[a]), c0), min(int(last[a]), c1)
                if lo < hi:
                    sn[a - r0:e - r0, lo - c0:hi - c0] = -np.inf
        off = max(r1 - c0, 0)  # columns beyond the diagonal block count for their own rows too
        counts.tile_counts(sn, thr[r0:r1], off, thr[c0 + off:c1], mask, greater[r0:r1], at_least[r0:r1],
                           greater[c0 + off:c1], at_least[c0 + off:c1])

    def done(task):
        if progress is not None:  # rows in proportion to the pairs counted
            r0, r1, c0, c1 = task
            done_pairs[0] += (r1 - r0) * (c1 - c0)
            rows_now = n * done_pairs[0] // total
            progress.update(rows_now - done_pairs[1])
            done_pairs[1] = rows_now

    states = workers.run_tasks(tasks, make_state, count, workers.worker_count(len(tasks)), done)
    rank = sum(st[2] for st in states)
    at_least = sum(st[3] for st in states)
    tied = np.flatnonzero(has & (at_least > rank))  # a non-positive ties with s_p: index order decides
    if tied.size:
        Xt = torch.from_numpy(np.ascontiguousarray(X))
        cols = np.arange(n)
        for c0 in range(0, tied.size, b):
            t = tied[c0:c0 + b]
            orig = perm[t]
            padded = np.resize(orig, max(t.size, min(MIN_ROWS, n)))  # a matrix product, see above
            s = torch.mm(Xt[padded], Xt.T).numpy()[:t.size]
            other = labels[None, :] != lab[t, None]
            rank[t] += ((s == best[t, None]) & (cols[None, :] < p[t, None]) & other).sum(axis=1)
    ranks = np.empty(n, dtype=np.int64)
    ranks[perm] = np.where(has, rank, n - 1)  # no positive: self (last, same class) is the first hit
    return ranks
