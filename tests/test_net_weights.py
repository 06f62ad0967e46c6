"""Net.copy_from / Net.save follow Caffe's CopyTrainedLayersFrom / ToProto.

Weights are compared bit for bit: copying and saving involve no arithmetic.
"""
from __future__ import annotations

import numpy as np
import pytest

from rll_repro.caffe import caffe_pb2
from rll_repro.caffe.io import parse_net_text, read_caffemodel, write_caffemodel
from rll_repro.caffe.weights import array_to_blob, blob_to_array
from rll_repro.errors import NetError
from rll_repro.net import Net

TEXT = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "fc2" type: "InnerProduct" bottom: "h" top: "y" inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
"""


def make_net(seed=0):
    return Net(parse_net_text(TEXT), seed=seed)


def model_with(layers: dict) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    for name, arrays in layers.items():
        layer = net.layer.add(name=name, type="InnerProduct")
        for array in arrays:
            layer.blobs.add().CopyFrom(array_to_blob(np.asarray(array, np.float32)))
    return net


def test_copy_from_copies_by_layer_name_and_keeps_fillers_of_absent_layers(tmp_path):
    net = make_net()
    before = net.params["fc2"][0].data.copy()
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, model_with({"fc1": [w, np.ones(4)], "unrelated": [np.zeros(3)]}))
    net.copy_from(path)
    np.testing.assert_array_equal(net.params["fc1"][0].data, w)
    np.testing.assert_array_equal(net.params["fc1"][1].data, 1.0)
    np.testing.assert_array_equal(net.params["fc2"][0].data, before)


def test_copy_from_shape_mismatch_names_the_layer_and_both_shapes(tmp_path):
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, model_with({"fc1": [np.zeros((4, 5)), np.zeros(4)]}))
    with pytest.raises(NetError) as info:
        make_net().copy_from(path)
    message = str(info.value)
    assert "'fc1'" in message and "(4, 5)" in message and "(4, 3)" in message


def test_copy_from_blob_count_mismatch_is_an_error():
    with pytest.raises(NetError, match="'fc1' has 1 blobs"):
        make_net().copy_from(model_with({"fc1": [np.zeros((4, 3))]}))


def test_copy_from_accepts_legacy_4d_blobs_with_the_same_shape_padded():
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    model = model_with({"fc1": [w, np.ones(4)]})
    for blob, legacy in zip(model.layer[0].blobs, [(1, 1, 4, 3), (1, 1, 1, 4)]):
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = legacy
    net = make_net()
    net.copy_from(model)
    np.testing.assert_array_equal(net.params["fc1"][0].data, w)
    bad = model_with({"fc1": [w, np.ones(4)]})
    bad.layer[0].blobs[0].ClearField("shape")
    bad.layer[0].blobs[0].num, bad.layer[0].blobs[0].channels = 3, 4  # same count, other shape
    bad.layer[0].blobs[0].height = bad.layer[0].blobs[0].width = 1
    with pytest.raises(NetError, match="'fc1'"):
        net.copy_from(bad)


def test_weights_argument_and_save_round_trip(tmp_path):
    a = make_net(seed=1)
    path = tmp_path / "a.caffemodel"
    a.save(path)
    b = Net(parse_net_text(TEXT), weights=path, seed=2)
    for layer in ("fc1", "fc2"):
        for pa, pb in zip(a.params[layer], b.params[layer]):
            np.testing.assert_array_equal(pa.data, pb.data)


def test_bn_inception_caffemodel_round_trip_is_byte_identical_in_the_blobs(shared, tmp_path):
    case = shared("oracle", "rll", "net_sop_train")
    net = Net(case / "net.prototxt", weights=case / "weights.caffemodel")
    out = tmp_path / "round.caffemodel"
    net.save(out)
    source = {layer.name: layer for layer in read_caffemodel(case / "weights.caffemodel").layer if len(layer.blobs)}
    saved = {layer.name: layer for layer in read_caffemodel(out).layer if len(layer.blobs)}
    assert set(saved) == set(source)
    for name, layer in source.items():
        for i, (s, t) in enumerate(zip(layer.blobs, saved[name].blobs)):
            a, b = blob_to_array(s), blob_to_array(t)
            assert a.shape == b.shape, (name, i)
            assert a.tobytes() == b.tobytes(), (name, i)
