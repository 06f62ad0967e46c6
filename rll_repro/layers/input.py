"""Input: the net's input blobs (Caffe's InputLayer; also the legacy `input:`/`input_dim`/`input_shape`
fields of NetParameter, which the net builder turns into one Input layer as Caffe's UpgradeNetInput does).

``input_param.shape`` gives one shape per top, or a single shape shared by all tops. The data of the
tops is set from outside (``net.blobs[name].data[...] = x`` or ``net.forward(name=x)``); the layer
itself computes nothing.
"""
from __future__ import annotations

import torch

from rll_repro.layers._util import fail
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register


@register
class Input(Layer):
    type_names = ("Input",)
    is_input = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        if bottom_shapes:
            raise fail(param, "an Input layer takes no bottom blobs")
        shapes = [tuple(int(d) for d in s.dim) for s in param.input_param.shape]
        n_top = len(param.top)
        if len(shapes) == 1 and n_top > 1:
            shapes = shapes * n_top
        if len(shapes) != n_top:
            raise fail(param, f"input_param gives {len(shapes)} shapes for {n_top} tops (need 1 or {n_top})")
        for shape in shapes:
            if any(d < 0 for d in shape):
                raise fail(param, f"negative dimension in input shape {shape}")
        self.shapes = shapes

    def reshape(self, bottom_shapes):
        return list(self.shapes)

    def forward(self, *bottoms):
        # The net feeds Input tops directly; a standalone call returns zero blobs of the declared shapes.
        return tuple(torch.zeros(s, dtype=self.ctx.dtype, device=self.ctx.device) for s in self.shapes)
