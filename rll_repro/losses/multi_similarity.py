"""Multi-similarity loss with its pair mining (Wang, Han, Huang, Dong and Scott, CVPR 2019)."""
from __future__ import annotations

import torch

from rll_repro.losses._metric import MetricLoss, PairBatch, masked_logsumexp

__all__ = ["MultiSimilarityLoss"]


class MultiSimilarityLoss(MetricLoss):
    """Multi-similarity loss on cosine similarities S of L2-normalised embeddings::

        L = 1/N sum_i [ 1/alpha log(1 + sum_{k in P_i} exp(-alpha (S_ik - base)))
                      + 1/beta  log(1 + sum_{k in N_i} exp( beta (S_ik - base))) ]

    with the paper's pair mining (``mine_pairs=True``, §3.3): a negative k of i is kept if
    ``S_ik + epsilon > min_{j positive} S_ij``, a positive j if ``S_ij - epsilon < max_{k negative} S_ik``
    (an empty set contributes log 1 = 0). Paper defaults as commonly cited (not checked against the
    paper's text here): alpha = 2, beta = 50, lambda (``base``) = 1, epsilon = 0.1; the authors'
    released code hard-codes lambda (``thresh``) = 0.5 and epsilon (``margin``) = 0.1, with alpha = 2
    and beta = 40 in its configs.

    Names and defaults are pytorch-metric-learning's (MultiSimilarityLoss alpha=2, beta=50,
    base=0.5 and MultiSimilarityMiner epsilon=0.1): loss(emb, labels, miner(emb, labels)) there is the
    same formula. Difference from the authors' code on purpose: it skips an anchor whose mined
    positive or negative set is empty (both terms), and finds "self" as similarity >= 1 - 1e-5 (so
    drops exact duplicates too); here, as in the paper's equation and PML, an empty set gives 0 and
    only i itself is excluded.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
                 mine_pairs: bool = True, normalize: bool = True):
        super().__init__(normalize)
        self.alpha, self.beta, self.base, self.epsilon = float(alpha), float(beta), float(base), float(epsilon)
        self.mine_pairs = bool(mine_pairs)

    def compute(self, batch: PairBatch) -> torch.Tensor:
        s = batch.gram
        pos, neg = batch.pos, batch.neg
        if self.mine_pairs:
            sd = s.detach()
            hardest_neg = torch.where(neg, sd, torch.full_like(sd, -float("inf"))).amax(1, keepdim=True)
            easiest_pos = torch.where(pos, sd, torch.full_like(sd, float("inf"))).amin(1, keepdim=True)
            pos, neg = pos & (sd - self.epsilon < hardest_neg), neg & (sd + self.epsilon > easiest_pos)
        pos_loss = masked_logsumexp(-self.alpha * (s - self.base), pos, add_one=True) / self.alpha
        neg_loss = masked_logsumexp(self.beta * (s - self.base), neg, add_one=True) / self.beta
        return (pos_loss + neg_loss).mean()

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha:g}, beta={self.beta:g}, base={self.base:g}, epsilon={self.epsilon:g}, "
                f"mine_pairs={self.mine_pairs}, normalize={self.normalize}")
