"""`rll-repro reproduce` on a MARS-style video setting: tracklet lists (frames read and preprocessed on
the fly), ``TrackletBatchSampler`` (identities x tracklets x frames), the ``tracklet_label`` input
(one label per tracklet) and ``tracklet_attention`` (ones), tracklet feature = mean of frame
features, the MARS protocol with ``query_IDX.mat``, ``without_minus1_AVG.txt``. Tiny net."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from rll_repro import cli, recipes
from rll_repro.recipes.settings import (OSM_COMMIT, OSM_REPOSITORY, Deploy, GeneratedFile, Original,
                                        Setting)

from test_reproduce_pipeline import DEPLOY, SOLVER, TRUNK, rll_head

NAME = "tiny-mars-test"
TRAIN = """name: "tiny_video"
input: "data" input_dim: 12 input_dim: 3 input_dim: 32 input_dim: 32
input: "label" input_dim: 12 input_dim: 1 input_dim: 1 input_dim: 1
input: "tracklet_label" input_dim: 4 input_dim: 1 input_dim: 1 input_dim: 1
input: "tracklet_attention" input_dim: 4 input_dim: 1 input_dim: 1 input_dim: 1
""" + TRUNK + """
""" + rll_head("pool5/fc", "label", flatten_label=True)


@pytest.fixture
def mars(tmp_path, monkeypatch):
    import torch

    from rll_repro.matfile import savemat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import write_png

    rng = np.random.default_rng(4)
    root, lists, nets = tmp_path / "MARS", tmp_path / "lists", tmp_path / "prototxt"
    (root / "frames").mkdir(parents=True)
    colours = {pid: rng.integers(0, 256, 3) for pid in range(0, 8)}

    def tracklet(pid, n):
        paths = []
        for _ in range(n):
            name = f"frames/{len(list((root / 'frames').iterdir())):04d}.png"
            img = np.clip(colours[pid][:, None, None] + rng.normal(0, 30, (3, 36, 24)), 0, 255).astype(np.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                write_png(torch.from_numpy(img), str(root / name))
            paths.append(name)
        return paths

    train = [(pid, tracklet(pid, int(rng.integers(2, 5)))) for pid in range(1, 5) for _ in range(2)]
    test = [(pid, cam, tracklet(pid, 3)) for pid in range(5, 8) for cam in (1, 2)] + [(0, 3, tracklet(0, 2))]
    lists.mkdir()
    savemat(lists / "train_data_r.mat", {"train_tracklets": [t for _, t in train],
                                         "train_labels": np.array([p for p, _ in train], float).reshape(-1, 1)})
    savemat(lists / "test_data_r.mat", {"test_tracklets": [t for _, _, t in test],
                                        "test_labels": np.array([p for p, _, _ in test], float).reshape(-1, 1),
                                        "test_cameras": np.array([c for _, c, _ in test], float).reshape(-1, 1)})
    savemat(lists / "query_IDX.mat", {"query_IDX": np.array([[1.0, 3.0, 5.0]])})  # the camera-1 tracklets
    weights = register_tiny_mars(monkeypatch, nets, tmp_path, NAME, "tiny MARS-style test setting")
    return {"root": root, "lists": lists, "weights": weights, "out": tmp_path / "run"}


def register_tiny_mars(monkeypatch, nets, tmp_path, name: str, description: str):
    """Write the tiny MARS nets into ``nets``, register setting ``name`` for this test, return the
    caffemodel of the train net's fillers (its --weights)."""
    from rll_repro.net import Net

    nets.mkdir()
    for net_name, text in (("train", TRAIN), ("solver", SOLVER), ("test_M", DEPLOY)):
        (nets / f"{net_name}.prototxt").write_text(text)
    weights = tmp_path / "init.caffemodel"
    Net(str(nets / "train.prototxt"), phase="train").save(str(weights))
    original = Original(OSM_REPOSITORY, OSM_COMMIT, "tiny")
    gen = lambda rel, kind: GeneratedFile(str(nets / rel), kind, original, lambda: None)  # noqa: E731
    setting = Setting(
        name=name, paper="osm_caa", dataset="MARS", description=description,
        train=gen("train.prototxt", "train"), solver=gen("solver.prototxt", "solver"),
        deploys=(Deploy("M", ("M",), gen("test_M.prototxt", "deploy"), 5, (2,)),),
        classes_per_batch=2, images_per_class=6, tracklets_per_class=2, frames_per_tracklet=3,
        sampler="TrackletBatchSampler", train_transform="osm_offline_transform",
        test_transform="osm_offline_transform", input_size=32, max_iter=2, save_start=2, save_interval=2,
        eval_protocol="mars", recall_ks=(1, 5, 10, 20),
        data_files=("train_data_r.mat", "test_data_r.mat", "query_IDX.mat"), published=())
    recipes.names()
    monkeypatch.setitem(recipes.REGISTRY, name, setting)
    return weights


def test_mars_setting_trains_on_tracklets_and_writes_the_avg_file(mars, monkeypatch):
    from rll_repro import reproduce

    seen = []
    real_batch = reproduce.SettingBatchSource.batch

    def spy(self, iteration):
        out = real_batch(self, iteration)
        seen.append(out)
        return out

    monkeypatch.setattr(reproduce.SettingBatchSource, "batch", spy)
    code = cli.main(["reproduce", NAME, "--data-root", str(mars["root"]), "--lists", str(mars["lists"]),
                     "--weights", str(mars["weights"]), "--out", str(mars["out"]), "--threads", "1"])
    assert code == 0 and len(seen) == 2
    for batch in seen:  # 2 identities x 2 tracklets x 3 frames; tracklet labels = their frames' labels
        assert batch["data"].shape == (12, 3, 32, 32)
        np.testing.assert_array_equal(batch["tracklet_label"].ravel(), batch["label"].ravel()[::3])
        assert len(np.unique(batch["label"])) == 2 and (batch["tracklet_attention"] == 1).all()
        assert set(np.unique(batch["label"])) <= {1.0, 2.0, 3.0, 4.0}  # MARS feeds its stored labels
    result = json.loads((mars["out"] / "results" / "M_iter_2.json").read_text())
    assert result["_meta"]["tracklets"] == 7 and "mAP" in result
    line = (mars["out"] / "without_minus1_AVG.txt").read_text()
    assert line.startswith("iter: 2, rank1: ") and ", mAP: " in line


def test_train_command_runs_a_video_setting(mars, tmp_path):
    nets = mars["weights"].parent / "prototxt"
    code = cli.main(["train", "--solver", str(nets / "solver.prototxt"), "--weights", str(mars["weights"]),
                     "--data", NAME, "--data-root", str(mars["root"]), "--lists", str(mars["lists"]),
                     "--max-iter", "1", "--out", str(tmp_path / "t"), "--quiet", "--threads", "1"])
    assert code == 0 and (tmp_path / "t" / "checkpoint_iter_1.caffemodel").is_file()
