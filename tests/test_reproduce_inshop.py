"""`rll-repro reproduce` on an In-shop-style setting: ``list_eval_partition.txt`` lists via make-lists
(eval list = [query; gallery] with ``query_num``), query x gallery Recall@K, ``Recall_<deploy>.txt``."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rll_repro import cli, recipes
from rll_repro.recipes.settings import (RLL_COMMIT, RLL_REPOSITORY, Deploy, GeneratedFile, Original,
                                        Setting)

from test_reproduce_pipeline import DEPLOY, SOLVER, TRAIN

NAME = "tiny-inshop-test"


@pytest.fixture
def inshop(tmp_path, monkeypatch):
    import warnings

    import torch

    from rll_repro.data.writers import write_lists
    from rll_repro.net import Net

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import write_png

    rng = np.random.default_rng(3)
    root, lists, nets = tmp_path / "InShop", tmp_path / "lists", tmp_path / "prototxt"
    rows = []
    for item in range(1, 11):
        folder = root / "img" / f"id_{item:08d}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for k in range(3):
            img = np.clip(colour[:, None, None] + rng.normal(0, 30, (3, 40, 36)), 0, 255).astype(np.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                write_png(torch.from_numpy(img), str(folder / f"{k}.png"))
            status = "train" if item <= 6 else ("query" if k == 0 else "gallery")
            rows.append(f"img/id_{item:08d}/{k}.png id_{item:08d} {status}")
    (root / "list_eval_partition.txt").write_text(f"{len(rows)}\nimage_name item_id evaluation_status\n"
                                                  + "\n".join(rows) + "\n")
    lists.mkdir()
    write_lists("inshop", root, lists / "InshopClothes_TrainImagePathBoxCell.mat", "train")
    write_lists("inshop", root, lists / "InshopClothes_EvaImagePathBoxCell.mat", "eval")
    nets.mkdir()
    for name, text in (("train", TRAIN), ("solver", SOLVER), ("test_concat_d16", DEPLOY)):
        (nets / f"{name}.prototxt").write_text(text)
    weights = tmp_path / "init.caffemodel"
    Net(str(nets / "train.prototxt"), phase="train").save(str(weights))
    original = Original(RLL_REPOSITORY, RLL_COMMIT, "tiny")
    gen = lambda rel, kind: GeneratedFile(str(nets / rel), kind, original, lambda: None)  # noqa: E731
    setting = Setting(
        name=NAME, paper="rll", dataset="tiny", description="tiny In-shop-style test setting",
        train=gen("train.prototxt", "train"), solver=gen("solver.prototxt", "solver"),
        deploys=(Deploy("concat", ("H",), gen("test_concat_d16.prototxt", "deploy"), 4, (2,)),),
        classes_per_batch=3, images_per_class=2, sampler="RLLBatchSampler",
        train_transform="RLLTrainTransform", test_transform="rll_test_transform", input_size=32,
        max_iter=2, save_start=2, save_interval=2, eval_protocol="inshop", recall_ks=(1, 10, 20, 30, 40, 50),
        data_files=("InshopClothes_TrainImagePathBoxCell.mat", "InshopClothes_EvaImagePathBoxCell.mat"),
        published=())
    recipes.names()
    monkeypatch.setitem(recipes.REGISTRY, NAME, setting)
    return {"root": root, "lists": lists, "weights": weights, "out": tmp_path / "run"}


def test_inshop_setting_ranks_queries_against_the_gallery(inshop, capsys):
    code = cli.main(["reproduce", NAME, "--data-root", str(inshop["root"]), "--lists", str(inshop["lists"]),
                     "--weights", str(inshop["weights"]), "--out", str(inshop["out"]), "--threads", "1"])
    assert code == 0  # no published entry: nothing to diff, exit 0
    assert "nothing to diff" in capsys.readouterr().out
    result = json.loads((inshop["out"] / "results" / "concat_iter_2.json").read_text())
    # 4 query items x 1 image, gallery 4 x 2 = 8: Recall@K only for K <= 8
    assert [k for k in result if not k.startswith("_")] == ["R@1"]
    assert (result["_meta"]["queries"], result["_meta"]["gallery"]) == (4, 8)
    assert (inshop["out"] / "Recall_concat_d16.txt").read_text().startswith("iter: 2, rank1: ")
