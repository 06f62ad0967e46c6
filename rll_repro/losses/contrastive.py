"""Contrastive loss (Hadsell, Chopra and LeCun, CVPR 2006) over every pair of the batch."""
from __future__ import annotations

import torch

from rll_repro.losses._metric import MetricLoss, PairBatch, check_choice, masked_mean

__all__ = ["ContrastiveLoss"]


class ContrastiveLoss(MetricLoss):
    """Contrastive loss over all pairs of the batch.

    Per pair, with Euclidean distance d (of L2-normalised embeddings when ``normalize``)::

        positive:  1/2 max(0, d - pos_margin)^2        negative:  1/2 max(0, neg_margin - d)^2

    and ``reduction="mean"``: the mean over all N(N-1) ordered pairs (Hadsell et al.'s sum over
    pairs, scaled by the pair count as BVLC Caffe's ContrastiveLoss divides by 2N; the paper has no
    ``pos_margin``, i.e. 0). Paper default: margin m = ``neg_margin`` (a free parameter; 1 here).

    Names and defaults are pytorch-metric-learning's (``pos_margin=0``, ``neg_margin=1``,
    normalised embeddings). Difference from PML on purpose: PML's ContrastiveLoss is not squared
    (``max(0, d - pos_margin) + max(0, neg_margin - d)``) and averages the positive and the negative
    terms separately over their non-zero pairs, then adds the two means. ``squared=False,
    reduction="avg_nonzero"`` is exactly PML's formula.
    """

    REDUCTIONS = ("mean", "avg_nonzero")

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, squared: bool = True,
                 reduction: str = "mean", normalize: bool = True):
        super().__init__(normalize)
        self.pos_margin, self.neg_margin = float(pos_margin), float(neg_margin)
        self.squared = bool(squared)
        self.reduction = check_choice("ContrastiveLoss", "reduction", reduction, self.REDUCTIONS)

    def compute(self, batch: PairBatch) -> torch.Tensor:
        d = batch.dist
        pos_term = (d - self.pos_margin).clamp_min(0)
        neg_term = (self.neg_margin - d).clamp_min(0)
        if self.squared:
            pos_term, neg_term = 0.5 * pos_term * pos_term, 0.5 * neg_term * neg_term
        if self.reduction == "mean":
            per_pair = torch.where(batch.pos, pos_term, torch.where(batch.neg, neg_term, torch.zeros_like(d)))
            return per_pair.sum() / (batch.n * (batch.n - 1))
        return masked_mean(pos_term, batch.pos & (pos_term > 0)) + masked_mean(neg_term, batch.neg & (neg_term > 0))

    def extra_repr(self) -> str:
        return (f"pos_margin={self.pos_margin:g}, neg_margin={self.neg_margin:g}, squared={self.squared}, "
                f"reduction={self.reduction!r}, normalize={self.normalize}")
