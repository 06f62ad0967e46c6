"""The three released Ranked List Loss settings (rll SPEC §2.4, §4, §5, §7): SOP, In-shop, Market.

Each is a BN-Inception with three RLL heads (H on 5b, L on 3c, M on 4e) of dimension D, a multistep
SGD solver carrying the fork's annealing targets (equal to the layer values, so annealing is a
no-op), and the deploy nets the original MATLAB test scripts ran.
"""
from __future__ import annotations

from . import bninception as bn
from .netspec import solver
from .settings import (RLL_COMMIT, RLL_REPOSITORY, SAMPLER_RLL, TRANSFORM_MARKET_TEST,
                       TRANSFORM_MARKET_TRAIN, TRANSFORM_RLL_TEST, TRANSFORM_RLL_TRAIN, Deploy,
                       GeneratedFile, Original, Setting, register)


def _original(path: str) -> Original:
    return Original(RLL_REPOSITORY, RLL_COMMIT, path)


def _rll_solver(base_lr, gamma, stepvalues, weight_decay, max_iter, t_n):
    """The released RLL solver: multistep SGD + the fork's annealing targets (SPEC §3.2, §7).

    ``net`` is written relative to the solver's own directory (the originals use
    ``../<config>/train.prototxt``, relative to the MATLAB driver's folder).
    """
    return solver(net="train.prototxt", lr_policy="multistep", gamma=gamma,
                  stepvalue=list(stepvalues), type="SGD", base_lr=base_lr,
                  weight_decay=weight_decay, momentum=0.9, max_iter=max_iter,
                  pn_margin=0.4, p_temperature=0, n_temperature=t_n)


def _deploy_builder(dim, heads, size):
    return lambda: bn.rll_deploy_net(dim, heads, size).net


def _deploys(folder, orig_folder, dim, specs, batch_size, checkpoints, published, extra=()):
    """Deploy entries; ``specs`` = ((name, file, heads, declared size[, batch, checkpoints]), ...).

    The declared input size is the original's: 224 in single-head deploys, 227 in concatenations
    (the test code reshapes every input to 227 anyway, SPEC §0.9).
    """
    out = []
    for spec in specs:
        name, file_name, heads, size = spec[:4]
        batch = spec[4] if len(spec) > 4 else batch_size
        ckpts = spec[5] if len(spec) > 5 else checkpoints
        gen = GeneratedFile(
            f"{folder}/deploy/{file_name}", "deploy", _original(f"{orig_folder}/{file_name}"),
            _deploy_builder(dim, heads, size),
            used_by_release=name not in extra)
        out.append(Deploy(name, heads, gen, batch, ckpts, published.get(name, ())))
    return tuple(out)


def _files(folder, orig_config, batch, dim, t_n, dropout, solver_fn):
    train = GeneratedFile(
        f"{folder}/train.prototxt", "train", _original(f"{orig_config}/train.prototxt"),
        lambda: bn.rll_train_net(batch, dim, 0.4, 0, t_n, dropout).net)
    solv = GeneratedFile(f"{folder}/solver.prototxt", "solver",
                         _original(f"{orig_config}/solver.prototxt"), solver_fn)
    return train, solv


# ------------------------------------------------------------------------------------------ SOP
_SOP = "SOP_Simp_25042020"
_SOP_REPO = "rll/SOP/repo_SOP_Simp_25042020_b150_d64_iter30000"
_SOP_CKPTS = tuple(range(14000, 30001, 2000))
_sop_train, _sop_solver = _files(
    "prototxt/rll/sop", f"{_SOP}/150_T10_pn04_v50", 150, 64, 10, True,
    lambda: _rll_solver(0.01, 0.2, (12000, 22000), 0.00002, 30000, 10))
SOP = register(Setting(
    name="rll-sop", paper="rll", dataset="SOP",
    description="Stanford Online Products, RLL (L,M,H), batch 150 = 50x3, 64-d heads, "
                "T_n 10, m 0.4, 30k iterations (SOP_Simp_25042020/150_T10_pn04_v50)",
    train=_sop_train, solver=_sop_solver,
    deploys=_deploys(
        "prototxt/rll/sop", f"{_SOP}/deploy_prototxts", 64,
        (("H", "test_H_d64.prototxt", ("H",), 224),
         ("L", "test_L_d64.prototxt", ("L",), 224),
         ("M", "test_M_d64.prototxt", ("M",), 224),
         ("concat", "test_concat_d64.prototxt", ("H", "L", "M"), 227),
         ("LH", "test_LH_d64.prototxt", ("H", "L"), 227),
         ("LM", "test_LM_d64.prototxt", ("L", "M"), 227),
         ("MH", "test_MH_d64.prototxt", ("H", "M"), 227)),
        batch_size=32, checkpoints=_SOP_CKPTS,
        published={
            "H": (f"{_SOP_REPO}/H", "rll/SOP/paper/RLL-H"),
            "L": (f"{_SOP_REPO}/L", "rll/SOP/paper/ablation_embedding_level/L"),
            "M": (f"{_SOP_REPO}/M", "rll/SOP/paper/ablation_embedding_level/M"),
            "concat": (f"{_SOP_REPO}/(H,L,M)", "rll/SOP/paper/RLL-(L,M,H)"),
            "LH": (f"{_SOP_REPO}/(H,L)",),
            "LM": (f"{_SOP_REPO}/(L,M)",),
            "MH": (f"{_SOP_REPO}/(H,M)",),
        }),
    classes_per_batch=50, images_per_class=3, sampler=SAMPLER_RLL,
    train_transform=TRANSFORM_RLL_TRAIN, test_transform=TRANSFORM_RLL_TEST, input_size=227,
    max_iter=30000, save_start=1000, save_interval=1000,
    eval_protocol="sop", recall_ks=(1, 10, 100),
    data_files=("SOP_TrainImagePathBoxCell.mat", "SOP_TestImagePathBoxCell.mat"),
    published=(f"{_SOP_REPO}/(H,L,M)", "rll/SOP/paper/RLL-(L,M,H)"),
    notes="The slide-deck ('paper') SOP numbers come from the CVPR-era config (batch 180, 512-d); "
          "the repository numbers are this config's. Dropout layers have ratio 0.0 (identity).",
))

# -------------------------------------------------------------------------------------- In-shop
_INSHOP = "InshopClothes_Simp_21042020"
_INSHOP_REPO = "rll/InShop/repo_InshopClothes_Simp_21042020_b66_d128"
_INSHOP_CKPTS = tuple(range(2000, 30001, 2000))
_inshop_train, _inshop_solver = _files(
    "prototxt/rll/inshop", f"{_INSHOP}/60_T10_pn04_v63", 66, 128, 12, False,
    lambda: _rll_solver(0.01, 0.2, (12000, 24000), 0.00002, 30000, 12))
INSHOP = register(Setting(
    name="rll-inshop", paper="rll", dataset="InShop",
    description="In-shop Clothes retrieval, RLL (L,M,H), batch 66 = 22x3, 128-d heads, T_n 12, "
                "m 0.4, 30k iterations (InshopClothes_Simp_21042020/60_T10_pn04_v63)",
    train=_inshop_train, solver=_inshop_solver,
    deploys=_deploys(
        "prototxt/rll/inshop", f"{_INSHOP}/deploy_prototxts", 128,
        (("H", "test_H_d128.prototxt", ("H",), 224),
         ("L", "test_L_d128.prototxt", ("L",), 224),
         ("M", "test_M_d128.prototxt", ("M",), 224),
         ("concat", "test_concat_d128.prototxt", ("H", "L", "M"), 227),
         ("concatHL", "test_concatHL_d128.prototxt", ("H", "L"), 227, 32, (26000,)),
         ("concatHM", "test_concatHM_d128.prototxt", ("H", "M"), 227, 128,
          tuple(range(20000, 30001, 2000))),
         ("concatML", "test_concatML_d128.prototxt", ("L", "M"), 227, 32, (26000,))),
        batch_size=128, checkpoints=_INSHOP_CKPTS,
        published={
            "H": (f"{_INSHOP_REPO}/H_iter26000", f"{_INSHOP_REPO}/H_iter30000"),
            "L": (f"{_INSHOP_REPO}/L_iter26000", f"{_INSHOP_REPO}/L_iter30000"),
            "M": (f"{_INSHOP_REPO}/M_iter26000", f"{_INSHOP_REPO}/M_iter30000"),
            "concat": (f"{_INSHOP_REPO}/(H,L,M)_iter26000", f"{_INSHOP_REPO}/(H,L,M)_iter30000"),
            "concatHL": (f"{_INSHOP_REPO}/(H,L)_iter26000",),
            "concatHM": (f"{_INSHOP_REPO}/(H,M)_iter26000",),
            "concatML": (f"{_INSHOP_REPO}/(L,M)_iter26000",),
        }),
    classes_per_batch=22, images_per_class=3, sampler=SAMPLER_RLL,
    train_transform=TRANSFORM_RLL_TRAIN, test_transform=TRANSFORM_RLL_TEST, input_size=227,
    max_iter=30000, save_start=2000, save_interval=2000,
    eval_protocol="inshop", recall_ks=(1, 10, 20, 30, 40, 50),
    data_files=("InshopClothes_TrainImagePathBoxCell.mat", "InshopClothes_EvaImagePathBoxCell.mat"),
    published=(f"{_INSHOP_REPO}/(H,L,M)_iter26000",),
    notes="The released checkpoint is iteration 26000. No In-shop table in the CVPR material.",
))

# --------------------------------------------------------------------------------------- Market
_MARKET = "Market1501_GooLeNetV2_V02_11042020"
_MARKET_REPO = "rll/Market1501/repo_Market1501_GooLeNetV2_V02_11042020_b180_d512"
_market_train, _market_solver = _files(
    "prototxt/rll/market", f"{_MARKET}/180_pn04_tp0_tn10_onlyRLLv02", 180, 512, 10, False,
    lambda: _rll_solver(0.1, 0.5, (1000, 2000, 3000, 4000, 5000), 0.00001, 6000, 10))
MARKET = register(Setting(
    name="rll-market", paper="rll", dataset="Market1501",
    description="Market-1501 re-id, RLL (L,M,H), batch 180 = 60x3, 512-d heads, T_n 10, m 0.4, "
                "6k iterations (Market1501_GooLeNetV2_V02_11042020/180_pn04_tp0_tn10_onlyRLLv02)",
    train=_market_train, solver=_market_solver,
    deploys=_deploys(
        "prototxt/rll/market", f"{_MARKET}/deploy_prototxts", 512,
        (("concat", "test_concat.prototxt", ("H", "L", "M"), 227),
         ("H", "test_H.prototxt", ("H",), 224),
         ("L", "test_L.prototxt", ("L",), 224),
         ("M", "test_M.prototxt", ("M",), 224)),
        batch_size=128, checkpoints=tuple(range(3000, 6001, 1000)),
        published={"concat": (f"{_MARKET_REPO}/iter6000", f"{_MARKET_REPO}/iter5000")},
        extra=("H", "L", "M")),
    classes_per_batch=60, images_per_class=3, sampler=SAMPLER_RLL,
    train_transform=TRANSFORM_MARKET_TRAIN, test_transform=TRANSFORM_MARKET_TEST, input_size=227,
    max_iter=6000, save_start=1000, save_interval=1000,
    eval_protocol="market", recall_ks=(1,),
    data_files=("Market1501TrainImagePathBoxCell.mat", "Market1501_evaluation.mat"),
    published=(f"{_MARKET_REPO}/iter6000",),
    notes="Evaluation: single-query mAP/CMC, multi-query avg/max pooling, max + re-ranking "
          "(Market-1501 baseline code). The released script tests only test_concat; the "
          "single-head deploys (512-d, same layer names) are generated as extras.",
))
