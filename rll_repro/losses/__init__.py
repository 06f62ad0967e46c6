"""The two papers' losses as standalone PyTorch losses, called like pytorch-metric-learning's:

    loss_fn = RankedListLoss(pn_margin=0.4, t_n=10.0)
    loss = loss_fn(embeddings, labels)          # embeddings (N, D), labels (N,)
    loss.backward()

    loss_fn = OSMCAALoss(margin=1.2, sigma=0.8)
    loss = loss_fn(embeddings, labels, attention)   # attention: CAA scores s_k >= 0, (N,)

The baselines of the papers' tables, called the same way (``loss_fn(embeddings, labels)``), with
pytorch-metric-learning's parameter names and defaults where PML has the loss: ContrastiveLoss
(Hadsell et al. 2006), TripletLoss (FaceNet's semi-hard mining), LiftedStructureLoss (Song et al.
2016; ``variant`` "hard" / "generalized"), BinomialDevianceLoss (Yi et al. 2014), MarginLoss (Wu et
al. 2017, distance-weighted sampling, seedable), NCALoss (Goldberger et al.; Salakhutdinov and
Hinton's form), MultiSimilarityLoss (Wang et al. 2019, with its pair mining). Each docstring states
the formula, the paper's defaults and where it differs from PML; each is also a Caffe layer type of
the same name (rll_repro.layers.metric_losses). They are vectorised over the N x N pair matrices.

RankedListLoss and OSMCAALoss: ``mode="caffe"`` (default) is the authors' Caffe layer exactly (rll_repro.layers.rll /
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

from rll_repro.losses._base import MODES, _check_embeddings, _check_per_sample, _distances, _l2_caffe, _l2_plain
from rll_repro.losses.binomial_deviance import BinomialDevianceLoss
from rll_repro.losses.contrastive import ContrastiveLoss
from rll_repro.losses.lifted_structure import LiftedStructureLoss
from rll_repro.losses.margin import MarginLoss, distance_weighted_negatives
from rll_repro.losses.multi_similarity import MultiSimilarityLoss
from rll_repro.losses.nca import NCALoss
from rll_repro.losses.osm_caa import OSMCAALoss, paper_osm_caa_loss
from rll_repro.losses.ranked_list import RankedListLoss, paper_ranked_list_loss
from rll_repro.losses.triplet import TripletLoss

# The baselines of the papers' tables, called like RankedListLoss: loss_fn(embeddings, labels).
BASELINE_LOSSES = (ContrastiveLoss, TripletLoss, LiftedStructureLoss, BinomialDevianceLoss, MarginLoss, NCALoss,
                   MultiSimilarityLoss)

__all__ = ["RankedListLoss", "OSMCAALoss", "paper_ranked_list_loss", "paper_osm_caa_loss", "ContrastiveLoss",
           "TripletLoss", "LiftedStructureLoss", "BinomialDevianceLoss", "MarginLoss", "NCALoss",
           "MultiSimilarityLoss", "BASELINE_LOSSES", "distance_weighted_negatives"]
