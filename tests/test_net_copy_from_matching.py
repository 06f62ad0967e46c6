"""Weights that do not fit are not taken silently (issue 11.7): Caffe logs "Ignoring source layer X"
for every source layer the net lacks; a file of which no layer matches the net is an error naming
the file and the net (Caffe would train from the fillers), unless asked for."""
from __future__ import annotations

from pathlib import Path

import pytest

import rll_repro
from rll_repro.cli import main
from rll_repro.errors import NetError
from rll_repro.net import Net

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "prototxt/digits"


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "digits.caffemodel"
    Net(str(DIGITS / "train.prototxt"), seed=1).save(str(path))
    return path


def test_copy_from_returns_and_logs_the_ignored_source_layers(digits_model, caplog):
    net = Net(str(DIGITS / "deploy.prototxt"), phase="test")
    with caplog.at_level("INFO", logger="rll_repro.net"):
        ignored = net.copy_from(str(digits_model))
    lacking = [n for n in Net(str(DIGITS / "train.prototxt")).layer_names if n not in net.layer_names]
    assert ignored == lacking and lacking
    assert all(f"Ignoring source layer {n}" in caplog.text for n in lacking)


def test_a_model_of_another_net_is_an_error_naming_the_file_and_the_net(digits_model):
    sop = ROOT / "prototxt/osm_caa/cub/test_M.prototxt"
    net = Net(str(sop), phase="test", device="meta")
    with pytest.raises(NetError, match=rf"{digits_model}: no layer of this file matches a layer of {sop}"):
        net.copy_from(str(digits_model))
    assert net.copy_from(str(digits_model), allow_no_match=True)  # asked for: all ignored


def test_train_with_weights_of_another_net_exits_2_with_one_line(digits_model, tmp_path, capsys):
    other = tmp_path / "other.caffemodel"
    net = Net(str(ROOT / "prototxt/osm_caa/cub/test_M.prototxt"), phase="test", device="meta")
    assert net.inputs  # the file below is written from a net sharing no layer name with digits
    from rll_repro.caffe import caffe_pb2
    from rll_repro.caffe import io as caffe_io

    model = caffe_pb2.NetParameter(name="other")
    layer = model.layer.add(name="not_in_digits", type="InnerProduct")
    layer.blobs.add().shape.dim.extend([2, 2])
    layer.blobs[0].data.extend([0.0] * 4)
    caffe_io.write_caffemodel(str(other), model)
    code = main(["train", "--solver", str(DIGITS / "solver.prototxt"), "--weights", str(other),
                 "--max-iter", "1", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(other) in err[0] and "no layer of this file matches" in err[0]


def test_a_solverstate_naming_another_nets_model_is_refused(digits_model, tmp_path):
    solver = rll_repro.get_solver(str(DIGITS / "solver.prototxt"))
    solver.param.snapshot_prefix = str(tmp_path / "d")
    _, state = solver.snapshot()
    model = Path(state[: -len(".solverstate")])
    from rll_repro.caffe import caffe_pb2
    from rll_repro.caffe import io as caffe_io

    other = caffe_pb2.NetParameter(name="other")
    other.layer.add(name="elsewhere", type="ReLU").blobs.add().shape.dim.append(1)
    other.layer[0].blobs[0].data.append(0.0)
    caffe_io.write_caffemodel(str(model), other)
    from rll_repro.errors import FormatError

    with pytest.raises(FormatError, match="no layer of this file matches"):
        rll_repro.get_solver(str(DIGITS / "solver.prototxt")).restore(state)
