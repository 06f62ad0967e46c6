"""Feature extraction: batches (with a remainder), head concatenation of raw outputs, feature files,
and ``rll-repro eval`` end to end through a real tiny net and an OSM-style data-cell list."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rll_repro.errors import DataError, FormatError, NetError
from rll_repro.eval.extract import (HEAD_BLOBS, batches_of, extract_features, head_blobs, load_array,
                                    save_features)

# torchvision's JPEG encode/decode (fixtures, the data loader) is deprecated upstream; not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


class FakeNet:
    """pycaffe-like: one input 'data', blobs = two linear heads of the flattened image."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.inputs = ["data"]
        self.w = {"pool5/fc": rng.standard_normal((12, 4)).astype(np.float32),
                  "loss1/fc/bn/sc/fc": rng.standard_normal((12, 3)).astype(np.float32)}
        self.blobs = dict.fromkeys(["data", *self.w])
        self.batch_sizes = []

    def forward(self, blobs=None, **inputs):
        x = inputs["data"].reshape(len(inputs["data"]), -1)
        self.batch_sizes.append(len(x))
        return {name: x @ w for name, w in self.w.items()}


def test_remainder_batch_and_head_order():
    net = FakeNet()
    images = np.random.default_rng(1).standard_normal((5, 3, 2, 2)).astype(np.float32)
    feats = extract_features(net, batches_of(images, 2), head_blobs("H,L"))
    assert net.batch_sizes == [2, 2, 1]
    flat = images.reshape(5, -1).astype(np.float64)
    heads = [net.w["pool5/fc"].astype(np.float64), net.w["loss1/fc/bn/sc/fc"].astype(np.float64)]
    exact = np.concatenate([flat @ w for w in heads], axis=1)  # raw outputs, no per-head normalisation
    # Each value is a 12-term float32 dot product whose BLAS kernel (summation order, FMA) depends on
    # the batch (the remainder batch of 1 takes another one) and on the CPU: within
    # gamma_12 * sum|x_i w_i| of the exact value, gamma_n = n u / (1 - n u), u = 2^-24.
    n, u = flat.shape[1], 2.0 ** -24
    bound = n * u / (1 - n * u) * np.concatenate([np.abs(flat) @ np.abs(w) for w in heads], axis=1)
    assert feats.shape == exact.shape and (np.abs(feats - exact) <= bound).all()


def test_concat_is_normalised_once_not_per_head():
    net = FakeNet()
    images = np.random.default_rng(2).standard_normal((3, 3, 2, 2)).astype(np.float32)
    raw = extract_features(net, batches_of(images, 3), head_blobs("H,L"))
    once = extract_features(net, batches_of(images, 3), head_blobs("H,L"), normalize=True)
    np.testing.assert_allclose(once, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    per_head = np.concatenate([raw[:, :4] / np.linalg.norm(raw[:, :4], axis=1, keepdims=True),
                               raw[:, 4:] / np.linalg.norm(raw[:, 4:], axis=1, keepdims=True)], axis=1)
    assert not np.allclose(once, per_head / np.sqrt(2), atol=1e-3)


def test_tuple_batches_from_a_loader():
    net = FakeNet()
    images = np.ones((2, 3, 2, 2), np.float32)
    feats = extract_features(net, [(images, np.zeros(2), np.arange(2))], ["pool5/fc"])
    assert feats.shape == (2, 4)


def test_head_names():
    assert head_blobs("h, l ,M") == [HEAD_BLOBS["H"], HEAD_BLOBS["L"], HEAD_BLOBS["M"]]
    with pytest.raises(DataError, match="unknown head"):
        head_blobs("H,X")
    with pytest.raises(DataError, match="repeated"):
        head_blobs("H,H")


def test_missing_blob_is_a_net_error():
    with pytest.raises(NetError, match="no blob 'fc9'"):
        extract_features(FakeNet(), [np.ones((1, 3, 2, 2), np.float32)], ["fc9"])


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".h5"])
def test_feature_files_round_trip(tmp_path, suffix):
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    labels = np.array([1, 2, 3])
    save_features(tmp_path / f"f{suffix}", feats, labels)
    np.testing.assert_array_equal(load_array(tmp_path / f"f{suffix}"), feats)
    if suffix != ".npy":
        np.testing.assert_array_equal(load_array(tmp_path / f"f{suffix}", "labels"), labels)


def test_unknown_feature_file_type(tmp_path):
    with pytest.raises(FormatError, match=".npy, .npz or .h5"):
        save_features(tmp_path / "f.csv", np.zeros((1, 1)))


TINY_NET = """
name: "tiny_deploy"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "pool5/fc" type: "InnerProduct" bottom: "data" top: "pool5/fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss1/fc/bn/sc/fc" type: "InnerProduct" bottom: "data" top: "loss1/fc/bn/sc/fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "concat" type: "Concat" bottom: "pool5/fc" bottom: "loss1/fc/bn/sc/fc" top: "pool5/7x7_s1" }
"""


@pytest.fixture
def tiny_net(tmp_path):
    net_mod = pytest.importorskip("rll_repro.net")
    path = tmp_path / "deploy.prototxt"
    path.write_text(TINY_NET)
    net = net_mod.Net(str(path), phase="test", seed=0)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    return path, weights, net


def test_real_net_heads_equal_the_deploy_concat_blob(tiny_net):
    _, _, net = tiny_net
    images = np.random.default_rng(3).standard_normal((5, 3, 4, 4)).astype(np.float32)
    heads = extract_features(net, batches_of(images, 2), head_blobs("H,L"))
    deploy = extract_features(net, batches_of(images, 5), ["pool5/7x7_s1"])
    assert heads.shape == (5, 8)
    np.testing.assert_allclose(heads, deploy, rtol=1e-6, atol=1e-6)  # batch size changes BLAS blocking only


def test_eval_command_end_to_end(tiny_net, tmp_path):
    from rll_repro.cli import main
    from rll_repro.eval import metrics

    matfile = pytest.importorskip("rll_repro.matfile")
    pytest.importorskip("rll_repro.data.loader")
    path, weights, net = tiny_net
    rng = np.random.default_rng(4)
    class_ids = np.repeat(np.arange(1, 6), 2)
    cells = [rng.standard_normal((4, 4, 3)).astype(np.float32) for _ in class_ids]  # W x H x BGR
    mat = tmp_path / "test.mat"
    matfile.savemat(mat, {"test_data_cell": cells, "class_ids": class_ids.astype(np.float64)})
    out = tmp_path / "r.json"
    feats_path = tmp_path / "f.h5"
    assert main(["eval", str(path), str(weights), "--list", str(mat), "--protocol", "cub", "--batch-size", "3",
                 "--save-features", str(feats_path), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    feats = load_array(feats_path)
    assert feats.shape == (10, 8)
    expected = metrics.evaluate_retrieval("cub", feats, class_ids)
    assert {k: v for k, v in res.items() if not k.startswith("_")} == expected
    assert res["_meta"]["blobs"] == ["pool5/7x7_s1"]


REID_NET = """
name: "reid_smoke"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 227 dim: 227 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "pool5/7x7_s1"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
"""


@pytest.fixture
def reid_files(tmp_path):
    net_mod = pytest.importorskip("rll_repro.net")
    matfile = pytest.importorskip("rll_repro.matfile")
    pytest.importorskip("rll_repro.data.loader")
    import torch
    from torchvision.io import write_jpeg

    rng = np.random.default_rng(0)

    def jpeg(name):
        path = tmp_path / f"{name}.jpg"
        write_jpeg(torch.from_numpy(rng.integers(0, 255, (3, 32, 16), dtype=np.uint8)), str(path))
        return str(path)

    (tmp_path / "net.prototxt").write_text(REID_NET)
    net_mod.Net(str(tmp_path / "net.prototxt"), phase="test", seed=0).save(str(tmp_path / "w.caffemodel"))
    matfile.savemat(tmp_path / "market.mat", {
        "testID": np.array([1., 1, 2, 2, -1, 3]), "testCAM": np.array([1., 2, 1, 2, 1, 1]),
        "testImagesCell": [jpeg(f"t{i}") for i in range(6)], "queryID": np.array([1., 2]),
        "queryCAM": np.array([1., 1]), "queryImagesCell": [jpeg(f"q{i}") for i in range(2)],
        "multiQueryImagesCell": [[jpeg(f"m{i}{j}") for j in range(2)] for i in range(2)]})
    matfile.savemat(tmp_path / "tracks.mat", {
        "test_tracklets": [[jpeg(f"f{i}{j}") for j in range(2)] for i in range(6)],
        "test_labels": np.array([1., 2, 1, 2, 3, 3]), "test_cameras": np.array([1., 1, 2, 2, 1, 2])})
    matfile.savemat(tmp_path / "qidx.mat", {"query_IDX": np.array([1., 2])})
    return tmp_path


@pytest.mark.parametrize("protocol, extra, keys", [
    ("market", [], {"single_query/mAP", "multi_query_avg/R@5", "multi_query_max_rerank/mAP"}),
    ("mars", ["--query-idx", "qidx.mat"], {"mAP", "R@1", "R@5"}),
    ("lpw", ["--n-probe", "2"], {"R@1"}),
])
def test_eval_command_reid_protocols(reid_files, protocol, extra, keys):
    from rll_repro.cli import main

    d = reid_files
    lst = d / ("market.mat" if protocol == "market" else "tracks.mat")
    extra = [str(d / e) if e.endswith(".mat") else e for e in extra]
    out = d / "r.json"
    assert main(["eval", str(d / "net.prototxt"), str(d / "w.caffemodel"), "--list", str(lst),
                 "--protocol", protocol, *extra, "--out", str(out)]) == 0
    res = json.loads(out.read_text())  # strict JSON: no NaN for ranks beyond the tiny gallery
    assert keys <= set(res) and all(0 <= v <= 100 for k, v in res.items() if not k.startswith("_"))


def test_eval_mars_needs_query_index(reid_files, capsys):
    from rll_repro.cli import main

    d = reid_files
    assert main(["eval", str(d / "net.prototxt"), str(d / "w.caffemodel"), "--list", str(d / "tracks.mat"),
                 "--protocol", "mars", "--out", str(d / "r.json")]) == 2
    assert "--query-idx" in capsys.readouterr().err
