"""`rll-repro reproduce SETTING` end to end on a tiny synthetic SOP-format data set.

A test-only Setting (registered for the test) keeps every code path of the paper settings -- the
SOP lists written by ``rll_repro.data.writers``, ``RLLBatchSampler``, ``RLLTrainTransform`` /
``rll_test_transform`` (at a 32-pixel crop), the solver/train loop with the RLL V12 loss, snapshots,
TEST-phase deploy extraction, the SOP Recall protocol, the result files and the diff -- with a
small Conv-BN-Scale-ReLU net instead of BN-Inception, so a run takes a second or two.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rll_repro import cli, recipes
from rll_repro.recipes.settings import (RLL_COMMIT, RLL_REPOSITORY, Deploy, GeneratedFile, Original,
                                        Setting)

NAME = "tiny-sop-test"
TRUNK = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "conv1/bn" type: "BatchNorm" bottom: "conv1" top: "conv1/bn" }
layer { name: "conv1/bn/sc" type: "Scale" bottom: "conv1/bn" top: "conv1/bn/sc" scale_param { bias_term: true } }
layer { name: "conv1/relu" type: "ReLU" bottom: "conv1/bn/sc" top: "conv1/bn/sc" }
layer { name: "pool1" type: "Pooling" bottom: "conv1/bn/sc" top: "pool1" pooling_param { pool: AVE global_pooling: true } }
layer { name: "pool5/fc" type: "InnerProduct" bottom: "pool1" top: "pool5/fc"
  param { lr_mult: 10 decay_mult: 1 }
  inner_product_param { num_output: 16 bias_term: false weight_filler { type: "xavier" } } }
"""


def rll_head(embedding: str, label: str, flatten_label: bool = False) -> str:
    """Reshape -> Normalization(L2) -> DistanceWeightedValidPairLossV12, the released heads' tail."""
    text = (f'layer {{ name: "fc/reshape" type: "Reshape" bottom: "{embedding}" top: "fc/reshape" '
            'reshape_param { shape { dim: 0 dim: 0 dim: 1 dim: 1 } } }\n'
            'layer { name: "fc/L2Norm" type: "Normalization" bottom: "fc/reshape" top: "fc/L2Norm" '
            'normalization_param { norm: L2 } }\n')
    if flatten_label:
        text += (f'layer {{ name: "label/flat" type: "Flatten" bottom: "{label}" top: "label/flat" '
                 'flatten_param { axis: 0 } }\n')
        label = "label/flat"
    return text + (f'layer {{ name: "loss" type: "DistanceWeightedValidPairLossV12" bottom: "fc/L2Norm" '
                   f'bottom: "{label}" top: "loss"\n'
                   '  loss_weight: 1 propagate_down: 1 propagate_down: 0\n'
                   '  contrastive_loss_param_v2 { pn_margin: 0.4 } softmax_t_p_param { scale: 0 } '
                   'softmax_t_n_param { scale: 10 } }\n')


TRAIN = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 6 dim: 3 dim: 32 dim: 32 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 } } }
""" + TRUNK + rll_head("pool5/fc", "label")
DEPLOY = """name: "tiny_deploy"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
""" + TRUNK + """
layer { name: "feature" type: "Flatten" bottom: "pool5/fc" top: "pool5/7x7_s1" }
"""
SOLVER = """net: "train.prototxt"
type: "SGD"
base_lr: 0.01
lr_policy: "multistep"
gamma: 0.5
stepvalue: 4
momentum: 0.9
weight_decay: 0.0002
max_iter: 8
random_seed: 1
pn_margin: 0.4
p_temperature: 0
n_temperature: 10
"""


def _write_images(root: Path, split: str, classes: range, per_class: int, rng) -> None:
    """SOP layout: <root>/<class folder>/<file>.png and Ebay_<split>.txt."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import write_png

    rows = ["image_id class_id super_class_id path"]
    for c in classes:
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=3)
        for k in range(per_class):
            h, w = int(rng.integers(36, 48)), int(rng.integers(36, 48))
            img = np.clip(base[:, None, None] + rng.normal(0, 40, size=(3, h, w)), 0, 255).astype(np.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                write_png(torch.from_numpy(img), str(folder / f"{k}.png"))
            rows.append(f"{len(rows)} {c} 1 class{c}/{k}.png")
    (root / f"Ebay_{split}.txt").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Images, lists, prototxts and an initial caffemodel, shared by the tests of this module."""
    from rll_repro.data.writers import write_lists
    from rll_repro.net import Net

    base = tmp_path_factory.mktemp("tiny_sop")
    root, lists, nets = base / "SOP", base / "lists", base / "prototxt"
    rng = np.random.default_rng(0)
    _write_images(root, "train", range(1, 7), 4, rng)
    _write_images(root, "test", range(7, 12), 3, rng)
    lists.mkdir()
    write_lists("sop", root, lists / "SOP_TrainImagePathBoxCell.mat", "train")
    write_lists("sop", root, lists / "SOP_TestImagePathBoxCell.mat", "test")
    nets.mkdir()
    for name, text in (("train", TRAIN), ("solver", SOLVER), ("test_H_tiny", DEPLOY)):
        (nets / f"{name}.prototxt").write_text(text)
    weights = base / "init.caffemodel"
    Net(str(nets / "train.prototxt"), phase="train").save(str(weights))
    return {"base": base, "root": root, "lists": lists, "nets": nets, "weights": weights,
            "reference": base / "reference.json"}


def _setting(tiny) -> Setting:
    original = Original(RLL_REPOSITORY, RLL_COMMIT, "tiny")
    gen = lambda rel, kind: GeneratedFile(str(tiny["nets"] / rel), kind, original, lambda: None)  # noqa: E731
    deploy = Deploy("H", ("H",), gen("test_H_tiny.prototxt", "deploy"), batch_size=5, checkpoints=(4, 8),
                    published=(str(tiny["reference"]),))
    return Setting(
        name=NAME, paper="rll", dataset="tiny", description="tiny synthetic SOP-format test setting",
        train=gen("train.prototxt", "train"), solver=gen("solver.prototxt", "solver"), deploys=(deploy,),
        classes_per_batch=3, images_per_class=2, sampler="RLLBatchSampler",
        train_transform="RLLTrainTransform", test_transform="rll_test_transform", input_size=32,
        max_iter=8, save_start=2, save_interval=2, eval_protocol="sop", recall_ks=(1, 2, 4),
        data_files=("SOP_TrainImagePathBoxCell.mat", "SOP_TestImagePathBoxCell.mat"), published=())


@pytest.fixture
def setting(tiny, monkeypatch):
    s = _setting(tiny)
    recipes.names()  # load the real registry first
    monkeypatch.setitem(recipes.REGISTRY, NAME, s)
    return s


def _reproduce(tiny, out, *extra) -> int:
    return cli.main(["reproduce", NAME, "--data-root", str(tiny["root"]), "--lists", str(tiny["lists"]),
                     "--weights", str(tiny["weights"]), "--out", str(out), "--threads", "1", *extra])


def _weights(model) -> dict:
    from rll_repro.caffe import io as caffe_io
    from rll_repro.caffe.weights import weights_from_net

    return weights_from_net(caffe_io.read_caffemodel(str(model)))


def test_reproduce_trains_evaluates_writes_result_files_and_diffs(tiny, setting, tmp_path, capsys):
    from rll_repro.eval.resultfiles import at_iter, parse_result_file

    tiny["reference"].write_text(json.dumps({"R@1": -50.0, "R@2": -50.0}))
    out = tmp_path / "run"
    assert _reproduce(tiny, out) == 1  # far from the reference: diff exit code 1 propagates
    printed = capsys.readouterr().out
    assert "<-- over" in printed and "H at iteration 8" in printed
    ckpt = out / "checkpoints1"
    # the original cadence (save_start 2, every 2) and the evaluated checkpoints 4, 8
    for it in (2, 4, 6, 8):
        assert (ckpt / f"checkpoint_iter_{it}.caffemodel").is_file()
        assert (ckpt / f"checkpoint_iter_{it}.caffemodel.solverstate").is_file()
    assert (out / "train.log").is_file() and (out / "curves.png").is_file()
    results = {it: json.loads((out / "results" / f"H_iter_{it}.json").read_text()) for it in (4, 8)}
    for res in results.values():
        assert set(k for k in res if not k.startswith("_")) == {"R@1", "R@2", "R@4"}
        assert res["_meta"]["items"] == 15 and res["_meta"]["dims"] == 16
    text = (out / "Recall_H_tiny.txt").read_text()
    assert text.splitlines()[0].startswith("iter: 4, rank1: ")
    records = parse_result_file(out / "Recall_H_tiny.txt")  # engineer D's parser reads our file back
    assert [r.iter for r in records] == [4, 8]
    for it, res in results.items():  # %.3f fractions: 0.05 points
        got = at_iter(records, it)
        assert all(abs(got[k] - res[k]) <= 0.05 + 1e-9 for k in ("R@1", "R@2", "R@4"))
    # The same reference as our numbers: exit 0, and nothing is retrained or re-evaluated.
    stamp = (out / "results" / "H_iter_8.json").stat().st_mtime_ns
    tiny["reference"].write_text(json.dumps({k: v for k, v in results[8].items() if not k.startswith("_")}))
    assert _reproduce(tiny, out) == 0
    assert "all 3 compared metrics within 0.5 points" in capsys.readouterr().out
    assert (out / "results" / "H_iter_8.json").stat().st_mtime_ns == stamp


def test_interrupted_run_resumes_to_the_same_weights(tiny, setting, tmp_path):
    """Kill-safety: a run stopped at iteration 3 and restarted to 8 ends bitwise where an unbroken
    run ends (solverstate + side file restore momentum, lr step, sampler position)."""
    tiny["reference"].write_text(json.dumps({"R@1": 0.0}))
    whole, split = tmp_path / "whole", tmp_path / "split"
    _reproduce(tiny, whole, "--checkpoints", "8", "--tolerance", "100")
    _reproduce(tiny, split, "--max-iter", "3", "--tolerance", "100")
    assert (split / "checkpoints1" / "checkpoint_iter_3.caffemodel").is_file()
    assert not (split / "checkpoints1" / "checkpoint_iter_4.caffemodel").exists()
    _reproduce(tiny, split, "--checkpoints", "8", "--tolerance", "100")
    a = _weights(whole / "checkpoints1" / "checkpoint_iter_8.caffemodel")
    b = _weights(split / "checkpoints1" / "checkpoint_iter_8.caffemodel")
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y)  # bitwise
    log = (split / "train.log").read_text()
    assert "Resuming from" in log and "checkpoint_iter_3.caffemodel.solverstate" in log
    hist = json.loads((split / "history.json").read_text())
    assert hist["iteration"] == list(range(8))
    assert json.loads((whole / "results" / "H_iter_8.json").read_text())["R@1"] == \
        json.loads((split / "results" / "H_iter_8.json").read_text())["R@1"]


def test_eval_every_evaluates_those_iterations(tiny, setting, tmp_path):
    tiny["reference"].write_text(json.dumps({"R@1": 0.0}))
    out = tmp_path / "run"
    _reproduce(tiny, out, "--max-iter", "3", "--eval-every", "1", "--tolerance", "100")
    assert sorted(p.name for p in (out / "results").iterdir()) == [f"H_iter_{i}.json" for i in (1, 2, 3)]
    assert [line.split(",")[0] for line in (out / "Recall_H_tiny.txt").read_text().splitlines()] == \
        ["iter: 1", "iter: 2", "iter: 3"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one clear line
    return err[0]


def test_missing_weights_file_is_one_line_exit_2(tiny, setting, tmp_path, capsys):
    code = cli.main(["reproduce", NAME, "--data-root", str(tiny["root"]), "--lists", str(tiny["lists"]),
                     "--weights", str(tmp_path / "nope.caffemodel"), "--out", str(tmp_path / "r")])
    assert code == 2 and "nope.caffemodel: file not found" in _error(capsys)


def test_lists_folder_without_the_mat_names_it(tiny, setting, tmp_path, capsys):
    empty = tmp_path / "lists"
    empty.mkdir()
    code = _reproduce({**tiny, "lists": empty}, tmp_path / "r")
    assert code == 2 and "missing SOP_TrainImagePathBoxCell.mat, SOP_TestImagePathBoxCell.mat" in _error(capsys)


def test_data_root_without_images_counts_them(tiny, setting, tmp_path, capsys):
    (tmp_path / "SOP").mkdir()
    code = _reproduce({**tiny, "root": tmp_path / "SOP"}, tmp_path / "r")
    line = _error(capsys)
    assert code == 2 and "24 of 24 images are missing" in line and "class1/0.png" in line


def test_unknown_setting_lists_the_known_ones(capsys):
    assert cli.main(["reproduce", "no-such-setting"]) == 2
    line = _error(capsys)
    assert "unknown setting 'no-such-setting'" in line and "rll-sop" in line and "osm-cub" in line


def test_train_command_runs_a_setting_on_real_image_lists(tiny, setting, tmp_path):
    out = tmp_path / "train"
    code = cli.main(["train", "--solver", str(tiny["nets"] / "solver.prototxt"), "--weights", str(tiny["weights"]),
                     "--data", NAME, "--data-root", str(tiny["root"]), "--lists", str(tiny["lists"]),
                     "--max-iter", "3", "--out", str(out), "--quiet", "--threads", "1"])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.caffemodel")) == ["checkpoint_iter_2.caffemodel",
                                                                "checkpoint_iter_3.caffemodel"]
    hist = json.loads((out / "history.json").read_text())
    assert hist["iteration"] == [0, 1, 2] and all(np.isfinite(hist["loss"]))


@pytest.mark.slow
def test_real_rll_sop_setting_one_iteration_at_batch_150(tmp_path):
    """The released rll-sop setting itself (BN-Inception, batch 50 x 3 at 227, RLL heads, concat deploy)
    for one iteration on 51 synthetic classes; ImageNet weights replaced by the freshly filled net.
    Minutes on 2 cores."""
    from rll_repro.data.writers import write_lists
    from rll_repro.net import Net

    root, lists = tmp_path / "SOP", tmp_path / "lists"
    rng = np.random.default_rng(0)
    _write_images(root, "train", range(1, 52), 3, rng)
    _write_images(root, "test", range(52, 56), 2, rng)
    lists.mkdir()
    write_lists("sop", root, lists / "SOP_TrainImagePathBoxCell.mat", "train")
    write_lists("sop", root, lists / "SOP_TestImagePathBoxCell.mat", "test")
    weights = tmp_path / "init.caffemodel"
    Net(str(recipes.path(recipes.get("rll-sop").train.path)), phase="train").save(str(weights))
    out = tmp_path / "run"
    code = cli.main(["reproduce", "rll-sop", "--data-root", str(root), "--lists", str(lists), "--weights",
                     str(weights), "--out", str(out), "--max-iter", "1", "--deploys", "concat",
                     "--test-batch", "8"])
    assert code == 1  # one iteration is far from the published 30000-iteration numbers
    assert (out / "checkpoints1" / "checkpoint_iter_1.caffemodel.solverstate").is_file()
    assert (out / "Recall_concat_d64.txt").read_text().startswith("iter: 1, rank1: ")
    res = json.loads((out / "results" / "concat_iter_1.json").read_text())
    assert res["_meta"]["dims"] == 3 * 64 and res["_meta"]["items"] == 8


def test_train_command_names_the_missing_training_list(tiny, setting, tmp_path, capsys):
    (tmp_path / "lists").mkdir()
    code = cli.main(["train", "--solver", str(tiny["nets"] / "solver.prototxt"), "--data", NAME,
                     "--lists", str(tmp_path / "lists"), "--out", str(tmp_path / "t"), "--quiet"])
    assert code == 2 and "missing SOP_TrainImagePathBoxCell.mat" in _error(capsys)


def test_interrupted_session_keeps_its_history_up_to_the_last_snapshot(tiny, setting, tmp_path, monkeypatch):
    """history.json is saved at every snapshot, so a killed session's curve survives the restart."""
    import rll_repro.train as train_mod

    tiny["reference"].write_text(json.dumps({"R@1": 0.0}))
    real, calls = train_mod.loss_tensor_after_step, []

    def interrupt_at_iteration_5(net):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(net)

    monkeypatch.setattr(train_mod, "loss_tensor_after_step", interrupt_at_iteration_5)
    out = tmp_path / "run"
    assert _reproduce(tiny, out, "--tolerance", "100") == 130
    assert json.loads((out / "history.json").read_text())["iteration"] == [0, 1, 2, 3]  # saved with snapshot 4
    monkeypatch.setattr(train_mod, "loss_tensor_after_step", real)
    assert _reproduce(tiny, out, "--tolerance", "100") == 0
    assert json.loads((out / "history.json").read_text())["iteration"] == list(range(8))


def test_training_may_run_past_the_settings_max_iter(tiny, setting, tmp_path):
    tiny["reference"].write_text(json.dumps({"R@1": 0.0}))
    out = tmp_path / "run"
    assert _reproduce(tiny, out, "--max-iter", "10", "--checkpoints", "10", "--tolerance", "100") == 0
    assert (out / "checkpoints1" / "checkpoint_iter_10.caffemodel").is_file()
