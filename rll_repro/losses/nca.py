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
      pytorch-metric-learning's NCALoss (same formula; where p_i underflows to 0, PML drops the
      sample, here p_i is clamped at the dtype's smallest normal number).

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
        log: dL/dz_ik = (P_ik - Q_ik) / M, Q = the softmax over i's positives only."""
        z = (d2 * -self.softmax_scale).masked_fill_(batch.eye, -float("inf"))  # k != i
        pos = batch.pos.to(d2.dtype)
        has_pos = pos.amax(1, keepdim=True)  # 1 for the samples that have a positive, else 0
        m = has_pos.sum().clamp_min(1)
        p_all = torch.softmax(z, 1)
        p_pos = p_all * pos
        p_i = p_pos.sum(1, keepdim=True)
        if self.objective == "log":  # p_i clamped at the dtype's tiny: -log p_i stays finite
            p_i = p_i.clamp_min(torch.finfo(d2.dtype).tiny)
            value = -(torch.log(p_i) * has_pos).sum() / m
            dz = p_all.sub_(p_pos.div_(p_i))  # P - Q, Q = the softmax over i's positives
        else:
            value = ((1 - p_i) * has_pos).sum() / m
            dz = p_all.mul_(p_i - pos)
        return value, dz.mul_(has_pos * (-self.softmax_scale / m))

    def extra_repr(self) -> str:
        return f"softmax_scale={self.softmax_scale:g}, objective={self.objective!r}, normalize={self.normalize}"
