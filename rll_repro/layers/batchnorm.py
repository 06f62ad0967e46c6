"""BatchNorm (Caffe's BatchNormLayer; RLL SPEC §2.2, OSM SPEC §3).

- Three blobs: [0] running mean sum M (C), [1] running variance sum V (C), [2] scale factor s (1),
  all 0 when not loaded. Normalises per channel (axis 1) over N×H×W; no affine part (a Scale follows).
- ``use_global_stats`` defaults to (phase == TEST).
- TRAIN: μ, σ² = mean and biased variance over m = N·H·W; y = (x − μ)/sqrt(σ² + eps). Every forward
  updates s ← λ·s + 1, M ← λ·M + μ, V ← λ·V + (m/(m−1))·σ² (factor 1 if m = 1), λ =
  ``moving_average_fraction`` (0.999); the update uses σ² before eps is added.
- TEST / global stats: μ = M/s, σ² = V/s with 1/s taken as 0 when s == 0.
- Backward: the BN input gradient (autograd of the formula above, which is Caffe's
  (g − mean(g) − mean(g·ŷ)·ŷ)/sqrt(σ²+eps), or g/sqrt(σ²+eps) with global stats). Caffe never writes
  a gradient to the three blobs: their diff stays 0.
- Solver view of the blobs depends on the fork (``ctx.dialect.bn_blobs_learnable``): the RLL fork leaves
  them ordinary params (lr_mult 1, decay_mult 1 unless the prototxt says otherwise), BVLC/OSM force
  lr_mult 0 (a non-zero lr_mult in the prototxt is an error there, as in BVLC).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rll_repro.layers._util import check_bottoms, check_tops, count, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register


def _is_channels_last_cpu(x: torch.Tensor) -> bool:
    """A 4-D NHWC (channels_last, not also NCHW-contiguous) tensor on the CPU."""
    return (x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


class _ChannelsLastBatchStats(torch.autograd.Function):
    """TRAIN BatchNorm of an NHWC CPU tensor with the batch statistics summed as accurately as the
    NCHW kernel does: ATen's channels_last CPU kernel accumulates them row after row in float32
    (1.2e-5 from a float64 evaluation at 32x64x57x57 with mean 5, against 1.2e-7 in NCHW; enough to
    leave the SOP train net's oracle tolerance). Here μ = Σx/m and σ² = Σ(x − μ)²/m (Caffe's two
    passes) by ATen's pairwise (cascade) sums, y = (x − μ)/sqrt(σ² + eps) by the same kernel as the
    global-statistics path, and the input gradient by ATen's BatchNorm backward from the saved
    (μ, 1/sqrt(σ² + eps)); the forward also returns μ and σ² (no gradient) for the running sums."""

    @staticmethod
    def forward(ctx, x, eps):
        dims = (0, 2, 3)
        m = x.numel() // x.shape[1]
        mean = x.sum(dims) / m
        var = (x - mean.reshape(1, -1, 1, 1)).square_().sum(dims) / m
        y = F.batch_norm(x, mean, var, None, None, False, 0.0, eps)
        ctx.save_for_backward(x, mean, torch.rsqrt(var + eps))
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):
        x, mean, invstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        gx, _, _ = torch.ops.aten.native_batch_norm_backward(
            grad, x, None, None, None, mean, invstd, True, ctx.eps, [True, False, False])
        return gx, None


@register
class BatchNorm(Layer):
    type_names = ("BatchNorm",)
    output_unused_in_backward = True  # a following in-place layer may overwrite the top

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        p = param.batch_norm_param
        shape = bottom_shapes[0]
        if len(shape) < 1:
            raise fail(param, "bottom must have at least one axis")
        self.use_global_stats = bool(p.use_global_stats) if has(p, "use_global_stats") else ctx.phase == "test"
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        self.channels = shape[1] if len(shape) > 1 else 1
        for blob_shape in ((self.channels,), (self.channels,), (1,)):
            self.blobs.append(nn.Parameter(torch.zeros(blob_shape, dtype=torch.float32), requires_grad=False))
        if not ctx.dialect.bn_blobs_learnable:
            for i, spec in enumerate(param.param[:3]):
                if spec.lr_mult != 0:
                    raise fail(param, f"param {i} has lr_mult {spec.lr_mult}: batch normalization statistics cannot be learned (this fork forces lr_mult 0)")

    def _forward_over_ranks(self, x4):
        """TRAIN statistics over the global batch of a data-parallel net: per-channel sums (float64)
        all-reduced with autograd, so the gradient is the one-process gradient; the running blobs get
        the global mean and bias-corrected variance, identical on every rank."""
        par = self.ctx.parallel
        dims = (0, 2, 3)
        x64 = x4.to(torch.float64)
        local = torch.stack([x64.sum(dims), torch.full((self.channels,), float(count(x4.shape) // self.channels),
                                                       dtype=torch.float64, device=x4.device)])
        sums = par.all_reduce_sum(local)
        m = sums[1, 0]
        mean = sums[0] / m
        centred = x64 - mean.reshape(1, -1, 1, 1)
        var = par.all_reduce_sum((centred * centred).sum(dims)) / m
        y = (centred * torch.rsqrt(var + self.eps).reshape(1, -1, 1, 1)).to(x4.dtype)
        with torch.no_grad():
            correction = torch.where(m > 1, m / (m - 1), torch.ones_like(m))
            self.update_running(mean.detach().to(self.blobs[0].dtype), (var.detach() * correction).to(self.blobs[1].dtype))
        return y

    def chain_ready(self) -> bool:
        """Whether this layer's forward uses the batch statistics of one process (TRAIN, not global
        statistics, no data-parallel reduction): the case batchnorm_chain.py runs with the next layers."""
        return not self.use_global_stats and self.ctx.parallel is None

    def update_running(self, batch_mean: torch.Tensor, batch_var: torch.Tensor) -> None:
        """Caffe's running sums after a TRAIN forward: s <- λ·s + 1, M <- λ·M + μ, V <- λ·V + the
        unbiased batch variance ``batch_var``."""
        with torch.no_grad():
            lam = self.moving_average_fraction
            mean_sum, var_sum, factor = self.blobs[0], self.blobs[1], self.blobs[2]
            factor.mul_(lam).add_(1.0)
            mean_sum.mul_(lam).add_(batch_mean)
            var_sum.mul_(lam).add_(batch_var)

    def param_spec_overrides(self):
        if self.ctx.dialect.bn_blobs_learnable:
            return None
        return [{"lr_mult": 0.0}] * 3

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        channels = shape[1] if len(shape) > 1 else 1
        if channels != self.channels:
            raise fail(self.param, f"bottom has {channels} channels, the layer was built for {self.channels}")
        return [tuple(shape)]

    def forward(self, x):
        shape = x.shape
        x4 = x.reshape(shape[0], self.channels, -1) if x.dim() != 4 else x
        if x4.dim() == 3:
            x4 = x4.unsqueeze(-1)
        if self.use_global_stats:
            mean_sum, var_sum, factor = self.blobs[0], self.blobs[1], self.blobs[2]
            with torch.no_grad():
                s = factor.detach()[0]
                scale = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
                mean = mean_sum.detach() * scale
                var = var_sum.detach() * scale
            y = F.batch_norm(x4, mean, var, None, None, False, 0.0, self.eps)
            return (y.reshape(shape),)
        if self.ctx.parallel is not None:
            return (self._forward_over_ranks(x4).reshape(shape),)
        m = count(x4.shape) // self.channels
        fusable = False
        if m > 1 and _is_channels_last_cpu(x4):
            y, batch_mean, batch_var = _ChannelsLastBatchStats.apply(x4, self.eps)
            fusable = self.ctx.fuse_backward and x.dim() == 4 and y.requires_grad
            invstd = torch.rsqrt(batch_var + self.eps) if fusable else None
            batch_var = batch_var * (m / (m - 1))  # the unbiased variance, as the momentum-1 buffers get
        elif m > 1:
            batch_mean = torch.zeros(self.channels, dtype=x.dtype, device=x.device)
            batch_var = torch.zeros(self.channels, dtype=x.dtype, device=x.device)
            # momentum 1 makes the "running" buffers exactly the batch mean and the unbiased variance.
            y = F.batch_norm(x4, batch_mean, batch_var, None, None, True, 1.0, self.eps)
        else:
            batch_mean = x4.detach().mean(dim=(0, 2, 3))
            batch_var = torch.zeros_like(batch_mean)
            y = (x4 - x4.mean(dim=(0, 2, 3), keepdim=True)) * (self.eps ** -0.5)
        self.update_running(batch_mean, batch_var)
        if fusable:
            # a Scale reading y may take the backward of both layers in one pass (scale.py)
            y.batch_norm_input = (x4, batch_mean, invstd, self.eps)
            return (y,)
        return (y.reshape(shape),)
