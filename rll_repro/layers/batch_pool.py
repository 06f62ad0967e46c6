"""BatchPool (OSM+CAA fork, OSM SPEC §2.7): pool over the batch axis; the top has num = 1.

- With a second bottom w (count must equal num): y = Σ_n w_n·x_n regardless of ``pool``;
  dx_n = w_n·dy, dw_n = x_n·dy (summed over the sample's elements) when propagate_down[1].
- Without weights: MAX (the first maximum over n wins, gradient to it) or AVE (mean, gradient dy/N).
  ``batch_pool_param.pool``: MAX = 0, AVE = 1 (default), STOCHASTIC = 2 (not supported).
"""
from __future__ import annotations

import torch

from rll_repro.layers._util import check_bottoms, check_tops, count, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register

MAX, AVE, STOCHASTIC = 0, 1, 2


@register
class BatchPool(Layer):
    type_names = ("BatchPool",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1, 2)
        check_tops(param, 1)
        p = getattr(param, "batch_pool_param", None)
        self.pool = int(p.pool) if p is not None and has(p, "pool") else AVE
        self.weighted = len(bottom_shapes) == 2
        if not self.weighted and self.pool not in (MAX, AVE):
            raise fail(param, "only MAX and AVE batch pooling are supported")
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if not shape:
            raise fail(self.param, "bottom must have a batch axis")
        if self.weighted and count(bottom_shapes[1]) != shape[0]:
            raise fail(self.param, f"weight count {count(bottom_shapes[1])} must equal num {shape[0]}")
        return [(1,) + shape[1:]]

    def forward(self, x, *rest):
        n = x.shape[0]
        if self.weighted:
            w = rest[0].reshape(n, *([1] * (x.dim() - 1)))
            return ((x * w).sum(dim=0, keepdim=True),)
        if self.pool == AVE:
            return (x.mean(dim=0, keepdim=True),)
        with torch.no_grad():  # Caffe's strict '>' scan: the first sample holding the maximum wins
            index = (x == x.amax(dim=0, keepdim=True)).to(torch.uint8).argmax(dim=0, keepdim=True)
        return (torch.gather(x, 0, index),)
