"""Neighbourhood components analysis (Goldberger, Roweis, Hinton and Salakhutdinov, NIPS 2004) in
the non-linear form of Salakhutdinov and Hinton (AISTATS 2007), within the batch."""
from __future__ import annotations

import torch

from rll_repro.losses._metric import MetricLoss, PairBatch, check_choice, distance_loss

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
        return distance_loss(batch.emb, True, lambda d2: self.value_and_weights(d2, batch))

    def value_and_weights(self, d2: torch.Tensor, batch: PairBatch):
        """The value and W = dL/d(d^2), hand-written. With z = -softmax_scale d^2, P = softmax_k(z_ik)
        over k != i, M samples with a positive: probability: dL/dz_ik = -P_ik (pos_ik - p_i) / M;
        log: dL/dz_ik = (P_ik - Q_ik) / M, Q = the softmax over i's positives only (log space)."""
        z = (-self.softmax_scale * d2).masked_fill_(batch.eye, -float("inf"))  # k != i
        has_pos = batch.pos.any(1, keepdim=True)
        m = has_pos.sum().clamp_min(1).to(d2.dtype)
        p_all = torch.softmax(z, 1)
        if self.objective == "log":
            z_pos = torch.where(batch.pos, z, torch.full_like(z, -float("inf")))
            log_p = torch.logsumexp(z_pos, 1, keepdim=True) - torch.logsumexp(z, 1, keepdim=True)
            q = torch.where(has_pos, torch.softmax(torch.where(has_pos, z_pos, z), 1), torch.zeros_like(z))
            value = -torch.where(has_pos, log_p, torch.zeros_like(log_p)).sum() / m
            dz = torch.where(has_pos, p_all - q, torch.zeros_like(z))
        else:
            p_i = torch.where(batch.pos, p_all, torch.zeros_like(p_all)).sum(1, keepdim=True)
            value = torch.where(has_pos, 1 - p_i, torch.zeros_like(p_i)).sum() / m
            dz = torch.where(has_pos, -p_all * (batch.pos.to(z.dtype) - p_i), torch.zeros_like(z))
        return value, dz.mul_(-self.softmax_scale / m)

    def extra_repr(self) -> str:
        return f"softmax_scale={self.softmax_scale:g}, objective={self.objective!r}, normalize={self.normalize}"
