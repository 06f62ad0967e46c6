"""rll-repro inspect / convert on good files: exit 0, the documented JSON, lossless conversions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rll_repro import cli
from rll_repro.caffe import io as caffe_io
from rll_repro.caffe.weights import weights_from_net


def _inspect_json(path, capsys):
    assert cli.main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_caffemodel_json_has_layers_with_blob_shapes(shared, capsys):
    report = _inspect_json(shared("realdata", "caffe", "lenet_v1_pl8787", "lenet_iter_10000.caffemodel"), capsys)
    assert report["kind"] == "caffemodel" and report["format"] == "V1"
    ip1 = next(layer for layer in report["layers"] if layer["name"] == "ip1")
    assert ip1 == {"name": "ip1", "type": "InnerProduct", "bottoms": ["pool2"], "tops": ["ip1"],
                   "blobs": [[500, 800], [500]], "num_params": 400500}
    assert report["num_params"] == 431080


def test_inspect_net_prototxt_json(shared, capsys):
    report = _inspect_json(shared("oracle", "rll", "net_sop_train", "net.prototxt"), capsys)
    assert report["kind"] == "net_prototxt" and report["num_layers"] == len(report["layers"])
    assert {"name", "type", "bottoms", "tops", "blobs"} <= set(report["layers"][0])


def test_inspect_solver_shows_the_schedule(shared, capsys):
    report = _inspect_json(shared("oracle", "rll", "solver", "sgd_multistep_anneal", "solver.prototxt"), capsys)
    assert report["kind"] == "solver_prototxt" and report["lr_policy"] == "multistep"
    assert [it for it, _ in report["lr_schedule"]] == [0, 3, 6]
    assert report["lr_schedule"][2][1] == pytest.approx(0.05 * 0.2 * 0.2, rel=1e-6)


def test_inspect_solverstate_and_binaryproto(shared, capsys):
    state = _inspect_json(shared("oracle", "rll", "solver", "adam_fixed", "snap_iter_8.caffemodel.solverstate"), capsys)
    assert state["kind"] == "solverstate" and state["iter"] == 8 and state["num_history"] == 14
    mean = _inspect_json(shared("realdata", "caffe", "resnet20_cifar10_bn_lijianfei06", "cifar10_mean.binaryproto"),
                         capsys)
    assert mean["kind"] == "binaryproto" and mean["shape"] == [1, 3, 32, 32]


def test_inspect_text_output_exits_0(shared, capsys):
    assert cli.main(["inspect", str(shared("oracle", "rll", "train_run_digits", "final.caffemodel"))]) == 0
    out = capsys.readouterr().out
    assert "caffemodel" in out and "parameters" in out


@pytest.mark.parametrize("ext", [".npz", ".pt"])
def test_convert_caffemodel_to_arrays_and_back_keeps_every_value(shared, tmp_path, ext, capsys):
    model = shared("oracle", "rll", "train_run_digits", "final.caffemodel")
    net_prototxt = shared("oracle", "rll", "train_run_digits", "net.prototxt")
    arrays, back = tmp_path / f"w{ext}", tmp_path / "back.caffemodel"
    assert cli.main(["convert", str(model), str(arrays)]) == 0
    assert cli.main(["convert", str(arrays), str(back), "--net", str(net_prototxt)]) == 0
    original = weights_from_net(caffe_io.read_caffemodel(model))
    rebuilt = weights_from_net(caffe_io.read_caffemodel(back))
    assert list(rebuilt) == list(original)
    for name in original:
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(original[name], rebuilt[name]))


def test_convert_npz_keys_are_layer_slash_index_with_net_shapes(shared, tmp_path):
    out = tmp_path / "w.npz"
    assert cli.main(["convert", str(shared("realdata", "caffe", "lenet_v1_pl8787", "lenet_iter_10000.caffemodel")),
                     str(out)]) == 0
    with np.load(out) as archive:
        assert sorted(archive.files) == sorted(f"{layer}/{i}" for layer in ("conv1", "conv2", "ip1", "ip2")
                                               for i in (0, 1))
        assert archive["ip1/0"].shape == (500, 800) and archive["conv1/1"].shape == (20,)


def test_convert_layer_names_with_slashes_round_trip(tmp_path):
    from rll_repro.caffe import caffe_pb2
    from rll_repro.caffe.weights import net_with_weights

    net = caffe_pb2.NetParameter()
    net.layer.add(name="inception_3a/1x1", type="Convolution")
    model = tmp_path / "m.caffemodel"
    caffe_io.write_caffemodel(model, net_with_weights(net, {"inception_3a/1x1": [np.ones((2, 1, 1, 1)), np.ones(2)]}))
    assert cli.main(["convert", str(model), str(tmp_path / "w.npz")]) == 0
    with np.load(tmp_path / "w.npz") as archive:
        assert sorted(archive.files) == ["inception_3a/1x1/0", "inception_3a/1x1/1"]


def test_convert_v1_prototxt_to_v2(shared, tmp_path):
    out = tmp_path / "v2.prototxt"
    assert cli.main(["convert", str(shared("realdata", "caffe", "lenet_v1_pl8787", "lenet_train.prototxt")),
                     str(out)]) == 0
    text = out.read_text()
    assert "layer {" in text and "layers {" not in text and 'type: "Convolution"' in text
    assert len(caffe_io.read_net_prototxt(out).layer) == 9


def test_convert_v1_caffemodel_to_v2(shared, tmp_path):
    out = tmp_path / "v2.caffemodel"
    assert cli.main(["convert", str(shared("realdata", "caffe", "lenet_v1_pl8787", "lenet_iter_10000.caffemodel")),
                     str(out)]) == 0
    raw = caffe_io.read_caffemodel(out, upgrade=False)
    assert len(raw.layer) == 9 and not len(raw.layers)
