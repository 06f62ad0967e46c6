"""InnerProduct (Caffe's InnerProductLayer).

The bottom is flattened from ``axis`` (default 1): M = count(0, axis) rows of K = count(axis) values;
y = x·Wᵀ + b with W of shape (num_output, K) ([0], ``weight_filler``, default constant 0) or (K,
num_output) when ``transpose``; b ([1], ``bias_filler``) when ``bias_term`` (default true). The top
shape is bottom.shape[:axis] + (num_output,), so a 4-D N×C×H×W bottom gives N×num_output.
"""
from __future__ import annotations

import torch
from torch import nn

from rll_repro.layers._util import canonical_axis, check_bottoms, check_tops, count, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.fillers import fill
from rll_repro.layers.registry import register


@register
class InnerProduct(Layer):
    type_names = ("InnerProduct",)
    output_unused_in_backward = True  # a following in-place layer may overwrite the top

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        p = param.inner_product_param
        shape = bottom_shapes[0]
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise fail(param, "num_output must be positive")
        self.axis = canonical_axis(param, int(p.axis), len(shape))
        self.k = count(shape, self.axis)
        self.transpose = bool(getattr(p, "transpose", False))
        where = f"layer {param.name!r}"
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        self.blobs.append(nn.Parameter(fill(p.weight_filler if has(p, "weight_filler") else None, wshape, ctx.generator, where)))
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.blobs.append(nn.Parameter(fill(p.bias_filler if has(p, "bias_filler") else None, (self.num_output,), ctx.generator, where)))

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        axis = canonical_axis(self.param, int(self.param.inner_product_param.axis), len(shape))
        k = count(shape, axis)
        if k != self.k:
            raise fail(self.param, f"input size {k} (shape {tuple(shape)} from axis {axis}) does not match the weights' {self.k}")
        return [tuple(shape[:axis]) + (self.num_output,)]

    def forward(self, x):
        lead = x.shape[: self.axis]
        x2 = x.reshape(-1, self.k)
        w = self.blobs[0]
        if self.transpose:
            w = w.t()
        if self.bias_term:
            y = torch.addmm(self.blobs[1], x2, w.t())
        else:
            y = x2 @ w.t()
        if y.dim() == len(lead) + 1:
            return (y,)
        return (y.reshape(*lead, self.num_output),)
