"""OSM + CAA (AAAI'19) as a standalone loss: the Caffe layer (``mode="caffe"``) or the paper's
objective with plain autograd (``mode="paper"``). See :mod:`rll_repro.losses`."""
from __future__ import annotations

import torch
from torch import nn

from rll_repro.device import host_reads_allowed
from rll_repro.errors import DataError
from rll_repro.layers.osm_caa import osm_caa_loss
from rll_repro.losses._base import MODES, _check_embeddings, _check_per_sample, _distances, _l2_caffe, _l2_plain

__all__ = ["OSMCAALoss", "paper_osm_caa_loss"]


def paper_osm_caa_loss(emb, labels, attention, margin=1.2, sigma=0.8) -> torch.Tensor:
    """OSM+CAA weighted contrastive loss as the paper describes it (plain autograd through the OSM
    weights too; the attention is an input without gradient): w_ij = s_ij * min(a_i, a_j) with s+ = exp(-d^2 / (2 sigma^2)) (the code's Gaussian up to
    its constant) and s- = max(0, margin - d); loss = 0.5 sum_pos w d^2 / sum_pos w
    + 0.5 sum_neg w max(0, margin - d)^2 / sum_neg w over the pairs i < j."""
    n = emb.shape[0]
    d = _distances(emb)
    y = labels.reshape(-1)
    upper = torch.ones(n, n, dtype=torch.bool, device=emb.device).triu(1)
    same = y[:, None] == y[None, :]
    pos, neg = same & upper, ~same & upper
    hinge = (margin - d).clamp_min(0)
    a = attention.reshape(-1).to(d.dtype).detach()
    caa = torch.minimum(a[:, None], a[None, :])
    wp = torch.where(pos, torch.exp(-d * d / (2 * sigma * sigma)) * caa, torch.zeros_like(d))
    wn = torch.where(neg, hinge * caa, torch.zeros_like(d))
    wp = wp / wp.sum().clamp_min(torch.finfo(d.dtype).tiny)
    wn = wn / wn.sum().clamp_min(torch.finfo(d.dtype).tiny)
    return 0.5 * (wp * d * d).sum() + 0.5 * (wn * hinge * hinge).sum()


class OSMCAALoss(nn.Module):
    """OSM + CAA weighted contrastive loss (AAAI'19), layer ``DistanceWeightedValidPairLossV5``:
    ``margin`` = contrastive_loss_param.margin (1.2 in the released nets), ``sigma``/``mean`` =
    gaussian_param of the loss layer (0.8 / 0.0: the OSM positive weight is the Gaussian pdf of the
    distance). ``attention`` is the CAA score s_k per sample (the nets feed Gaussian(mean 1, sigma
    0.68) of the ground-truth class probability; see :func:`rll_repro.layers.osm_caa.gaussian_pdf`);
    it gets no gradient. Paper mode ignores ``mean``."""

    def __init__(self, margin: float = 1.2, sigma: float = 0.8, mean: float = 0.0, normalize: bool = True,
                 mode: str = "caffe"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"OSMCAALoss: mode must be one of {MODES}, got {mode!r}")
        self.margin, self.sigma, self.mean = float(margin), float(sigma), float(mean)
        self.normalize, self.mode = normalize, mode

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        who = type(self).__name__
        emb = _check_embeddings(embeddings, who)
        n = emb.shape[0]
        labels = _check_per_sample(labels, n, who, "labels", emb.device)
        attention = _check_per_sample(attention, n, who, "attention", emb.device)
        if host_reads_allowed(attention) and bool((attention < 0).any()):
            raise DataError(f"{who}: attention scores must be >= 0 (Caffe feeds a Gaussian pdf)")
        if self.mode == "paper":
            emb = _l2_plain(emb, who) if self.normalize else emb
            return paper_osm_caa_loss(emb, labels, attention, self.margin, self.sigma)
        emb = _l2_caffe(emb, 1e-12, who) if self.normalize else emb
        return osm_caa_loss(emb, labels, attention.to(emb.dtype), self.margin, self.sigma, self.mean)

    def extra_repr(self) -> str:
        return f"margin={self.margin:g}, sigma={self.sigma:g}, mean={self.mean:g}, normalize={self.normalize}, mode={self.mode!r}"
