"""Element-wise activations: ReLU (leaky), Sigmoid, TanH, AbsVal, Power (Caffe's neuron layers).

- ReLU: y = max(x, 0) + negative_slope·min(x, 0); dy/dx = 1 if x > 0 else negative_slope (0 at x = 0).
- Sigmoid: 1/(1 + e^−x); TanH: tanh(x); AbsVal: |x| (gradient sign(x), 0 at 0).
- Power: y = (shift + scale·x)^power.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rll_repro.layers._util import check_bottoms, check_tops
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register


class _Neuron(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]


@register
class ReLU(_Neuron):
    type_names = ("ReLU",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.negative_slope = float(param.relu_param.negative_slope)

    def forward(self, x):
        if self.negative_slope == 0.0:
            return (F.relu(x),)
        return (F.leaky_relu(x, self.negative_slope),)

    def forward_inplace(self, x):
        """Overwrite the bottom (Caffe's in-place ReLU); the net calls this only where it is safe."""
        if self.negative_slope == 0.0:
            return (torch.relu_(x),)
        return (F.leaky_relu_(x, self.negative_slope),)


@register
class Sigmoid(_Neuron):
    type_names = ("Sigmoid",)

    def forward(self, x):
        return (torch.sigmoid(x),)


@register
class TanH(_Neuron):
    type_names = ("TanH",)

    def forward(self, x):
        return (torch.tanh(x),)


@register
class AbsVal(_Neuron):
    type_names = ("AbsVal",)

    def forward(self, x):
        return (torch.abs(x),)


@register
class Power(_Neuron):
    type_names = ("Power",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)

    def forward(self, x):
        base = x * self.scale + self.shift if (self.scale != 1.0 or self.shift != 0.0) else x
        if self.power == 1.0:
            return (base,)
        return (torch.pow(base, self.power),)
