"""The baseline recipes ``baseline-<loss>-cub`` / ``-cars`` (rll_repro.recipes.baselines).

Each one is BN-Inception + the 512-d H embedding + one baseline loss layer, the RLL sampler and
transforms, the RLL CUB_V01 SGD schedule, the seed table's protocol, and a published row chosen by
hand (the module docstring says why each); the tests pin that mapping, build the nets (one train net
by default, the rest slow: each build fills ~11M weights) and, in the slow suite, run one real
iteration on a tiny synthetic CUB-layout image set through ``rll-repro reproduce``.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rll_repro import cli, recipes
from rll_repro.recipes import baselines

NAMES = [f"baseline-{slug}-{ds}" for slug in baselines.LOSSES for ds in ("cub", "cars")]

# (slug, dataset) -> the method row's name in the published file (None: no row)
EXPECTED_ROW = {
    ("contrastive", "cub"): "osm_caa/CUB-200-2011/Contrastive [raw images]",
    ("contrastive", "cars"): "osm_caa/CARS196/Contrastive [raw images]",
    ("triplet", "cub"): "osm_caa/CUB-200-2011/Triplet [raw images]",
    ("triplet", "cars"): "osm_caa/CARS196/Triplet [raw images]",
    ("lifted-structure", "cub"): "osm_caa/CUB-200-2011/LiftedStruct [raw images]",
    ("lifted-structure", "cars"): "osm_caa/CARS196/LiftedStruct [raw images]",
    ("binomial-deviance", "cub"): "osm_caa/CUB-200-2011/Binomial Deviance [raw images]",
    ("binomial-deviance", "cars"): None,
    ("margin", "cub"): "baselines/CUB-200-2011/Margin",
    ("margin", "cars"): "baselines/Cars196/Margin",
    ("nca", "cub"): None,
    ("nca", "cars"): None,
    ("multi-similarity", "cub"): "baselines/CUB-200-2011/Weight",
    ("multi-similarity", "cars"): "baselines/Cars196/Weight",
}


def _layer_registered(type_name: str) -> bool:
    from rll_repro.layers import registry

    return type_name in registry.supported_types()


def test_every_loss_has_a_cub_and_a_cars_recipe_listed(capsys):
    assert set(NAMES) <= set(recipes.names())
    assert set(baselines.LOSSES.values()) == {
        "ContrastiveLoss", "TripletLoss", "LiftedStructureLoss", "BinomialDevianceLoss", "MarginLoss",
        "NCALoss", "MultiSimilarityLoss"}
    assert cli.main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in NAMES:
        assert re.search(rf"^{re.escape(name)}[ :]", listed, re.M), name


@pytest.mark.parametrize("name", NAMES)
def test_recipe_protocol_and_published_row(name):
    from rll_repro.eval import published

    s = recipes.get(name)
    slug, ds = name[len("baseline-"):].rsplit("-", 1)
    assert s.paper == "baselines"
    assert s.eval_protocol == ds and s.recall_ks == (1, 2, 4, 8, 16, 32)
    assert (s.classes_per_batch, s.images_per_class, s.sampler) == (20, 3, "RLLBatchSampler")
    if f"rll-{ds}" not in recipes.names():
        pytest.skip(f"rll-{ds} (issue 16's recipe) is not registered")
    rll = recipes.get(f"rll-{ds}")  # like for like with the RLL recipe of the dataset
    assert (s.train_transform, s.test_transform, s.input_size) == (rll.train_transform, rll.test_transform, 227)
    assert s.data_files == rll.data_files
    want = EXPECTED_ROW[(slug, ds)]
    assert s.published == ((want,) if want else ())
    assert s.deploys[0].published == s.published
    if want:
        entry = published.get(want)
        assert {"R@1", "R@2", "R@4", "R@8"} <= set(entry)
        # the row belongs to the recipe's dataset
        assert want.split("/")[1].lower().startswith(ds)


def test_train_nets_name_the_loss_on_the_normalised_512d_embedding():
    for slug, loss_type in baselines.LOSSES.items():
        s = recipes.get(baselines.name(slug, "cub"))
        assert s.train is recipes.get(baselines.name(slug, "cars")).train  # one net for both datasets
        net = s.train.build()
        layers = {l.name: l for l in net.layer}
        assert layers[baselines.EMBEDDING_FC].inner_product_param.num_output == 512
        loss = net.layer[-1]
        assert loss.type == loss_type and list(loss.bottom) == ["features/L2Norm", "label"]
        assert list(net.input_dim[:4]) == [60, 3, 227, 227]


def test_solver_is_the_rll_cub_v01_schedule():
    sp = recipes.get("baseline-margin-cub").solver.build()
    if "rll-cub" not in recipes.names():
        pytest.skip("rll-cub (issue 16's recipe) is not registered")
    rll = recipes.get("rll-cub").solver.build()
    for field in ("type", "base_lr", "lr_policy", "gamma", "stepvalue", "max_iter", "momentum", "weight_decay"):
        assert getattr(sp, field) == getattr(rll, field), field
    assert (sp.type, sp.base_lr, sp.lr_policy, sp.gamma) == ("SGD", pytest.approx(0.001), "multistep", 0.5)
    assert list(sp.stepvalue) == [2000, 4000, 6000, 8000] and sp.max_iter == 10000
    assert sp.momentum == pytest.approx(0.9) and sp.weight_decay == pytest.approx(2e-5)


def test_deploy_builds_and_gives_the_512d_feature():
    net_module = pytest.importorskip("rll_repro.net", reason="needs rll_repro.net")
    d = recipes.get("baseline-margin-cub").deploys[0]
    net = net_module.Net(d.file.build(), phase="test")
    assert tuple(net.blobs[d.feature_blob].shape)[:2] == (1, 512)


@pytest.mark.parametrize("slug", [pytest.param(s, marks=() if s == "margin" else pytest.mark.slow)
                                  for s in baselines.LOSSES])
def test_train_net_builds(slug):
    net_module = pytest.importorskip("rll_repro.net", reason="needs rll_repro.net")
    loss_type = baselines.LOSSES[slug]
    if not _layer_registered(loss_type):
        pytest.skip(f"layer type {loss_type} not registered yet")
    net = net_module.Net(recipes.get(baselines.name(slug, "cub")).train.build(), phase="train")
    assert tuple(net.blobs["features/L2Norm"].shape) == (60, 512, 1, 1)
    assert "loss" in net.outputs


def _write_cub(root, classes_and_counts, rng):
    """A CUB_200_2011-layout folder: images/, images.txt, image_class_labels.txt (random PNGs)."""
    from PIL import Image

    images, labels = [], []
    for cls, count in classes_and_counts:
        folder = root / "images" / f"{cls:03d}.c"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            base = rng.integers(0, 255, 3)
            pixels = np.clip(base + rng.normal(0, 30, (60, 80, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.png")
            images.append(f"{cls:03d}.c/{k}.png")
            labels.append(cls)
    (root / "images.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(images)))
    (root / "image_class_labels.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(labels)))


@pytest.mark.slow
def test_baseline_margin_cub_one_real_iteration(tmp_path):
    """baseline-margin-cub itself (BN-Inception, 20 x 3 at 227, MarginLoss) for one iteration on 20
    synthetic training classes, then the 512-d deploy on 6 test images and the diff. Minutes."""
    if not _layer_registered("MarginLoss"):
        pytest.skip("layer type MarginLoss not registered yet")
    from rll_repro.data.writers import write_lists
    from rll_repro.net import Net

    root, lists = tmp_path / "CUB_200_2011", tmp_path / "lists"
    _write_cub(root, [(c, 3) for c in range(1, 21)] + [(c, 2) for c in range(101, 104)],
               np.random.default_rng(0))
    lists.mkdir()
    s = recipes.get("baseline-margin-cub")
    write_lists("cub", root, lists / s.data_files[0], "train")
    write_lists("cub", root, lists / s.data_files[1], "test")
    weights = tmp_path / "init.caffemodel"
    Net(str(recipes.path(s.train.path)), phase="train").save(str(weights))
    out = tmp_path / "run"
    code = cli.main(["reproduce", s.name, "--data-root", str(root), "--lists", str(lists), "--weights",
                     str(weights), "--out", str(out), "--max-iter", "1", "--test-batch", "3"])
    assert code == 1  # one iteration is far from the published row
    res = json.loads((out / "results" / "H_iter_1.json").read_text())
    assert res["_meta"]["dims"] == 512 and res["_meta"]["items"] == 6
    summary = json.loads((out / "reproduce.json").read_text())
    assert summary["diffs"][0]["reference"] == "baselines/CUB-200-2011/Margin"
