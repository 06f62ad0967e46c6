"""Reduction and EuclideanLoss (Caffe's ReductionLayer, EuclideanLossLayer).

- Reduction: the axes from ``axis`` (default 0) to the end are reduced by SUM, ASUM (Σ|x|), SUMSQ
  (Σx²) or MEAN, then multiplied by ``coeff``; the top has the bottom's shape up to ``axis``.
- EuclideanLoss: loss = Σ (a − b)² / num / 2; d a = (a − b)·loss_weight/num, d b = −(a − b)·loss_weight/num.
"""
from __future__ import annotations

import torch

from rll_repro.layers._util import canonical_axis, check_bottoms, check_tops, count, fail
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register

SUM, ASUM, SUMSQ, MEAN = 1, 2, 3, 4


@register
class Reduction(Layer):
    type_names = ("Reduction",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        p = param.reduction_param
        self.op = int(p.operation)
        if self.op not in (SUM, ASUM, SUMSQ, MEAN):
            raise fail(param, f"unknown reduction operation {self.op}")
        self.coeff = float(p.coeff)
        self.axis_field = int(p.axis)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(self.param, self.axis_field, len(shape), allow_end=True) if shape else 0
        return [shape[: self.axis]]

    def forward(self, x):
        lead = x.shape[: self.axis]
        flat = x.reshape(*lead, -1)
        if self.op == SUM:
            y = flat.sum(-1)
        elif self.op == ASUM:
            y = flat.abs().sum(-1)
        elif self.op == SUMSQ:
            y = (flat * flat).sum(-1)
        else:
            y = flat.sum(-1) / flat.shape[-1]
        return (y * self.coeff if self.coeff != 1.0 else y,)


@register
class EuclideanLoss(Layer):
    type_names = ("EuclideanLoss",)
    is_loss = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 2)
        check_tops(param, 1)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        a, b = bottom_shapes
        if count(a[1:]) != count(b[1:]) or (a and b and a[0] != b[0]):
            raise fail(self.param, f"bottoms must have the same dimensions, got {tuple(a)} and {tuple(b)}")
        return [()]

    def forward(self, a, b):
        diff = a - b.reshape(a.shape)
        num = a.shape[0] if a.dim() else 1
        return (torch.sum(diff * diff) / num / 2.0,)
