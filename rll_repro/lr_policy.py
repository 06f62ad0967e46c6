"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``), with Caffe's iteration semantics.

``iter`` is the number of updates already applied (the solver's ``iter_`` before the update); the
rate is computed in double and stored in float32, as Caffe assigns it to ``Dtype rate``:

- fixed:     base_lr
- step:      base_lr * gamma ^ floor(iter / stepsize)      (current_step = iter / stepsize)
- exp:       base_lr * gamma ^ iter
- inv:       base_lr * (1 + gamma * iter) ^ (-power)       (1 + gamma*iter in float32)
- multistep: base_lr * gamma ^ current_step, where current_step advances by AT MOST ONE per call
             when iter >= stepvalue[current_step] (an ``if``, not a ``while``: duplicated or
             already-passed stepvalues are consumed one call at a time, e.g. the OSM CUB solver's
             1500, 1501 gives a distinct rate at exactly 1500). current_step is solver state
             (saved in the solverstate).
- poly:      base_lr * (1 - iter/max_iter) ^ power          (the ratio in float32)
- sigmoid:   base_lr * 1 / (1 + exp(-gamma * (iter - stepsize)))   (float32 inside)
"""
from __future__ import annotations

import math

import numpy as np

from rll_repro.errors import TrainingError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

f32 = np.float32


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise TrainingError(f"solver: {message}")


def learning_rate(param, it: int, current_step: int = 0) -> tuple[float, int]:
    """Caffe's rate at iteration ``it`` -> (rate as float32 value, new current_step).

    ``param`` is a caffe_pb2.SolverParameter (or anything with the same attribute names).
    """
    policy = param.lr_policy
    base_lr = f32(param.base_lr)
    gamma = f32(param.gamma)
    if policy == "fixed":
        rate = float(base_lr)
    elif policy == "step":
        _check(param.stepsize > 0, f"lr_policy 'step' needs stepsize > 0, got {param.stepsize}")
        _check(gamma >= 0, f"lr_policy 'step' needs gamma >= 0, got {gamma}")
        current_step = it // int(param.stepsize)
        rate = float(base_lr) * float(gamma) ** current_step
    elif policy == "exp":
        _check(gamma >= 0, f"lr_policy 'exp' needs gamma >= 0, got {gamma}")
        rate = float(base_lr) * float(gamma) ** it
    elif policy == "inv":
        _check(gamma >= 0, f"lr_policy 'inv' needs gamma >= 0, got {gamma}")
        # Dtype(1) + gamma * iter: float arithmetic (int promoted to float)
        inner = f32(1) + gamma * f32(it)
        rate = float(base_lr) * math.pow(float(inner), -float(f32(param.power)))
    elif policy == "multistep":
        steps = list(param.stepvalue)
        if current_step < len(steps) and it >= steps[current_step]:
            current_step += 1
        _check(gamma >= 0, f"lr_policy 'multistep' needs gamma >= 0, got {gamma}")
        rate = float(base_lr) * float(gamma) ** current_step
    elif policy == "poly":
        _check(param.max_iter > 0, f"lr_policy 'poly' needs max_iter > 0, got {param.max_iter}")
        ratio = f32(1.0) - f32(it) / f32(param.max_iter)
        rate = float(base_lr) * math.pow(float(ratio), float(f32(param.power)))
    elif policy == "sigmoid":
        _check(gamma >= 0, f"lr_policy 'sigmoid' needs gamma >= 0, got {gamma}")
        _check(param.stepsize > 0, f"lr_policy 'sigmoid' needs stepsize > 0, got {param.stepsize}")
        with np.errstate(over="ignore"):
            arg = -gamma * (f32(it) - f32(param.stepsize))
            rate = float(base_lr) * float(f32(1.0) / (f32(1.0) + np.exp(f32(arg))))
    else:
        raise TrainingError(f"solver: unknown lr_policy {policy!r} (expected one of {', '.join(POLICIES)})")
    return float(f32(rate)), current_step


def schedule(param, iters: int, start: int = 0, current_step: int = 0) -> np.ndarray:
    """The rates of iterations start .. start+iters-1 (float32), advancing current_step as Caffe."""
    out = np.empty(iters, dtype=np.float32)
    for k in range(iters):
        out[k], current_step = learning_rate(param, start + k, current_step)
    return out
