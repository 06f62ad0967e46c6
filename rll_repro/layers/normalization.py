"""Normalization (both forks' ``normalization_layer.cpp``; CPU-only in Caffe, no ``.cu``).

``normalization_param.norm`` (L1 = 1, L2 = 2, default L2); n = num, d = count / n.

- **L2, per sample** (SPEC rll §2.1, osm §2.5): ``y_k = x_k * float(pow(q_k + eps, -0.5))`` with
  ``q_k = sum x_k^2`` stored as float. ``eps`` = 0 in the RLL fork (a zero vector gives inf/NaN, as
  in Caffe) and 1e-12 in the OSM fork (``ctx.dialect.l2_normalization_eps``). Backward, with the
  norm recomputed from x: ``g_x = (g_y - dot(y, g_y) y) * float(pow(dot(x, x) + eps, -0.5))``.
- **L1, across the batch** (OSM fork only, SPEC osm §2.5): the first n elements of the blob are one
  vector: ``y_k = x_k * float(1 / (sum_{k<n} |x_k| + 1e-12))``; the other elements of the top are
  never written (they stay 0). Backward ``g_x = (g_y - dot(y, g_y)) * float(1 / (sum|x| + 1e-12))``
  on the first n elements, 0 elsewhere. The RLL fork's L1 branch is buggy and unused there
  (SPEC rll §2.1): building it in an RLL-dialect net is a NetError.

Elementwise work runs in the input's dtype (the same float operations as Caffe); sums are
accumulated in float64 and rounded once; pow in double, as in the C++ (see _pairwise).
"""
from __future__ import annotations

import torch

from rll_repro.layers import _pair_native
from rll_repro.layers._pairwise import F64, sum64
from rll_repro.layers._util import check_bottoms, check_tops, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register

L1, L2 = 1, 2


def _pow(q: torch.Tensor, eps: float, exponent: float) -> torch.Tensor:
    """float(pow(q + eps, exponent)) evaluated in double, as the C++ does."""
    return torch.pow(q.to(F64) + eps, exponent).to(q.dtype)


class L2NormalizeFunction(torch.autograd.Function):
    """Caffe's per-sample L2 Normalization with its own backward (norm recomputed from x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float):
        x2 = x.reshape(x.shape[0], -1)
        ctx.native = _pair_native.usable(x)  # the same operations, one pass (pair_kernels.c)
        if ctx.native:
            y, scale = _pair_native.l2_normalize_forward(x2, eps)
            y = y.reshape(x.shape)
        else:
            scale = _pow(sum64(x2 * x2, 1, keepdim=True), eps, -0.5)
            y = (x2 * scale).reshape(x.shape)
        # Caffe's backward recomputes the norm from x: the same operations on the same x give this
        # very value (autograd's version check refuses an x changed in place in between)
        ctx.save_for_backward(x, y, scale)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, y, scale = ctx.saved_tensors
        n = x.shape[0]
        y2, g2 = y.reshape(n, -1), grad_y.reshape(n, -1)
        if ctx.native and _pair_native.usable(grad_y):
            return _pair_native.l2_normalize_backward(y2, g2, scale).reshape(x.shape), None
        t = g2 - sum64(y2 * g2, 1, keepdim=True) * y2
        return (t * scale).reshape(x.shape), None


class L1BatchNormalizeFunction(torch.autograd.Function):
    """The OSM fork's L1 Normalization: the first n = num elements normalised as one vector."""

    EPS = 1e-12

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        n = x.shape[0]
        head = x.reshape(-1)[:n]
        scale = _pow(sum64(head.abs()), L1BatchNormalizeFunction.EPS, -1.0)
        y = torch.zeros(x.numel(), dtype=x.dtype, device=x.device)
        y[:n] = head * scale
        ctx.save_for_backward(y[:n].clone(), scale)
        ctx.shape, ctx.n = x.shape, n
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        y, scale = ctx.saved_tensors
        n = ctx.n
        g = grad_y.reshape(-1)[:n]
        grad = torch.zeros(grad_y.numel(), dtype=grad_y.dtype, device=grad_y.device)
        grad[:n] = (g - sum64(y * g)) * scale
        return grad.reshape(ctx.shape)


def l2_normalize(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per-sample L2 normalisation with Caffe's arithmetic; eps 0 (RLL fork) or 1e-12 (OSM fork)."""
    return L2NormalizeFunction.apply(x, float(eps))


def l1_batch_normalize(x: torch.Tensor) -> torch.Tensor:
    """The OSM fork's L1 Normalization across the batch (first n elements of the blob)."""
    return L1BatchNormalizeFunction.apply(x)


@register
class Normalization(Layer):
    type_names = ("Normalization",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        self.norm = int(param.normalization_param.norm) if has(param, "normalization_param") else L2
        if self.norm not in (L1, L2):
            raise fail(param, f"normalization_param.norm must be L1 or L2, got {self.norm}")
        if self.norm == L1 and ctx.dialect.name == "rll":
            raise fail(param, "norm L1 is the RLL fork's buggy, unused branch (SPEC rll §2.1) and is "
                              "not ported; the OSM fork's L1 (across the batch) is used in nets with OSM layers")
        self.eps = float(ctx.dialect.l2_normalization_eps)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) < 1 or shape[0] < 1:
            raise fail(self.param, f"bottom shape {shape} has no samples")
        return [shape]

    def forward(self, x):
        if self.norm == L2:
            return (l2_normalize(x, self.eps),)
        return (l1_batch_normalize(x),)

    def extra_repr(self) -> str:
        return f"{self.layer_name!r}, norm={'L1' if self.norm == L1 else 'L2'}, eps={self.eps:g}"
