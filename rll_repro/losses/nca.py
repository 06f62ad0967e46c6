"""Neighbourhood components analysis (Goldberger, Roweis, Hinton and Salakhutdinov, NIPS 2004) in
the non-linear form of Salakhutdinov and Hinton (AISTATS 2007), within the batch."""
from __future__ import annotations

import torch

from rll_repro.losses._metric import MetricLoss, PairBatch, check_choice, masked_logsumexp, masked_mean

__all__ = ["NCALoss"]


class NCALoss(MetricLoss):
    """NCA: sample i picks neighbour j != i with probability
    ``p_ij = exp(-softmax_scale d_ij^2) / sum_{k != i} exp(-softmax_scale d_ik^2)`` (squared Euclidean
    distances); ``p_i = sum_{j same class} p_ij`` is the chance that i is classified correctly.

    - ``objective="probability"`` (default): Salakhutdinov and Hinton's O_NCA = sum_i p_i (Goldberger
      et al.'s f(A)), as a loss ``mean_i (1 - p_i)``;
    - ``objective="log"``: Goldberger et al.'s g(A) = sum_i log p_i, as ``mean_i -log p_i``:
      pytorch-metric-learning's NCALoss (same formula; PML also drops a sample whose p_i underflows
      to 0, here it is computed in log space and kept).

    Both average over the samples that have a same-class neighbour (a sample alone in its class has
    p_i = 0 whatever the embedding). The papers have no scale (softmax_scale = 1); the name and
    default are PML's, with PML's normalised embeddings.
    """

    OBJECTIVES = ("probability", "log")

    def __init__(self, softmax_scale: float = 1.0, objective: str = "probability", normalize: bool = True):
        super().__init__(normalize)
        self.softmax_scale = float(softmax_scale)
        self.objective = check_choice("NCALoss", "objective", objective, self.OBJECTIVES)

    def compute(self, batch: PairBatch) -> torch.Tensor:
        logits = -self.softmax_scale * batch.dist2
        log_p = masked_logsumexp(logits, batch.pos) - masked_logsumexp(logits, ~batch.eye)  # log p_i
        has_pos = batch.pos.any(1)
        per_sample = -log_p if self.objective == "log" else 1 - torch.exp(log_p)
        return masked_mean(per_sample, has_pos)

    def extra_repr(self) -> str:
        return f"softmax_scale={self.softmax_scale:g}, objective={self.objective!r}, normalize={self.normalize}"
