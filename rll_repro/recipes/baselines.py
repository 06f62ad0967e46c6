"""The literature's baselines on CUB-200-2011 and Cars196 in the papers' pipeline.

``rll-repro reproduce baseline-<loss>-cub`` / ``-cars`` trains one baseline loss layer
(``ContrastiveLoss`` ... ``MultiSimilarityLoss``, :mod:`rll_repro.losses`, default parameters) with
everything else as the ``rll-cub`` / ``rll-cars`` recipes, so the comparison with RLL is like for like:
BN-Inception from the user's ImageNet ``googlenet_bn.caffemodel``, the H head's 512-d embedding FC
(``pool5/7x7_s1/fc``, lr_mult 100 as that config's embedding FCs) on the 7x7 average pool, L2
normalisation, the RLL sampler (C classes x K images, epochs over the classes), that config's
preprocessing (``process_ori_image_aug_v03``: foreground box + 15 px, long side 256, pad, flip,
random 227 crop; centre crop at test), its .mat list names and Caffe's SGD with its schedule: the
only released RLL configuration for these datasets, ``CUB_V01/60_n1.4_pn0.2_tp0_tn10`` (rll SPEC
§1.5: batch 60 = 20 x 3, lr 0.001, gamma 0.5 at 2k/4k/6k/8k, weight decay 2e-5, momentum 0.9, 10k
iterations); no CARS196 configuration exists, so Cars uses the same one (as ``rll-cars``).

Protocol of the seed table (``../shared/reference/baselines/published.json`` ``_meta.splits``): CUB
first 100 classes train / last 100 test, Cars first 98 / last 98 (``rll-repro make-lists cub|cars``
writes exactly these lists), all test images against all, Recall@1,2,4,8,16,32 (``--protocol
cub|cars``).

Published entry per recipe (:data:`PUBLISHED`, what ``diff`` compares the last checkpoint with): the
baselines file holds ``Margin`` and ``Weight`` rows; ``Weight`` is the seed README author's own
weighted pair loss (bnu-wangxun's Deep_Metric_Learning, the code base the multi-similarity loss came
from), so it is the row for ``MultiSimilarityLoss``. Contrastive, triplet, lifted structure and
binomial deviance are compared with the raw-image rows of the OSM+CAA poster
(``osm_caa/<dataset>/<method> [raw images]``, numbers the poster cites from those papers). NCA
(Goldberger et al.) has no row in either file (``ProxyNCA`` is another method), nor has binomial
deviance on Cars: those recipes train and evaluate but have nothing to diff. The published numbers
come from other backbones, sizes and schedules (see the files' notes): a diff shows the gap, it is not
expected to be within tolerance.
"""
from __future__ import annotations

from . import bninception as bn
from .netspec import NetBuilder, solver
from .settings import (SAMPLER_RLL, TRANSFORM_MARKET_TEST, TRANSFORM_MARKET_TRAIN, Deploy,
                       GeneratedFile, Setting, register)

PAPER = "baselines"
FOLDER = "prototxt/baselines"
DIM = 512
CLASSES_PER_BATCH = 20
IMAGES_PER_CLASS = 3
MAX_ITER = 10000
TEST_BATCH = 32
RECALL_KS = (1, 2, 4, 8, 16, 32)
EMBEDDING_FC = "pool5/7x7_s1/fc"
EMBEDDING_LR_MULT = 100

#: recipe slug -> Caffe layer type (= the rll_repro.losses class name)
LOSSES = {
    "contrastive": "ContrastiveLoss",
    "triplet": "TripletLoss",
    "lifted-structure": "LiftedStructureLoss",
    "binomial-deviance": "BinomialDevianceLoss",
    "margin": "MarginLoss",
    "nca": "NCALoss",
    "multi-similarity": "MultiSimilarityLoss",
}

#: dataset suffix -> (dataset name, eval protocol, .mat lists made by ``rll-repro make-lists``)
DATASETS = {
    "cub": ("CUB-200-2011", "cub", ("CUB_200_2011_TrainImagePathBoxCell.mat",
                                    "CUB_200_2011_TestImagePathBoxCell.mat")),
    "cars": ("Cars196", "cars", ("CARS196_TrainImagePathBoxCell.mat", "CARS196_TestImagePathBoxCell.mat")),
}

#: (loss slug, dataset suffix) -> published keys (see the module docstring); absent: none.
PUBLISHED = {
    ("contrastive", "cub"): ("osm_caa/CUB-200-2011/Contrastive [raw images]",),
    ("contrastive", "cars"): ("osm_caa/CARS196/Contrastive [raw images]",),
    ("triplet", "cub"): ("osm_caa/CUB-200-2011/Triplet [raw images]",),
    ("triplet", "cars"): ("osm_caa/CARS196/Triplet [raw images]",),
    ("lifted-structure", "cub"): ("osm_caa/CUB-200-2011/LiftedStruct [raw images]",),
    ("lifted-structure", "cars"): ("osm_caa/CARS196/LiftedStruct [raw images]",),
    ("binomial-deviance", "cub"): ("osm_caa/CUB-200-2011/Binomial Deviance [raw images]",),
    ("margin", "cub"): ("baselines/CUB-200-2011/Margin",),
    ("margin", "cars"): ("baselines/Cars196/Margin",),
    ("multi-similarity", "cub"): ("baselines/CUB-200-2011/Weight",),
    ("multi-similarity", "cars"): ("baselines/Cars196/Weight",),
}


def train_net(loss_type: str, batch: int = CLASSES_PER_BATCH * IMAGES_PER_CLASS,
              input_size: int = 227) -> NetBuilder:
    """BN-Inception, AVE pool 7 of inception_5b, 512-d FC (lr_mult 100), Reshape, L2, the loss."""
    b = NetBuilder("GoogleNet")
    b.legacy_input("data", (batch, 3, input_size, input_size))
    b.legacy_input("label", (batch, 1, 1, 1))
    bn.backbone(b)
    x = bn.pool(b, "pool5/7x7_s1/pre_fc", "inception_5b/output", "AVE", 7, 1)
    x = bn.fc(b, EMBEDDING_FC, x, DIM, lr_mult=EMBEDDING_LR_MULT)
    x = bn.reshape_nc11(b, "pool5/7x7_s1/reshape", x)
    x = bn.normalization(b, "features/L2Norm", x, "L2")
    b.add("loss", loss_type, [x, "label"], ["loss"], loss_weight=[1], propagate_down=[True, False])
    return b


def baseline_solver():
    """SGD multistep as RLL's CUB_V01 (rll SPEC §1.5); ``net`` relative to this file's folder."""
    return solver(net="train.prototxt", type="SGD", base_lr=0.001, lr_policy="multistep", gamma=0.5,
                  stepvalue=[2000, 4000, 6000, 8000], momentum=0.9, weight_decay=0.00002,
                  max_iter=MAX_ITER)


DEPLOY = GeneratedFile(f"{FOLDER}/deploy_d{DIM}.prototxt", "deploy", None,
                       lambda: bn.rll_deploy_net(DIM, ("H",), 227).net)


def _files(slug: str) -> tuple[GeneratedFile, GeneratedFile]:
    loss_type = LOSSES[slug]
    train = GeneratedFile(f"{FOLDER}/{slug}/train.prototxt", "train", None,
                          lambda: train_net(loss_type).net)
    solv = GeneratedFile(f"{FOLDER}/{slug}/solver.prototxt", "solver", None, baseline_solver)
    return train, solv


def name(slug: str, dataset: str) -> str:
    return f"baseline-{slug}-{dataset}"


def _setting(slug: str, suffix: str, files) -> Setting:
    dataset, protocol, data_files = DATASETS[suffix]
    published = PUBLISHED.get((slug, suffix), ())
    train, solv = files
    return Setting(
        name=name(slug, suffix), paper=PAPER, dataset=dataset,
        description=f"{dataset}, baseline {LOSSES[slug]} (default parameters) on BN-Inception 512-d, "
                    f"batch 60 = 20x3 (RLL sampler), SGD 10k iterations (as rll-cub: CUB_V01 schedule)",
        train=train, solver=solv,
        deploys=(Deploy("H", ("H",), DEPLOY, TEST_BATCH, (MAX_ITER,), published),),
        classes_per_batch=CLASSES_PER_BATCH, images_per_class=IMAGES_PER_CLASS, sampler=SAMPLER_RLL,
        train_transform=TRANSFORM_MARKET_TRAIN, test_transform=TRANSFORM_MARKET_TEST, input_size=227,
        max_iter=MAX_ITER, save_start=1000, save_interval=1000, eval_protocol=protocol,
        recall_ks=RECALL_KS, data_files=data_files, published=published,
        notes="Our own recipe (no original configuration). " + (
            f"Compared with {published[0]}." if published else "No published row to diff against."))


SETTINGS: dict[str, Setting] = {}
for _slug in LOSSES:
    _shared = _files(_slug)
    for _suffix in DATASETS:
        SETTINGS[name(_slug, _suffix)] = register(_setting(_slug, _suffix, _shared))
