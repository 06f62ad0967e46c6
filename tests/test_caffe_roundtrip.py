"""Reading and re-writing files written by real Caffe gives the same bytes; arrays survive conversions."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED
from rll_repro.caffe import io as caffe_io
from rll_repro.caffe.weights import array_to_blob, blob_to_array, net_with_weights, weights_from_net

CAFFE_WRITTEN = sorted(SHARED.glob("oracle/rll/solver/*/snap_iter_8.caffemodel")) + sorted(
    SHARED.glob("oracle/rll/train_run_digits/*.caffemodel")) + sorted(
    SHARED.glob("oracle/*/net_*/*.caffemodel")) + sorted(
    p for p in SHARED.glob("realdata/caffe/lenet_v2_*/*.caffemodel")) + sorted(
    SHARED.glob("realdata/caffe/resnet20_*/*.caffemodel"))
STATES = sorted(SHARED.glob("oracle/rll/solver/*/snap_iter_8.caffemodel.solverstate")) + sorted(
    SHARED.glob("realdata/caffe/*/*.solverstate"))


def _id(path):
    return str(path.relative_to(SHARED))


def test_there_are_caffe_written_files(shared):
    shared("oracle", "rll", "solver")
    assert len(CAFFE_WRITTEN) >= 10 and len(STATES) >= 6


@pytest.mark.parametrize("path", CAFFE_WRITTEN, ids=_id)
def test_caffemodel_read_write_is_byte_identical(path, tmp_path):
    out = tmp_path / "copy.caffemodel"
    caffe_io.write_caffemodel(out, caffe_io.read_caffemodel(path))
    assert out.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("path", STATES, ids=_id)
def test_solverstate_read_write_is_byte_identical(path, tmp_path):
    out = tmp_path / "copy.solverstate"
    caffe_io.write_solverstate(out, caffe_io.read_solverstate(path))
    assert out.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("path", CAFFE_WRITTEN[:3], ids=_id)
def test_arrays_back_to_blobs_give_caffes_bytes(path):
    """array_to_blob writes a blob exactly as Caffe's Blob::ToProto does (shape.dim + packed float data)."""
    net = caffe_io.read_caffemodel(path)
    for layer in net.layer:
        for blob in layer.blobs:
            assert array_to_blob(blob_to_array(blob)).SerializeToString() == blob.SerializeToString()


def test_caffemodel_to_weights_and_back_keeps_every_value(shared):
    path = shared("oracle", "rll", "train_run_digits", "final.caffemodel")
    net = caffe_io.read_caffemodel(path)
    weights = weights_from_net(net)
    rebuilt = weights_from_net(net_with_weights(net, weights))
    assert list(rebuilt) == list(weights)
    for name in weights:
        for a, b in zip(weights[name], rebuilt[name]):
            assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)


def test_prototxt_write_read_round_trip(shared, tmp_path):
    net = caffe_io.read_net_prototxt(shared("oracle", "rll", "net_sop_train", "net.prototxt"))
    caffe_io.write_net_prototxt(tmp_path / "net.prototxt", net)
    assert caffe_io.read_net_prototxt(tmp_path / "net.prototxt") == net
    solver = caffe_io.read_solver_prototxt(shared("oracle", "rll", "solver", "adam_fixed", "solver.prototxt"))
    caffe_io.write_solver_prototxt(tmp_path / "solver.prototxt", solver)
    assert caffe_io.read_solver_prototxt(tmp_path / "solver.prototxt") == solver


def test_binaryproto_write_read_round_trip(tmp_path):
    mean = np.random.default_rng(0).random((1, 3, 4, 5), dtype=np.float32)
    caffe_io.write_binaryproto(tmp_path / "mean.binaryproto", mean, legacy_shape=True)
    back = caffe_io.read_binaryproto(tmp_path / "mean.binaryproto")
    assert back.shape == (1, 3, 4, 5) and np.array_equal(back, mean)


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    from rll_repro.caffe import caffe_pb2

    target = tmp_path / "m.caffemodel"
    target.write_bytes(b"old")
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="fc", type="InnerProduct").blobs.add().CopyFrom(array_to_blob(np.ones((2, 3))))
    caffe_io.write_caffemodel(target, net)
    assert [p.name for p in tmp_path.iterdir()] == ["m.caffemodel"]
    assert caffe_io.read_caffemodel(target) == net
