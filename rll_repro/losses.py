"""The two papers' losses as standalone PyTorch losses, called like pytorch-metric-learning's:

    loss_fn = RankedListLoss(pn_margin=0.4, t_n=10.0)
    loss = loss_fn(embeddings, labels)          # embeddings (N, D), labels (N,)
    loss.backward()

    loss_fn = OSMCAALoss(margin=1.2, sigma=0.8)
    loss = loss_fn(embeddings, labels, attention)   # attention: CAA scores s_k >= 0, (N,)

``mode="caffe"`` (default) is the authors' Caffe layer exactly (rll_repro.layers.rll /
rll_repro.layers.osm_caa): the returned value is the layer's monitoring value for **this** batch
(unlike the Caffe RLL layer, whose reported value lags one iteration, SPEC rll §1.4: a standalone
loss has no previous iteration to report), and ``backward`` gives Caffe's gradient, which is not
the autograd gradient of that value (times the incoming gradient, Caffe's loss_weight).
``normalize=True`` first applies the fork's L2 Normalization with its own backward, as the nets do
(RLL fork: no epsilon, a zero embedding is a DataError; OSM fork: +1e-12).

``mode="paper"`` is the objective as the papers describe it, with plain autograd (through the pair
weights too, so ``torch.autograd.gradcheck`` holds), for comparison; its equations are a reading of the papers that could not be
checked against the paper text (SPEC rll §10.2, osm §11-12), see the ``paper_*`` functions.

Any device: labels and attention are moved to the embeddings' device. Over several processes
(DistributedDataParallel), wrap the loss in :class:`rll_repro.distributed.DistributedLoss` so that
the ranked list is the global batch of all ranks.

Bad input (not a float32/float64 (N, D) tensor, N < 2, labels of another length or a non-numeric
dtype, non-finite values, negative attention) raises :class:`rll_repro.errors.DataError`. N = 1 is
refused rather than reproduced: with one sample there is no pair, and Caffe computes 0/0 = NaN for
the value and a zero gradient, which would only surface later as a NaN loss.
"""
from __future__ import annotations

import torch
from torch import nn

from rll_repro.errors import DataError
from rll_repro.layers.normalization import l2_normalize
from rll_repro.layers.osm_caa import osm_caa_loss
from rll_repro.layers.rll import RLLParams, rll_cvpr19, rll_v12

__all__ = ["RankedListLoss", "OSMCAALoss", "paper_ranked_list_loss", "paper_osm_caa_loss"]

MODES = ("caffe", "paper")


def _check_embeddings(emb, who: str) -> torch.Tensor:
    if not torch.is_tensor(emb):
        raise DataError(f"{who}: embeddings must be a torch.Tensor, got {type(emb).__name__}")
    if emb.dtype not in (torch.float32, torch.float64):
        raise DataError(f"{who}: embeddings must be float32 or float64, got {emb.dtype}")
    if emb.dim() < 2:
        raise DataError(f"{who}: embeddings must be (N, D), got shape {tuple(emb.shape)}")
    if emb.shape[0] < 2:
        raise DataError(f"{who}: needs at least 2 embeddings to form a pair, got {emb.shape[0]} "
                        "(the Caffe layer would report 0/0 = NaN)")
    if not bool(torch.isfinite(emb).all()):
        raise DataError(f"{who}: embeddings contain NaN or Inf")
    return emb.reshape(emb.shape[0], -1)


def _check_per_sample(values, n: int, who: str, what: str, device: torch.device) -> torch.Tensor:
    """Validated (n,) view of a per-sample input, moved to the embeddings' device (labels often stay
    on the CPU when the model runs on CUDA)."""
    if not torch.is_tensor(values):
        raise DataError(f"{who}: {what} must be a torch.Tensor, got {type(values).__name__}")
    if values.dtype == torch.bool or values.is_complex():
        raise DataError(f"{who}: {what} must be integer or floating point, got {values.dtype}")
    if values.numel() != n:
        raise DataError(f"{who}: {what} has {values.numel()} values for {n} embeddings")
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise DataError(f"{who}: {what} contain NaN or Inf")
    return values.reshape(n).to(device)


def _l2_caffe(emb: torch.Tensor, eps: float, who: str) -> torch.Tensor:
    out = l2_normalize(emb, eps)
    if eps == 0.0:
        zero = (emb.detach() == 0).all(1)
        if bool(zero.any()):
            raise DataError(f"{who}: embedding {int(zero.nonzero()[0])} is all zeros; the RLL fork's L2 "
                            "Normalization has no epsilon (Caffe: NaN); pass normalize=False or fix the input")
    return out


def _l2_plain(emb: torch.Tensor) -> torch.Tensor:
    return emb / emb.norm(dim=1, keepdim=True)


def _distances(emb: torch.Tensor) -> torch.Tensor:
    """Differentiable Euclidean distance matrix (Gram form; gradient 0 at d = 0)."""
    sq = (emb * emb).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * emb @ emb.T).clamp_min(0)
    positive = d2 > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, d2, torch.ones_like(d2))), torch.zeros_like(d2))


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
            emb = _l2_plain(emb) if self.normalize else emb
            return paper_ranked_list_loss(emb, labels, p.negative_threshold, p.pn_margin, p.scale_n, p.scale_p)
        emb = _l2_caffe(emb, 0.0, who) if self.normalize else emb
        return (rll_v12 if self.variant == "v12" else rll_cvpr19)(emb, labels, p)

    def extra_repr(self) -> str:
        return f"{self.params}, normalize={self.normalize}, mode={self.mode!r}, variant={self.variant!r}"


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
        if bool((attention < 0).any()):
            raise DataError(f"{who}: attention scores must be >= 0 (Caffe feeds a Gaussian pdf)")
        if self.mode == "paper":
            emb = _l2_plain(emb) if self.normalize else emb
            return paper_osm_caa_loss(emb, labels, attention, self.margin, self.sigma)
        emb = _l2_caffe(emb, 1e-12, who) if self.normalize else emb
        return osm_caa_loss(emb, labels, attention.to(emb.dtype), self.margin, self.sigma, self.mean)

    def extra_repr(self) -> str:
        return f"margin={self.margin:g}, sigma={self.sigma:g}, mean={self.mean:g}, normalize={self.normalize}, mode={self.mode!r}"
