"""Ranked List Loss (CVPR'19) as a standalone loss: the Caffe layer (``mode="caffe"``) or the paper's
objective with plain autograd (``mode="paper"``). See :mod:`rll_repro.losses`."""
from __future__ import annotations

import torch
from torch import nn

from rll_repro.layers.rll import RLLParams, rll_cvpr19, rll_v12
from rll_repro.losses._base import MODES, _check_embeddings, _check_per_sample, _distances, _l2_caffe, _l2_plain

__all__ = ["RankedListLoss", "paper_ranked_list_loss"]


def paper_ranked_list_loss(emb, labels, alpha=1.2, margin=0.4, t_n=10.0, t_p=0.0, lam=1.0) -> torch.Tensor:
    """RLL as the paper states it (plain autograd through everything, weights included): for each query i,
    L_P = sum_{P*} w+ (d - (alpha - m)) / sum_{P*} w+ over positives with d > alpha - m,
    w+ = exp(t_p (d - (alpha - m))); L_N = sum_{N*} w- (alpha - d) / sum_{N*} w- over negatives with
    d < alpha, w- = exp(t_n (alpha - d)); loss = mean_i (L_P + lam L_N) (empty sets give 0)."""
    n = emb.shape[0]
    d = _distances(emb)
    y = labels.reshape(-1)
    same = y[:, None] == y[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=emb.device)
    pos = same & ~eye & (d > alpha - margin)
    neg = ~same & (d < alpha)
    wp = torch.where(pos, torch.exp(t_p * (d - (alpha - margin))), torch.zeros_like(d))
    wn = torch.where(neg, torch.exp(t_n * (alpha - d)), torch.zeros_like(d))
    wp = wp / wp.sum(1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
    wn = wn / wn.sum(1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
    loss_p = (wp * (d - (alpha - margin))).sum(1)
    loss_n = (wn * (alpha - d)).sum(1)
    return (loss_p + lam * loss_n).mean()


class RankedListLoss(nn.Module):
    """Ranked List Loss (CVPR'19). Parameters and their Caffe fields (layer
    ``DistanceWeightedValidPairLossV12``):

    ============================  ==========================================  ===============
    argument                      Caffe field                                 paper
    ============================  ==========================================  ===============
    ``pn_margin`` = 0.4           contrastive_loss_param_v2.pn_margin         m
    ``negative_threshold`` = 1.2  contrastive_loss_param_v2.negative_threshold  α (value only in V12)
    ``t_n`` = 10                  softmax_t_n_param.scale                     T_n
    ``t_p`` = 0                   softmax_t_p_param.scale                     T_p
    ``base_n``, ``base_p``        softmax_t_{n,p}_param.base (2.71828, not e)  e
    ============================  ==========================================  ===============

    In V12 the weighting boundaries are 1 - m/2 and 1 + m/2 (α = 1.2 only for m = 0.4); paper mode
    uses α = ``negative_threshold`` and α - m. ``variant="cvpr19"`` is the CVPR-era layer (SPEC rll
    §1.5) whose ``margin`` (here ``negative_threshold``; Caffe default 1.4) is α for the weights too.
    """

    def __init__(self, pn_margin: float = 0.4, t_n: float = 10.0, t_p: float = 0.0, negative_threshold: float = 1.2,
                 base_n: float = 2.71828, base_p: float = 2.71828, normalize: bool = True, mode: str = "caffe",
                 variant: str = "v12"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"RankedListLoss: mode must be one of {MODES}, got {mode!r}")
        if variant not in ("v12", "cvpr19"):
            raise ValueError(f"RankedListLoss: variant must be 'v12' or 'cvpr19', got {variant!r}")
        self.params = RLLParams(negative_threshold, pn_margin, t_p, base_p, t_n, base_n)
        self.normalize, self.mode, self.variant = normalize, mode, variant

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        who = type(self).__name__
        emb = _check_embeddings(embeddings, who)
        labels = _check_per_sample(labels, emb.shape[0], who, "labels", emb.device)
        p = self.params
        if self.mode == "paper":
            emb = _l2_plain(emb, who) if self.normalize else emb
            return paper_ranked_list_loss(emb, labels, p.negative_threshold, p.pn_margin, p.scale_n, p.scale_p)
        emb = _l2_caffe(emb, 0.0, who) if self.normalize else emb
        return (rll_v12 if self.variant == "v12" else rll_cvpr19)(emb, labels, p)

    def extra_repr(self) -> str:
        return f"{self.params}, normalize={self.normalize}, mode={self.mode!r}, variant={self.variant!r}"
