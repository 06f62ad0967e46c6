"""Pooling of channels_last float32 CPU tensors in C (pool_kernels.c) when a gradient is wanted: MAX
pooling (values, indices, gradients) and AVE pooling's backward (its forward is PyTorch's), the same
numbers as PyTorch's CPU kernels bit for bit, each backward a gather (every input cell written once)
instead of a zero fill and a scatter. Elsewhere (GPU, meta or fake tensors, NCHW, float64, no
gradient, no C compiler) rll_repro.layers.pooling calls ``F.max_pool2d`` / ``F.avg_pool2d``."""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from rll_repro import native
from rll_repro.layers._util import nhwc_rows_for_c

SOURCE = Path(__file__).with_name("pool_kernels.c")
_i64, _int, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_GEOMETRY = [_i64] * 12  # n, h, w, c, oh, ow, kh, kw, sh, sw, ph, pw
_KERNELS = native.Kernels(SOURCE, {
    "max_pool_forward": _GEOMETRY + [_ptr, _ptr, _ptr, _int],
    "max_pool_backward": _GEOMETRY + [_ptr, _i64, _ptr, _ptr, _int],
    "average_pool_backward": _GEOMETRY + [_ptr, _i64, _ptr, _int],
}, openmp=True)


def status() -> str:
    return _KERNELS.status()


def usable(x: torch.Tensor) -> bool:
    return (x.dim() == 4 and native.plain_cpu_float32(x) and x.is_contiguous(memory_format=torch.channels_last)
            and x.numel() > 0 and x.shape[2] * x.shape[3] < 2 ** 31 and _KERNELS.get() is not None)


class MaxPool(torch.autograd.Function):
    """y = MAX pooling of x (NHWC) over windows ``kernel`` at ``stride`` with ``pad``; the output size
    ``out_hw`` is the layer's (Caffe's rule, which PyTorch's ceil mode gives too)."""

    @staticmethod
    def forward(ctx, x, kernel, stride, pad, out_hw):
        n, c, h, w = x.shape
        geometry = (n, h, w, c, *out_hw, *kernel, *stride, *pad)
        out = torch.empty((n, c, *out_hw), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        idx = torch.empty((n, c, *out_hw), dtype=torch.int32, device=x.device, memory_format=torch.channels_last)
        _KERNELS.get().max_pool_forward(*geometry, x.data_ptr(), out.data_ptr(), idx.data_ptr(), native.threads())
        ctx.save_for_backward(idx)
        ctx.geometry = geometry
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    def backward(ctx, grad, _grad_idx):
        (idx,) = ctx.saved_tensors
        grad, stride, dx = _gradient_buffers(ctx.geometry, grad)
        _KERNELS.get().max_pool_backward(*ctx.geometry, grad.data_ptr(), stride, idx.data_ptr(), dx.data_ptr(),
                                         native.threads())
        return dx, None, None, None, None


def _gradient_buffers(geometry, grad):
    """(grad's NHWC rows, their row stride, the input gradient to write)."""
    n, h, w, c = geometry[:4]
    rows, stride = nhwc_rows_for_c(grad)
    dx = torch.empty((n, c, h, w), dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last)
    return rows, stride, dx


class AveragePool(torch.autograd.Function):
    """AVE pooling with PyTorch's forward (ceil mode, count_include_pad: Caffe's divisor) and the
    gather backward."""

    @staticmethod
    def forward(ctx, x, kernel, stride, pad, out_hw):
        n, c, h, w = x.shape
        ctx.geometry = (n, h, w, c, *out_hw, *kernel, *stride, *pad)
        return torch.nn.functional.avg_pool2d(x, kernel, stride, pad, True, True)

    @staticmethod
    def backward(ctx, grad):
        grad, stride, dx = _gradient_buffers(ctx.geometry, grad)
        _KERNELS.get().average_pool_backward(*ctx.geometry, grad.data_ptr(), stride, dx.data_ptr(), native.threads())
        return dx, None, None, None, None


def max_pool(x, kernel, stride, pad, out_hw) -> torch.Tensor:
    return MaxPool.apply(x, tuple(kernel), tuple(stride), tuple(pad), tuple(out_hw))[0]


def average_pool(x, kernel, stride, pad, out_hw) -> torch.Tensor:
    return AveragePool.apply(x, tuple(kernel), tuple(stride), tuple(pad), tuple(out_hw))
