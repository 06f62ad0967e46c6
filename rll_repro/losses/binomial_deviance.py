"""Binomial deviance loss (Yi, Lei, Liao and Li, "Deep metric learning for person
re-identification", ICPR 2014)."""
from __future__ import annotations

import torch
from torch.nn.functional import softplus

from rll_repro.losses._metric import MetricLoss, PairBatch, masked_mean

__all__ = ["BinomialDevianceLoss"]


class BinomialDevianceLoss(MetricLoss):
    """Binomial deviance over all pairs, on cosine similarities s of L2-normalised embeddings::

        L = sum_{i != j} W_ij log(1 + exp(-alpha (s_ij - beta) M_ij))
        M_ij = 1, W_ij = 1 / n_pos for positive pairs;  M_ij = -cost, W_ij = 1 / n_neg for negatives

    i.e. the mean of ``softplus(-alpha (s - beta))`` over the positive pairs plus the mean of
    ``softplus(alpha cost (s - beta))`` over the negative pairs (an empty kind contributes 0).
    Defaults alpha = 2, beta = 0.5, cost c = 25: the values of Ustinova and Lempitsky's (NIPS 2016)
    comparison, as recalled (not checked against either paper's text here).
    pytorch-metric-learning has no binomial deviance loss: the names are the papers' (c = ``cost``).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 0.5, cost: float = 25.0, normalize: bool = True):
        super().__init__(normalize)
        self.alpha, self.beta, self.cost = float(alpha), float(beta), float(cost)

    def compute(self, batch: PairBatch) -> torch.Tensor:
        s = batch.gram
        pos_term = softplus(-self.alpha * (s - self.beta))
        neg_term = softplus(self.alpha * self.cost * (s - self.beta))
        return masked_mean(pos_term, batch.pos) + masked_mean(neg_term, batch.neg)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, cost={self.cost:g}, normalize={self.normalize}"
