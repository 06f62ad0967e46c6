"""Lifted structured embedding loss (Song, Xiang, Jegelka and Savarese, CVPR 2016) and its variants."""
from __future__ import annotations

import torch

from rll_repro.losses._metric import MetricLoss, PairBatch, check_choice, masked_logsumexp

__all__ = ["LiftedStructureLoss"]


class LiftedStructureLoss(MetricLoss):
    """Lifted structure loss. With Euclidean distances D, N(i) the negatives of i and P the positive
    pairs, ``variant=``

    - ``"smooth"`` (default; the paper's Eq. 4, the objective Song et al. train with, their Caffe
      layer's and pytorch-metric-learning's LiftedStructureLoss, the same formula)::

          J_ij = log( sum_{k in N(i)} exp(neg_margin - D_ik) + sum_{l in N(j)} exp(neg_margin - D_jl) )
                 + D_ij - pos_margin
          L = 1 / (2 |P|) sum_{(i,j) in P} max(0, J_ij)^2       (|P| unordered positive pairs)

    - ``"hard"``: the paper's Eq. 3, the non-smooth original: the log-sum-exp replaced by
      ``max(max_k (neg_margin - D_ik), max_l (neg_margin - D_jl))``, same reduction;
    - ``"generalized"``: the per-anchor form of Hermans, Beyer and Leibe (2017) that many ports call
      lifted structure (pytorch-metric-learning's GeneralizedLiftedStructureLoss, same formula):
      ``L = mean_a max(0, log sum_{p} exp(D_ap - pos_margin) + log sum_{n} exp(neg_margin - D_an))``,
      an empty set contributing 0.

    Paper default: margin alpha = ``neg_margin`` = 1 (pos_margin is PML's addition, 0 = the paper).
    Names and defaults are pytorch-metric-learning's (normalised embeddings; the paper does not
    normalise, pass ``normalize=False`` for that). A batch without positives or without negatives
    gives 0.
    """

    VARIANTS = ("smooth", "hard", "generalized")

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, variant: str = "smooth",
                 normalize: bool = True):
        super().__init__(normalize)
        self.neg_margin, self.pos_margin = float(neg_margin), float(pos_margin)
        self.variant = check_choice("LiftedStructureLoss", "variant", variant, self.VARIANTS)

    def compute(self, batch: PairBatch) -> torch.Tensor:
        d = batch.dist
        has_neg = batch.neg.any(1)
        if self.variant == "generalized":
            pos_part = torch.where(batch.pos.any(1), masked_logsumexp(d - self.pos_margin, batch.pos), torch.zeros_like(d[0]))
            neg_part = torch.where(has_neg, masked_logsumexp(self.neg_margin - d, batch.neg), torch.zeros_like(d[0]))
            return (pos_part + neg_part).clamp_min(0).mean()
        if self.variant == "smooth":
            per_anchor = masked_logsumexp(self.neg_margin - d, batch.neg)  # (N,) finite placeholder if no negative
            neg_part = torch.logaddexp(per_anchor[:, None], per_anchor[None, :])
        else:
            lowest = torch.finfo(d.dtype).min
            per_anchor = torch.where(batch.neg, self.neg_margin - d, torch.full_like(d, lowest)).amax(1)
            neg_part = torch.maximum(per_anchor[:, None], per_anchor[None, :])
        valid = batch.pos & has_neg[:, None]  # one endpoint without negatives = a single-class batch
        j = (neg_part + d - self.pos_margin).clamp_min(0)
        total = torch.where(valid, j * j, torch.zeros_like(d)).sum()  # ordered: 2 |P| pairs, each J twice
        return total / (2 * valid.sum().clamp_min(1).to(d.dtype))

    def extra_repr(self) -> str:
        return (f"neg_margin={self.neg_margin:g}, pos_margin={self.pos_margin:g}, variant={self.variant!r}, "
                f"normalize={self.normalize}")
