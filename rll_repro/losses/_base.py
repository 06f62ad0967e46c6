"""What every standalone loss shares: input checks (bad input is a DataError naming the loss), the
two L2 normalisations (the forks' Caffe layer and plain autograd) and a differentiable Euclidean
distance matrix. Data-dependent checks run where reading a value back is free (CPU tensors); on a
GPU they would synchronise every step (rll_repro.device.host_reads_allowed)."""
from __future__ import annotations

import torch

from rll_repro.device import host_reads_allowed
from rll_repro.errors import DataError
from rll_repro.layers.normalization import l2_normalize

MODES = ("caffe", "paper")


def _check_embeddings(emb, who: str) -> torch.Tensor:
    if not torch.is_tensor(emb):
        raise DataError(f"{who}: embeddings must be a torch.Tensor, got {type(emb).__name__}")
    if emb.dtype not in (torch.float32, torch.float64):
        raise DataError(f"{who}: embeddings must be float32 or float64, got {emb.dtype}")
    if emb.dim() < 2:
        raise DataError(f"{who}: embeddings must be (N, D), got shape {tuple(emb.shape)}")
    if emb.shape[0] < 2:
        raise DataError(f"{who}: needs at least 2 embeddings to form a pair, got {emb.shape[0]} "
                        "(the Caffe layer would report 0/0 = NaN)")
    if host_reads_allowed(emb) and not _all_finite(emb):  # no device sync on a GPU
        raise DataError(f"{who}: embeddings contain NaN or Inf")
    return emb.reshape(emb.shape[0], -1)


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every value is finite: one sum (NaN or Inf anywhere makes it non-finite), and the
    elementwise test only when the sum is not finite (it may also overflow from finite values)."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _check_per_sample(values, n: int, who: str, what: str, device: torch.device) -> torch.Tensor:
    """Validated (n,) view of a per-sample input, moved to the embeddings' device (labels often stay
    on the CPU when the model runs on CUDA)."""
    if not torch.is_tensor(values):
        raise DataError(f"{who}: {what} must be a torch.Tensor, got {type(values).__name__}")
    if values.dtype == torch.bool or values.is_complex():
        raise DataError(f"{who}: {what} must be integer or floating point, got {values.dtype}")
    if values.numel() != n:
        raise DataError(f"{who}: {what} has {values.numel()} values for {n} embeddings")
    if values.is_floating_point() and host_reads_allowed(values) and not _all_finite(values):
        raise DataError(f"{who}: {what} contain NaN or Inf")
    return values.reshape(n).to(device)


def _null_row(emb: torch.Tensor) -> int | None:
    """The first embedding whose float32/64 squared norm is 0: all zeros, or so small (|x| ~ 1e-23 in
    float32) that x·x underflows; dividing by its norm gives NaN."""
    zero = (emb.detach() * emb.detach()).sum(1) == 0
    return int(zero.nonzero()[0]) if bool(zero.any()) else None


def _l2_caffe(emb: torch.Tensor, eps: float, who: str) -> torch.Tensor:
    if eps == 0.0 and host_reads_allowed(emb):
        row = _null_row(emb)
        if row is not None:
            raise DataError(f"{who}: embedding {row} has a squared norm of 0 (all zeros, or values so small "
                            "that x*x underflows); the RLL fork's L2 Normalization has no epsilon (Caffe: "
                            "NaN); pass normalize=False, rescale or fix the input")
    return l2_normalize(emb, eps)


def _l2_plain(emb: torch.Tensor, who: str = "loss") -> torch.Tensor:
    if host_reads_allowed(emb):
        row = _null_row(emb)
        if row is not None:
            raise DataError(f"{who}: embedding {row} has a squared norm of 0 (all zeros, or values so small "
                            "that x*x underflows): its direction, and the gradient through it, are undefined")
    return emb / emb.norm(dim=1, keepdim=True)


def _distances(emb: torch.Tensor) -> torch.Tensor:
    """Differentiable Euclidean distance matrix (Gram form; gradient 0 at d = 0)."""
    sq = (emb * emb).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * emb @ emb.T).clamp_min(0)
    positive = d2 > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, d2, torch.ones_like(d2))), torch.zeros_like(d2))
