"""Data-parallel nets over torch.distributed: K processes reproduce the one-process run.

When a default process group of W > 1 ranks is initialised (``torchrun``), a TRAIN net becomes
data-parallel: the prototxt batch B is the **global** batch. Rank r's input blobs hold rows
[floor(r·B/W), floor((r+1)·B/W)) of the batch the one-process sampler draws (uneven slices when W
does not divide B), and every layer that couples samples sees the global batch:

- BatchNorm: per-channel sums over all ranks (differentiable all-reduce, as SyncBatchNorm does), so
  the normalisation, the gradient and Caffe's three running blobs equal the one-process ones (and
  are identical on every rank). The sums are taken in float64, so the statistics agree with the
  one-process float32 kernels to float32 rounding, not bit for bit.
- Loss layers and Accuracy (RLL, OSM+CAA, SoftmaxWithLoss with its VALID count, the baselines):
  their bottoms are gathered in rank order, the layer runs on the global batch (every rank computes
  the same value), and backward keeps this rank's rows of the global gradient (no reduction:
  :func:`rll_repro.distributed.gather_with_grad`). Per-sample tops (SoftmaxWithLoss's prob) are cut
  back to this rank's rows.
- Parameter gradients are then summed over the ranks (one all-reduce of a flat buffer): each rank's
  are the contributions of its own rows, so the sum is the one-process gradient, and every rank
  applies the same update.

Layers that pool the batch into fewer rows (BatchPool, the video nets' tracklets) would need their
downstream params' gradients counted once; a data-parallel net with one is refused with a clear
error. Caffe's own multi-GPU (each GPU a full batch of its own, gradients averaged) is another
experiment; it is not what this module does.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rll_repro.errors import NetError

#: layer types run on the gathered global batch (besides every loss layer)
GATHERED_TYPES = frozenset({"Accuracy"})
REPLICATED, PER_SAMPLE = "replicated", "per_sample"
#: layer types that cannot be split over ranks
UNSUPPORTED_TYPES = frozenset({"BatchPool"})


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the process that logs and writes snapshots."""
    return world()[0] == 0


def init_from_env(device: torch.device | None = None) -> torch.device | None:
    """Under torchrun (WORLD_SIZE > 1 in the environment): initialise the default process group,
    NCCL on CUDA and gloo on CPU, and return this rank's device (cuda:LOCAL_RANK for a cuda device).
    Returns ``device`` unchanged otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or not dist.is_available():
        return device
    if device is not None and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device is not None and device.type == "cuda" else "gloo")
    return device


def row_range(batch: int, rank: int, size: int) -> tuple[int, int]:
    """This rank's rows of a global batch: [floor(r·B/W), floor((r+1)·B/W))."""
    return (rank * batch) // size, ((rank + 1) * batch) // size


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward: the ranks' gradients summed (each rank's loss terms reach the sum)."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class DataParallel:
    """The net's view of the process group: which rows are whose, and the collectives it needs."""

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.sizes: list[int] | None = None  # rows per rank of the current batch
        self.batch: int | None = None

    def shard(self, inputs: dict) -> dict:
        """This rank's rows of every (global-batch) input tensor; records the split for the layers."""
        batches = {int(t.shape[0]) for t in inputs.values() if t.dim()}
        if len(batches) > 1:
            raise NetError(f"data-parallel inputs disagree on the batch size: {sorted(batches)}")
        if not batches:
            return inputs
        batch = batches.pop()
        self.batch = batch
        self.sizes = [row_range(batch, r, self.size)[1] - row_range(batch, r, self.size)[0] for r in range(self.size)]
        lo, hi = row_range(batch, self.rank, self.size)
        return {name: t[lo:hi] if t.dim() else t for name, t in inputs.items()}

    def local_sizes(self, n_local: int) -> list[int]:
        if self.sizes is None or self.sizes[self.rank] != n_local:
            raise NetError("data-parallel net: feed the global batch through the solver (it gives each rank "
                           "its rows) before running a layer that couples samples")
        return self.sizes

    def gather(self, t: torch.Tensor, kind: str = REPLICATED) -> torch.Tensor:
        """All ranks' rows in rank order. REPLICATED: only this rank's rows carry autograd (every
        rank computes the same function of the gathered batch, so its slice of the gradient is the
        whole gradient of its rows). PER_SAMPLE: the gradient is summed over ranks first."""
        from rll_repro.distributed import gather_with_grad

        sizes = self.local_sizes(int(t.shape[0]))
        if kind == PER_SAMPLE:
            return _GatherSumGrad.apply(t, self)
        return gather_with_grad(t, self.group, sizes)

    def cut(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global per-sample tensor."""
        lo = sum(self.sizes[: self.rank])
        return t[lo: lo + self.sizes[self.rank]]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Differentiable sum over ranks (backward: the sum of the ranks' gradients)."""
        return _AllReduceSum.apply(t, self.group)

    def reduce_gradients(self, params) -> None:
        """Sum every param's gradient over the ranks (one collective on a flat buffer per dtype)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset: offset + n].view_as(g))
            offset += n


def data_parallel_for(phase: str, layer_params) -> DataParallel | None:
    """A DataParallel for a TRAIN net when a process group of more than one rank exists."""
    rank, size = world()
    if size <= 1 or phase != "train":
        return None
    bad = next((lp for lp in layer_params if lp.type in UNSUPPORTED_TYPES), None)
    if bad is not None:
        raise NetError(f"layer {bad.name!r} ({bad.type}) pools the batch and cannot be split over processes; "
                       "run this net in one process")
    return DataParallel()


def runs_gathered(layer) -> str | None:
    """How a layer of a data-parallel net sees the batch: None (its own rows), REPLICATED (on the
    gathered global batch, every rank computing the same global tops: loss layers, Accuracy) or
    PER_SAMPLE (on the gathered batch, its per-sample tops cut back to this rank's rows: the OSM
    fork's L1 Normalization, which divides by a sum over the whole blob)."""
    if bool(getattr(layer, "is_loss", False)) or getattr(layer.param, "type", "") in GATHERED_TYPES:
        return REPLICATED
    param = layer.param
    if getattr(param, "type", "") == "Normalization" and param.normalization_param.norm == 1:
        return PER_SAMPLE
    return None


class _GatherSumGrad(torch.autograd.Function):
    """all_gather forward; backward: the gradients of every rank summed, this rank's rows kept (each
    rank's downstream uses only its own rows of the layer's per-sample tops)."""

    @staticmethod
    def forward(ctx, t, par):
        from rll_repro.distributed import _all_gather_rows

        ctx.par = par
        parts = _all_gather_rows(t, par.sizes, par.group)
        parts[par.rank] = t.detach()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.par.group)
        return ctx.par.cut(grad), None
