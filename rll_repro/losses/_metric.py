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
        """Squared Euclidean distances, >= 0, exactly 0 on the diagonal."""
        g = self.gram
        sq = g.diagonal()
        d2 = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
        return d2.masked_fill(self.eye, 0)

    @cached_property
    def dist(self) -> torch.Tensor:
        """Euclidean distances with gradient 0 where d = 0 (no NaN from sqrt'(0))."""
        d2 = self.dist2
        positive = d2 > 0
        return torch.where(positive, torch.sqrt(torch.where(positive, d2, torch.ones_like(d2))), torch.zeros_like(d2))


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
