"""Convolution (Caffe's ConvolutionLayer, 2-D).

- Output size: (H + 2·pad − (dilation·(k − 1) + 1)) / stride + 1, rounded down.
- ``kernel_size``/``pad``/``stride``/``dilation`` are repeated fields (one value for both axes or one per
  axis) or ``kernel_h``/``kernel_w`` etc.; defaults pad 0, stride 1, dilation 1.
- Blobs: [0] weight (num_output, C/group, kh, kw) filled by ``weight_filler`` (default constant 0),
  [1] bias (num_output) by ``bias_filler`` (default constant 0) when ``bias_term`` (default true).
- ``group`` splits input and output channels into groups; ``axis`` must be the channel axis 1.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from rll_repro.layers import pointwise_conv
from rll_repro.layers._util import check_bottoms, fail, has, spatial_values
from rll_repro.layers.base import Layer
from rll_repro.layers.fillers import fill
from rll_repro.layers.registry import register


@register
class Convolution(Layer):
    type_names = ("Convolution",)
    output_unused_in_backward = True  # a following in-place layer may overwrite the top

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.convolution_param
        if not len(param.bottom) == len(param.top):
            raise fail(param, "needs as many tops as bottoms")
        check_bottoms(param, bottom_shapes, 1, 64)
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise fail(param, f"only 2-D convolution of 4-D blobs is supported, bottom shape is {shape}")
        if p.axis != 1:
            raise fail(param, f"axis {p.axis} is not supported (only the channel axis 1)")
        self.kernel = spatial_values(param, p.kernel_size, p.kernel_h, p.kernel_w, has(p, "kernel_h") or has(p, "kernel_w"), "kernel_size", None)
        self.pad = spatial_values(param, p.pad, p.pad_h, p.pad_w, has(p, "pad_h") or has(p, "pad_w"), "pad", 0)
        self.stride = spatial_values(param, p.stride, p.stride_h, p.stride_w, has(p, "stride_h") or has(p, "stride_w"), "stride", 1)
        self.dilation = spatial_values(param, p.dilation, 0, 0, False, "dilation", 1)
        if min(self.kernel) <= 0 or min(self.stride) <= 0 or min(self.dilation) <= 0 or min(self.pad) < 0:
            raise fail(param, f"invalid geometry kernel {self.kernel} stride {self.stride} pad {self.pad}")
        self.group = int(p.group)
        self.num_output = int(p.num_output)
        channels = shape[1]
        if self.num_output <= 0:
            raise fail(param, "num_output must be positive")
        if self.group <= 0 or channels % self.group or self.num_output % self.group:
            raise fail(param, f"group {self.group} must divide channels {channels} and num_output {self.num_output}")
        self.channels = channels
        where = f"layer {param.name!r}"
        wshape = self.weight_shape()
        self.blobs.append(nn.Parameter(fill(p.weight_filler if has(p, "weight_filler") else None, wshape, ctx.generator, where)))
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.blobs.append(nn.Parameter(fill(p.bias_filler if has(p, "bias_filler") else None, (self.num_output,), ctx.generator, where)))

    def weight_shape(self) -> tuple[int, ...]:
        """Caffe's convolution weight: (num_output, channels / group, kh, kw)."""
        return (self.num_output, self.channels // self.group, *self.kernel)

    def output_size(self, axis: int, in_size: int) -> int:
        """Caffe's ConvolutionLayer::compute_output_shape for one spatial axis (rounded down)."""
        extent = self.dilation[axis] * (self.kernel[axis] - 1) + 1
        size = (in_size + 2 * self.pad[axis] - extent) // self.stride[axis] + 1
        if size <= 0:
            raise fail(self.param, f"kernel {self.kernel} does not fit the input size {in_size} on spatial axis {axis} with pad {self.pad}")
        return size

    def convolve(self, x, weight, bias):
        if pointwise_conv.applies(x, weight, self.stride, self.pad, self.group):
            return pointwise_conv.PointwiseConvolution.apply(x, weight, bias)
        return F.conv2d(x, weight, bias, self.stride, self.pad, self.dilation, self.group)

    def reshape(self, bottom_shapes):
        tops = []
        for shape in bottom_shapes:
            if len(shape) != 4 or shape[1] != self.channels:
                raise fail(self.param, f"bottom shape {shape} does not match the layer's {self.channels} input channels")
            tops.append((shape[0], self.num_output, *(self.output_size(i, shape[2 + i]) for i in range(2))))
        return tops

    def forward(self, *bottoms):
        weight = self.blobs[0]
        bias = self.blobs[1] if self.bias_term else None
        return tuple(self.convolve(x, weight, bias) for x in bottoms)


@register
class Deconvolution(Convolution):
    """Deconvolution (Caffe's DeconvolutionLayer): the transposed convolution.

    Weight shape (C_in, num_output/group, kh, kw); output size stride·(H − 1) + dilation·(k − 1) + 1 − 2·pad.
    """

    type_names = ("Deconvolution",)

    def weight_shape(self) -> tuple[int, ...]:
        """Caffe's deconvolution weight: (channels, num_output / group, kh, kw)."""
        return (self.channels, self.num_output // self.group, *self.kernel)

    def output_size(self, axis: int, in_size: int) -> int:
        """Caffe's DeconvolutionLayer::compute_output_shape for one spatial axis."""
        extent = self.dilation[axis] * (self.kernel[axis] - 1) + 1
        size = self.stride[axis] * (in_size - 1) + extent - 2 * self.pad[axis]
        if size <= 0:
            raise fail(self.param, f"output size {size} is not positive")
        return size

    def convolve(self, x, weight, bias):
        return F.conv_transpose2d(x, weight, bias, self.stride, self.pad, 0, self.group, self.dilation)
