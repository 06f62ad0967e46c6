"""How many entries of each row (or column) of a similarity tile lie above a threshold, fast.

A comparison writes a bool mask, one byte (0 or 1) per entry. Eight of those bytes read as one
uint64 add lane by lane without carries as long as no lane exceeds 255, so

* a row of w entries is counted with w/8 integer additions, in groups of at most 255 words, and one
  byte sum per group (:func:`row_counts`);
* the columns of at most 255 rows are counted with one vectorised addition of the rows' words, whose
  bytes are then the column counts (:func:`column_counts`).

Both replace numpy's byte-by-byte ``sum(axis=...)`` (about 4x faster on this machine); the counts are
exact integers, so nothing about the ranking changes. Masks come from :func:`mask_buffer`: rows padded
to a multiple of 8 bytes (of 2,040 beyond that: whole groups), the padding kept False.

Where the C counters (count_kernels.c, built by :mod:`rll_repro.native`) are available,
:func:`rows_above` and :func:`tile_counts` count in one pass without any mask (the same IEEE
comparisons, NaN false as in numpy); the mask path above is their fallback.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from rll_repro import native

SOURCE = Path(__file__).with_name("count_kernels.c")
_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
_KERNELS = native.Kernels(SOURCE, {
    "rows_above": [_i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _int],
    "tile_counts": [_i64, _i64, _i64, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr],
    "best_positive": [_i64, _i64, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _int],
}, openmp=True)
_kernels = _KERNELS.get  # the C counters, or None (not built here, or RLL_REPRO_NATIVE=0)


def _rows_ok(values: np.ndarray) -> bool:
    """float32 rows with unit column stride (any row stride): what the C counters read."""
    return values.dtype == np.float32 and values.ndim == 2 and values.strides[1] == 4 and values.strides[0] % 4 == 0


def _floats(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1)

LANE_MAX = 255  # words per group (row counts) and rows per call (column counts): a byte lane holds 255
GROUP_COLS = 8 * LANE_MAX  # mask bytes per group of words


def _padded(cols: int) -> int:
    """Mask row length for ``cols`` entries: a multiple of 8, and of a whole group beyond one group
    (so that the groups are one reshape, not a ragged reduceat)."""
    width = -(-cols // 8) * 8
    return width if width <= GROUP_COLS else -(-cols // GROUP_COLS) * GROUP_COLS


def mask_buffer(rows: int, cols: int) -> np.ndarray:
    """A zeroed (rows, padded cols) bool buffer for :func:`compare`."""
    return np.zeros((rows, _padded(cols)), dtype=np.bool_)


def compare(values: np.ndarray, threshold: np.ndarray, mask: np.ndarray, strict: bool) -> np.ndarray:
    """``values > threshold`` (``>=`` unless ``strict``) into the top-left corner of ``mask``, the
    padding columns cleared; returns that (rows, padded) region viewed as uint64."""
    r, c = values.shape
    width = _padded(c)
    region = mask[:r, :width]
    if width > c:
        region[:, c:] = False
    (np.greater if strict else np.greater_equal)(values, threshold, out=region[:, :c])
    return region.view(np.uint64)


def row_counts(words: np.ndarray) -> np.ndarray:
    """Per row of :func:`compare`'s uint64 view: how many mask bytes are 1 (int64)."""
    r, n = words.shape
    if n <= LANE_MAX:
        lanes = words.sum(axis=1)
    elif n % LANE_MAX == 0:
        lanes = words.reshape(r, n // LANE_MAX, LANE_MAX).sum(axis=2)
    else:
        lanes = np.add.reduceat(words, np.arange(0, n, LANE_MAX), axis=1)
    return lanes.view(np.uint8).reshape(r, -1).sum(axis=1, dtype=np.int64)


def column_counts(words: np.ndarray, cols: int) -> np.ndarray:
    """Per column (the first ``cols``) of :func:`compare`'s uint64 view of at most 255 rows: how
    many mask bytes are 1 (uint8)."""
    if words.shape[0] > LANE_MAX:
        raise ValueError(f"column_counts: at most {LANE_MAX} rows at a time, got {words.shape[0]}")
    return words.sum(axis=0).view(np.uint8)[:cols]


def native_rows() -> bool:
    """Whether :func:`rows_above` counts in C (and so can split a whole block over threads itself)."""
    return _kernels() is not None


def rows_above(values: np.ndarray, threshold: np.ndarray, mask: np.ndarray | None,
               threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many values are > and >= its threshold (int64 each; ``threshold`` (rows, 1)); the
    C counters split the rows over ``threads`` OpenMP threads (``mask`` is the fallback's buffer)."""
    lib = _kernels()
    if lib is not None and _rows_ok(values):
        r, c = values.shape
        t = _floats(threshold)
        above, at_or_above = np.empty(r, np.int64), np.empty(r, np.int64)
        lib.rows_above(r, c, values.strides[0] // 4, values.ctypes.data, t.ctypes.data, above.ctypes.data,
                       at_or_above.ctypes.data, int(threads))
        return above, at_or_above
    return tuple(row_counts(compare(values, threshold, mask, strict)) for strict in (True, False))


def columns_above(values: np.ndarray, threshold: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of at most 255 rows: how many values are > and >= its threshold (uint8 each;
    ``threshold`` (1, cols))."""
    cols = values.shape[1]
    return tuple(column_counts(compare(values, threshold, mask, strict), cols) for strict in (True, False))


def tile_counts(values: np.ndarray, t_rows: np.ndarray, off: int, t_cols: np.ndarray, mask: np.ndarray,
                row_g: np.ndarray, row_a: np.ndarray, col_g: np.ndarray, col_a: np.ndarray) -> None:
    """A tile's counts added to int64 accumulators: per row (threshold ``t_rows``) over all its columns
    into row_g (>) / row_a (>=), and per column from ``off`` on (threshold ``t_cols``, one per
    column from off) over all its rows into col_g / col_a (indexed from off)."""
    lib = _kernels()
    r, c = values.shape
    if lib is not None and _rows_ok(values) and all(a.dtype == np.int64 and a.flags.c_contiguous
                                                    for a in (row_g, row_a, col_g, col_a)):
        tr, tc = _floats(t_rows), _floats(t_cols)
        lib.tile_counts(r, c, values.strides[0] // 4, values.ctypes.data, tr.ctypes.data, off, tc.ctypes.data,
                        row_g.ctypes.data, row_a.ctypes.data, col_g.ctypes.data, col_a.ctypes.data)
        return
    t_rows, t_cols = t_rows.reshape(-1, 1), t_cols.reshape(1, -1)
    step = min(LANE_MAX, mask.shape[0])  # rows per mask compare (a byte lane holds 255)
    for s in range(0, r, step):
        e = min(s + step, r)
        g, a = rows_above(values[s:e], t_rows[s:e], mask)
        row_g[s:e] += g
        row_a[s:e] += a
        if off < c:
            g, a = columns_above(values[s:e, off:], t_cols, mask)
            col_g += g
            col_a += a


def best_positive(values: np.ndarray, candidates: np.ndarray, threads: int = 1):
    """(similarity, lowest index, how many tie at it) of each row's best candidate (``candidates``:
    (rows, width) int64 column indices, -1 = none), as numpy's max / argmin over them (NaN if one is
    NaN, then no index); None where the C counters are not built (the caller's numpy path)."""
    lib = _kernels()
    if lib is None or not _rows_ok(values):
        return None
    r = values.shape[0]
    cand = np.ascontiguousarray(candidates, dtype=np.int64)
    best, first, tied = np.empty(r, np.float32), np.empty(r, np.int64), np.empty(r, np.int64)
    lib.best_positive(r, values.strides[0] // 4, values.ctypes.data, cand.ctypes.data, cand.shape[1],
                      best.ctypes.data, first.ctypes.data, tied.ctypes.data, int(threads))
    return best, first, tied
