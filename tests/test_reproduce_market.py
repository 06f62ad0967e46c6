"""`rll-repro reproduce` on a Market-1501-style setting: lists made by ``make-lists`` writers from a
tiny Market folder (JPEGs), ``MarketTrainTransform`` / ``market_test_transform`` (at a 32 crop),
the re-id protocol (single query, multi-query avg/max, re-ranking) and ``Record_<deploy>.txt``."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from rll_repro import cli, recipes
from rll_repro.eval.resultfiles import at_iter, parse_result_file
from rll_repro.recipes.settings import (RLL_COMMIT, RLL_REPOSITORY, Deploy, GeneratedFile, Original,
                                        Setting)

from test_reproduce_pipeline import DEPLOY, SOLVER, TRAIN

NAME = "tiny-market-test"


def _jpeg(path, rng, colour):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import write_jpeg

        h, w = int(rng.integers(40, 56)), int(rng.integers(20, 30))
        img = np.full((3, h, w), 255, np.uint8)  # white background around a coloured person box
        img[:, 4:h - 4, 3:w - 3] = np.clip(colour[:, None, None] + rng.normal(0, 25, (3, h - 8, w - 6)), 0, 240)
        write_jpeg(torch.from_numpy(img), str(path))


@pytest.fixture
def market(tmp_path, monkeypatch):
    from rll_repro.data.writers import write_lists
    from rll_repro.net import Net

    rng = np.random.default_rng(2)
    root, lists, nets = tmp_path / "Market", tmp_path / "lists", tmp_path / "prototxt"
    for folder in ("bounding_box_train", "bounding_box_test", "query", "gt_bbox"):
        (root / folder).mkdir(parents=True)
    colours = {pid: rng.integers(0, 200, 3) for pid in range(1, 11)}
    for pid in range(1, 7):
        for k in range(3):
            _jpeg(root / "bounding_box_train" / f"{pid:04d}_c{k + 1}s1_00000{k}_00.jpg", rng, colours[pid])
    for pid in range(7, 11):
        _jpeg(root / "query" / f"{pid:04d}_c1s1_000001_00.jpg", rng, colours[pid])
        for k in range(2):
            _jpeg(root / "gt_bbox" / f"{pid:04d}_c1s1_00000{k + 2}_00.jpg", rng, colours[pid])
            _jpeg(root / "bounding_box_test" / f"{pid:04d}_c{k + 2}s1_00000{k}_00.jpg", rng, colours[pid])
    _jpeg(root / "bounding_box_test" / "-1_c2s1_000009_00.jpg", rng, colours[7])  # junk
    lists.mkdir()
    write_lists("market", root, lists / "Market1501TrainImagePathBoxCell.mat", "train")
    write_lists("market", root, lists / "Market1501_evaluation.mat", "evaluation")
    nets.mkdir()
    for name, text in (("train", TRAIN), ("solver", SOLVER), ("test_concat", DEPLOY)):
        (nets / f"{name}.prototxt").write_text(text)
    weights = tmp_path / "init.caffemodel"
    Net(str(nets / "train.prototxt"), phase="train").save(str(weights))
    reference = tmp_path / "reference.json"
    original = Original(RLL_REPOSITORY, RLL_COMMIT, "tiny")
    gen = lambda rel, kind: GeneratedFile(str(nets / rel), kind, original, lambda: None)  # noqa: E731
    setting = Setting(
        name=NAME, paper="rll", dataset="tiny", description="tiny Market-style test setting",
        train=gen("train.prototxt", "train"), solver=gen("solver.prototxt", "solver"),
        deploys=(Deploy("concat", ("H",), gen("test_concat.prototxt", "deploy"), 4, (3,), (str(reference),)),),
        classes_per_batch=3, images_per_class=2, sampler="RLLBatchSampler",
        train_transform="MarketTrainTransform", test_transform="market_test_transform", input_size=32,
        max_iter=3, save_start=1, save_interval=1, eval_protocol="market", recall_ks=(1,),
        data_files=("Market1501TrainImagePathBoxCell.mat", "Market1501_evaluation.mat"), published=())
    recipes.names()
    monkeypatch.setitem(recipes.REGISTRY, NAME, setting)
    return {"root": root, "lists": lists, "weights": weights, "reference": reference, "out": tmp_path / "run"}


def test_market_setting_writes_record_file_with_all_query_modes(market):
    market["reference"].write_text(json.dumps({"single_query/mAP": 0.0}))
    code = cli.main(["reproduce", NAME, "--data-root", str(market["root"]), "--lists", str(market["lists"]),
                     "--weights", str(market["weights"]), "--out", str(market["out"]), "--threads", "1",
                     "--tolerance", "100"])
    assert code == 0
    out = market["out"]
    result = json.loads((out / "results" / "concat_iter_3.json").read_text())
    assert result["_meta"]["queries"] == 4 and result["_meta"]["gallery"] == 9
    record = at_iter(parse_result_file(out / "Record_concat.txt"), 3)
    modes = ("single_query", "multi_query_avg", "multi_query_max", "multi_query_max_rerank")
    assert set(record) == {f"{m}/{k}" for m in modes for k in ("mAP", "R@1")}
    for key, value in record.items():  # %f fractions: 1e-4 points
        assert abs(value - result[key]) <= 1e-4 + 1e-9
