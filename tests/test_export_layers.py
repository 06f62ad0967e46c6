"""Every export rule against the Net's own layer, on a synthetic deploy net with seeded random weights
(the layer types no oracle case or real model exercises: Deconvolution, PReLU, Sigmoid, TanH, ELU,
BNLL, Power, Slice, Split, Bias, two-bottom Scale, Reshape, Flatten, Dropout in TEST, and pooling
where Caffe's clip drops the last ceil-mode window: 6 px, kernel 3, stride 4, pad 1 gives 2 windows,
not ceil(5/4) + 1 = 3), for the
generated module and for its ONNX file. Tolerance 1e-5 relative (see test_export_helpers); the module
does the Net's torch operations (observed exact), onnxruntime its own kernels.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rll_repro.export.pysource import generate, instantiate
from test_export_helpers import TOL, net_outputs, onnx_bytes_or_skip, rel, run_onnx

FILL = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'
NET = f"""
name: "every_rule"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 4 dim: 6 dim: 6 }} }} }}
layer {{ name: "g" type: "Input" top: "g" input_param {{ shape {{ dim: 2 dim: 6 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 {FILL} }} }}
layer {{ name: "deconv" type: "Deconvolution" bottom: "conv" top: "deconv"
        convolution_param {{ num_output: 3 kernel_size: 2 stride: 2 {FILL} }} }}
layer {{ name: "prelu" type: "PReLU" bottom: "deconv" top: "deconv" prelu_param {{ filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "sig" type: "Sigmoid" bottom: "conv" top: "sig" }}
layer {{ name: "tanh" type: "TanH" bottom: "conv" top: "tanh" }}
layer {{ name: "elu" type: "ELU" bottom: "conv" top: "elu" elu_param {{ alpha: 0.7 }} }}
layer {{ name: "bnll" type: "BNLL" bottom: "conv" top: "bnll" }}
layer {{ name: "power" type: "Power" bottom: "conv" top: "power" power_param {{ power: 2 scale: 0.5 shift: 1 }} }}
layer {{ name: "slice" type: "Slice" bottom: "conv" top: "s1" top: "s2" slice_param {{ axis: 1 slice_point: 2 }} }}
layer {{ name: "split" type: "Split" bottom: "s1" top: "s1a" top: "s1b" }}
layer {{ name: "prod" type: "Eltwise" bottom: "s1a" bottom: "s1b" top: "prod" eltwise_param {{ operation: PROD }} }}
layer {{ name: "bias" type: "Bias" bottom: "s2" top: "bias" bias_param {{ filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "scale2" type: "Scale" bottom: "conv" bottom: "g" top: "scale2" scale_param {{ axis: 0 }} }}
layer {{ name: "drop" type: "Dropout" bottom: "scale2" top: "scale2" dropout_param {{ dropout_ratio: 0.5 }} }}
layer {{ name: "reshape" type: "Reshape" bottom: "scale2" top: "reshape" reshape_param {{ shape {{ dim: 0 dim: -1 }} }} }}
layer {{ name: "flatten" type: "Flatten" bottom: "elu" top: "flatten" }}
layer {{ name: "poolmax" type: "Pooling" bottom: "conv" top: "poolmax" pooling_param {{ pool: MAX kernel_size: 3 stride: 4 pad: 1 }} }}
layer {{ name: "poolave" type: "Pooling" bottom: "conv" top: "poolave" pooling_param {{ pool: AVE kernel_size: 3 stride: 4 pad: 1 }} }}
"""


@pytest.fixture(scope="module")
def every_rule(tmp_path_factory):
    from rll_repro.net import Net

    path = tmp_path_factory.mktemp("net") / "net.prototxt"
    path.write_text(NET)
    net = Net(path, phase="test", seed=3)
    rng = np.random.default_rng(1)
    inputs = {"data": rng.standard_normal((2, 4, 6, 6)).astype(np.float32),
              "g": rng.standard_normal((2, 6)).astype(np.float32)}
    generated = generate(net)
    return net, generated, inputs, net_outputs(net, generated, inputs)


def test_every_output_of_the_synthetic_net_is_exported(every_rule):
    net, generated, _, _ = every_rule
    assert sorted(generated.outputs) == sorted(net.outputs)
    assert sorted(generated.outputs) == sorted(
        ["deconv", "sig", "tanh", "bnll", "power", "prod", "bias", "reshape", "flatten", "poolmax", "poolave"])
    assert net.blob_shapes["poolmax"] == net.blob_shapes["poolave"] == (2, 6, 2, 2)  # the clipped window
    assert "s1a = s1b = s1" in generated.source  # Split: aliases, no operation
    assert "drop (Dropout): identity in TEST" in generated.source


def test_generated_module_matches_net_on_every_rule(every_rule):
    net, generated, inputs, reference = every_rule
    with torch.no_grad():
        out = instantiate(generated)(*(torch.from_numpy(inputs[n]) for n in generated.inputs))
    for blob, tensor in zip(generated.outputs, out):
        assert rel(tensor.numpy(), reference[blob]) <= TOL, blob


def test_onnx_matches_net_on_every_rule(every_rule):
    net, generated, inputs, reference = every_rule
    out = run_onnx(onnx_bytes_or_skip(generated), inputs)
    for blob in generated.outputs:
        assert rel(out[blob], reference[blob]) <= TOL, blob


def test_outputs_argument_writes_only_the_layers_needed(every_rule):
    """What the bench does: cut the net at chosen blobs (there the train net's embeddings)."""
    net = every_rule[0]
    generated = generate(net, outputs=["sig"])
    assert set(generated.attributes.values()) == {"conv", "sig"}
    assert generated.outputs == ["sig"]


def test_a_net_whose_shapes_fix_the_batch_is_traced_at_its_declared_batch(tmp_path):
    """Reshape to explicit dims (2, 3, 1) cannot trace one sample: the export traces the declared 2."""
    from rll_repro.net import Net

    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
                    'layer { name: "r" type: "Reshape" bottom: "data" top: "r" '
                    'reshape_param { shape { dim: 2 dim: 3 dim: 1 } } }\n')
    net = Net(path, phase="test")
    generated = generate(net)
    x = {"data": np.arange(6, dtype=np.float32).reshape(2, 3)}
    out = run_onnx(onnx_bytes_or_skip(generated), x)["r"]
    np.testing.assert_array_equal(out, x["data"].reshape(2, 3, 1))
