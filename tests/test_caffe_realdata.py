"""Real third-party Caffe files (../shared/realdata/caffe, see its MANIFEST.md) read correctly."""
from __future__ import annotations

import numpy as np
import pytest

from rll_repro.caffe import io as caffe_io
from rll_repro.caffe.weights import blob_is_legacy, weights_from_net
from rll_repro.errors import FormatError

LENET_SHAPES = {"conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)],
                "ip1": [(500, 800), (500,)], "ip2": [(10, 500), (10,)]}


@pytest.fixture
def realdata(shared):
    return lambda *parts: shared("realdata", "caffe", *parts)


def test_v1_lenet_caffemodel_is_upgraded_to_v2_layers(realdata):
    raw = caffe_io.read_caffemodel(realdata("lenet_v1_pl8787", "lenet_iter_10000.caffemodel"), upgrade=False)
    assert len(raw.layers) == 9 and not len(raw.layer)
    net = caffe_io.read_caffemodel(realdata("lenet_v1_pl8787", "lenet_iter_10000.caffemodel"))
    assert [layer.type for layer in net.layer] == ["Data", "Convolution", "Pooling", "Convolution", "Pooling",
                                                   "InnerProduct", "ReLU", "InnerProduct", "SoftmaxWithLoss"]
    conv1 = net.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1.0, 1.0), (2.0, 1.0)]  # blobs_lr: 1, 2


def test_v1_legacy_blob_shapes_map_to_the_layers_shapes(realdata):
    """Legacy 1x1x500x800 InnerProduct weights and 1x1x1xN biases -> (500, 800) and (N,), as Caffe maps them."""
    net = caffe_io.read_caffemodel(realdata("lenet_v1_pl8787", "lenet_iter_10000.caffemodel"))
    assert all(blob_is_legacy(b) for layer in net.layer for b in layer.blobs)
    weights = weights_from_net(net)
    assert {k: [a.shape for a in v] for k, v in weights.items()} == LENET_SHAPES
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for v in weights.values() for a in v)


@pytest.mark.parametrize("folder", ["lenet_v2_ahmdtaha", "lenet_v2_longwang4321", "lenet_v2_nandahkrishna"])
def test_v2_lenet_caffemodels_have_the_lenet_shapes(realdata, folder):
    net = caffe_io.read_caffemodel(realdata(folder, "lenet_iter_10000.caffemodel"))
    assert len(net.layer) == 9
    weights = weights_from_net(net)
    assert {k: [a.shape for a in v] for k, v in weights.items()} == LENET_SHAPES


def test_v1_and_v2_solverstates_read(realdata):
    v1 = caffe_io.read_solverstate(realdata("lenet_v1_pl8787", "lenet_iter_10000.solverstate"))
    v2 = caffe_io.read_solverstate(realdata("lenet_v2_longwang4321", "lenet_iter_10000.solverstate"))
    assert (v1.iter, len(v1.history), v1.learned_net) == (10000, 8, "lenet_iter_10000")
    assert (v2.iter, len(v2.history), v2.current_step) == (10000, 8, 0)


def test_resnet20_batchnorm_model_state_and_mean(realdata):
    folder = "resnet20_cifar10_bn_lijianfei06"
    net = caffe_io.read_caffemodel(realdata(folder, "cifar10_ResNet_20_iter_53500.caffemodel"))
    assert len(net.layer) == 104 and sum(len(layer.blobs) for layer in net.layer) == 149
    weights = weights_from_net(net)
    bn = [name for name, layer_type in ((layer.name, layer.type) for layer in net.layer) if layer_type == "BatchNorm"]
    assert len(bn) == 21
    mean, var, factor = weights[bn[0]]
    assert mean.shape == var.shape == (16,) and factor.shape == (1,)
    assert factor[0] == pytest.approx(999.98, rel=1e-5)  # MANIFEST: scale_factor 999.98
    state = caffe_io.read_solverstate(realdata(folder, "cifar10_ResNet_20_iter_53500.solverstate"))
    assert (state.iter, len(state.history)) == (53500, 149)
    image_mean = caffe_io.read_binaryproto(realdata(folder, "cifar10_mean.binaryproto"))
    assert image_mean.shape == (1, 3, 32, 32) and image_mean.dtype == np.float32
    assert 0 < image_mean.min() < image_mean.max() < 256


def test_foreign_face_detector_caffemodel_reads_but_its_ssd_prototxt_fails_cleanly(realdata):
    folder = "slim320_linzaer"
    net = caffe_io.read_caffemodel(realdata(folder, "slim-320.caffemodel"))
    assert len(net.layer) == 100 and sum(len(layer.blobs) for layer in net.layer) == 84
    with pytest.raises(FormatError, match=r"slim-320\.prototxt:421:3: .*no field named \"permute_param\""):
        caffe_io.read_net_prototxt(realdata(folder, "slim-320.prototxt"))


@pytest.mark.parametrize("name,line_col", [("lenet_solver_annotated.prototxt", "8:27"),
                                           ("lenet_train_test_annotated.prototxt", "4:21")])
def test_gbk_encoded_prototxts_fail_with_line_and_column(realdata, name, line_col):
    path = realdata("lenet_v2_longwang4321", name)
    reader = caffe_io.read_solver_prototxt if "solver" in name else caffe_io.read_net_prototxt
    with pytest.raises(FormatError) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line_col}: not UTF-8") and "\n" not in message


def test_rll_sop_nets_parse(realdata):
    train = caffe_io.read_net_prototxt(realdata("bn_inception_rll_sop", "train.prototxt"))
    deploy = caffe_io.read_net_prototxt(realdata("bn_inception_rll_sop", "test_H.prototxt"))
    assert len(train.layer) == 333  # 332 layers + the Input layer made from `input:`/`input_dim:`
    assert list(train.layer[0].top) == ["data", "label"]
    assert len(deploy.layer) == 301  # 300 layers + the Input layer made from `input:`/`input_dim:`
    solver = caffe_io.read_solver_prototxt(realdata("bn_inception_rll_sop", "solver.prototxt"))
    assert solver.net.endswith("train.prototxt")


def test_v1_net_upgrades_and_loads_into_a_net(realdata):
    """A V1 deploy prototxt + V1 caffemodel build a working net (upgrade + legacy shape mapping)."""
    from rll_repro.net import Net

    net = Net(str(realdata("lenet_v1_pl8787", "lenet.prototxt")),
              weights=str(realdata("lenet_v1_pl8787", "lenet_iter_10000.caffemodel")), phase="test")
    out = net.forward(data=np.zeros((64, 1, 28, 28), np.float32))
    prob = out["prob"]
    assert prob.shape == (64, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)  # float32 softmax rows
