"""Element-wise activations: ReLU (leaky), Sigmoid, TanH, AbsVal, Power (Caffe's neuron layers).

- ReLU: y = max(x, 0) + negative_slope·min(x, 0); dy/dx = 1 if x > 0 else negative_slope (0 at x = 0).
- Sigmoid: 1/(1 + e^−x); TanH: tanh(x); AbsVal: |x| (gradient sign(x), 0 at 0).
- Power: y = (shift + scale·x)^power.
- ELU, BNLL, Exp, Log, Threshold, PReLU: see each class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rll_repro.layers._util import check_bottoms, check_tops, fail
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register


class _Neuron(Layer):
    """Caffe's NeuronLayer: one bottom, one top of the same shape (elementwise; in-place allowed)."""

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


@register
class ELU(_Neuron):
    """ELU: y = x if x > 0 else alpha·(e^x − 1)."""

    type_names = ("ELU",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.alpha = float(param.elu_param.alpha)

    def forward(self, x):
        return (F.elu(x, self.alpha),)


@register
class BNLL(_Neuron):
    """BNLL: y = x + log(1 + e^−x) if x > 0 else log(1 + e^x)."""

    type_names = ("BNLL",)

    def forward(self, x):
        return (F.softplus(x),)


def _base_log(base: float) -> float:
    import math

    return 1.0 if base == -1.0 else math.log(base)


@register
class Exp(_Neuron):
    """Exp: y = base^(shift + scale·x) (base −1 = e)."""

    type_names = ("Exp",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.exp_param
        if p.base != -1.0 and p.base <= 0:
            raise fail(param, f"base must be positive (or -1 for e), got {p.base}")
        self.inner_scale = _base_log(p.base) * p.scale
        self.outer_scale = 1.0 if p.shift == 0 else float(torch.exp(torch.tensor(_base_log(p.base) * p.shift)))

    def forward(self, x):
        y = torch.exp(x * self.inner_scale) if self.inner_scale != 1.0 else torch.exp(x)
        return (y * self.outer_scale if self.outer_scale != 1.0 else y,)


@register
class Log(_Neuron):
    """Log: y = log_base(shift + scale·x) (base −1 = e)."""

    type_names = ("Log",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.log_param
        if p.base != -1.0 and p.base <= 0:
            raise fail(param, f"base must be positive (or -1 for e), got {p.base}")
        self.base_scale = 1.0 / _base_log(p.base)
        self.scale, self.shift = float(p.scale), float(p.shift)

    def forward(self, x):
        inner = x * self.scale + self.shift if (self.scale != 1.0 or self.shift != 0.0) else x
        y = torch.log(inner)
        return (y * self.base_scale if self.base_scale != 1.0 else y,)


@register
class Threshold(_Neuron):
    """Threshold: y = 1 if x > threshold else 0 (no gradient, as Caffe)."""

    type_names = ("Threshold",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.threshold = float(param.threshold_param.threshold)

    def forward(self, x):
        return ((x.detach() > self.threshold).to(x.dtype),)


@register
class PReLU(_Neuron):
    """PReLU: y = max(x, 0) + a_c·min(x, 0), a per channel (or one shared), filler default constant
    0.25; the slope at x = 0 is a_c, as in Caffe."""

    type_names = ("PReLU",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        from torch import nn

        from rll_repro.layers.fillers import fill

        p = param.prelu_param
        shape = bottom_shapes[0]
        if len(shape) < 2 and not p.channel_shared:
            raise fail(param, "needs a bottom with a channel axis (or channel_shared)")
        self.shared = bool(p.channel_shared)
        n = 1 if self.shared else shape[1]
        if p.HasField("filler"):
            slope = fill(p.filler, (n,), ctx.generator, f"layer {param.name!r}")
        else:
            slope = torch.full((n,), 0.25)
        self.blobs.append(nn.Parameter(slope))

    def forward(self, x):
        a = self.blobs[0]
        a = a.reshape((1, -1) + (1,) * (x.dim() - 2)) if not self.shared else a.reshape(())
        return (torch.where(x > 0, x, x * a),)
