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


def caffe_sigmoid(base_lr, gamma, stepsize, it):
    """GetLearningRate's sigmoid line in float32: base_lr * (1 / (1 + exp(-gamma * (iter - stepsize))))."""
    f = np.float32
    with np.errstate(over="ignore"):
        return f(base_lr) * (f(1) / (f(1) + np.exp(-f(gamma) * (f(it) - f(stepsize)))))


@pytest.mark.parametrize("gamma, stepsize", [(-0.05, 100), (0.05, 100), (-2.0, 0), (0.0, 7), (-1e4, 3)])
def test_sigmoid_takes_any_gamma_and_stepsize_like_caffe(gamma, stepsize):
    # The papers' Caffe forks make no check here: a negative gamma is a decaying sigmoid, stepsize 0
    # centres it at iteration 0, a huge |gamma| saturates exp to inf (rate 0), never to NaN.
    p = sp(lr_policy="sigmoid", base_lr=0.1, gamma=gamma, stepsize=stepsize)
    rates = schedule(p, 300)
    expected = np.array([caffe_sigmoid(0.1, gamma, stepsize, k) for k in range(300)], np.float32)
    np.testing.assert_allclose(rates, expected, rtol=2e-7, atol=0)  # float32 exp: within an ulp
    if gamma < 0:
        assert rates[0] > rates[-1]


def test_step_exp_multistep_take_a_negative_gamma_and_step_truncates_toward_zero():
    # No gamma >= 0 check in the forks' GetLearningRate: pow(gamma, n) with gamma < 0 alternates sign.
    assert learning_rate(sp(lr_policy="exp", base_lr=1.0, gamma=-0.5), 3)[0] == -0.125
    assert learning_rate(sp(lr_policy="multistep", base_lr=1.0, gamma=-0.5, stepvalue=[1]), 1)[0] == -0.5
    # C++'s iter / stepsize truncates toward zero: 5 / -3 = -1 (Python's 5 // -3 is -2)
    rate, step = learning_rate(sp(lr_policy="step", base_lr=1.0, gamma=0.5, stepsize=-3), 5)
    assert (rate, step) == (2.0, -1)


def test_values_that_break_caffes_arithmetic_say_so():
    with pytest.raises(TrainingError, match="stepsize 0.*integer division by zero"):
        learning_rate(sp(lr_policy="step", gamma=0.5, stepsize=0), 4)
    with pytest.raises(TrainingError, match="'poly' at iteration 0.*max_iter 0 divides by zero.*NaN"):
        learning_rate(sp(lr_policy="poly", power=0.5, max_iter=0), 0)
    # 1 + gamma*iter < 0 raised to -power 0.75: NaN in C's pow
    with pytest.raises(TrainingError, match="'inv' at iteration 20.*fractional power"):
        learning_rate(sp(lr_policy="inv", gamma=-0.1, power=0.75), 20)
    with pytest.raises(TrainingError, match="'inv' at iteration 10.*0 \\^ -0.75 divides by zero"):
        learning_rate(sp(lr_policy="inv", gamma=-0.1, power=0.75), 10)
    with pytest.raises(TrainingError, match="'exp' at iteration 400.*overflows"):
        learning_rate(sp(lr_policy="exp", gamma=10.0), 400)
    # below the pole inv with a negative gamma is an ordinary rate, as in Caffe
    assert learning_rate(sp(lr_policy="inv", base_lr=1.0, gamma=-0.05, power=1.0), 10)[0] == 2.0
