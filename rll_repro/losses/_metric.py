"""The shared base of the baseline metric-learning losses (contrastive, triplet, lifted structure,
binomial deviance, margin, NCA, multi-similarity).

Each loss is called like pytorch-metric-learning's, ``loss_fn(embeddings, labels)``: embeddings
(N, D) (extra trailing dims of size 1, as Caffe blobs (N, D, 1, 1), are flattened), labels (N,) of
any numeric dtype, moved to the embeddings' device. The base checks the input (the same
:class:`rll_repro.errors.DataError` rules as RankedListLoss), L2-normalises if ``normalize`` (as
pytorch-metric-learning's default distances do: ``x / max(||x||, 1e-12)``) and hands the subclass a
:class:`PairBatch` with the N x N geometry it needs; the subclass owns only its formula, written
with masks over N x N matrices (no Python loop over pairs, triplets or samples).

Conventions shared by every subclass:

- pairs are ordered, (i, j) with i != j (a mean over ordered pairs equals the mean over unordered
  ones, the matrices being symmetric); positives are same-label pairs, negatives the rest;
- distances are Euclidean, from the Gram matrix ``d_ij^2 = G_ii + G_jj - 2 G_ij`` (clamped at 0),
  with gradient 0 where d = 0 (two identical embeddings: no direction to push);
- a batch without any pair of the kind a loss needs (a single class, all labels distinct) gives
  0 with zero gradient, never NaN.
"""
from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from rll_repro.losses._base import _check_embeddings, _check_per_sample

NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default, as pytorch-metric-learning


class PairBatch:
    """The batch geometry a loss reads (computed on first use)."""

    def __init__(self, emb: torch.Tensor, labels: torch.Tensor):
        self.emb, self.labels = emb, labels
        self.n = emb.shape[0]
        same = labels[:, None] == labels[None, :]
        self.eye = torch.eye(self.n, dtype=torch.bool, device=emb.device)
        self.pos = same & ~self.eye  # (N, N) same label, i != j
        self.neg = ~same  # (N, N) different label

    @cached_property
    def gram(self) -> torch.Tensor:
        """G = X X^T: the cosine similarity of normalised embeddings."""
        return self.emb @ self.emb.T

    @cached_property
    def dist2(self) -> torch.Tensor:
        """Squared Euclidean distances, >= 0; exactly 0 on the diagonal and between bitwise-equal
        embeddings (G_ii + G_jj - 2 G_ij with G_ii = G_jj = G_ij: every term exact)."""
        return _GramDistance.apply(self.emb, True)

    @cached_property
    def dist(self) -> torch.Tensor:
        """Euclidean distances, with gradient 0 where d = 0 (no direction, no NaN)."""
        return _GramDistance.apply(self.emb, False)


def gram_distances(x: torch.Tensor, squared: bool) -> torch.Tensor:
    """(N, N) Euclidean distances (squared or not) from the Gram matrix of ``x`` (N, D)."""
    g = x @ x.T
    sq = g.diagonal()
    d2 = (sq[:, None] + sq[None, :]).sub_(g, alpha=2).clamp_min_(0)
    return d2 if squared else d2.sqrt_()


class _GramDistance(torch.autograd.Function):
    """Distances with the gradient assembled in one matmul: for L(d) with W = dL/dd,
    dL/dx_k = sum_j S_kj (x_k - x_j) = rowsum(S)_k x_k - (S x)_k, S = A + A^T, A = W / d (0 where
    d = 0) for d, A = 2 W for d^2. Same gradient as autograd through the Gram form, in a handful of
    N x N operations instead of one per step of the chain."""

    @staticmethod
    def forward(ctx, x, squared: bool):
        d = gram_distances(x, squared)
        ctx.save_for_backward(x, d)
        ctx.squared = squared
        return d

    @staticmethod
    def backward(ctx, w):
        x, d = ctx.saved_tensors
        return distance_gradient(x, d, w, ctx.squared), None


def distance_gradient(x: torch.Tensor, d: torch.Tensor, w: torch.Tensor, squared: bool,
                      symmetric: bool = False) -> torch.Tensor:
    """dL/dx from W = dL/dd (see :class:`_GramDistance`); ``symmetric``: W = W^T, so S = 2 A."""
    a = w if squared else torch.where(d > 0, w / d, torch.zeros_like(d))
    s = a if symmetric else a + a.T
    grad = s.sum(1, keepdim=True) * x - s @ x
    factor = (2 if squared else 1) * (2 if symmetric else 1)  # d(d^2)/dx_i = 2 (x_i - x_j)
    return grad.mul_(factor) if factor != 1 else grad


class _DistanceLoss(torch.autograd.Function):
    """A loss of the distance matrix whose derivative W = dL/dd the subclass writes out
    (``value_and_weights(d) -> (value, W)``), assembled into dL/dx as in :class:`_GramDistance`: for
    the losses where autograd's chain of N x N steps would cost more than the formula."""

    @staticmethod
    def forward(ctx, x, squared: bool, value_and_weights, symmetric: bool):
        d = gram_distances(x, squared)
        value, w = value_and_weights(d)
        ctx.save_for_backward(x, d, w)
        ctx.squared, ctx.symmetric = squared, symmetric
        return value

    @staticmethod
    def backward(ctx, grad):
        x, d, w = ctx.saved_tensors
        return distance_gradient(x, d, w, ctx.squared, ctx.symmetric).mul_(grad), None, None, None


def distance_loss(x: torch.Tensor, squared: bool, value_and_weights, symmetric: bool = False) -> torch.Tensor:
    """L(d(x)) with the hand-written W = dL/dd of ``value_and_weights(d) -> (value, W)`` (no autograd
    inside; d: the squared distances if ``squared``; ``symmetric``: W is symmetric)."""
    return _DistanceLoss.apply(x, squared, value_and_weights, symmetric)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (with zero gradient) where the mask is empty."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int = 1, add_one: bool = False) -> torch.Tensor:
    """log sum_{mask} exp(x) along ``dim`` (``add_one``: log(1 + sum)). A row with an empty mask gives
    0 when ``add_one`` (log 1), else a finite placeholder the caller must mask out; never NaN in
    backward (every row keeps one finite entry)."""
    neg_inf = torch.finfo(x.dtype).min
    filled = torch.where(mask, x, torch.full_like(x, neg_inf))
    if add_one:
        zeros = torch.zeros_like(filled.narrow(dim, 0, 1))
        return torch.logsumexp(torch.cat([filled, zeros], dim=dim), dim=dim)
    empty = ~mask.any(dim, keepdim=True)
    return torch.logsumexp(torch.where(empty, torch.zeros_like(filled), filled), dim=dim)


def check_choice(who: str, name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{who}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value


class MetricLoss(nn.Module):
    """Base of the baseline losses: checks, optional L2 normalisation, then ``compute(batch)``."""

    def __init__(self, normalize: bool = True):
        super().__init__()
        self.normalize = bool(normalize)

    def prepare(self, embeddings, labels, check: bool = True) -> PairBatch:
        """The batch geometry; ``check=False`` (the Caffe layers: no host read on a training step)
        only flattens (N, D, 1, 1) and moves the labels (the net has checked the shapes)."""
        if check:
            who = type(self).__name__
            emb = _check_embeddings(embeddings, who)
            labels = _check_per_sample(labels, emb.shape[0], who, "labels", emb.device)
        else:
            emb = embeddings.reshape(embeddings.shape[0], -1)
            labels = labels.reshape(emb.shape[0]).to(emb.device)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=1, eps=NORMALIZE_EPS)
        return PairBatch(emb, labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.compute(self.prepare(embeddings, labels))

    def compute(self, batch: PairBatch) -> torch.Tensor:
        """The loss of a prepared batch (the subclass's formula)."""
        raise NotImplementedError
