"""Exports of third-party trained Caffe models (../shared/realdata/caffe, read in place): the old V1
LeNet, a current LeNet deploy net and the ResNet-20 CIFAR-10 model (BatchNorm + Scale with its
recorded scale factor 999.98, Eltwise residual sums, in-place layers). No Caffe recording of these
exists, so the reference is rll_repro.Net (itself held to Caffe by the oracle tests); tolerance 1e-5
relative (see test_export_helpers).

ResNet-20 ships only its train/test prototxts (an LMDB Data layer, SoftmaxWithLoss and Accuracy):
the test builds its deploy form the way a user writes one, an Input layer in place of the data layer
and no loss layers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rll_repro.caffe import caffe_pb2
from rll_repro.caffe.io import read_net_prototxt
from rll_repro.export.pysource import generate
from test_export_helpers import TOL, net_outputs, onnx_bytes_or_skip, rel, run_onnx, run_standalone

RESNET = "resnet20_cifar10_bn_lijianfei06"


def resnet20_deploy(folder) -> caffe_pb2.NetParameter:
    """test_ResNet_20.prototxt with an Input layer (1x3x32x32) for its Data layer, without the loss
    and accuracy layers."""
    source = read_net_prototxt(folder / "test_ResNet_20.prototxt")
    deploy = caffe_pb2.NetParameter()
    deploy.name = source.name
    for lp in source.layer:
        if lp.type == "Data":
            data = deploy.layer.add()
            data.name, data.type = "data", "Input"
            data.top.append("data")
            data.input_param.shape.add().dim.extend([1, 3, 32, 32])
        elif lp.type not in ("SoftmaxWithLoss", "Accuracy"):
            deploy.layer.add().CopyFrom(lp)
    return deploy


@pytest.fixture(scope="module")
def realdata_nets():
    from conftest import SHARED
    from rll_repro.net import Net

    root = SHARED / "realdata" / "caffe"
    if not root.is_dir():
        pytest.skip(f"needs {root} (the read-only ../shared folder beside the repository)")
    rng = np.random.default_rng(0)
    nets = {
        "lenet_v1": Net(root / "lenet_v1_pl8787" / "lenet.prototxt",
                        weights=root / "lenet_v1_pl8787" / "lenet_iter_10000.caffemodel", phase="test"),
        "lenet_v2": Net(root / "lenet_v2_ahmdtaha" / "mnist_deploy.prototxt",
                        weights=root / "lenet_v2_ahmdtaha" / "lenet_iter_10000.caffemodel", phase="test"),
        "resnet20": Net(resnet20_deploy(root / RESNET),
                        weights=root / RESNET / "cifar10_ResNet_20_iter_53500.caffemodel", phase="test"),
    }
    cases = {}
    for key, net in nets.items():
        shape = net.blob_shapes[net.inputs[0]]
        # MNIST-like intensities in [0, 1); CIFAR inputs are (pixel − mean)/256-scaled, about ±0.5
        x = rng.uniform(0, 1, (5,) + tuple(shape[1:])).astype(np.float32)
        if key == "resnet20":
            x -= 0.5
        inputs = {net.inputs[0]: x}
        generated = generate(net)
        cases[key] = (net, generated, inputs, net_outputs(net, generated, inputs))
    return cases


@pytest.fixture(scope="module")
def standalone_outputs(realdata_nets, tmp_path_factory):
    keys = sorted(realdata_nets)
    jobs = [(realdata_nets[k][1], realdata_nets[k][2]) for k in keys]
    return dict(zip(keys, run_standalone(jobs, tmp_path_factory.mktemp("realdata"))))


@pytest.mark.parametrize("key", ["lenet_v1", "lenet_v2", "resnet20"])
def test_generated_module_without_rll_repro_matches_net(realdata_nets, standalone_outputs, key):
    net, generated, inputs, reference = realdata_nets[key]
    for blob in generated.outputs:
        assert rel(standalone_outputs[key][blob], reference[blob]) <= TOL, blob


@pytest.mark.parametrize("key", ["lenet_v1", "lenet_v2", "resnet20"])
def test_onnx_under_onnxruntime_matches_net_with_another_batch_size(realdata_nets, key):
    net, generated, inputs, reference = realdata_nets[key]
    out = run_onnx(onnx_bytes_or_skip(generated), inputs)  # traced at the declared batch, run at 5
    for blob in generated.outputs:
        assert out[blob].shape == reference[blob].shape
        assert rel(out[blob], reference[blob]) <= TOL, blob


def test_resnet20_module_keeps_caffe_batchnorm_blobs_and_names(realdata_nets):
    net, generated, _, _ = realdata_nets["resnet20"]
    # BatchNorm's three Caffe blobs (the scale factor 999.98 included) go into the state_dict as they are
    bn = [n for n, lp in zip(net.layer_names, net.layer_params) if lp.type == "BatchNorm"]
    assert len(bn) == 21
    attr = {caffe: a for a, caffe in generated.attributes.items()}
    for name in bn:
        for key, blob in zip(("mean", "variance", "scale_factor"), net.params[name]):
            np.testing.assert_array_equal(generated.state_dict[f"{attr[name]}.{key}"].numpy(), blob.data)
    assert float(generated.state_dict[f"{attr[bn[0]]}.scale_factor"][0]) == pytest.approx(999.98, rel=1e-5)
    assert len(generated.attributes) == sum(lp.type not in ("Input", "Split") for lp in net.layer_params)


def test_resnet20_onnx_names_nodes_and_blobs_after_caffe(realdata_nets):
    import onnx

    net, generated, _, _ = realdata_nets["resnet20"]
    proto = onnx.load_from_string(onnx_bytes_or_skip(generated))
    nodes = {n.name: n for n in proto.graph.node}
    for name, lp in zip(net.layer_names, net.layer_params):
        if lp.type not in ("Input", "Split"):
            assert name in nodes, name
    # BatchNorm and Scale stay separate operations
    bn = next(lp.name for lp in net.layer_params if lp.type == "BatchNorm")
    scale = next(lp.name for lp in net.layer_params if lp.type == "Scale")
    assert nodes[bn].op_type == "BatchNormalization" and nodes[scale].op_type == "Add"  # x·γ, then + β
    assert [i.name for i in proto.graph.input] == ["data"] and [o.name for o in proto.graph.output] == ["fc1"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # a blob written in place keeps its plain name on its last version
    values = {o for n in proto.graph.node for o in n.output}
    assert "conv1" in values and "conv1@conv1" in values


def test_resnet20_fold_bn_merges_each_batchnorm_with_its_scale(realdata_nets):
    net, _, inputs, reference = realdata_nets["resnet20"]
    folded = generate(net, fold_bn=True)
    assert "CaffeScale" not in folded.source and folded.source.count("affine=True") == 21
    from rll_repro.export.pysource import instantiate

    with torch.no_grad():
        out = instantiate(folded)(torch.from_numpy(inputs["data"])).numpy()
    # one rounding fewer per BatchNorm+Scale pair: a few ulps (observed 5.2e-7), within the bound
    assert 0 < rel(out, reference["fc1"]) <= TOL
