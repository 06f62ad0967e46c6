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
"""
from __future__ import annotations

import numpy as np

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


def rows_above(values: np.ndarray, threshold: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many values are > and >= its threshold (int64 each; ``threshold`` (rows, 1))."""
    return tuple(row_counts(compare(values, threshold, mask, strict)) for strict in (True, False))


def columns_above(values: np.ndarray, threshold: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of at most 255 rows: how many values are > and >= its threshold (uint8 each;
    ``threshold`` (1, cols))."""
    cols = values.shape[1]
    return tuple(column_counts(compare(values, threshold, mask, strict), cols) for strict in (True, False))
