"""How many entries of each row (or column) of a similarity tile lie above a threshold, fast.

A comparison writes a bool mask, one byte (0 or 1) per entry. Eight of those bytes read as one
uint64 add lane by lane without carries as long as no lane exceeds 255, so

* a row of w entries is counted with w/8 integer additions, in groups of at most 255 words, and one
  byte sum per group (:func:`row_counts`);
* the columns of at most 255 rows are counted with one vectorised addition of the rows' words, whose
  bytes are then the column counts (:func:`column_counts`).

Both replace numpy's byte-by-byte ``sum(axis=...)`` (about 4x faster on this machine); the counts are
exact integers, so nothing about the ranking changes. Masks come from :func:`mask_buffer`: rows padded
to a multiple of 8 bytes, the padding kept False.
"""
from __future__ import annotations

import numpy as np

LANE_MAX = 255  # words per group (row counts) and rows per call (column counts): a byte lane holds 255


def mask_buffer(rows: int, cols: int) -> np.ndarray:
    """A zeroed (rows, cols rounded up to a multiple of 8) bool buffer for :func:`compare`."""
    return np.zeros((rows, -(-cols // 8) * 8), dtype=np.bool_)


def compare(values: np.ndarray, threshold: np.ndarray, mask: np.ndarray, strict: bool) -> np.ndarray:
    """``values > threshold`` (``>=`` unless ``strict``) into the top-left corner of ``mask``, the
    columns up to the next multiple of 8 cleared; returns that (rows, 8k) region viewed as uint64."""
    r, c = values.shape
    width = -(-c // 8) * 8
    region = mask[:r, :width]
    if width > c:
        region[:, c:] = False
    (np.greater if strict else np.greater_equal)(values, threshold, out=region[:, :c])
    return region.view(np.uint64)


def row_counts(words: np.ndarray) -> np.ndarray:
    """Per row of :func:`compare`'s uint64 view: how many mask bytes are 1 (int64)."""
    if words.shape[1] <= LANE_MAX:
        lanes = words.sum(axis=1)
    else:
        lanes = np.add.reduceat(words, np.arange(0, words.shape[1], LANE_MAX), axis=1)
    return lanes.view(np.uint8).reshape(words.shape[0], -1).sum(axis=1, dtype=np.int64)


def column_counts(words: np.ndarray, cols: int) -> np.ndarray:
    """Per column (the first ``cols``) of :func:`compare`'s uint64 view of at most 255 rows: how
    many mask bytes are 1 (uint8)."""
    if words.shape[0] > LANE_MAX:
        raise ValueError(f"column_counts: at most {LANE_MAX} rows at a time, got {words.shape[0]}")
    return words.sum(axis=0).view(np.uint8)[:cols]
