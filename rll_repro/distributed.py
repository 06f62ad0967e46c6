"""The standalone losses over the global batch of several processes (DistributedDataParallel).

With DDP each rank sees only its own N_r samples, so a ranked list built from the local batch is
incomplete. :class:`DistributedLoss` gathers every rank's embeddings (and labels, attention) and
computes the wrapped loss on the **global batch** of sum_r N_r samples, concatenated in rank order,
i.e. exactly the batch ``torch.cat([x_0, x_1, ...])`` a single process would see:

    loss_fn = DistributedLoss(RankedListLoss(pn_margin=0.4, t_n=10.0))
    model = DistributedDataParallel(net)
    loss = loss_fn(model(images), labels)      # this rank's mini-batch
    loss.backward()                            # param.grad = single-process gradient on the global batch

Gradient contract (W = world size, g = the single-process gradient of the loss on the global batch,
g_r its rows for rank r's samples):

- every rank computes the same global loss (same value on every rank), but only its own slice of
  the gathered tensor carries autograd (:func:`gather_with_grad`); backward gives rank r's
  embeddings ``grad_scale * g_r``. Nothing is reduced across ranks in backward: g_r is already the
  complete gradient of the global loss with respect to rank r's samples.
- ``grad_scale="world_size"`` (default) multiplies it by W because DDP **averages** parameter
  gradients over the ranks: sum_r J_r^T (W g_r) / W = J^T g, the single-process parameter gradient
  on the global batch. Use ``grad_scale=1.0`` when the parameter gradients are **summed** across
  ranks (your own ``all_reduce(SUM)``, a summing DDP comm hook) or to inspect the embeddings'
  gradient: then each rank's embedding gradient equals its rows of g exactly.
- Caffe mode keeps Caffe's exact gradient: the wrapped loss runs its own custom autograd Function
  on the global batch, in which every global sample is an anchor exactly once (RLL's S+_k, S-_k and
  the batch-wide Z, OSM's positive / negative set sums are global); rank r keeps the rows of its own
  samples, so each anchor's contribution lands once, on the rank that owns the sample. Paper mode is
  plain autograd of the global objective with respect to the local slice.

Mapping to pytorch-metric-learning's ``DistributedLossWrapper(loss, efficient=False)``: the same
idea (gather, compute the loss on all embeddings, only the local ones have gradient), with two
differences: PML puts the local batch first (the order differs per rank) and returns ``loss * W``,
scaling the reported value too; here the order is the rank order on every rank (each rank computes
bit for bit the single-process loss on the concatenated batch) and the returned value is the true
global loss, only the gradient is scaled. PML's ``efficient=True`` (local anchors against all
references) has no counterpart: RLL's Z is a sum over all anchors, so it would need extra
all-reduces and would lose the bit-exact equality with the single-process loss. The cost per rank
is that of the single-process loss on the global batch, O((sum N_r)^2) memory.

Uneven batch sizes across ranks are supported (the last batch of an epoch without
``drop_last``): sizes are exchanged first, each rank pads to the largest N_r for ``all_gather`` and
the padding is cut off before the loss sees the batch, so the global batch is exactly the
concatenation (no mask reaches the loss). A rank may even contribute 0 samples. Feature size,
dtype or label count that differ between ranks raise the same DataError on every rank (checked
after one small all_gather, so no rank is left waiting in a collective).

Devices: every tensor stays on the embeddings' device (labels and attention are moved there, as
NCCL requires CUDA tensors); gloo on CPU, NCCL on CUDA. Without an initialised process group (or with
one process) the wrapper simply calls the loss. ``torch.compile`` is not needed (collectives run
eagerly).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from rll_repro.errors import DataError

__all__ = ["DistributedLoss", "gather_with_grad", "is_distributed"]

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool)


def is_distributed(group=None) -> bool:
    """True when torch.distributed is initialised with more than one process (in ``group``)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _dtype_code(t: torch.Tensor) -> int:
    return _DTYPES.index(t.dtype) if t.dtype in _DTYPES else -1


def _all_gather_rows(t: torch.Tensor, sizes: list[int], group=None) -> list[torch.Tensor]:
    """all_gather of tensors whose first dimension differs per rank (``sizes``): pad, gather, cut."""
    rows = max(sizes)
    padded = t.detach()
    if t.shape[0] < rows:
        padded = torch.cat([padded, padded.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return [p[:n] for p, n in zip(parts, sizes)]


def _gather_sizes(t: torch.Tensor, group=None) -> list[int]:
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = [torch.empty_like(n) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, n, group=group)
    return [int(s) for s in sizes]


def gather_with_grad(tensor: torch.Tensor, group=None, sizes: list[int] | None = None) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along dim 0 in rank order; only this rank's slice keeps
    the autograd graph (it **is** ``tensor``), the others are constants.

    The backward is the slice of the incoming gradient: right when every rank computes the same
    function of the gathered tensor (a replicated global loss, as :class:`DistributedLoss` does),
    since that slice is then the whole gradient with respect to this rank's rows. (If each rank
    computed a different function of it, the gradients would have to be summed across ranks.)
    First dimensions may differ between ranks (``sizes``: each rank's count if known; otherwise
    exchanged with one extra all_gather); other dimensions and the dtype must agree. Without a
    process group of more than one rank, returns ``tensor``.
    """
    if not is_distributed(group):
        return tensor
    if sizes is None:
        sizes = _gather_sizes(tensor, group)
    parts = _all_gather_rows(tensor, sizes, group)
    parts[dist.get_rank(group)] = tensor
    return torch.cat(parts)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (exact for powers of two)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class DistributedLoss(nn.Module):
    """``loss(embeddings, labels, *per_sample)`` computed over the global batch of all ranks.

    ``loss``: a :class:`rll_repro.losses.RankedListLoss` or :class:`rll_repro.losses.OSMCAALoss`
    (any callable taking (N, D) embeddings then per-sample tensors works). ``per_sample``: further
    per-sample inputs gathered like the labels, e.g. OSM's attention. ``grad_scale``: ``"world_size"``
    (default, for DDP's gradient averaging) or a number; see the module docstring. Returns the
    global loss value (the same on every rank).
    """

    def __init__(self, loss: nn.Module, grad_scale: str | float = "world_size", group=None):
        super().__init__()
        if grad_scale != "world_size" and not isinstance(grad_scale, (int, float)):
            raise ValueError(f"DistributedLoss: grad_scale must be 'world_size' or a number, got {grad_scale!r}")
        self.loss, self.grad_scale, self.group = loss, grad_scale, group

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, *per_sample: torch.Tensor) -> torch.Tensor:
        if not is_distributed(self.group):
            return self.loss(embeddings, labels, *per_sample)
        who = f"DistributedLoss({type(self.loss).__name__})"
        for what, t in (("embeddings", embeddings), ("labels", labels)) + tuple(
                (f"per-sample input {i + 2}", t) for i, t in enumerate(per_sample)):
            if not torch.is_tensor(t):
                raise DataError(f"{who}: {what} must be a torch.Tensor, got {type(t).__name__}")
        if embeddings.dim() < 2:
            raise DataError(f"{who}: embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
        device = embeddings.device
        emb = embeddings.reshape(embeddings.shape[0], math.prod(embeddings.shape[1:]))
        extras = [t.to(device).reshape(-1) for t in (labels, *per_sample)]
        sizes = self._exchange_and_check(emb, extras, who)
        world = len(sizes)
        scale = float(world) if self.grad_scale == "world_size" else float(self.grad_scale)
        if scale != 1.0 and emb.requires_grad:
            emb = _ScaleGrad.apply(emb, scale)
        global_emb = gather_with_grad(emb, self.group, sizes)
        global_extras = [torch.cat(_all_gather_rows(t, sizes, self.group)) for t in extras]
        return self.loss(global_emb, *global_extras)

    def _exchange_and_check(self, emb: torch.Tensor, extras: list[torch.Tensor], who: str) -> list[int]:
        """One all_gather of (N, feature size, dtype codes, counts); every rank raises the same
        error if the ranks disagree. Returns the per-rank sample counts."""
        meta = [emb.shape[0], emb.shape[1], _dtype_code(emb)]
        for t in extras:
            meta += [t.numel(), _dtype_code(t)]
        mine = torch.tensor(meta, dtype=torch.int64, device=emb.device)
        metas = [torch.empty_like(mine) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(metas, mine, group=self.group)
        rows = [m.tolist() for m in metas]
        names = ["labels"] + [f"per-sample input {i + 2}" for i in range(len(extras) - 1)]
        for r, m in enumerate(rows):
            for i, name in enumerate(names):
                if m[3 + 2 * i] != m[0]:
                    raise DataError(f"{who}: rank {r}: {name} has {m[3 + 2 * i]} values for {m[0]} embeddings")
        first = rows[0]
        for r, m in enumerate(rows[1:], 1):
            if m[1] != first[1]:
                raise DataError(f"{who}: rank {r} has embeddings of {m[1]} features, rank 0 of {first[1]}")
            if m[2] != first[2] or m[2] < 0:
                raise DataError(f"{who}: embedding dtypes differ across ranks (rank 0: {_name(first[2])}, "
                                f"rank {r}: {_name(m[2])})")
            for i, name in enumerate(names):
                if m[4 + 2 * i] != first[4 + 2 * i] or m[4 + 2 * i] < 0:
                    raise DataError(f"{who}: {name} dtypes differ across ranks (rank 0: {_name(first[4 + 2 * i])}, "
                                    f"rank {r}: {_name(m[4 + 2 * i])})")
        return [m[0] for m in rows]

    def extra_repr(self) -> str:
        return f"grad_scale={self.grad_scale!r}"


def _name(code: int) -> str:
    return str(_DTYPES[code]) if 0 <= code < len(_DTYPES) else "unsupported dtype"
