"""Margin loss with distance-weighted sampling (Wu, Manmatha, Smola and Krahenbuhl, "Sampling
matters in deep embedding learning", ICCV 2017)."""
from __future__ import annotations

import torch
from torch import nn

from rll_repro.errors import DataError
from rll_repro.losses._metric import MetricLoss, PairBatch, check_choice

__all__ = ["MarginLoss", "distance_weighted_negatives"]


def distance_weighted_negatives(dist: torch.Tensor, neg: torch.Tensor, dim: int, cutoff: float = 0.5,
                                nonzero_loss_cutoff: float = 1.4,
                                generator: torch.Generator | None = None) -> torch.Tensor:
    """Wu et al.'s distance-weighted sampling (§4): for every (anchor a, slot j) one negative index,
    drawn from a's negatives with probability proportional to ``q(d)^-1`` where
    ``log q(d)^-1 = (2 - dim) log d - (dim - 3)/2 log(1 - d^2/4)``, d clipped below at ``cutoff``,
    weight 0 where d >= ``nonzero_loss_cutoff`` (or where the density is not finite). An anchor whose
    weights are all 0 draws uniformly among its negatives. Returns an (N, N) long matrix (rows of
    anchors without any negative hold arbitrary indices: the caller masks them out).

    Inverse-CDF sampling, one uniform number per (a, j) from ``generator`` (None: the device's
    default generator), float64 cumulative sums; no gradient. Stabilised by each row's maximum
    (the authors' code and PML subtract the maximum over the whole matrix, so a row whose weights
    underflow there falls back to uniform; here it keeps its weights).
    """
    with torch.no_grad():
        d = dist.detach().to(torch.float64).clamp_min(cutoff)
        log_w = (2.0 - dim) * torch.log(d) - ((dim - 3) / 2.0) * torch.log(1.0 - 0.25 * d * d)
        usable = neg & (d < nonzero_loss_cutoff) & torch.isfinite(log_w)
        log_w = torch.where(usable, log_w, torch.full_like(log_w, -float("inf")))
        row_max = log_w.amax(1, keepdim=True)
        w = torch.where(usable, torch.exp(log_w - torch.where(torch.isfinite(row_max), row_max, 0.0)), 0.0)
        w = torch.where(usable.any(1, keepdim=True), w, neg.to(w.dtype))  # no usable weight: uniform
        cdf = w.cumsum(1)
        u = torch.rand(d.shape, dtype=torch.float64, device=d.device, generator=generator)
        pick = torch.searchsorted(cdf, (u * cdf[:, -1:]).contiguous(), right=True)
        return pick.clamp_max(d.shape[1] - 1)


class MarginLoss(MetricLoss):
    """Margin loss over distance-weighted triplets::

        l(a, p, n) = max(0, margin + d_ap - beta_a) + max(0, margin + beta_a - d_an)
        L = (sum_triplets l + nu sum_triplets beta_a) / (number of non-zero terms)

    (Wu et al. Eq. 4-5 with the normalisation of their released code; beta_a is one learnable
    boundary, or one per class of the anchor with ``num_classes``; nu regularises it). Triplets: every
    positive pair (a, p) with one negative drawn by :func:`distance_weighted_negatives`
    (``sampling="distance_weighted"``) over the Euclidean distances of L2-normalised embeddings; or
    every triplet (``sampling="all"``, pytorch-metric-learning's default without a miner). Paper
    defaults: margin alpha = 0.2, beta_0 = 1.2 (learned in the paper: ``learn_beta=True``), nu = 0,
    cutoff 0.5, nonzero_loss_cutoff 1.4.

    Names and defaults are pytorch-metric-learning's (MarginLoss margin=0.2, nu=0, beta=1.2,
    learn_beta=False, num_classes=None; DistanceWeightedMiner cutoff=0.5, nonzero_loss_cutoff=1.4).
    Differences from PML on purpose: with one shared beta, PML adds ``nu * beta`` undivided (here,
    as in the paper's code, ``nu * beta`` per triplet over the non-zero count; equal for nu = 0);
    the sampler's stabilisation (see the function) and the anchors with no usable negative (PML
    also draws them uniformly; the authors' code draws among all samples). Given the same triplets
    the value equals PML's.

    Sampling is reproducible: ``seed`` seeds a ``torch.Generator`` on the embeddings' device (one per
    device, created on first use); ``seed=None`` uses the device's default generator (seeded by
    ``torch.manual_seed``). ``forward(..., generator=g)`` overrides both.
    """

    SAMPLINGS = ("distance_weighted", "all")

    def __init__(self, margin: float = 0.2, nu: float = 0.0, beta: float = 1.2, learn_beta: bool = False,
                 num_classes: int | None = None, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                 sampling: str = "distance_weighted", seed: int | None = None, normalize: bool = True):
        super().__init__(normalize)
        self.margin, self.nu = float(margin), float(nu)
        self.cutoff, self.nonzero_loss_cutoff = float(cutoff), float(nonzero_loss_cutoff)
        self.sampling = check_choice("MarginLoss", "sampling", sampling, self.SAMPLINGS)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.learn_beta = bool(learn_beta)
        if self.learn_beta:  # float32, as the model's parameters (and PML's)
            self.beta = nn.Parameter(torch.full((self.num_classes or 1,), float(beta)))
        else:  # float64, so that beta=1.2 is 1.2 for float64 embeddings too
            self.register_buffer("beta", torch.full((self.num_classes or 1,), float(beta), dtype=torch.float64))
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        """This loss's generator on ``device`` (seeded on first use), or None without a seed."""
        if self.seed is None:
            return None
        device = torch.device(device)
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(int(self.seed))
        return self._generators[device]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.compute(self.prepare(embeddings, labels), generator)

    def compute(self, batch: PairBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.sampling == "all":
            return self.triplet_loss(batch, None)
        g = generator if generator is not None else self.generator_for(batch.emb.device)
        negatives = distance_weighted_negatives(batch.dist, batch.neg, batch.emb.shape[1], self.cutoff,
                                                self.nonzero_loss_cutoff, g)
        return self.triplet_loss(batch, negatives)

    def anchor_beta(self, batch: PairBatch) -> torch.Tensor:
        """(N,) beta of each anchor's class (or the one shared beta)."""
        beta = self.beta.to(device=batch.emb.device, dtype=batch.emb.dtype)
        if self.num_classes is None:
            return beta.expand(batch.n)
        labels = batch.labels
        if labels.is_floating_point():
            labels = labels.round()
        labels = labels.long()
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise DataError(f"MarginLoss: labels must lie in [0, num_classes = {self.num_classes}) for per-class beta")
        return beta[labels]

    def triplet_loss(self, batch: PairBatch, negatives: torch.Tensor | None) -> torch.Tensor:
        """The loss over the triplets (a, p, negatives[a, p]), or over every triplet if None."""
        d = batch.dist
        beta = self.anchor_beta(batch)[:, None]  # (N, 1)
        has_neg = batch.neg.any(1, keepdim=True)
        triplet_pairs = batch.pos & has_neg  # one triplet per positive pair (a, p)
        zero = torch.zeros_like(d)
        pos_loss = (self.margin + d - beta).clamp_min(0)  # (a, p)
        neg_loss = (self.margin + beta - d).clamp_min(0)  # (a, n)
        if negatives is not None:
            neg_of_pair = neg_loss.gather(1, negatives)  # the sampled negative of pair (a, p)
            terms = torch.where(triplet_pairs, pos_loss + neg_of_pair, zero).sum()
            nonzero = torch.where(triplet_pairs, (pos_loss > 0).to(d.dtype) + (neg_of_pair > 0).to(d.dtype), zero).sum()
            n_triplets = triplet_pairs.sum(1, keepdim=True).to(d.dtype)
        else:  # every triplet: pair (a, p) meets each of a's negatives, and (a, n) each of a's positives
            n_pos, n_neg = batch.pos.sum(1, keepdim=True).to(d.dtype), batch.neg.sum(1, keepdim=True).to(d.dtype)
            pos_w, neg_w = torch.where(triplet_pairs, n_neg.expand_as(d), zero), torch.where(batch.neg, n_pos.expand_as(d), zero)
            terms = (pos_w * pos_loss).sum() + (neg_w * neg_loss).sum()
            nonzero = (pos_w * (pos_loss > 0)).sum() + (neg_w * (neg_loss > 0)).sum()
            n_triplets = n_pos * n_neg
        reg = self.nu * (beta * n_triplets).sum() if self.nu != 0 else 0.0
        return (terms + reg) / nonzero.clamp_min(1)

    def extra_repr(self) -> str:
        return (f"margin={self.margin:g}, nu={self.nu:g}, beta={self.beta.detach().cpu().tolist()}, "
                f"learn_beta={self.learn_beta}, num_classes={self.num_classes}, cutoff={self.cutoff:g}, "
                f"nonzero_loss_cutoff={self.nonzero_loss_cutoff:g}, sampling={self.sampling!r}, seed={self.seed}, "
                f"normalize={self.normalize}")
