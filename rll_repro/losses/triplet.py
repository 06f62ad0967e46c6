"""Triplet loss with FaceNet's semi-hard negatives mined in the batch (Schroff, Kalenichenko and
Philbin, CVPR 2015), or over all triplets."""
from __future__ import annotations

import torch

from rll_repro.losses._metric import MetricLoss, PairBatch, check_choice

__all__ = ["TripletLoss"]


class TripletLoss(MetricLoss):
    """Triplet loss ``max(0, d_ap - d_an + margin)``.

    ``mining="semihard"`` (default; FaceNet §3.2, by the rule of TensorFlow's
    ``triplet_semihard_loss``, the implementation behind most "semi-hard triplet" baselines): every
    positive pair (a, p) is one triplet, its negative the closest one farther than the positive,
    ``n* = argmin {d_an : d_an > d_ap}``; if there is none, the farthest negative of a. The loss is
    the mean over all positive pairs (anchors without a negative are left out).

    ``mining="all"``: every triplet (a, p, n) of the batch, averaged over the triplets with a
    non-zero loss (pytorch-metric-learning's TripletMarginLoss with its default AvgNonZeroReducer:
    the same formula).

    Distances d are Euclidean (``squared=True``: squared, as FaceNet writes ||f(a) - f(p)||^2) between
    L2-normalised embeddings (FaceNet normalises too). Paper defaults: margin alpha = 0.2 on squared
    distances; TensorFlow's default is 1.0. ``margin`` keeps pytorch-metric-learning's name and
    default (0.05, Euclidean distances). PML has no per-positive-pair semi-hard rule: its
    TripletMarginMiner("semihard") keeps every triplet with 0 < d_an - d_ap <= margin, another formula.

    Computed without an N^3 tensor: each anchor's negative distances are sorted once, and the
    semi-hard negative (a ``searchsorted``) or the sum over violating negatives (a prefix sum) is read
    off for every positive pair.
    """

    MININGS = ("semihard", "all")

    def __init__(self, margin: float = 0.05, mining: str = "semihard", squared: bool = False, normalize: bool = True):
        super().__init__(normalize)
        self.margin = float(margin)
        self.mining = check_choice("TripletLoss", "mining", mining, self.MININGS)
        self.squared = bool(squared)

    def compute(self, batch: PairBatch) -> torch.Tensor:
        d = batch.dist2 if self.squared else batch.dist
        n_neg = batch.neg.sum(1)  # (N,) negatives of each anchor
        inf = torch.full_like(d, float("inf"))
        sorted_neg, order = torch.where(batch.neg, d.detach(), inf).sort(dim=1)  # negatives first, ascending
        anchors = batch.pos & (n_neg > 0)[:, None]  # positive pairs (a, p) that form a triplet
        if self.mining == "semihard":
            first_farther = torch.searchsorted(sorted_neg, d.detach().contiguous(), right=True)  # d_an > d_ap
            farthest = (n_neg - 1).clamp_min(0)[:, None].expand_as(first_farther)
            pick = torch.where(first_farther < n_neg[:, None], first_farther, farthest)
            d_an = d.gather(1, order.gather(1, pick))
            hinge = (d - d_an + self.margin).clamp_min(0)
            total = torch.where(anchors, hinge, torch.zeros_like(d)).sum()
            return total / anchors.sum().clamp_min(1).to(d.dtype)
        # all triplets: for (a, p), the negatives with d_an < d_ap + margin violate; their sum is
        # count * (d_ap + margin) - (prefix sum of a's sorted negative distances).
        sorted_d = torch.where(batch.neg.gather(1, order), d.gather(1, order), torch.zeros_like(d))
        prefix = sorted_d.cumsum(1)
        bound = d + self.margin
        count = torch.searchsorted(sorted_neg, bound.detach().contiguous(), right=False)  # d_an < bound
        below = prefix.gather(1, (count - 1).clamp_min(0)) * (count > 0)
        per_pair = count.to(d.dtype) * bound - below
        total = torch.where(anchors, per_pair, torch.zeros_like(d)).sum()
        nonzero = torch.where(anchors, count, torch.zeros_like(count)).sum()
        return total / nonzero.clamp_min(1).to(d.dtype)

    def extra_repr(self) -> str:
        return f"margin={self.margin:g}, mining={self.mining!r}, squared={self.squared}, normalize={self.normalize}"
