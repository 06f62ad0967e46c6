"""Caffe's update rules (``sgd_solver.cpp``, ``nesterov_solver.cpp``, ``adagrad_solver.cpp``,
``rmsprop_solver.cpp``, ``adadelta_solver.cpp``, ``adam_solver.cpp``): ComputeUpdateValue per param.

Every rule runs in float32 in Caffe's order of operations, on the params' device, with the
history blobs made by :class:`~rll_repro.solver.base.Solver`. Constants are rounded to float32
first (Caffe's Dtype), then passed to torch as Python numbers.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rll_repro.errors import TrainingError
from rll_repro.solver.base import Solver

f32 = np.float32


class SGDSolver(Solver):
    """Caffe SGD: h = momentum*h + local_rate*diff (cblas scal then axpy); diff = h."""

    type_name = "SGD"

    def compute_update_value(self, i, p, g, local_rate):
        h = self.history[i]
        h.mul_(float(f32(self.param.momentum))).add_(g, alpha=float(local_rate))
        g.copy_(h)

    def compute_update_values(self, idx, ps, gs, local_rate):
        hs = [self.history[i] for i in idx]
        torch._foreach_mul_(hs, float(f32(self.param.momentum)))
        torch._foreach_add_(hs, gs, alpha=float(local_rate))
        torch._foreach_copy_(gs, hs)


class NesterovSolver(Solver):
    """Caffe Nesterov: u = h; h = momentum*h + local_rate*diff; diff = (1+momentum)*h - momentum*u."""

    type_name = "Nesterov"

    def compute_update_value(self, i, p, g, local_rate):
        m = f32(self.param.momentum)
        h = self.history[i]
        update = h.clone()
        h.mul_(float(m)).add_(g, alpha=float(local_rate))
        update.mul_(float(-m)).add_(h, alpha=float(f32(f32(1) + m)))
        g.copy_(update)


class AdaGradSolver(Solver):
    """Caffe AdaGrad: h += diff^2; diff = local_rate * diff / (sqrt(h) + delta). Needs momentum 0."""

    type_name = "AdaGrad"

    def _check_param(self):
        super()._check_param()
        if self.param.momentum != 0:
            raise TrainingError("solver: AdaGrad needs momentum 0 (Caffe checks this)")

    def compute_update_value(self, i, p, g, local_rate):
        h = self.history[i]
        h.add_(g * g)
        update = h.sqrt().add_(float(f32(self.param.delta)))
        torch.div(g, update, out=update)
        g.copy_(update.mul_(float(local_rate)))


class RMSPropSolver(Solver):
    """Caffe RMSProp: h = rms_decay*h + (1-rms_decay)*diff^2; diff = local_rate*diff/(sqrt(h)+delta)."""

    type_name = "RMSProp"

    def _check_param(self):
        super()._check_param()
        if self.param.momentum != 0:
            raise TrainingError("solver: RMSProp needs momentum 0 (Caffe checks this)")

    def compute_update_value(self, i, p, g, local_rate):
        decay = f32(self.param.rms_decay)
        h = self.history[i]
        h.mul_(float(decay)).add_(g * g, alpha=float(f32(f32(1) - decay)))
        update = h.sqrt().add_(float(f32(self.param.delta)))
        torch.div(g, update, out=update)
        g.copy_(update.mul_(float(local_rate)))


class AdaDeltaSolver(Solver):
    """Caffe AdaDelta (history: [grad^2 averages..., update^2 averages...], decay = momentum)."""

    type_name = "AdaDelta"
    history_per_param = 2

    def compute_update_value(self, i, p, g, local_rate):
        m = f32(self.param.momentum)
        delta = float(f32(self.param.delta))
        n = len(self.learnable_params)
        hg, hu = self.history[i], self.history[n + i]
        one_minus = float(f32(f32(1) - m))
        hg.mul_(float(m)).add_(g * g, alpha=one_minus)
        update = hu + delta
        update.div_(hg + delta).sqrt_()
        g.mul_(update)
        hu.mul_(float(m)).add_(g * g, alpha=one_minus)
        g.mul_(float(local_rate))


class AdamSolver(Solver):
    """Caffe Adam: m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; diff = local_rate*correction *
    m/(sqrt(v)+delta), correction = sqrt(1-b2^t)/(1-b1^t) with t = iter+1 (computed in double)."""

    type_name = "Adam"
    history_per_param = 2

    def compute_update_value(self, i, p, g, local_rate):
        b1, b2 = f32(self.param.momentum), f32(self.param.momentum2)
        n = len(self.learnable_params)
        m, v = self.history[i], self.history[n + i]
        t = self.iter + 1
        correction = f32(math.sqrt(1.0 - float(b2) ** t) / (1.0 - float(b1) ** t))
        m.mul_(float(b1)).add_(g, alpha=float(f32(f32(1) - b1)))
        v.mul_(float(b2)).add_(g * g, alpha=float(f32(f32(1) - b2)))
        update = v.sqrt().add_(float(f32(self.param.delta)))
        torch.div(m, update, out=update)
        g.copy_(update.mul_(float(f32(local_rate * correction))))


SOLVERS = {cls.type_name: cls for cls in
           (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver)}
