"""Contrastive loss (Hadsell, Chopra and LeCun, CVPR 2006) over every pair of the batch."""
from __future__ import annotations

import torch

from rll_repro.losses._metric import MetricLoss, PairBatch, check_choice, distance_loss

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
        return distance_loss(batch.emb, False, lambda d: self.value_and_weights(d, batch), symmetric=True)

    def value_and_weights(self, d: torch.Tensor, batch: PairBatch):
        """The value and W = dL/dd (hand-written: this loss is a few operations per pair). One hinge
        matrix h = sign * d + offset: d - pos_margin on positive pairs, neg_margin - d on negative
        pairs, and below 0 (so h = 0 after the clamp) on the diagonal."""
        ones = torch.ones_like(d)
        sign = torch.where(batch.pos, ones, -ones)
        offset = torch.where(batch.pos, ones * -self.pos_margin, ones * self.neg_margin).masked_fill_(batch.eye, -1.0)
        hinge = torch.addcmul(offset, sign, d).clamp_min_(0)  # the diagonal: offset -1, d = 0
        if self.reduction == "mean":
            scale = 1.0 / (batch.n * (batch.n - 1))
            if self.squared:
                value = 0.5 * scale * torch.dot(hinge.view(-1), hinge.view(-1))
                return value, hinge.mul_(sign).mul_(scale)
            return hinge.sum() * scale, (hinge > 0).to(d.dtype).mul_(sign).mul_(scale)
        active = hinge > 0
        slope = hinge if self.squared else active.to(d.dtype)  # d(term)/d(hinge)
        term = 0.5 * hinge * hinge if self.squared else hinge
        n_pos = (batch.pos & active).sum().clamp_min(1).to(d.dtype)
        n_neg = (batch.neg & active).sum().clamp_min(1).to(d.dtype)
        pos_sum = torch.where(batch.pos, term, torch.zeros_like(term)).sum()
        value = pos_sum / n_pos + (term.sum() - pos_sum) / n_neg
        return value, torch.where(batch.pos, slope / n_pos, -slope / n_neg)

    def extra_repr(self) -> str:
        return (f"pos_margin={self.pos_margin:g}, neg_margin={self.neg_margin:g}, squared={self.squared}, "
                f"reduction={self.reduction!r}, normalize={self.normalize}")
