"""Eltwise (Caffe's EltwiseLayer): SUM (with optional per-bottom ``coeff``), PROD, MAX.

- SUM: y = Σ c_i·x_i; dx_i = c_i·dy.
- PROD: y = Π x_i; dx_i = dy · Π_{j≠i} x_j.
- MAX: y = max_i x_i where a later bottom wins only if strictly greater (the first maximum wins ties);
  the gradient goes to that bottom only.
"""
from __future__ import annotations

import torch

from rll_repro.layers._util import check_bottoms, check_tops, fail
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register

PROD, SUM, MAX = 0, 1, 2


@register
class Eltwise(Layer):
    type_names = ("Eltwise",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 2, 1 << 20)
        check_tops(param, 1)
        p = param.eltwise_param
        self.op = int(p.operation)
        if self.op not in (PROD, SUM, MAX):
            raise fail(param, f"unknown operation {self.op}")
        self.coeffs = [float(c) for c in p.coeff]
        if self.coeffs and (self.op != SUM or len(self.coeffs) != len(bottom_shapes)):
            raise fail(param, "coeff is only allowed for SUM, one per bottom")
        if not self.coeffs:
            self.coeffs = [1.0] * len(bottom_shapes)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        for shape in bottom_shapes[1:]:
            if tuple(shape) != first:
                raise fail(self.param, f"bottom shapes differ: {[tuple(s) for s in bottom_shapes]}")
        return [first]

    def forward(self, *xs):
        if self.op == SUM:
            y = None
            for c, x in zip(self.coeffs, xs):
                term = x if c == 1.0 else x * c
                y = term if y is None else y + term
            return (y,)
        if self.op == PROD:
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return (y,)
        with torch.no_grad():
            best = xs[0]
            index = torch.zeros(best.shape, dtype=torch.long, device=best.device)
            for i, x in enumerate(xs[1:], start=1):
                better = x > best
                best = torch.where(better, x, best)
                index = torch.where(better, torch.full_like(index, i), index)
        stacked = torch.stack(xs, dim=0)
        return (torch.gather(stacked, 0, index.unsqueeze(0)).squeeze(0),)
