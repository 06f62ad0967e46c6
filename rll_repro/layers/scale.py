"""Scale and Bias (Caffe's ScaleLayer / BiasLayer).

Scale: y = γ ⊙ x (+ β, added to the rounded product), γ broadcast over the axes [axis, axis + num_axes) of x (``axis`` 1,
``num_axes`` 1 by default; num_axes −1 = all remaining axes, 0 = a scalar). With one bottom γ is
blob [0] (``filler``, default constant 1) and β, when ``bias_term``, is blob [1] (``bias_filler``,
default constant 0). With two bottoms γ is bottom 1 (its shape fixes the broadcast axes) and β,
if any, is blob [0]. Bias: y = x + b with the same broadcasting rules.
"""
from __future__ import annotations

import torch
from torch import nn

from rll_repro.layers._util import canonical_axis, check_bottoms, check_tops, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.fillers import fill
from rll_repro.layers.registry import register


def _broadcast_shape(param, bottom_shape, axis_field, num_axes, operand_shape=None):
    """(axis, operand shape) of the broadcast operand for this bottom shape (Caffe's Scale rules)."""
    ndim = len(bottom_shape)
    if operand_shape is not None:
        num_axes = len(operand_shape)
        axis = canonical_axis(param, axis_field, ndim, allow_end=num_axes == 0) if ndim else 0
        want = tuple(bottom_shape[axis:axis + num_axes])
        if want != tuple(operand_shape):
            raise fail(param, f"bottom 1 shape {tuple(operand_shape)} does not match bottom 0 shape {tuple(bottom_shape)} at axis {axis}")
        return axis, want
    axis = canonical_axis(param, axis_field, ndim, allow_end=num_axes == 0) if ndim else 0
    if num_axes < -1:
        raise fail(param, f"num_axes must be non-negative or -1, got {num_axes}")
    end = ndim if num_axes == -1 else axis + num_axes
    if end > ndim:
        raise fail(param, f"axis {axis} + num_axes {num_axes} exceeds the {ndim} axes of the bottom")
    return axis, tuple(bottom_shape[axis:end])


def _scale_bias(x, gamma, beta):
    """x·γ + β per channel (axis 1), rounded as Caffe: the product, then the sum (no FMA)."""
    shape = (-1,) + (1,) * (x.dim() - 2)
    return (x * gamma.reshape(shape)).add_(beta.reshape(shape))


def _like(grad, x):
    """``grad`` in ``x``'s memory layout (NCHW or channels_last), as ATen's BatchNorm backward wants."""
    return grad.contiguous(memory_format=torch.contiguous_format if x.is_contiguous() else torch.channels_last)


def _input_mask(ctx):
    return [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]


class _ChannelScaleBias(torch.autograd.Function):
    """y = x·γ + β per channel (axis 1), rounded as Caffe: the product, then the sum.

    Backward in one fused pass (ATen's BatchNorm backward with mean 0, variance 1, eps 0):
    dx = dy·γ exactly as Caffe's caffe_mul, dγ = Σ dy·x and dβ = Σ dy over the other axes."""

    @staticmethod
    def forward(ctx, x, gamma, beta):
        ctx.save_for_backward(x, gamma)
        return _scale_bias(x, gamma, beta)

    @staticmethod
    def backward(ctx, grad):
        x, gamma = ctx.saved_tensors
        zeros = torch.zeros(gamma.numel(), dtype=x.dtype, device=x.device)
        ones = torch.ones(gamma.numel(), dtype=x.dtype, device=x.device)
        return tuple(torch.ops.aten.native_batch_norm_backward(
            _like(grad, x), x, gamma, zeros, ones, None, None, False, 0.0, _input_mask(ctx)))


class _BatchNormScaleBias(torch.autograd.Function):
    """Scale y = x̂·γ + β (Caffe's two roundings) of a TRAIN BatchNorm output x̂ = (x − μ)·invstd,
    differentiated with respect to the BatchNorm's input x: the backward of both layers in one ATen
    BatchNorm backward with weight γ (dx, dγ = Σ dy·x̂, dβ = Σ dy in two passes over the tensor,
    instead of four for Scale's and two for BatchNorm's). The same gradients as the two layers', up
    to float32 rounding (x̂ recomputed from x)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, x_hat, mean, invstd, eps):
        ctx.save_for_backward(x, gamma, mean, invstd)
        ctx.eps = eps
        return _scale_bias(x_hat, gamma, beta)

    @staticmethod
    def backward(ctx, grad):
        x, gamma, mean, invstd = ctx.saved_tensors
        gx, gg, gb = torch.ops.aten.native_batch_norm_backward(
            _like(grad, x), x, gamma, None, None, mean, invstd, True, ctx.eps, _input_mask(ctx))
        return gx, gg, gb, None, None, None, None


def _view(t, axis, ndim):
    """``t`` shaped for broadcasting against an ``ndim``-axis blob starting at ``axis``."""
    return t.reshape(t.shape + (1,) * (ndim - axis - t.dim()))


@register
class Scale(Layer):
    type_names = ("Scale",)
    output_unused_in_backward = True  # a following in-place layer may overwrite the top

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1, 2)
        check_tops(param, 1)
        p = param.scale_param
        self.two_bottoms = len(bottom_shapes) == 2
        where = f"layer {param.name!r}"
        if self.two_bottoms:
            self.axis, shape = _broadcast_shape(param, bottom_shapes[0], p.axis, 0, bottom_shapes[1])
        else:
            self.axis, shape = _broadcast_shape(param, bottom_shapes[0], p.axis, p.num_axes)
            filler = p.filler if has(p, "filler") else None
            if filler is None:
                gamma = torch.ones(shape, dtype=torch.float32)
            else:
                gamma = fill(filler, shape, ctx.generator, where)
            self.blobs.append(nn.Parameter(gamma))
        self.operand_shape = shape
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.bias_index = len(self.blobs)
            self.blobs.append(nn.Parameter(fill(p.bias_filler if has(p, "bias_filler") else None, shape, ctx.generator, where)))

    def reshape(self, bottom_shapes):
        p = self.param.scale_param
        if self.two_bottoms:
            _, shape = _broadcast_shape(self.param, bottom_shapes[0], p.axis, 0, bottom_shapes[1])
        else:
            _, shape = _broadcast_shape(self.param, bottom_shapes[0], p.axis, p.num_axes)
        if shape != self.operand_shape:
            raise fail(self.param, f"bottom shape {tuple(bottom_shapes[0])} needs a scale of shape {shape}, the layer has {self.operand_shape}")
        return [tuple(bottom_shapes[0])]

    def channelwise_bias(self) -> bool:
        """One γ and one β per channel (axis 1) held by the layer: what follows every BatchNorm."""
        return self.bias_term and not self.two_bottoms and self.axis == 1 and len(self.operand_shape) == 1

    def forward(self, x, *rest):
        ndim = x.dim()
        channelwise = self.channelwise_bias()
        bn = getattr(x, "batch_norm_input", None)  # set by a BatchNorm of this very forward (batchnorm.py)
        if bn is not None and channelwise:
            x0, mean, invstd, eps = bn
            return (_BatchNormScaleBias.apply(x0, self.blobs[0], self.blobs[self.bias_index], x.detach(), mean, invstd, eps),)
        if channelwise and ndim >= 2 and (x.is_contiguous() or (ndim == 4 and x.is_contiguous(memory_format=torch.channels_last))):
            return (_ChannelScaleBias.apply(x, self.blobs[0], self.blobs[self.bias_index]),)
        gamma = _view(rest[0] if self.two_bottoms else self.blobs[0], self.axis, ndim)
        y = x * gamma
        if self.bias_term:
            # Caffe rounds x·γ, then adds β (two roundings; a fused multiply-add would round once).
            # In place on the fresh product: mul's backward reads x and γ, not y.
            y = y.add_(_view(self.blobs[self.bias_index], self.axis, ndim))
        return (y,)


@register
class Bias(Layer):
    type_names = ("Bias",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1, 2)
        check_tops(param, 1)
        p = param.bias_param
        self.two_bottoms = len(bottom_shapes) == 2
        if self.two_bottoms:
            self.axis, shape = _broadcast_shape(param, bottom_shapes[0], p.axis, 0, bottom_shapes[1])
        else:
            self.axis, shape = _broadcast_shape(param, bottom_shapes[0], p.axis, p.num_axes)
            self.blobs.append(nn.Parameter(fill(p.filler if has(p, "filler") else None, shape, ctx.generator, f"layer {param.name!r}")))
        self.operand_shape = shape

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x, *rest):
        b = rest[0] if self.two_bottoms else self.blobs[0]
        return (x + _view(b, self.axis, x.dim()),)
