"""LRN (Caffe's LRNLayer), local response normalisation.

- ACROSS_CHANNELS: scale = k + (alpha/local_size)·Σ x² over the ``local_size`` channels centred on c
  (zero-padded, (local_size − 1)/2 before); y = x·scale^(−beta).
- WITHIN_CHANNEL: Caffe builds it from sub-layers: AVE pooling of x² with kernel local_size, stride 1,
  pad (local_size − 1)/2 (padding counted in the divisor, Caffe's AVE rule), then
  Power(shift 1, scale alpha, power −beta) — k is NOT used — and a product with x:
  y = x·(1 + alpha·avgpool(x²))^(−beta).
- ``local_size`` must be odd. Backward: the gradient of these formulas.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rll_repro.layers._util import check_bottoms, check_tops, fail
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


@register
class LRN(Layer):
    type_names = ("LRN",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        p = param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0 or self.size <= 0:
            raise fail(param, f"local_size must be odd and positive, got {self.size}")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = int(p.norm_region)
        if self.region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise fail(param, f"unknown norm_region {self.region}")
        if len(bottom_shapes[0]) != 4:
            raise fail(param, f"needs a 4-D bottom, got {bottom_shapes[0]}")

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        pad = (self.size - 1) // 2
        sq = x * x
        if self.region == ACROSS_CHANNELS:
            n, c, h, w = x.shape
            padded = F.pad(sq.reshape(n, 1, c, h * w), (0, 0, pad, pad))
            window = F.avg_pool2d(padded, (self.size, 1), 1, 0) * self.size
            scale = window.reshape(n, c, h, w) * (self.alpha / self.size) + self.k
        else:
            pooled = F.avg_pool2d(sq, self.size, 1, pad, True, True)
            scale = pooled * self.alpha + 1.0
        return (x * torch.pow(scale, -self.beta),)
