"""Pooling (Caffe's PoolingLayer, MAX and AVE, 2-D).

- Output size: ceil((H + 2·pad − k)/stride) + 1, then Caffe's clip: if pad > 0 and the last window
  would start at or beyond H + pad, drop it ((pooled − 1)·stride ≥ H + pad ⇒ pooled − 1).
  (``round_mode: FLOOR`` of newer BVLC protos rounds down instead.)
- AVE divides by the window clipped to [−pad, H + pad) (padding cells inside H + pad are counted,
  cells beyond it are not), i.e. PyTorch ``ceil_mode=True, count_include_pad=True``.
- MAX ignores padding; the gradient goes to the first maximum in row-major window order. A NaN in a
  window is PyTorch's rule (it wins, the last one), where Caffe's ``>`` would pass over it; the C
  kernels of pool_native.py keep PyTorch's rule bit for bit.
- ``global_pooling``: the kernel is the whole H×W (pad 0, stride 1).
- Pads larger than half the kernel (Caffe needs only pad < kernel) are padded by hand.
- STOCHASTIC pooling is not supported.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rll_repro.layers import pool_native
from rll_repro.layers._util import check_bottoms, check_tops, fail, has, spatial_values
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register

MAX, AVE, STOCHASTIC = 0, 1, 2


def caffe_pooled_size(size: int, kernel: int, pad: int, stride: int, ceil: bool = True) -> int:
    """Caffe's pooled output length along one axis (ceil rounding + last-window clip)."""
    span = size + 2 * pad - kernel
    pooled = (math.ceil(span / stride) if ceil else span // stride) + 1
    if pad > 0 and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


@register
class Pooling(Layer):
    type_names = ("Pooling",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1, 2)
        if len(param.top) == 2:
            raise fail(param, "a second (mask) top is not supported")
        p = param.pooling_param
        self.method = int(p.pool)
        if self.method not in (MAX, AVE):
            raise fail(param, "only MAX and AVE pooling are supported")
        if len(bottom_shapes[0]) != 4:
            raise fail(param, f"needs a 4-D bottom, got shape {bottom_shapes[0]}")
        self.global_pooling = bool(p.global_pooling)
        self.ceil = not (has(p, "round_mode") and int(p.round_mode) == 1)
        if self.global_pooling:
            if has(p, "kernel_size") or has(p, "kernel_h") or has(p, "kernel_w"):
                raise fail(param, "with global_pooling the kernel size cannot be given")
            self.kernel = None
        else:
            self.kernel = _single(param, p, "kernel_size", None)
        self.pad = _single(param, p, "pad", 0)
        self.stride = _single(param, p, "stride", 1)
        if self.global_pooling and (any(self.pad) or any(s != 1 for s in self.stride)):
            raise fail(param, "with global_pooling only pad 0 and stride 1 are allowed")
        self.reshape(bottom_shapes)

    def _geometry(self, shape):
        kernel = list(shape[2:]) if self.global_pooling else self.kernel
        return kernel

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise fail(self.param, f"needs a 4-D bottom, got shape {shape}")
        kernel = self._geometry(shape)
        out = [shape[0], shape[1]]
        for i in range(2):
            k, pd, st, size = kernel[i], self.pad[i], self.stride[i], shape[2 + i]
            if k <= 0 or st <= 0:
                raise fail(self.param, f"kernel {kernel} and stride {self.stride} must be positive")
            if pd >= k:
                raise fail(self.param, f"pad {pd} must be smaller than the kernel {k}")
            pooled = caffe_pooled_size(size, k, pd, st, self.ceil)
            # PyTorch applies the clip rule also with pad 0; Caffe then keeps a window starting
            # outside the image, which only happens when the kernel is smaller than the stride.
            if pd == 0 and self.ceil and (pooled - 1) * st >= size:
                raise fail(self.param, f"kernel {k} smaller than stride {st} with pad 0 on size {size}: a window would start outside the input (not supported)")
            if pooled <= 0:
                raise fail(self.param, f"kernel {k} does not fit input size {size}")
            out.append(pooled)
        return [tuple(out)]

    def forward(self, x):
        kernel = self._geometry(x.shape)
        if any(2 * p > k for p, k in zip(self.pad, kernel)):
            return (self._explicit_pad(x, kernel),)
        if self.ceil and torch.is_grad_enabled() and x.requires_grad and pool_native.usable(x):
            out_hw = [caffe_pooled_size(x.shape[2 + i], kernel[i], self.pad[i], self.stride[i]) for i in range(2)]
            run = pool_native.max_pool if self.method == MAX else pool_native.average_pool
            return (run(x, kernel, self.stride, self.pad, out_hw),)
        if self.method == MAX:
            y = F.max_pool2d(x, kernel, self.stride, self.pad, 1, self.ceil)
        else:
            y = F.avg_pool2d(x, kernel, self.stride, self.pad, self.ceil, True)
        return (y,)

    def _explicit_pad(self, x, kernel):
        """Pads larger than half the kernel (allowed by Caffe, not by PyTorch's pooling): pad by hand
        (−inf for MAX, 0 for AVE), pool without padding, and divide AVE sums by Caffe's divisor."""
        size = x.shape[2:]
        out = [caffe_pooled_size(size[i], kernel[i], self.pad[i], self.stride[i], self.ceil) for i in range(2)]
        extra = [max(0, (out[i] - 1) * self.stride[i] + kernel[i] - self.pad[i] - size[i]) for i in range(2)]
        fill = float("-inf") if self.method == MAX else 0.0
        xp = F.pad(x, (self.pad[1], extra[1], self.pad[0], extra[0]), value=fill)
        if self.method == MAX:
            y = F.max_pool2d(xp, kernel, self.stride, 0)
            return y[:, :, : out[0], : out[1]]
        sums = F.avg_pool2d(xp, kernel, self.stride, 0, False, True, 1)[:, :, : out[0], : out[1]]
        divisors = []
        for i in range(2):
            start = torch.arange(out[i], dtype=torch.float64, device=x.device) * self.stride[i] - self.pad[i]
            end = torch.clamp(start + kernel[i], max=size[i] + self.pad[i])
            divisors.append(end - start)
        divisor = (divisors[0][:, None] * divisors[1][None, :]).to(x.dtype)
        return sums / divisor


def _single(param, p, name, default):
    # Pooling's kernel_size/pad/stride are optional scalar fields (repeated ones in Convolution).
    values = [int(getattr(p, name))] if has(p, name) else []
    short = name.replace("_size", "")  # kernel_size -> kernel_h / kernel_w
    return spatial_values(
        param,
        values,
        getattr(p, short + "_h"),
        getattr(p, short + "_w"),
        has(p, short + "_h") or has(p, short + "_w"),
        name,
        default,
    )
