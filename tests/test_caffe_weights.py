"""Blob <-> numpy conversions follow Caffe's Blob::FromProto / ToProto."""
from __future__ import annotations

import numpy as np
import pytest

from rll_repro.caffe import caffe_pb2
from rll_repro.caffe.weights import array_to_blob, blob_shape, blob_to_array, net_shape, weights_from_net
from rll_repro.errors import FormatError


def test_shape_dims_give_the_array_shape():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend(range(6))
    array = blob_to_array(blob)
    assert array.shape == (2, 3) and array.dtype == np.float32 and array[1, 2] == 5


def test_legacy_num_channels_height_width_give_a_4d_array():
    """Blob::FromProto: any of num/channels/height/width set -> 4-D legacy shape."""
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3)
    blob.data.extend(range(6))
    assert blob_to_array(blob).shape == (1, 1, 2, 3)


def test_double_data_is_read_as_float64():
    """Caffe reads double_data when it is present (Blob::FromProto)."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.append(2)
    blob.double_data.extend([0.1, 1e300])
    array = blob_to_array(blob)
    assert array.dtype == np.float64 and array[1] == 1e300


def test_scalar_blob_has_no_shape_field_like_caffe():
    """Blob::ToProto adds no shape dims for a 0-axis blob; reading gives a 0-d array (count 1)."""
    blob = array_to_blob(np.float32(2.5))
    assert not blob.HasField("shape") and blob_to_array(blob).shape == ()


def test_value_count_must_match_the_shape():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend(range(5))
    with pytest.raises(FormatError, match=r"has 5 values but its shape \[2, 3\] needs 6"):
        blob_to_array(blob, "layer 'fc' blob 0")


def test_array_to_blob_round_trips_float32_exactly():
    array = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(np.float32)
    blob = array_to_blob(array)
    assert list(blob.shape.dim) == [3, 4, 5] and np.array_equal(blob_to_array(blob), array)


def test_array_to_blob_rounds_float64_to_float32_unless_double():
    array = np.array([0.1, 1 / 3])
    assert blob_to_array(array_to_blob(array)).dtype == np.float32
    assert np.array_equal(blob_to_array(array_to_blob(array, double=True)), array)


def test_legacy_shape_writing_pads_with_leading_ones():
    blob = array_to_blob(np.zeros((5, 7)), legacy_shape=True)
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 5, 7)
    assert blob_shape(blob) == (1, 1, 5, 7)


@pytest.mark.parametrize("layer_type,index,legacy,expected", [
    ("InnerProduct", 0, (1, 1, 500, 800), (500, 800)),
    ("InnerProduct", 1, (1, 1, 1, 500), (500,)),
    ("Convolution", 0, (20, 1, 5, 5), (20, 1, 5, 5)),
    ("Convolution", 1, (1, 1, 1, 20), (20,)),
    ("Convolution", 0, (1, 1, 5, 5), (1, 1, 5, 5)),
    ("BatchNorm", 2, (1, 1, 1, 1), (1,)),
])
def test_legacy_shapes_map_like_caffes_shape_check(layer_type, index, legacy, expected):
    assert net_shape(layer_type, index, legacy) == expected


def test_weights_from_net_keeps_layer_order_and_skips_layers_without_blobs():
    net = caffe_pb2.NetParameter()
    net.layer.add(name="data", type="Input")
    for name in ("b", "a"):
        net.layer.add(name=name, type="InnerProduct").blobs.add().CopyFrom(array_to_blob(np.ones((2, 2))))
    assert list(weights_from_net(net)) == ["b", "a"]


def test_large_blob_converts_without_python_loops():
    """11M values (BN-Inception size) convert through raw bytes; checks values, not time."""
    array = np.arange(2_000_000, dtype=np.float32).reshape(1000, 2000)
    assert np.array_equal(blob_to_array(array_to_blob(array)), array)
