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
        wshape = (self.num_output, channels // self.group, *self.kernel)
        self.blobs.append(nn.Parameter(fill(p.weight_filler if has(p, "weight_filler") else None, wshape, ctx.generator, where)))
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.blobs.append(nn.Parameter(fill(p.bias_filler if has(p, "bias_filler") else None, (self.num_output,), ctx.generator, where)))

    def reshape(self, bottom_shapes):
        tops = []
        for shape in bottom_shapes:
            if len(shape) != 4 or shape[1] != self.channels:
                raise fail(self.param, f"bottom shape {shape} does not match the layer's {self.channels} input channels")
            out = [shape[0], self.num_output]
            for i in range(2):
                extent = self.dilation[i] * (self.kernel[i] - 1) + 1
                size = (shape[2 + i] + 2 * self.pad[i] - extent) // self.stride[i] + 1
                if size <= 0:
                    raise fail(self.param, f"kernel {self.kernel} does not fit the {shape[2:]} input with pad {self.pad}")
                out.append(size)
            tops.append(tuple(out))
        return tops

    def forward(self, *bottoms):
        weight = self.blobs[0]
        bias = self.blobs[1] if self.bias_term else None
        return tuple(
            F.conv2d(x, weight, bias, self.stride, self.pad, self.dilation, self.group) for x in bottoms
        )


@register
class Deconvolution(Convolution):
    """Deconvolution (Caffe's DeconvolutionLayer): the transposed convolution.

    Weight shape (C_in, num_output/group, kh, kw); output size stride·(H − 1) + dilation·(k − 1) + 1 − 2·pad.
    """

    type_names = ("Deconvolution",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        # Caffe's deconvolution weight is (channels, num_output / group, kh, kw)
        p = param.convolution_param
        wshape = (self.channels, self.num_output // self.group, *self.kernel)
        where = f"layer {param.name!r}"
        self.blobs[0] = nn.Parameter(fill(p.weight_filler if has(p, "weight_filler") else None, wshape, ctx.generator, where))

    def reshape(self, bottom_shapes):
        tops = []
        for shape in bottom_shapes:
            if len(shape) != 4 or shape[1] != self.channels:
                raise fail(self.param, f"bottom shape {shape} does not match the layer's {self.channels} input channels")
            out = [shape[0], self.num_output]
            for i in range(2):
                extent = self.dilation[i] * (self.kernel[i] - 1) + 1
                size = self.stride[i] * (shape[2 + i] - 1) + extent - 2 * self.pad[i]
                if size <= 0:
                    raise fail(self.param, f"output size {size} is not positive")
                out.append(size)
            tops.append(tuple(out))
        return tops

    def forward(self, *bottoms):
        weight = self.blobs[0]
        bias = self.blobs[1] if self.bias_term else None
        return tuple(
            F.conv_transpose2d(x, weight, bias, self.stride, self.pad, 0, self.group, self.dilation) for x in bottoms
        )
