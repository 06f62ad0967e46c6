"""The difference table of ``rll-repro export``: relative to max |Net|, inf/NaN matched by place."""
from __future__ import annotations

import math

import numpy as np

from rll_repro.export.check import differences, format_table


def test_relative_difference_is_scaled_by_the_largest_reference_value():
    (row,) = differences({"b": np.array([1.0, -4.0], np.float32)}, "m", {"b": np.array([1.5, -4.0], np.float32)})
    assert (row.max_abs, row.max_rel, row.non_finite) == (0.5, 0.125, 0)


def test_non_finite_values_count_as_equal_only_at_the_same_places():
    ref = np.array([np.nan, np.inf, 2.0], np.float32)
    (same,) = differences({"b": ref}, "m", {"b": np.array([np.nan, np.inf, 2.0], np.float32)})
    assert same.max_abs == 0.0 and same.non_finite == 2
    assert "2 inf/NaN values" in format_table([same])
    (moved,) = differences({"b": ref}, "m", {"b": np.array([1.0, np.inf, 2.0], np.float32)})
    assert math.isinf(moved.max_abs)
    (new_nan,) = differences({"b": np.ones(2, np.float32)}, "m", {"b": np.array([1.0, np.nan], np.float32)})
    assert math.isinf(new_nan.max_abs)
