"""The net builder follows Caffe's Net: filtering, in-place blobs, loss weights, propagate_down,
implicit splits, param specs and sharing, the per-fork BatchNorm quirk, and clear build errors.

Values are compared exactly where no arithmetic differs, else at 1e-6 relative (float32 vs a float64
closed form of a few terms).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rll_repro.caffe.io import parse_net_text
from rll_repro.errors import NetError
from rll_repro.net import Net


def make_net(text: str, phase: str = "train", **kwargs) -> Net:
    return Net(parse_net_text(text), phase=phase, **kwargs)


def input_layer(name: str, *shape: int) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def fc(name, bottom, top, n, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra} '
            f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }} '
            'bias_filler { type: "gaussian" std: 0.5 } } }\n')


# ---------------------------------------------------------------------------------------------
# filtering and legacy inputs


PHASED = input_layer("a", 2, 3) + (
    'layer { name: "tr" type: "ReLU" bottom: "a" top: "t" include { phase: TRAIN } }\n'
    'layer { name: "te" type: "Sigmoid" bottom: "a" top: "t" include { phase: TEST } }\n'
    'layer { name: "st" type: "TanH" bottom: "a" top: "s" include { stage: "deploy" } }\n'
    'layer { name: "ex" type: "AbsVal" bottom: "a" top: "e" exclude { min_level: 2 } }\n'
)


def test_include_and_exclude_rules_select_layers_by_phase_stage_and_level():
    assert make_net(PHASED, "train").layer_names == ["a", "tr", "ex"]
    assert make_net(PHASED, "test").layer_names == ["a", "te", "ex"]
    assert make_net(PHASED, "test", stages=["deploy"]).layer_names == ["a", "te", "st", "ex"]
    assert make_net(PHASED, "train", level=2).layer_names == ["a", "tr"]


def test_legacy_input_fields_become_input_blobs():
    text = 'input: "data" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4\ninput: "label" input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1\n'
    text += 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE global_pooling: true } }'
    net = make_net(text)
    assert net.inputs == ["data", "label"]
    assert net.blobs["data"].shape == (2, 3, 4, 4)
    assert net.blobs["label"].shape == (2, 1, 1, 1)
    assert "label" in net.outputs and "p" in net.outputs


# ---------------------------------------------------------------------------------------------
# in-place blobs, aliasing, implicit split


def test_in_place_blob_data_is_the_last_write_and_diff_the_gradient_at_the_first():
    x = np.array([[-1.0, 2.0]], np.float32)
    text = "force_backward: true\n" + input_layer("a", 1, 2) + (
        'layer { name: "sc" type: "Scale" bottom: "a" top: "b" scale_param { filler { type: "constant" value: 3 } } }\n'
        'layer { name: "r" type: "ReLU" bottom: "b" top: "b" }\n'
        'layer { name: "sc2" type: "Scale" bottom: "b" top: "c" scale_param { filler { type: "constant" value: 2 } } }\n')
    net = make_net(text)
    net.forward(a=x)
    np.testing.assert_array_equal(net.blobs["b"].data, [[0.0, 6.0]])  # after the in-place ReLU
    net.backward(c=np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(net.blobs["b"].diff, [[0.0, 2.0]])  # what ReLU's backward wrote in place
    np.testing.assert_array_equal(net.blobs["a"].diff, [[0.0, 6.0]])


def test_reshape_top_shares_the_bottom_diff_like_caffe():
    # Caffe's Reshape shares data and diff memory with its bottom: after the in-place ReLU below the
    # Reshape has back-propagated, the reshaped blob's diff holds the pre-ReLU gradient too.
    x = np.array([[-1.0, 2.0]], np.float32)
    text = "force_backward: true\n" + input_layer("a", 1, 2) + (
        'layer { name: "sc" type: "Scale" bottom: "a" top: "b" }\n'
        'layer { name: "r" type: "ReLU" bottom: "b" top: "b" }\n'
        'layer { name: "rs" type: "Reshape" bottom: "b" top: "c" reshape_param { shape { dim: 0 dim: 0 dim: 1 } } }\n'
        'layer { name: "sc2" type: "Scale" bottom: "c" top: "d" scale_param { filler { type: "constant" value: 5 } } }\n')
    net = make_net(text)
    net.forward(a=x)
    net.backward(d=np.ones((1, 2, 1), np.float32))
    np.testing.assert_array_equal(net.blobs["c"].diff.ravel(), [0.0, 5.0])
    np.testing.assert_array_equal(net.blobs["b"].diff.ravel(), [0.0, 5.0])


def test_a_blob_read_by_two_layers_gets_the_sum_of_their_gradients():
    text = "force_backward: true\n" + input_layer("a", 1, 2) + (
        'layer { name: "s1" type: "Scale" bottom: "a" top: "b" scale_param { filler { type: "constant" value: 3 } } }\n'
        'layer { name: "s2" type: "Scale" bottom: "a" top: "c" scale_param { filler { type: "constant" value: -5 } } }\n')
    net = make_net(text)
    net.forward(a=np.ones((1, 2), np.float32))
    diffs = net.backward(b=np.ones((1, 2), np.float32), c=np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(diffs["a"], [[-2.0, -2.0]])


# ---------------------------------------------------------------------------------------------
# losses, loss weights, propagate_down


LOSS_NET = input_layer("x", 4, 3) + input_layer("label", 4) + fc("fc", "x", "z", 3) + (
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "label" top: "loss" LW }\n')


def _run_loss(weight_text):
    net = make_net(LOSS_NET.replace("LW", weight_text), seed=3)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    net.forward(x=x, label=np.array([0, 1, 2, 1], np.float32))
    net.backward()
    return net


def test_loss_layers_default_to_loss_weight_one_and_explicit_weights_scale_gradients():
    one, three = _run_loss(""), _run_loss("loss_weight: 3")
    assert one.loss_tops == ["loss"]
    np.testing.assert_allclose(three.params["fc"][0].diff, 3 * one.params["fc"][0].diff, rtol=1e-6)
    np.testing.assert_allclose(three.loss, 3 * one.loss, rtol=1e-6)
    np.testing.assert_array_equal(three.blobs["loss"].diff, 3.0)  # the loss top's diff is its weight


def test_loss_weight_on_a_non_loss_layer_makes_it_a_loss():
    text = input_layer("x", 2, 3) + fc("fc", "x", "z", 1, extra="loss_weight: 0.5")
    net = make_net(text, seed=0)
    x = np.ones((2, 3), np.float32)
    net.forward(x=x)
    assert net.loss_tops == ["z"]
    np.testing.assert_allclose(net.loss, 0.5 * net.blobs["z"].data.sum(), rtol=1e-6)
    net.backward()
    np.testing.assert_allclose(net.params["fc"][0].diff, 0.5 * x.sum(0, keepdims=True), rtol=1e-6)


def test_propagate_down_zero_stops_the_gradient_into_that_bottom():
    text = "force_backward: true\n" + input_layer("a", 1, 2) + input_layer("b", 1, 2) + (
        'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" propagate_down: 1 propagate_down: 0 }\n')
    net = make_net(text)
    net.forward(a=np.ones((1, 2), np.float32), b=np.ones((1, 2), np.float32))
    diffs = net.backward(e=np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(diffs["a"], 1.0)
    np.testing.assert_array_equal(diffs["b"], 0.0)


def test_inputs_get_no_diff_without_force_backward():
    net = _run_loss("")
    assert not net.blobs["x"].diff.any()
    assert net.params["fc"][0].diff.any()


def test_forward_backward_accumulates_param_diffs_until_cleared():
    net = make_net(LOSS_NET.replace("LW", ""), seed=1)
    net.blobs["x"].data[...] = np.random.default_rng(0).standard_normal((4, 3))
    net.blobs["label"].data[...] = [0, 1, 2, 1]
    loss = net.forward_backward()
    once = net.params["fc"][0].diff.copy()
    assert loss > 0
    net.forward_backward()
    np.testing.assert_allclose(net.params["fc"][0].diff, 2 * once, rtol=1e-6)
    net.clear_param_diffs()
    assert not net.params["fc"][0].diff.any()


def test_a_layer_that_writes_its_top_in_backward_updates_the_top_data():
    from rll_repro.layers import base, registry

    @registry.register
    class LateTop(base.Layer):  # a stand-in for the RLL loss (SPEC rll §1.4)
        type_names = ("TestLateTop",)
        is_loss = True

        def reshape(self, bottom_shapes):
            return [()]

        def forward(self, x):
            return ((x * 0).sum(),)

        def after_backward(self):
            return [torch.tensor(42.0)]

    net = make_net(input_layer("a", 2) + 'layer { name: "l" type: "TestLateTop" bottom: "a" top: "l" }')
    net.forward(a=np.ones(2, np.float32))
    assert float(net.blobs["l"].data) == 0.0
    net.backward()
    assert float(net.blobs["l"].data) == 42.0


# ---------------------------------------------------------------------------------------------
# params: specs, sharing, order, BatchNorm per fork


def test_learnable_params_follow_layer_order_with_lr_and_decay_multipliers():
    text = input_layer("x", 2, 3) + fc("fc1", "x", "h", 4, extra="param { lr_mult: 10 decay_mult: 0 } param { lr_mult: 2 }") + fc("fc2", "h", "y", 2)
    net = make_net(text)
    assert net.learnable_param_names == ["fc1/0", "fc1/1", "fc2/0", "fc2/1"]
    assert net.params_lr == [10.0, 2.0, 1.0, 1.0]
    assert net.params_weight_decay == [0.0, 1.0, 1.0, 1.0]
    assert net.learnable_params[0] is net.layers[1].blobs[0]


def test_params_shared_by_name_are_one_tensor_listed_once():
    text = input_layer("x", 2, 3) + fc("a", "x", "p", 3, extra='param { name: "w" } param { name: "b" }') + fc(
        "b", "p", "q", 3, extra='param { name: "w" } param { name: "b" }')
    net = make_net(text)
    assert len(net.learnable_params) == 2
    assert net.layers[1].blobs[0] is net.layers[2].blobs[0]
    net.forward(x=np.ones((2, 3), np.float32))
    net.backward(q=np.ones((2, 3), np.float32))
    # the shared weight's diff is the sum of both layers' contributions
    w = net.params["a"][0].data
    p = net.blobs["p"].data
    expected = np.ones((3, 2)) @ p + (np.ones((2, 3)) @ w).T @ np.ones((2, 3))
    # float32 sums of products: the error bound is relative to the terms' size, not to an entry that
    # cancels to near zero (which entry does depends on the random fillers)
    np.testing.assert_allclose(net.params["a"][0].diff, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_shared_params_with_different_shapes_are_a_build_error():
    text = input_layer("x", 2, 3) + fc("a", "x", "p", 3, extra='param { name: "w" }') + fc("b", "p", "q", 4, extra='param { name: "w" }')
    with pytest.raises(NetError, match="'b'.*shared param 'w' has shape"):
        make_net(text)


def test_lr_mult_zero_params_get_no_diff():
    text = input_layer("x", 2, 3) + fc("fc", "x", "y", 2, extra="param { lr_mult: 0 } param { lr_mult: 1 }")
    net = make_net(text)
    net.forward(x=np.ones((2, 3), np.float32))
    net.backward(y=np.ones((2, 2), np.float32))
    assert not net.params["fc"][0].diff.any()
    assert net.params["fc"][1].diff.any()


BN_TEXT = input_layer("x", 4, 2, 3, 3) + 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }\n'


def test_rll_fork_batchnorm_blobs_are_learnable_with_lr_and_decay_one():
    net = make_net(BN_TEXT, dialect="rll")
    assert net.params_lr == [1.0, 1.0, 1.0]
    assert net.params_weight_decay == [1.0, 1.0, 1.0]


def test_osm_and_bvlc_batchnorm_blobs_have_lr_mult_zero():
    for dialect in ("osm", "bvlc"):
        assert make_net(BN_TEXT, dialect=dialect).params_lr == [0.0, 0.0, 0.0]


def test_osm_fork_rejects_a_learning_rate_on_batchnorm_blobs():
    text = BN_TEXT.replace('type: "BatchNorm"', 'type: "BatchNorm" param { lr_mult: 1 }')
    with pytest.raises(NetError, match="'bn'.*lr_mult"):
        make_net(text, dialect="osm")


def test_dialect_is_osm_when_the_net_uses_an_osm_only_layer():
    assert make_net(BN_TEXT).dialect.name == "rll"
    text = input_layer("x", 3, 2) + 'layer { name: "bp" type: "BatchPool" bottom: "x" top: "y" }'
    assert make_net(text).dialect.name == "osm"


# ---------------------------------------------------------------------------------------------
# reshape, pycaffe views


def test_reshape_propagates_a_new_input_shape():
    text = input_layer("data", 1, 3, 8, 8) + (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }')
    net = make_net(text)
    net.blobs["data"].reshape(5, 3, 9, 9)
    net.reshape()
    assert net.blobs["c"].shape == (5, 4, 4, 4)
    out = net.forward(data=np.zeros((2, 3, 11, 11), np.float32))
    assert out["c"].shape == (2, 4, 5, 5)


def test_blob_data_views_share_memory_with_the_net():
    text = input_layer("a", 1, 2) + 'layer { name: "s" type: "Scale" bottom: "a" top: "b" }'
    net = make_net(text)
    net.blobs["a"].data[...] = [[1.0, 2.0]]
    net.params["s"][0].data[...] = 3.0
    net.forward()
    np.testing.assert_array_equal(net.blobs["b"].data, [[3.0, 6.0]])


# ---------------------------------------------------------------------------------------------
# build errors


def test_unknown_layer_type_names_the_layer_the_type_and_the_supported_ones():
    with pytest.raises(NetError) as info:
        make_net(input_layer("a", 1) + 'layer { name: "odd" type: "Frobnicate" bottom: "a" top: "b" }')
    message = str(info.value)
    assert "'odd'" in message and "'Frobnicate'" in message and "Convolution" in message
    assert "\n" not in message


def test_a_bottom_no_layer_produces_is_a_build_error():
    with pytest.raises(NetError, match="'r'.*bottom blob 'nowhere' is not produced"):
        make_net(input_layer("a", 1) + 'layer { name: "r" type: "ReLU" bottom: "nowhere" top: "b" }')


def test_a_top_produced_twice_is_a_build_error():
    text = input_layer("a", 1) + 'layer { name: "r" type: "ReLU" bottom: "a" top: "b" }' + 'layer { name: "s" type: "ReLU" bottom: "a" top: "b" }'
    with pytest.raises(NetError, match="'s'.*top blob 'b' is produced by several layers"):
        make_net(text)


def test_inconsistent_shapes_are_a_build_error():
    text = input_layer("a", 2, 3, 4, 4) + (
        'layer { name: "c" type: "Convolution" bottom: "a" top: "c" convolution_param { num_output: 4 kernel_size: 7 } }')
    with pytest.raises(NetError, match="'c'.*does not fit"):
        make_net(text)


def test_unsupported_parameter_values_are_build_errors():
    text = input_layer("a", 2, 3, 4, 4) + (
        'layer { name: "c" type: "Convolution" bottom: "a" top: "c" convolution_param { num_output: 4 kernel_size: 3 group: 2 } }')
    with pytest.raises(NetError, match="'c'.*group 2 must divide"):
        make_net(text)
    with pytest.raises(NetError, match="'d'.*dropout_ratio"):
        make_net(input_layer("a", 2) + 'layer { name: "d" type: "Dropout" bottom: "a" top: "d" dropout_param { dropout_ratio: 1.5 } }')


def test_wrong_number_of_loss_weights_is_a_build_error():
    with pytest.raises(NetError, match="'r'.*2 loss_weight values for 1 tops"):
        make_net(input_layer("a", 2) + 'layer { name: "r" type: "ReLU" bottom: "a" top: "b" loss_weight: 1 loss_weight: 2 }')


def test_feeding_an_unknown_input_is_an_error():
    net = make_net(input_layer("a", 2) + 'layer { name: "r" type: "ReLU" bottom: "a" top: "b" }')
    with pytest.raises(NetError, match="'zz' is not an input blob"):
        net.forward(zz=np.zeros(2))


def test_in_place_relu_after_a_layer_whose_backward_reads_its_output_stays_correct():
    # Sigmoid's backward reads its output, so the net must not let the ReLU overwrite it.
    x = np.array([[-1.0, 2.0]], np.float32)
    text = "force_backward: true\n" + input_layer("a", 1, 2) + (
        'layer { name: "s" type: "Sigmoid" bottom: "a" top: "b" }\n'
        'layer { name: "r" type: "ReLU" bottom: "b" top: "b" }\n')
    net = make_net(text)
    assert not any(step.inplace for step in net._steps)
    net.forward(a=x)
    sig = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(net.backward(b=np.ones((1, 2), np.float32))["a"], sig * (1 - sig), rtol=1e-6)


def test_in_place_relu_after_scale_runs_in_place():
    text = input_layer("a", 1, 2) + 'layer { name: "s" type: "Scale" bottom: "a" top: "b" }\nlayer { name: "r" type: "ReLU" bottom: "b" top: "b" }\n'
    assert [step.inplace for step in make_net(text)._steps] == [False, False, True]


def test_reshaping_an_input_blob_is_propagated_before_the_next_pass():
    text = input_layer("x", 2, 3) + fc("fc", "x", "y", 2, extra="loss_weight: 1")
    net = make_net(text, seed=0)
    net.blobs["x"].reshape(5, 3)
    net.blobs["x"].data[...] = 1.0
    net.forward_backward()
    assert net.blobs["y"].shape == (5, 2)
    net.blobs["x"].reshape(5, 4)  # the InnerProduct was built for 3 inputs
    with pytest.raises(NetError, match="'fc'.*does not match the weights' 3"):
        net.forward_backward()


def test_forward_start_and_end_run_a_layer_range_like_pycaffe():
    text = input_layer("a", 1, 2) + (
        'layer { name: "s1" type: "Scale" bottom: "a" top: "b" scale_param { filler { type: "constant" value: 2 } } }\n'
        'layer { name: "s2" type: "Scale" bottom: "b" top: "c" scale_param { filler { type: "constant" value: 3 } } }\n')
    net = make_net(text)
    out = net.forward(end="s1", a=np.ones((1, 2), np.float32))
    assert list(out) == ["b"]
    np.testing.assert_array_equal(out["b"], 2.0)
    net.blobs["b"].data[...] = 10.0
    np.testing.assert_array_equal(net.forward(start="s2")["c"], 30.0)


def test_a_pass_through_top_gets_its_own_diff():
    # Dropout in TEST returns its bottom; the top's diff must not include the bottom's other consumers.
    text = "force_backward: true\n" + input_layer("a", 1, 2) + (
        'layer { name: "d" type: "Dropout" bottom: "a" top: "d" }\n'
        'layer { name: "s" type: "Scale" bottom: "a" top: "s" scale_param { filler { type: "constant" value: 3 } } }\n')
    net = make_net(text, phase="test")
    net.forward(a=np.ones((1, 2), np.float32))
    diffs = net.backward(diffs=["d"], d=np.ones((1, 2), np.float32), s=np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(diffs["d"], 1.0)
    np.testing.assert_array_equal(diffs["a"], 4.0)


def test_pycaffe_phase_constants_and_two_argument_form():
    from rll_repro.net import TEST, TRAIN

    net_param = parse_net_text(PHASED)
    assert Net(net_param, TEST).phase == "test"
    assert Net(net_param, None, TRAIN).phase == "train"
    with pytest.raises(NetError, match="phase must be"):
        Net(net_param, phase="validate")


def test_l1_normalization_picks_the_osm_dialect():
    text = input_layer("x", 3, 1, 1, 1) + 'layer { name: "n" type: "Normalization" bottom: "x" top: "y" normalization_param { norm: L1 } }'
    assert make_net(text).dialect.name == "osm"


def test_top_and_bottom_names_per_layer():
    net = make_net(PHASED, "train")
    assert net.top_names["tr"] == ["t"] and net.bottom_names["tr"] == ["a"]
    assert list(net.top_names) == net.layer_names
