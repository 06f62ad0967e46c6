"""The NetParameter builder sets exactly the fields named, and its text parses back unchanged."""
from __future__ import annotations

import pytest
from google.protobuf import text_format

from rll_repro.caffe import caffe_pb2
from rll_repro.recipes.netspec import NetBuilder, param, render, solver


def test_explicit_default_is_present():
    """``pad: 0`` written is kept (proto2 presence), so the originals' explicit defaults survive."""
    b = NetBuilder("n")
    b.add("c", "Convolution", ["data"], ["c"], convolution_param={"num_output": 1, "pad": [0]})
    assert list(b.net.layer[0].convolution_param.pad) == [0]
    assert not b.net.layer[0].convolution_param.HasField("bias_term")


def test_enum_names_and_nested_messages():
    b = NetBuilder("n")
    b.add("p", "Pooling", ["x"], ["p"], pooling_param={"pool": "AVE", "kernel_size": 3})
    b.add("f", "InnerProduct", ["p"], ["f"], param=[param(1, 1, name="w"), param(2, 0)],
          inner_product_param={"num_output": 2, "bias_filler": {"type": "constant", "value": 0}})
    layer = b.net.layer[0]
    assert layer.pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    fc = b.net.layer[1]
    assert [(p.name, p.lr_mult, p.decay_mult) for p in fc.param] == [("w", 1, 1), ("", 2, 0)]
    assert fc.inner_product_param.bias_filler.HasField("value")


def test_unknown_field_is_refused():
    with pytest.raises(KeyError, match="no field 'kernal_size'"):
        NetBuilder("n").add("p", "Pooling", ["x"], ["p"], pooling_param={"kernal_size": 3})


def test_render_round_trips_with_interleaved_legacy_inputs():
    b = NetBuilder("n")
    b.legacy_input("data", (2, 3, 4, 4))
    b.legacy_input("label", (2, 1, 1, 1))
    b.add("r", "ReLU", ["data"], ["data"])
    text = render(b.net, ["a comment"])
    assert text.startswith('# a comment\nname: "n"\ninput: "data"\ninput_dim: 2\n')
    assert 'input: "label"\ninput_dim: 2\ninput_dim: 1' in text
    parsed = caffe_pb2.NetParameter()
    text_format.Merge(text, parsed)
    assert parsed == b.net


def test_render_solver_puts_net_first_and_round_trips():
    s = solver(net="train.prototxt", base_lr=0.01, stepvalue=[1, 2], pn_margin=0.4)
    text = render(s)
    assert text.startswith('net: "train.prototxt"\n')
    parsed = caffe_pb2.SolverParameter()
    text_format.Merge(text, parsed)
    assert parsed == s
