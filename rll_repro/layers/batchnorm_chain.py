"""A TRAIN BatchNorm -> Scale -> ReLU chain in one forward pass and one backward (batchnorm_chain.c).

Every BatchNorm of the papers' BN-Inception nets is followed by a per-channel Scale with bias and a
ReLU (RLL SPEC §2.2); Caffe runs them as three layers, each a pass or more over the activation
(forward: the two statistics, x − μ, the division, x̂·γ, + β, the ReLU; backward three again). Here,
on the solver path (no blob diff kept: ``BuildContext.fuse_backward``), the net runs the chain as one
operation on channels_last float32 CPU tensors, with Caffe's arithmetic operation for operation
(the C file's header lists them): the statistics in one pass over x, the three tops' arithmetic in a
second, and the backward of all three layers in two. The chain's intermediate tops (BatchNorm's and,
without an in-place ReLU, Scale's) are not written; the net recomputes them, bit for bit, when a
caller reads their blob (:func:`run` returns the recipe).

Caffe's sums are float32 BLAS calls in the BLAS's own order; here each is a float64 sum rounded
once, in an order fixed by the tensor's size (the same bits for every thread count). Elsewhere
(GPU, meta or fake tensors, NCHW, float64, a data-parallel net, no C compiler) the layers run one by
one.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable

import torch

from rll_repro import native
from rll_repro.layers._util import fail, nhwc_rows, nhwc_rows_for_c

SOURCE = Path(__file__).with_name("batchnorm_chain.c")
CPU = torch.device("cpu")
_i64, _f32, _int, _ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "bn_statistics": [_i64, _i64, _ptr, _i64, _f32, _ptr, _ptr, _ptr, _int],
    "bn_apply": [_i64, _i64, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _int, _ptr, _int],
    "bn_chain_backward": [_i64, _i64, _ptr, _i64, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _f32, _ptr, _ptr, _ptr, _int],
}
_KERNELS = native.Kernels(SOURCE, _SIGNATURES, {"bn_statistics": _int, "bn_chain_backward": _int}, openmp=True)
STAGE_BATCHNORM, STAGE_SCALE, STAGE_RELU = 0, 1, 2  # which top bn_apply writes


def status() -> str:
    """Whether the chain kernels are in use here (one line, with the reason when not)."""
    return _KERNELS.status()


def _check(result: int) -> None:
    if result < 0:
        raise MemoryError("batchnorm chain kernels: no memory for the per-chunk accumulators")


def usable(x: torch.Tensor) -> bool:
    """Whether the chain runs in C for this BatchNorm input: a real float32 4-D CPU tensor laid out
    as rows of channels (channels_last, or a channel slice of one) with more than one value per
    channel, and the kernels built."""
    return (x.dim() == 4 and native.plain_cpu_float32(x) and x.numel() > x.shape[1] > 0
            and nhwc_rows(x) is not None and _KERNELS.get() is not None)


class _BatchNormScaleReLU(torch.autograd.Function):
    """out = relu?((x − μ)/σ · γ + β) with the batch statistics; returns (out, μ, σ², σ) (the last
    three without gradient); backward gives dx, dγ, dβ as Caffe's three layers do."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps: float, relu: bool):
        c = x.shape[1]
        xv, xs = nhwc_rows_for_c(x)
        mean, var, std = (torch.empty(c, dtype=torch.float32, device=CPU) for _ in range(3))
        g32, b32 = gamma.detach().contiguous(), beta.detach().contiguous()
        _check(_KERNELS.get().bn_statistics(xv.shape[0], c, xv.data_ptr(), xs, eps, mean.data_ptr(), var.data_ptr(),
                                            std.data_ptr(), native.threads()))
        out = intermediate(x, mean, std, g32, b32, STAGE_RELU if relu else STAGE_SCALE)
        ctx.save_for_backward(x, mean, std, g32, b32 if relu else None)
        ctx.mark_non_differentiable(mean, var, std)
        return out, mean, var, std

    @staticmethod
    def backward(ctx, grad, _gm, _gv, _gs):
        x, mean, std, gamma, relu_beta = ctx.saved_tensors
        c = x.shape[1]
        gv, gs = nhwc_rows_for_c(grad)
        xv, xs = nhwc_rows_for_c(x)
        rows = xv.shape[0]
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        dgamma, dbeta = (torch.empty(c, dtype=torch.float32, device=CPU) for _ in range(2))
        _check(_KERNELS.get().bn_chain_backward(
            rows, c, gv.data_ptr(), gs, xv.data_ptr(), xs, mean.data_ptr(), std.data_ptr(), gamma.data_ptr(),
            None if relu_beta is None else relu_beta.data_ptr(), -1.0 / rows, dx.data_ptr(), dgamma.data_ptr(),
            dbeta.data_ptr(), native.threads()))
        needs = ctx.needs_input_grad
        return (dx if needs[0] else None, dgamma if needs[1] else None, dbeta if needs[2] else None, None, None)


def intermediate(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, gamma: torch.Tensor,
                 beta: torch.Tensor, stage: int) -> torch.Tensor:
    """BatchNorm's top (``STAGE_BATCHNORM``), Scale's (``STAGE_SCALE``) or the ReLU's (``STAGE_RELU``)
    of a chain from its input and statistics (one elementwise pass): the values the three layers
    write. The forward's output, and an intermediate top recomputed when its blob is read."""
    c = x.shape[1]
    xv, xs = nhwc_rows_for_c(x)
    top = torch.empty_like(x, memory_format=torch.channels_last)
    _KERNELS.get().bn_apply(xv.shape[0], c, xv.data_ptr(), xs, mean.data_ptr(), std.data_ptr(),
                            native.pointer(gamma, "batchnorm chain kernels"), native.pointer(beta, "batchnorm chain kernels"),
                            stage, top.data_ptr(), native.threads())
    return top


def run(batchnorm, scale, relu: bool, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]] | None:
    """The chain ``batchnorm`` -> ``scale`` (-> ReLU when ``relu``) on ``x``: (the last top, a function
    of the stage giving an intermediate top), with the BatchNorm's running sums updated as its own
    forward does; None where the chain does not run in C (the net then runs the layers one by one)."""
    if not (batchnorm.chain_ready() and scale.channelwise_bias() and usable(x)):
        return None
    gamma, beta = scale.blobs[0], scale.blobs[scale.bias_index]
    out, mean, var, std = _BatchNormScaleReLU.apply(x, gamma, beta, batchnorm.eps, relu)
    m = x.numel() // x.shape[1]
    batchnorm.update_running(mean, var * (m / (m - 1)))
    saved = (x.detach(), x._version, mean, std, gamma.detach().clone(), beta.detach().clone())

    def top(stage: int) -> torch.Tensor:
        x0, version, mean0, std0, gamma0, beta0 = saved
        if x0._version != version:
            raise fail(batchnorm.param, "its bottom was overwritten in place after the forward, so its top "
                                        "(not stored: the chain ran fused) can no longer be recomputed")
        return intermediate(x0, mean0, std0, gamma0, beta0, stage)

    return out, top
