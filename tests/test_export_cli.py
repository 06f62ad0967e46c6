"""``rll-repro export``: the files it writes, the difference table it prints, the one-line errors."""
from __future__ import annotations

import ast
import re

import pytest
import torch

from rll_repro.caffe import caffe_pb2
from rll_repro.caffe.io import write_net_prototxt
from rll_repro.cli import main
from test_export_helpers import TOL, onnxruntime_or_skip

LENET = ("realdata", "caffe", "lenet_v2_ahmdtaha")


def _lenet(shared):
    folder = shared(*LENET)
    return str(folder / "mnist_deploy.prototxt"), str(folder / "lenet_iter_10000.caffemodel")


def _table_rows(text: str) -> list[tuple[str, float]]:
    """(blob, relative difference) of each row of the printed table."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"^(PyTorch module|ONNX \(onnxruntime\)|traced PyTorch module)\s+(\S+)\s+(\S+)\s+(\S+)$", line)
        if m:
            rows.append((m.group(2), float(m.group(4))))
    return rows


def test_export_py_writes_torch_only_source_and_state_dict_and_prints_the_table(shared, tmp_path, capsys):
    prototxt, weights = _lenet(shared)
    out = tmp_path / "lenet.py"
    assert main(["export", prototxt, weights, str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _table_rows(printed)
    assert [b for b, _ in rows] == ["loss"] and rows[0][1] <= TOL  # observed 0 to 6e-7 (conv kernels' order)
    tree = ast.parse(out.read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots == {"torch"}
    state = torch.load(tmp_path / "lenet.pt", weights_only=True)
    assert sorted(state) == sorted(f"{layer}.{p}" for layer in ("conv1", "conv2", "ip1", "ip2") for p in ("weight", "bias"))


def test_export_onnx_has_caffe_names_a_dynamic_batch_and_prints_the_table(shared, tmp_path, capsys):
    onnxruntime_or_skip()
    import onnx

    prototxt, weights = _lenet(shared)
    out = tmp_path / "lenet.onnx"
    assert main(["export", prototxt, weights, str(out)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [b for b, _ in rows] == ["loss"] and rows[0][1] <= TOL
    proto = onnx.load(str(out))
    assert [n.name for n in proto.graph.node if n.op_type != "Flatten"] == [
        "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]
    assert proto.graph.input[0].name == "data" and proto.graph.output[0].name == "loss"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_export_input_shape_and_static_batch(shared, tmp_path, capsys):
    onnxruntime_or_skip()
    import onnx

    prototxt, weights = _lenet(shared)
    out = tmp_path / "lenet.onnx"
    assert main(["export", prototxt, weights, str(out), "--input-shape", "3,1,28,28", "--static-batch"]) == 0
    assert "random standard-normal batch of 3" in capsys.readouterr().out
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 1, 28, 28]


def _tiny_net_with(tmp_path, extra_layer: str):
    text = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 } }
""" + extra_layer
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(caffe_pb2.NetParameter().SerializeToString())
    return str(path), str(weights)


@pytest.mark.parametrize("layer, name, why", [
    ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }',
     "loss", "a training-only loss layer"),
    ('layer { name: "rll" type: "DistanceWeightedValidPairLossV12" bottom: "fc" bottom: "label" top: "rll" }',
     "rll", "a training-only loss layer"),
    ('layer { name: "py" type: "Python" bottom: "fc" top: "py" python_param { module: "m" layer: "L" } }',
     "py", "a Python layer"),
    ('layer { name: "feed" type: "Data" top: "x" data_param { source: "lmdb" batch_size: 2 } }',
     "feed", "a data layer"),
])
def test_unexportable_layers_are_one_line_errors_suggesting_the_deploy_net(tmp_path, capsys, layer, name, why):
    prototxt, weights = _tiny_net_with(tmp_path, layer)
    assert main(["export", prototxt, weights, str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"layer {name!r}" in err and why in err and "deploy net" in err and prototxt in err
    assert not (tmp_path / "out.onnx").exists()


def test_a_real_train_test_prototxt_names_its_data_layer(shared, tmp_path, capsys):
    folder = shared("realdata", "caffe", "resnet20_cifar10_bn_lijianfei06")
    code = main(["export", str(folder / "test_ResNet_20.prototxt"),
                 str(folder / "cifar10_ResNet_20_iter_53500.caffemodel"), str(tmp_path / "r.py")])
    assert code == 2
    err = capsys.readouterr().err
    assert "layer 'Data1' (type Data) cannot be exported: a data layer" in err and "deploy net" in err


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "1,x,28"], "--input-shape"),
    (["--input-shape", "0,1,28,28"], "--input-shape"),
])
def test_bad_input_shape_is_a_one_line_error(shared, tmp_path, capsys, args, message):
    prototxt, weights = _lenet(shared)
    assert main(["export", prototxt, weights, str(tmp_path / "o.onnx"), *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_output_extension_is_a_one_line_error(shared, tmp_path, capsys):
    prototxt, weights = _lenet(shared)
    assert main(["export", prototxt, weights, str(tmp_path / "o.txt")]) == 2
    assert "must end in .onnx or .py" in capsys.readouterr().err


def test_fold_bn_on_resnet20_deploy_stays_within_the_bound(shared, tmp_path, capsys):
    onnxruntime_or_skip()
    import onnx

    from test_export_realdata import resnet20_deploy

    folder = shared("realdata", "caffe", "resnet20_cifar10_bn_lijianfei06")
    deploy = tmp_path / "deploy.prototxt"
    write_net_prototxt(deploy, resnet20_deploy(folder))
    out = tmp_path / "r.onnx"
    weights = str(folder / "cifar10_ResNet_20_iter_53500.caffemodel")
    assert main(["export", str(deploy), weights, str(out), "--fold-bn"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows and all(r <= TOL for _, r in rows)  # observed 6.9e-7
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    # one affine BatchNormalization per BatchNorm+Scale pair, no Scale Mul/Add left
    assert ops.count("BatchNormalization") == 21 and "Mul" not in ops


TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
"""


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    from rll_repro.net import Net

    d = tmp_path_factory.mktemp("export_bad")
    (d / "net.prototxt").write_text(TINY)
    (d / "other.prototxt").write_text(TINY.replace("num_output: 5", "num_output: 7"))
    (d / "unknown.prototxt").write_text(TINY + 'layer { name: "w" type: "Wibble" bottom: "fc" top: "w" }\n')
    Net(str(d / "net.prototxt"), phase="test").save(str(d / "good.caffemodel"))
    Net(str(d / "other.prototxt"), phase="test").save(str(d / "mismatch.caffemodel"))
    data = (d / "good.caffemodel").read_bytes()
    (d / "truncated.caffemodel").write_bytes(data[: len(data) // 2])
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(30))
    (d / "empty.prototxt").write_text("")
    return d


@pytest.mark.parametrize("net, weights, extra, names, what", [
    ("absent.prototxt", "good.caffemodel", [], "absent.prototxt", "No such file"),
    ("empty.prototxt", "good.caffemodel", [], "empty.prototxt", "empty file"),
    ("image.png", "good.caffemodel", [], "image.png", "PNG image"),
    ("unknown.prototxt", "good.caffemodel", [], "unknown.prototxt", "unknown layer type 'Wibble'"),
    ("net.prototxt", "absent.caffemodel", [], "absent.caffemodel", "No such file"),
    ("net.prototxt", "truncated.caffemodel", [], "truncated.caffemodel", "truncated"),
    ("net.prototxt", "image.png", [], "image.png", "PNG image"),
    ("net.prototxt", "mismatch.caffemodel", [], "mismatch.caffemodel", "does not match the net's (5, 8)"),
    ("net.prototxt", "good.caffemodel", ["--input-shape", "2,3,2,2"], "--input-shape", "does not fit"),
    ("net.prototxt", "good.caffemodel", ["--input-shape", "2,3"], "--input-shape", "input channels"),
])
def test_bad_input_is_one_line_naming_the_file(bad_files, capsys, net, weights, extra, names, what):
    out = bad_files / "out.onnx"
    assert main(["export", str(bad_files / net), str(bad_files / weights), str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and names in err and what in err, err
    assert not out.exists()
