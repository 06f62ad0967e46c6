"""V0/V1 nets and old solvers are upgraded the way Caffe's upgrade_proto does."""
from __future__ import annotations

import pytest

from rll_repro.caffe import caffe_pb2
from rll_repro.caffe.io import parse_net_text, parse_solver_text
from rll_repro.errors import FormatError

V1_NET = """
name: "v1"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 param: "w" param: "b"
         convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv" bottom: "label" top: "loss" loss_weight: 2
         include { phase: TRAIN } }
"""


def test_v1_enum_types_become_type_strings():
    net = parse_net_text(V1_NET)
    assert [layer.type for layer in net.layer] == ["Input", "Convolution", "ReLU", "SoftmaxWithLoss"]
    assert not len(net.layers)


def test_v1_blobs_lr_weight_decay_and_param_names_become_param_specs():
    conv = parse_net_text(V1_NET).layer[1]
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv.param] == [("w", 1.0, 1.0), ("b", 2.0, 0.0)]
    assert conv.convolution_param.num_output == 4


def test_v1_loss_weight_and_include_rules_are_kept():
    loss = parse_net_text(V1_NET).layer[3]
    assert list(loss.loss_weight) == [2.0] and loss.include[0].phase == caffe_pb2.TRAIN


def test_input_dim_becomes_an_input_layer_named_input_first():
    """UpgradeNetInput: the Input layer is named 'input' and has one shape per input."""
    net = parse_net_text(V1_NET)
    assert (net.layer[0].name, list(net.layer[0].top)) == ("input", ["data"])
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[2, 3, 8, 8]]
    assert not len(net.input) and not len(net.input_dim)


def test_input_shape_form_is_upgraded_too():
    net = parse_net_text('input: "a" input_shape { dim: 5 dim: 2 } layer { name: "r" type: "ReLU" bottom: "a" top: "b" }')
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[5, 2]]


def test_wrong_number_of_input_dims_is_an_error():
    with pytest.raises(FormatError, match="need 8 input_dim values, found 4"):
        parse_net_text('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4')


def test_v1_data_layer_transform_fields_move_to_transform_param():
    """UpgradeNetDataTransformation: data_param scale/mean_file/crop_size/mirror -> transform_param."""
    net = parse_net_text('layers { name: "d" type: DATA top: "data" '
                         'data_param { source: "db" batch_size: 4 scale: 0.5 crop_size: 7 mirror: true } }')
    layer = net.layer[0]
    assert (layer.transform_param.scale, layer.transform_param.crop_size, layer.transform_param.mirror) == (0.5, 7, True)
    assert not layer.data_param.HasField("scale") and layer.data_param.source == "db"


def test_v0_net_upgrades_and_padding_layers_fold_into_the_conv():
    """UpgradeV0Net + UpgradeV0PaddingLayers."""
    text = """
    name: "v0"
    input: "data"
    input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
    layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
    layers { layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 5 stride: 2 biasterm: false
                     blobs_lr: 1 weight_filler { type: "gaussian" std: 0.01 } } bottom: "pad1" top: "conv1" }
    layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "conv1" top: "pool1" }
    layers { layer { name: "fc" type: "innerproduct" num_output: 10 } bottom: "pool1" top: "fc" }
    """
    net = parse_net_text(text)
    assert [layer.type for layer in net.layer] == ["Input", "Convolution", "Pooling", "InnerProduct"]
    conv = net.layer[1]
    assert list(conv.bottom) == ["data"]
    p = conv.convolution_param
    assert (list(p.pad), list(p.kernel_size), list(p.stride), p.bias_term, p.num_output) == ([2], [5], [2], False, 8)
    assert p.weight_filler.type == "gaussian" and conv.param[0].lr_mult == 1
    pool = net.layer[2].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (caffe_pb2.PoolingParameter.AVE, 3, 2)
    assert net.layer[3].inner_product_param.num_output == 10


def test_v0_field_on_the_wrong_layer_type_is_an_error():
    with pytest.raises(FormatError, match="cannot have 'num_output'"):
        parse_net_text('layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "a" top: "a" }')


def test_mixing_v1_and_v2_layers_is_an_error():
    with pytest.raises(FormatError, match="mixes V1 'layers' and V2 'layer'"):
        parse_net_text('layers { name: "a" type: RELU } layer { name: "b" type: "ReLU" }')


def test_v2_nets_are_returned_unchanged():
    text = 'name: "n" layer { name: "r" type: "ReLU" bottom: "x" top: "x" }'
    assert parse_net_text(text) == parse_net_text(text, upgrade=False)


@pytest.mark.parametrize("enum_name,type_name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
                                                 ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_old_solver_type_enum_becomes_the_type_string(enum_name, type_name):
    solver = parse_solver_text(f"base_lr: 0.1 solver_type: {enum_name}")
    assert solver.type == type_name and not solver.HasField("solver_type")


def test_solver_with_both_solver_type_and_type_is_an_error():
    with pytest.raises(FormatError, match="both the old solver_type enum and the type string"):
        parse_solver_text('solver_type: ADAM type: "Adam"')
