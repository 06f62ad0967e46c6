"""Caffe's learning-rate policies (SGDSolver::GetLearningRate), iteration semantics included."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rll_repro.errors import TrainingError
from rll_repro.lr_policy import learning_rate, schedule


def sp(**kw):
    base = dict(lr_policy="fixed", base_lr=0.01, gamma=0.0, power=0.0, stepsize=0, stepvalue=[], max_iter=0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_fixed_is_base_lr_in_float32():
    assert learning_rate(sp(base_lr=0.01), 123)[0] == float(np.float32(0.01))


def test_step_uses_floor_of_iter_over_stepsize():
    rates = schedule(sp(lr_policy="step", base_lr=0.03, gamma=0.5, stepsize=3), 8)
    expected = np.float32([0.03 * 0.5 ** (k // 3) for k in range(8)])
    np.testing.assert_array_equal(rates, expected)


def test_multistep_advances_at_most_one_step_per_iteration():
    # OSM CUB solver (SPEC osm §8): stepvalues 500, 1000, 1500, 1501, 2000, 2001 -> a distinct rate at
    # exactly 1500 and 2000 because current_step advances by one per call.
    p = sp(lr_policy="multistep", base_lr=0.0005, gamma=0.5, stepvalue=[500, 1000, 1500, 1501, 2000, 2001])
    rates = schedule(p, 2100)
    assert rates[499] == np.float32(5e-4) and rates[500] == np.float32(2.5e-4)
    assert rates[1499] == np.float32(1.25e-4)
    assert rates[1500] == np.float32(6.25e-5)
    assert rates[1501] == np.float32(3.125e-5)
    assert rates[2000] == np.float32(1.5625e-5)
    assert rates[2001] == np.float32(7.8125e-6)


def test_multistep_resumed_late_catches_up_one_step_per_iteration():
    # Caffe's `if`: starting at iter 30 with current_step 0 and steps 3, 6 takes two calls.
    p = sp(lr_policy="multistep", base_lr=1.0, gamma=0.1, stepvalue=[3, 6])
    r1, cs = learning_rate(p, 30, 0)
    r2, cs = learning_rate(p, 31, cs)
    g = float(np.float32(0.1))  # gamma is a float field: 0.1f, raised to the power in double
    assert (r1, r2, cs) == (float(np.float32(g)), float(np.float32(g * g)), 2)


def test_exp_inv_poly_sigmoid_formulas():
    g = float(np.float32(0.9))  # Caffe's gamma is 0.9f, not 0.9: the difference is 1.5e-7 relative here
    assert learning_rate(sp(lr_policy="exp", base_lr=0.05, gamma=0.9), 4)[0] == float(
        np.float32(float(np.float32(0.05)) * g ** 4))
    assert learning_rate(sp(lr_policy="inv", base_lr=0.05, gamma=0.1, power=0.75), 5)[0] == pytest.approx(
        0.05 * (1 + 0.1 * 5) ** -0.75, rel=1e-6)
    assert learning_rate(sp(lr_policy="poly", base_lr=0.1, power=0.9, max_iter=8), 2)[0] == pytest.approx(
        0.1 * (1 - 2 / 8) ** 0.9, rel=1e-6)
    assert learning_rate(sp(lr_policy="poly", base_lr=0.1, power=0.9, max_iter=8), 8)[0] == 0.0
    assert learning_rate(sp(lr_policy="sigmoid", base_lr=0.1, gamma=0.5, stepsize=10), 12)[0] == pytest.approx(
        0.1 / (1 + np.exp(-0.5 * 2)), rel=1e-6)


def test_unknown_policy_and_bad_fields_raise_training_error():
    with pytest.raises(TrainingError, match="unknown lr_policy 'cosine'"):
        learning_rate(sp(lr_policy="cosine"), 0)
    with pytest.raises(TrainingError, match="stepsize"):
        learning_rate(sp(lr_policy="step", stepsize=0), 0)
