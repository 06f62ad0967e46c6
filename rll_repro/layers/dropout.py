"""Dropout (Caffe's DropoutLayer).

TRAIN: y = x · mask · 1/(1 − ratio), mask_i ~ Bernoulli(1 − ratio) (Caffe keeps a unit when its random
32-bit integer exceeds UINT_MAX·ratio, so ratio 0 keeps every unit except with probability 2^−32: the
layer is the identity, which is what this port does). TEST: identity. With ``scale_train: false``
(newer BVLC) the scaling moves to test time instead.
"""
from __future__ import annotations

import torch

from rll_repro.layers._util import check_bottoms, check_tops, fail
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register


@register
class Dropout(Layer):
    type_names = ("Dropout",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        p = param.dropout_param
        self.ratio = float(p.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise fail(param, f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale_train = bool(getattr(p, "scale_train", True))
        self.scale = 1.0 / (1.0 - self.ratio)
        self.train_phase = ctx.phase == "train"

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        if not self.train_phase:
            return (x if self.scale_train or self.ratio == 0.0 else x * (1.0 - self.ratio),)
        if self.ratio == 0.0:
            return (x,)
        keep = torch.rand(x.shape, generator=self.ctx.runtime_generator, dtype=x.dtype, device=x.device) >= self.ratio
        factor = keep.to(x.dtype) * (self.scale if self.scale_train else 1.0)
        return (x * factor,)
