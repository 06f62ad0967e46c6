"""1x1 convolutions (stride 1, no padding, one group) of channels_last float32 CPU tensors with their
backward as two matrix products, and sibling 1x1 convolutions of one bottom as one.

Caffe's 1x1 convolution is a GEMM (im2col is the identity): top = W · bottom per image, and its
backward bottom_diff = Wᵀ · top_diff, weight_diff += top_diff · bottomᵀ. On an NHWC tensor the rows
(N·H·W) x C are already that matrix, so here the forward stays oneDNN's convolution (as fast as the
product) and the backward is torch.mm on the rows: the gradients in another float32 summation order
than oneDNN's backward kernels (Caffe's own order, per image and then over the batch, is neither),
5-25% faster on the BN-Inception shapes. Elsewhere (GPU, meta or fake tensors, NCHW, float64)
Convolution calls F.conv2d as before.

Sibling 1x1 convolutions that read the same blob (three in each BN-Inception module) run on the
solver path as one convolution with their weights stacked (:func:`siblings`): the input is read once
forward, its gradient is one product over all their output channels instead of three products and
two sums (Caffe's Split adds them), and the weight gradients one product. Each top is its channel
slice of the one output (the BatchNorm chains read such slices in place).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rll_repro import native
from rll_repro.layers._util import nhwc_rows


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N·H·W, C) rows of an NCHW-shaped tensor, a view where its layout allows (channels_last)."""
    v = nhwc_rows(t)
    return v if v is not None else t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def pointwise(layer) -> bool:
    """A Convolution layer (not Deconvolution) with a 1x1 kernel, stride 1, no padding, one group."""
    return (layer.param.type == "Convolution" and tuple(layer.kernel) == (1, 1) and tuple(layer.stride) == (1, 1)
            and tuple(layer.pad) == (0, 0) and layer.group == 1)


def applies(x: torch.Tensor, weight: torch.Tensor, stride, pad, group) -> bool:
    """A 1x1, stride 1, pad 0, one-group convolution of a real channels_last float32 CPU tensor that
    autograd will differentiate."""
    return (weight.dim() == 4 and weight.shape[2] == weight.shape[3] == 1 and group == 1
            and tuple(stride) == (1, 1) and tuple(pad) == (0, 0) and x.dim() == 4
            and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
            and native.plain_cpu_float32(x) and x.is_contiguous(memory_format=torch.channels_last))


class PointwiseConvolution(torch.autograd.Function):
    """y = conv1x1(x, W) + b; backward dx = g·W, dW = gᵀ·x, db = Σ g over the rows."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, _, h, w = x.shape
        out_channels = weight.shape[0]
        g = _rows(grad)
        w2 = weight.reshape(out_channels, -1)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # (N·H·W, C) rows: the channels_last layout of (N, C, H, W)
            dx = torch.mm(g, w2).view(n, h, w, -1).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            dw = torch.mm(g.t(), _rows(x)).view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


def siblings(layers, x: torch.Tensor) -> list[torch.Tensor] | None:
    """The tops of pointwise Convolution ``layers`` reading the same ``x`` (all with or all without
    bias), computed as one convolution: channel slices of its output. None where it does not apply."""
    weights = [layer.blobs[0] for layer in layers]
    if not applies(x, weights[0], (1, 1), (0, 0), 1):
        return None
    weight = torch.cat(weights, 0)
    bias = torch.cat([layer.blobs[1] for layer in layers]) if layers[0].bias_term else None
    y = PointwiseConvolution.apply(x, weight, bias)
    return list(torch.split(y, [w.shape[0] for w in weights], 1))
