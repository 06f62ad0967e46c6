"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``), with Caffe's iteration semantics.

``iter`` is the number of updates already applied (the solver's ``iter_`` before the update); the
rate is computed in double and stored in float32, as Caffe assigns it to ``Dtype rate``:

- fixed:     base_lr
- step:      base_lr * gamma ^ (iter / stepsize)             (C++ integer division, truncating toward
             zero; current_step = iter / stepsize)
- exp:       base_lr * gamma ^ iter
- inv:       base_lr * (1 + gamma * iter) ^ (-power)       (1 + gamma*iter in float32)
- multistep: base_lr * gamma ^ current_step, where current_step advances by AT MOST ONE per call
             when iter >= stepvalue[current_step] (an ``if``, not a ``while``: duplicated or
             already-passed stepvalues are consumed one call at a time, e.g. the OSM CUB solver's
             1500, 1501 gives a distinct rate at exactly 1500). current_step is solver state
             (saved in the solverstate).
- poly:      base_lr * (1 - iter/max_iter) ^ power          (the ratio in float32)
- sigmoid:   base_lr * 1 / (1 + exp(-gamma * (iter - stepsize)))   (float32 inside; a negative
             gamma is a rising sigmoid, a positive one a decaying one, stepsize 0 centres it at 0)

The papers' Caffe forks check none of the fields here (BVLC master later added CHECKs that gamma >= 0
and, for step and sigmoid, stepsize > 0); neither does this module. What it refuses are the values
for which Caffe's own arithmetic breaks: ``step`` with stepsize 0 (Caffe's integer division by zero
kills it), and any rate that comes out NaN or infinite (``poly`` with max_iter 0 divides by zero,
``inv``/``poly`` raise a negative number to a fractional power, 0 ^ negative, overflow), where Caffe
would train on with that rate and turn every weight into NaN. The error says which.
"""
from __future__ import annotations

import math

import numpy as np

from rll_repro.errors import TrainingError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

f32 = np.float32


def _c_pow(base: float, exponent: float) -> float:
    """C's ``pow``: inf or NaN where Python's ``math.pow`` raises (0 ^ negative, negative ^ fraction,
    overflow)."""
    try:
        return math.pow(base, exponent)
    except OverflowError:
        odd = float(exponent).is_integer() and int(exponent) % 2 == 1
        return -math.inf if base < 0 and odd else math.inf
    except ValueError:
        return math.inf if base == 0 else math.nan


def _why_not_finite(base: float, exponent: float) -> str:
    if math.isnan(base) or math.isinf(base):
        return f"the base is {base}"
    if base == 0 and exponent < 0:
        return f"0 ^ {exponent:g} divides by zero"
    if base < 0 and not float(exponent).is_integer():
        return f"{base:g} ^ {exponent:g} (a negative number to a fractional power) is NaN"
    return "it overflows float32"


def _c_int_div(a: int, b: int) -> int:
    """C++'s integer division (truncates toward zero; Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def learning_rate(param, it: int, current_step: int = 0) -> tuple[float, int]:
    """Caffe's rate at iteration ``it`` -> (rate as float32 value, new current_step).

    ``param`` is a caffe_pb2.SolverParameter (or anything with the same attribute names). Raises
    TrainingError where Caffe would divide by zero or train with a NaN or infinite rate.
    """
    policy = param.lr_policy
    base_lr = f32(param.base_lr)
    gamma = f32(param.gamma)
    power = float(f32(param.power))
    base, exponent, why = 1.0, 1.0, ""
    if policy == "fixed":
        rate = float(base_lr)
    elif policy in ("step", "exp", "multistep"):
        if policy == "step":
            if int(param.stepsize) == 0:
                raise TrainingError("solver: lr_policy 'step' with stepsize 0: Caffe computes iter / stepsize, "
                                    "an integer division by zero (it dies with a floating-point exception)")
            current_step = _c_int_div(it, int(param.stepsize))
            exponent = current_step
        elif policy == "exp":
            exponent = it
        else:
            steps = list(param.stepvalue)
            if current_step < len(steps) and it >= steps[current_step]:
                current_step += 1
            exponent = current_step
        base = float(gamma)
        rate = float(base_lr) * _c_pow(base, exponent)
    elif policy == "inv":
        # Dtype(1) + gamma * iter: float arithmetic (int promoted to float)
        base, exponent = float(f32(1) + gamma * f32(it)), -power
        rate = float(base_lr) * _c_pow(base, exponent)
    elif policy == "poly":
        with np.errstate(divide="ignore", invalid="ignore"):
            base = float(f32(1.0) - f32(it) / f32(param.max_iter))
        exponent = power
        if int(param.max_iter) == 0:
            why = "iter / max_iter with max_iter 0 divides by zero"
        rate = float(base_lr) * _c_pow(base, exponent)
    elif policy == "sigmoid":
        with np.errstate(over="ignore"):
            arg = -gamma * (f32(it) - f32(param.stepsize))
            rate = float(base_lr) * float(f32(1.0) / (f32(1.0) + np.exp(f32(arg))))
    else:
        raise TrainingError(f"solver: unknown lr_policy {policy!r} (expected one of {', '.join(POLICIES)})")
    with np.errstate(over="ignore"):
        rate32 = f32(rate)
    if not np.isfinite(rate32):
        why = why or (f"base_lr is {base_lr}" if not np.isfinite(base_lr) else _why_not_finite(base, exponent))
        raise TrainingError(f"solver: lr_policy {policy!r} at iteration {it} gives a learning rate of {rate32} "
                            f"({why}); Caffe would train on with it and turn the weights into NaN")
    return float(rate32), current_step


def schedule(param, iters: int, start: int = 0, current_step: int = 0) -> np.ndarray:
    """The rates of iterations start .. start+iters-1 (float32), advancing current_step as Caffe."""
    out = np.empty(iters, dtype=np.float32)
    for k in range(iters):
        out[k], current_step = learning_rate(param, start + k, current_step)
    return out
