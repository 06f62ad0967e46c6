"""One test per Caffe rule matched on purpose by the standard layer ports (rll_repro/layers/*).

Nets are written inline as prototxt text and run through rll_repro.net.Net; expected values come
from the rule itself (a naive loop or a closed form), in float64. Tolerances: 1e-6 relative where
float32 arithmetic is compared with a float64 reference of a few terms; exact where no arithmetic
is involved.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rll_repro.caffe.io import parse_net_text
from rll_repro.errors import DataError, NetError
from rll_repro.layers.fillers import fan_in_out, fill
from rll_repro.layers.pooling import caffe_pooled_size
from rll_repro.net import Net


def make_net(text: str, phase: str = "train", **kwargs) -> Net:
    return Net(parse_net_text(text), phase=phase, **kwargs)


def input_layer(name: str, *shape: int) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# Pooling


@pytest.mark.parametrize(
    "size,kernel,pad,stride,expected",
    [
        (7, 5, 0, 3, 2),  # ceil((7-5)/3)+1 = 2 (floor would give 1): pool4 of the papers' nets
        (14, 5, 0, 3, 4),
        (112, 3, 0, 2, 56),  # ceil(109/2)+1 = 56 (pool1 at 224)
        (114, 3, 0, 2, 57),
        (14, 3, 1, 1, 14),  # the 3x3 s1 p1 pool-proj pools keep the size
    ],
)
def test_pooling_output_size_rounds_up(size, kernel, pad, stride, expected):
    assert caffe_pooled_size(size, kernel, pad, stride) == expected


def test_pooling_output_size_clips_a_last_window_starting_in_the_padding():
    # H=5, k=2, s=2, p=1: ceil((5+2-2)/2)+1 = 4, but window 3 would start at 3*2-1 = 5 >= H, so Caffe drops it.
    assert caffe_pooled_size(5, 2, 1, 2) == 3
    net = make_net(input_layer("a", 1, 1, 5, 5) + 'layer { name: "p" type: "Pooling" bottom: "a" top: "p" '
                   "pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }")
    assert net.blobs["p"].shape == (1, 1, 3, 3)


def _naive_ave_pool(x, k, s, p):
    n, c, h, w = x.shape
    oh, ow = caffe_pooled_size(h, k, p, s), caffe_pooled_size(w, k, p, s)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)  # counts padding inside H+pad, not beyond
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            out[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return out


@pytest.mark.parametrize("size,kernel,stride,pad", [(7, 5, 3, 0), (11, 3, 2, 1), (8, 3, 1, 1), (9, 4, 3, 2), (8, 3, 2, 2), (7, 4, 3, 3)])
def test_ave_pooling_divides_by_the_window_clipped_to_h_plus_pad(size, kernel, stride, pad):
    x = rng().standard_normal((2, 3, size, size)).astype(np.float32)
    net = make_net(input_layer("a", 2, 3, size, size) + 'layer { name: "p" type: "Pooling" bottom: "a" top: "p" '
                   f"pooling_param {{ pool: AVE kernel_size: {kernel} stride: {stride} pad: {pad} }} }}")
    out = net.forward(a=x)["p"]
    np.testing.assert_allclose(out, _naive_ave_pool(x.astype(np.float64), kernel, stride, pad), rtol=1e-6, atol=1e-6)


def _naive_max_pool(x, k, s, p):
    n, c, h, w = x.shape
    oh, ow = caffe_pooled_size(h, k, p, s), caffe_pooled_size(w, k, p, s)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = max(i * s - p, 0), max(j * s - p, 0)
            he, we = min(i * s - p + k, h), min(j * s - p + k, w)
            out[:, :, i, j] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
    return out


@pytest.mark.parametrize("size,kernel,stride,pad", [(6, 3, 2, 1), (8, 3, 2, 2), (7, 4, 3, 3)])
def test_max_pooling_ignores_padding_even_when_it_exceeds_half_the_kernel(size, kernel, stride, pad):
    x = rng().standard_normal((2, 3, size, size)).astype(np.float32)
    net = make_net(input_layer("a", 2, 3, size, size) + 'layer { name: "p" type: "Pooling" bottom: "a" top: "p" '
                   f"pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} pad: {pad} }} }}")
    np.testing.assert_array_equal(net.forward(a=x)["p"], _naive_max_pool(x, kernel, stride, pad))


def test_max_pooling_gradient_goes_to_the_first_maximum():
    x = np.zeros((1, 1, 2, 2), dtype=np.float32)  # all four tie
    net = make_net("force_backward: true\n" + input_layer("a", 1, 1, 2, 2) + 'layer { name: "p" type: "Pooling" '
                   'bottom: "a" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
    net.forward(a=x)
    diff = net.backward(p=np.ones((1, 1, 1, 1), np.float32))["a"]
    np.testing.assert_array_equal(diff.ravel(), [1, 0, 0, 0])


def test_global_pooling_uses_the_whole_plane():
    x = rng().standard_normal((2, 3, 5, 4)).astype(np.float32)
    net = make_net(input_layer("a", 2, 3, 5, 4) + 'layer { name: "p" type: "Pooling" bottom: "a" top: "p" '
                   "pooling_param { pool: AVE global_pooling: true } }")
    out = net.forward(a=x)["p"]
    assert out.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(out.ravel(), x.mean(axis=(2, 3)).ravel(), rtol=1e-6)


def test_stochastic_pooling_is_a_build_error():
    with pytest.raises(NetError, match="'p'.*MAX and AVE"):
        make_net(input_layer("a", 1, 1, 4, 4) + 'layer { name: "p" type: "Pooling" bottom: "a" top: "p" '
                 "pooling_param { pool: STOCHASTIC kernel_size: 2 } }")


# ---------------------------------------------------------------------------------------------
# BatchNorm


BN_NET = input_layer("a", 4, 3, 2, 2) + 'layer { name: "bn" type: "BatchNorm" bottom: "a" top: "b" }'


def test_batchnorm_train_normalises_with_the_biased_batch_variance():
    x = rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32)
    net = make_net(BN_NET, phase="train")
    out = net.forward(a=x)["b"]
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x64 - mu) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(out, (x64 - mu) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-6)


def test_batchnorm_running_sums_use_the_unbiased_factor_m_over_m_minus_1():
    x = rng(2).standard_normal((4, 3, 2, 2)).astype(np.float32)
    net = make_net(BN_NET, phase="train")
    mean0 = np.array([0.5, -1.0, 2.0], np.float32)
    var0 = np.array([1.0, 2.0, 3.0], np.float32)
    net.params["bn"][0].data[...] = mean0
    net.params["bn"][1].data[...] = var0
    net.params["bn"][2].data[...] = 7.0
    net.forward(a=x)
    x64 = x.astype(np.float64)
    m = 4 * 2 * 2
    mu = x64.mean(axis=(0, 2, 3))
    var = ((x64 - mu[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(net.params["bn"][0].data, 0.999 * mean0 + mu, rtol=1e-6)
    np.testing.assert_allclose(net.params["bn"][1].data, 0.999 * var0 + m / (m - 1) * var, rtol=1e-6)
    np.testing.assert_allclose(net.params["bn"][2].data, [0.999 * 7.0 + 1.0], rtol=1e-7)


def test_batchnorm_test_phase_uses_sums_divided_by_the_scale_factor():
    x = rng(3).standard_normal((4, 3, 2, 2)).astype(np.float32)
    net = make_net(BN_NET, phase="test")
    net.params["bn"][0].data[...] = [2.0, 4.0, 6.0]
    net.params["bn"][1].data[...] = [8.0, 2.0, 4.0]
    net.params["bn"][2].data[...] = 2.0
    out = net.forward(a=x)["b"]
    mu = np.array([1.0, 2.0, 3.0])[None, :, None, None]
    var = np.array([4.0, 1.0, 2.0])[None, :, None, None]
    np.testing.assert_allclose(out, (x - mu) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.params["bn"][2].data, [2.0])  # no update in TEST


def test_batchnorm_test_phase_with_zero_scale_factor_uses_zero_statistics():
    x = rng(4).standard_normal((4, 3, 2, 2)).astype(np.float32)
    net = make_net(BN_NET, phase="test")
    net.params["bn"][0].data[...] = 5.0  # ignored: 1/s is taken as 0
    out = net.forward(a=x)["b"]
    np.testing.assert_allclose(out, x / np.sqrt(1e-5), rtol=1e-5)


def test_batchnorm_use_global_stats_overrides_the_phase():
    text = input_layer("a", 4, 3, 2, 2) + ('layer { name: "bn" type: "BatchNorm" bottom: "a" top: "b" '
                                           "batch_norm_param { use_global_stats: true } }")
    net = make_net(text, phase="train")
    net.params["bn"][2].data[...] = 1.0
    net.forward(a=np.ones((4, 3, 2, 2), np.float32))
    np.testing.assert_array_equal(net.params["bn"][2].data, [1.0])


def test_batchnorm_blobs_get_no_gradient():
    net = make_net("force_backward: true\n" + BN_NET, phase="train")
    net.forward(a=rng(5).standard_normal((4, 3, 2, 2)).astype(np.float32))
    net.backward(b=np.ones((4, 3, 2, 2), np.float32))
    for blob in net.params["bn"]:
        assert not blob.diff.any()


# ---------------------------------------------------------------------------------------------
# Dropout


def test_dropout_ratio_zero_is_the_identity_in_train():
    x = rng().standard_normal((3, 5)).astype(np.float32)
    net = make_net(input_layer("a", 3, 5) + 'layer { name: "d" type: "Dropout" bottom: "a" top: "d" '
                   "dropout_param { dropout_ratio: 0.0 } }")
    np.testing.assert_array_equal(net.forward(a=x)["d"], x)


def test_dropout_scales_kept_units_by_one_over_one_minus_ratio_in_train_only():
    x = np.ones((200, 50), np.float32)
    text = input_layer("a", 200, 50) + 'layer { name: "d" type: "Dropout" bottom: "a" top: "d" dropout_param { dropout_ratio: 0.75 } }'
    out = make_net(text, phase="train", seed=1).forward(a=x)["d"]
    assert set(np.unique(out)) == {0.0, 4.0}
    assert abs((out > 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(make_net(text, phase="test").forward(a=x)["d"], x)


# ---------------------------------------------------------------------------------------------
# Fillers


def test_fan_rules_are_count_over_num_and_count_over_channels():
    assert fan_in_out((64, 3, 7, 7)) == (3 * 49, 64 * 49)
    assert fan_in_out((10, 20)) == (20, 10)
    assert fan_in_out((5,)) == (1, 5)


def _filler(**fields):
    from rll_repro.caffe import caffe_pb2

    return caffe_pb2.FillerParameter(**fields)


def test_xavier_is_uniform_within_sqrt_3_over_fan_in():
    w = fill(_filler(type="xavier"), (256, 64, 3, 3), torch.Generator().manual_seed(0)).numpy()
    bound = math.sqrt(3.0 / (64 * 9))
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    assert abs(w.var() - bound**2 / 3) < 0.02 * bound**2 / 3


def test_xavier_variance_norm_average_uses_the_mean_fan():
    w = fill(_filler(type="xavier", variance_norm=2), (100, 300), torch.Generator().manual_seed(0)).numpy()
    bound = math.sqrt(3.0 / ((300 + 100) / 2))
    assert bound * 0.99 < np.abs(w).max() <= bound


def test_msra_is_gaussian_with_std_sqrt_2_over_fan():
    w = fill(_filler(type="msra", variance_norm=1), (128, 64, 3, 3), torch.Generator().manual_seed(0)).numpy()
    assert abs(w.std() - math.sqrt(2.0 / (128 * 9))) < 0.01 * math.sqrt(2.0 / (128 * 9))


def test_constant_uniform_gaussian_and_positive_unitball_fillers():
    g = torch.Generator().manual_seed(0)
    assert (fill(_filler(type="constant", value=0.25), (3, 4), g).numpy() == 0.25).all()
    u = fill(_filler(type="uniform", min=-2, max=-1), (1000,), g).numpy()
    assert u.min() >= -2 and u.max() < -1
    n = fill(_filler(type="gaussian", mean=3, std=0.5), (20000,), g).numpy()
    assert abs(n.mean() - 3) < 0.02 and abs(n.std() - 0.5) < 0.02
    b = fill(_filler(type="positive_unitball"), (4, 3, 2), g).numpy()
    np.testing.assert_allclose(b.reshape(4, -1).sum(axis=1), 1.0, rtol=1e-6)
    assert (b >= 0).all()


def test_fillers_are_seeded_by_the_net_seed():
    text = input_layer("a", 2, 8) + ('layer { name: "fc" type: "InnerProduct" bottom: "a" top: "fc" '
                                     'inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }')
    a, b, c = (make_net(text, seed=s).params["fc"][0].data.copy() for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_filler_is_a_build_error():
    text = input_layer("a", 2, 8) + ('layer { name: "fc" type: "InnerProduct" bottom: "a" top: "fc" '
                                     'inner_product_param { num_output: 4 weight_filler { type: "nope" } } }')
    with pytest.raises(NetError, match="'fc'.*unknown filler type 'nope'"):
        make_net(text)


# ---------------------------------------------------------------------------------------------
# InnerProduct, Scale, ReLU, Eltwise, Concat, Slice, Reshape, Flatten


def test_inner_product_flattens_from_axis_and_transpose_stores_k_by_n():
    x = rng().standard_normal((2, 3, 4)).astype(np.float32)
    text = input_layer("a", 2, 3, 4) + ('layer { name: "fc" type: "InnerProduct" bottom: "a" top: "fc" '
                                        "inner_product_param { num_output: 5 axis: 2 transpose: true bias_term: false } }")
    net = make_net(text)
    w = rng(1).standard_normal((4, 5)).astype(np.float32)
    net.params["fc"][0].data[...] = w
    out = net.forward(a=x)["fc"]
    assert out.shape == (2, 3, 5)
    np.testing.assert_allclose(out, x @ w, rtol=1e-5, atol=1e-6)


def test_scale_broadcasts_over_axis_and_num_axes():
    x = rng().standard_normal((2, 3, 4, 5)).astype(np.float32)
    text = input_layer("a", 2, 3, 4, 5) + ('layer { name: "sc" type: "Scale" bottom: "a" top: "s" '
                                           "scale_param { axis: 1 num_axes: 2 bias_term: true } }")
    net = make_net(text)
    assert net.params["sc"][0].shape == (3, 4)
    np.testing.assert_array_equal(net.params["sc"][0].data, 1.0)  # default filler constant 1
    gamma = rng(1).standard_normal((3, 4)).astype(np.float32)
    beta = rng(2).standard_normal((3, 4)).astype(np.float32)
    net.params["sc"][0].data[...] = gamma
    net.params["sc"][1].data[...] = beta
    out = net.forward(a=x)["s"]
    np.testing.assert_allclose(out, x * gamma[:, :, None] + beta[:, :, None], rtol=1e-6, atol=1e-6)


def test_scale_with_two_bottoms_takes_the_scale_from_bottom_1():
    x = rng().standard_normal((2, 3, 4)).astype(np.float32)
    s = rng(1).standard_normal((2, 3)).astype(np.float32)
    text = input_layer("a", 2, 3, 4) + input_layer("s", 2, 3) + (
        'layer { name: "sc" type: "Scale" bottom: "a" bottom: "s" top: "o" scale_param { axis: 0 } }')
    out = make_net(text).forward(a=x, s=s)["o"]
    np.testing.assert_allclose(out, x * s[:, :, None], rtol=1e-6)


def test_leaky_relu_gradient_is_the_slope_at_and_below_zero():
    x = np.array([[-2.0, 0.0, 3.0]], np.float32)
    text = "force_backward: true\n" + input_layer("a", 1, 3) + (
        'layer { name: "r" type: "ReLU" bottom: "a" top: "r" relu_param { negative_slope: 0.1 } }')
    net = make_net(text)
    np.testing.assert_allclose(net.forward(a=x)["r"], [[-0.2, 0.0, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(net.backward(r=np.ones((1, 3), np.float32))["a"], [[0.1, 0.1, 1.0]], rtol=1e-6)


def test_eltwise_max_ties_go_to_the_first_bottom():
    a = np.array([[1.0, 2.0, 3.0]], np.float32)
    b = np.array([[1.0, 5.0, 0.0]], np.float32)
    text = "force_backward: true\n" + input_layer("a", 1, 3) + input_layer("b", 1, 3) + (
        'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" eltwise_param { operation: MAX } }')
    net = make_net(text)
    np.testing.assert_array_equal(net.forward(a=a, b=b)["e"], [[1.0, 5.0, 3.0]])
    diffs = net.backward(e=np.ones((1, 3), np.float32))
    np.testing.assert_array_equal(diffs["a"], [[1, 0, 1]])
    np.testing.assert_array_equal(diffs["b"], [[0, 1, 0]])


def test_batch_pool_max_takes_the_first_sample_holding_the_maximum():
    """OSM SPEC §2.7: MAX over the batch axis with Caffe's strict '>' scan, so among equal values
    the lowest sample index wins and alone receives the gradient."""
    x = np.array([[[1.0, 7.0, 2.0]], [[4.0, 7.0, 2.0]], [[4.0, 0.0, 9.0]]], np.float32)  # N=3, 1x3
    text = "force_backward: true\n" + input_layer("x", 3, 1, 3) + (
        'layer { name: "bp" type: "BatchPool" bottom: "x" top: "bp" batch_pool_param { pool: MAX } }')
    net = make_net(text)
    np.testing.assert_array_equal(net.forward(x=x)["bp"], [[[4.0, 7.0, 9.0]]])
    diff = net.backward(bp=np.ones((1, 1, 3), np.float32))["x"]
    np.testing.assert_array_equal(diff[:, 0], [[0, 1, 0], [1, 0, 0], [0, 0, 1]])


def test_accuracy_per_class_is_hits_over_count_and_zero_for_absent_classes():
    """Caffe's AccuracyLayer second top: per class, correct / count; 0 for a class not in the batch."""
    scores = np.array([[3, 1, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0], [2, 1, 0, 0]], np.float32)
    labels = np.array([0, 1, 1, 0], np.float32)  # sample 2 (label 1) is wrong; class 2 and 3 absent
    text = input_layer("s", 4, 4) + input_layer("l", 4) + (
        'layer { name: "acc" type: "Accuracy" bottom: "s" bottom: "l" top: "acc" top: "per_class" }')
    out = make_net(text, phase="test").forward(s=scores, l=labels)
    assert float(out["acc"]) == 0.75
    np.testing.assert_array_equal(out["per_class"], [1.0, 0.5, 0.0, 0.0])


def test_eltwise_sum_coefficients_scale_values_and_gradients():
    a, b = rng().standard_normal((2, 2, 3)).astype(np.float32)
    text = "force_backward: true\n" + input_layer("a", 2, 3) + input_layer("b", 2, 3) + (
        'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" '
        "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }")
    net = make_net(text)
    np.testing.assert_allclose(net.forward(a=a, b=b)["e"], 0.5 * a - 2 * b, rtol=1e-6)
    diffs = net.backward(e=np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(diffs["a"], 0.5)
    np.testing.assert_array_equal(diffs["b"], -2.0)


def test_eltwise_with_mismatched_shapes_is_a_build_error():
    text = input_layer("a", 2, 3) + input_layer("b", 2, 4) + (
        'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" }')
    with pytest.raises(NetError, match="'e'.*shapes differ"):
        make_net(text)


def test_concat_checks_the_other_axes():
    text = input_layer("a", 2, 3, 4) + input_layer("b", 2, 5, 5) + (
        'layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }')
    with pytest.raises(NetError, match="'c'.*differ outside the concat axis"):
        make_net(text)


def test_slice_at_slice_points_and_into_equal_parts():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    text = input_layer("a", 2, 6) + (
        'layer { name: "s" type: "Slice" bottom: "a" top: "p" top: "q" slice_param { axis: 1 slice_point: 2 } }'
        'layer { name: "t" type: "Slice" bottom: "a" top: "u" top: "v" top: "w" }')
    out = make_net(text).forward(a=x)
    np.testing.assert_array_equal(out["p"], x[:, :2])
    np.testing.assert_array_equal(out["q"], x[:, 2:])
    np.testing.assert_array_equal(out["w"], x[:, 4:])


def test_reshape_copies_zero_dims_and_infers_minus_one():
    text = input_layer("a", 2, 3, 4) + (
        'layer { name: "r" type: "Reshape" bottom: "a" top: "r" reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }'
        'layer { name: "s" type: "Reshape" bottom: "a" top: "s" reshape_param { shape { dim: 6 } axis: 0 num_axes: 2 } }')
    net = make_net(text)
    assert net.blobs["r"].shape == (2, 6, 2)
    assert net.blobs["s"].shape == (6, 4)


def test_reshape_that_changes_the_count_is_a_build_error():
    text = input_layer("a", 2, 3) + 'layer { name: "r" type: "Reshape" bottom: "a" top: "r" reshape_param { shape { dim: 5 } } }'
    with pytest.raises(NetError, match="'r'.*cannot reshape"):
        make_net(text)


def test_flatten_merges_axis_to_end_axis():
    text = input_layer("a", 2, 3, 4, 5) + (
        'layer { name: "f" type: "Flatten" bottom: "a" top: "f" flatten_param { axis: 1 end_axis: 2 } }')
    assert make_net(text).blobs["f"].shape == (2, 12, 5)


# ---------------------------------------------------------------------------------------------
# Softmax, SoftmaxWithLoss, Accuracy


def _softmax_loss_net(extra: str = "", n=4, c=3) -> str:
    return input_layer("x", n, c) + input_layer("label", n) + (
        f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" {extra} }}')


@pytest.mark.parametrize(
    "extra,divisor",
    [
        ("", 3),  # VALID: non-ignored count
        ("loss_param { normalization: FULL }", 4),
        ("loss_param { normalization: BATCH_SIZE }", 4),
        ("loss_param { normalization: NONE }", 1),
        ("loss_param { normalize: false }", 4),  # legacy normalize false = BATCH_SIZE
    ],
)
def test_softmax_loss_normalization_modes_with_ignore_label(extra, divisor):
    if extra:
        extra = extra.replace("loss_param {", "loss_param { ignore_label: 2")
    else:
        extra = "loss_param { ignore_label: 2 }"
    x = rng().standard_normal((4, 3)).astype(np.float32)
    label = np.array([0, 1, 2, 1], np.float32)
    net = make_net("force_backward: true\n" + _softmax_loss_net(extra))
    net.forward(x=x, label=label)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    valid = label != 2
    expected = -np.log(p[np.arange(4), label.astype(int)])[valid].sum() / divisor
    np.testing.assert_allclose(net.blobs["loss"].data, expected, rtol=1e-6)
    grad = net.backward()["x"]
    onehot = np.eye(3)[label.astype(int)]
    np.testing.assert_allclose(grad, (p - onehot) * valid[:, None] / divisor, rtol=1e-5, atol=1e-7)


def test_softmax_loss_with_label_out_of_range_is_a_data_error():
    net = make_net(_softmax_loss_net())
    with pytest.raises(DataError, match="'loss'.*label 5"):
        net.forward(x=np.zeros((4, 3), np.float32), label=np.array([0, 1, 5, 1], np.float32))


def test_accuracy_top_k_counts_ties_against_the_true_class():
    x = np.array([[0.5, 0.5, 0.1], [0.1, 0.9, 0.3], [0.2, 0.3, 0.9]], np.float32)
    label = np.array([0, 2, 1], np.float32)
    text = input_layer("x", 3, 3) + input_layer("label", 3) + (
        'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" accuracy_param { top_k: 1 } }'
        'layer { name: "acc2" type: "Accuracy" bottom: "x" bottom: "label" top: "acc2" accuracy_param { top_k: 2 } }')
    out = make_net(text).forward(x=x, label=label)
    assert float(out["acc"]) == 0.0  # sample 0 ties with class 1: a tie counts as a better prediction
    np.testing.assert_allclose(float(out["acc2"]), 1.0)


# ---------------------------------------------------------------------------------------------
# LRN, BatchPool, Input


def test_lrn_within_channel_ignores_k():
    x = rng().standard_normal((1, 2, 5, 5)).astype(np.float32)
    base = input_layer("a", 1, 2, 5, 5) + (
        'layer { name: "l" type: "LRN" bottom: "a" top: "l" '
        "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL K } }")
    out1 = make_net(base.replace("K", "k: 1")).forward(a=x)["l"]
    out7 = make_net(base.replace("K", "k: 7")).forward(a=x)["l"]
    np.testing.assert_array_equal(out1, out7)


def test_lrn_across_channels_formula():
    x = rng().standard_normal((1, 5, 2, 2)).astype(np.float32)
    text = input_layer("a", 1, 5, 2, 2) + 'layer { name: "l" type: "LRN" bottom: "a" top: "l" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: 2 } }'
    out = make_net(text).forward(a=x)["l"]
    x64 = x.astype(np.float64)
    sq = np.pad(x64**2, ((0, 0), (1, 1), (0, 0), (0, 0)))
    scale = 2 + 0.3 / 3 * (sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:])
    np.testing.assert_allclose(out, x64 * scale**-0.75, rtol=1e-6)


def test_batch_pool_weighted_sum_and_gradients():
    x = rng().standard_normal((3, 4)).astype(np.float32)
    w = np.array([0.2, 0.3, 0.5], np.float32)
    text = "force_backward: true\n" + input_layer("x", 3, 4) + input_layer("w", 3) + (
        'layer { name: "bp" type: "BatchPool" bottom: "x" bottom: "w" top: "y" }')
    net = make_net(text)
    y = net.forward(x=x, w=w)["y"]
    np.testing.assert_allclose(y, (w[:, None] * x).sum(0, keepdims=True), rtol=1e-6)
    g = rng(1).standard_normal((1, 4)).astype(np.float32)
    diffs = net.backward(y=g)
    np.testing.assert_allclose(diffs["x"], w[:, None] * g, rtol=1e-6)
    np.testing.assert_allclose(diffs["w"], (x * g).sum(1), rtol=1e-5)


def test_batch_pool_max_routes_to_the_first_maximum():
    x = np.array([[1.0, 4.0], [3.0, 4.0], [3.0, 0.0]], np.float32)
    text = "force_backward: true\n" + input_layer("x", 3, 2) + (
        'layer { name: "bp" type: "BatchPool" bottom: "x" top: "y" batch_pool_param { pool: MAX } }')
    net = make_net(text)
    np.testing.assert_array_equal(net.forward(x=x)["y"], [[3.0, 4.0]])
    np.testing.assert_array_equal(net.backward(y=np.ones((1, 2), np.float32))["x"], [[0, 1], [1, 0], [0, 0]])


def test_input_layer_shares_one_shape_among_tops():
    text = 'layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }'
    net = make_net(text)
    assert net.inputs == ["a", "b"]
    assert net.blobs["b"].shape == (2, 3)


def test_scale_rounds_the_product_before_adding_the_bias():
    # Caffe computes x·γ (rounded to float32), then adds β; a fused multiply-add differs in the last bit
    # for about a third of the values here, which is enough to move a chaotic training run.
    r = rng(9)
    x = r.standard_normal((16, 8, 8, 8)).astype(np.float32)
    gamma, beta = r.standard_normal((2, 8)).astype(np.float32)
    net = make_net(input_layer("a", 16, 8, 8, 8) + 'layer { name: "sc" type: "Scale" bottom: "a" top: "s" scale_param { bias_term: true } }')
    net.params["sc"][0].data[...] = gamma
    net.params["sc"][1].data[...] = beta
    out = net.forward(a=x)["s"]
    expected = (x * gamma[:, None, None]).astype(np.float32) + beta[:, None, None]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 7)])
def test_scale_backward_is_dy_times_gamma_and_the_sums_for_gamma_and_beta(shape):
    r = rng(10)
    x = r.standard_normal(shape).astype(np.float32)
    g = r.standard_normal(shape).astype(np.float32)
    gamma, beta = r.standard_normal((2, shape[1])).astype(np.float32)
    net = make_net("force_backward: true\n" + input_layer("a", *shape) + (
        'layer { name: "sc" type: "Scale" bottom: "a" top: "s" scale_param { bias_term: true } }'))
    net.params["sc"][0].data[...] = gamma
    net.params["sc"][1].data[...] = beta
    net.forward(a=x)
    diff = net.backward(s=g)["a"]
    view = (-1,) + (1,) * (len(shape) - 2)
    np.testing.assert_array_equal(diff, g * gamma.reshape(view))  # Caffe's caffe_mul, bit for bit
    axes = tuple(i for i in range(len(shape)) if i != 1)
    np.testing.assert_allclose(net.params["sc"][0].diff, (g.astype(np.float64) * x).sum(axes), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["sc"][1].diff, g.astype(np.float64).sum(axes), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# less common standard layers


@pytest.mark.parametrize(
    "layer,param,fn",
    [
        ("ELU", "elu_param { alpha: 0.5 }", lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
        ("BNLL", "", lambda x: np.where(x > 0, x + np.log1p(np.exp(-x)), np.log1p(np.exp(x)))),
        ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", lambda x: 2.0 ** (1 + 0.5 * x)),
        ("Log", "log_param { base: 10 scale: 2 shift: 5 }", lambda x: np.log10(5 + 2 * x)),
        ("Threshold", "threshold_param { threshold: 0.3 }", lambda x: (x > 0.3).astype(np.float64)),
        ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }", lambda x: (1 + 0.5 * x) ** 2),
        ("AbsVal", "", np.abs),
        ("TanH", "", np.tanh),
        ("Sigmoid", "", lambda x: 1 / (1 + np.exp(-x))),
    ],
)
def test_neuron_layer_formulas(layer, param, fn):
    x = rng(11).uniform(-2, 2, (3, 4)).astype(np.float32)
    net = make_net(input_layer("a", 3, 4) + f'layer {{ name: "n" type: "{layer}" bottom: "a" top: "y" {param} }}')
    np.testing.assert_allclose(net.forward(a=x)["y"], fn(x.astype(np.float64)), rtol=2e-6, atol=1e-6)


def test_prelu_slopes_per_channel_and_their_gradient():
    x = np.array([[[-2.0, 3.0]], [[0.0, -1.0]]], np.float32).transpose(1, 0, 2)  # (1, 2, 2)
    net = make_net("force_backward: true\n" + input_layer("a", 1, 2, 2) + 'layer { name: "p" type: "PReLU" bottom: "a" top: "y" }')
    np.testing.assert_array_equal(net.params["p"][0].data, [0.25, 0.25])
    net.params["p"][0].data[...] = [0.1, 0.5]
    y = net.forward(a=x)["y"]
    np.testing.assert_allclose(y, [[[-0.2, 3.0], [0.0, -0.5]]], rtol=1e-6)
    diffs = net.backward(y=np.ones((1, 2, 2), np.float32))
    np.testing.assert_allclose(diffs["a"], [[[0.1, 1.0], [0.5, 0.5]]], rtol=1e-6)  # slope at x = 0 too
    np.testing.assert_allclose(net.params["p"][0].diff, [-2.0, -1.0], rtol=1e-6)


def test_euclidean_loss_value_and_gradients():
    a, b = rng(12).standard_normal((2, 3, 4)).astype(np.float32)
    net = make_net("force_backward: true\n" + input_layer("a", 3, 4) + input_layer("b", 3, 4)
                   + 'layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }')
    net.forward(a=a, b=b)
    np.testing.assert_allclose(net.blobs["l"].data, ((a - b) ** 2).sum() / 3 / 2, rtol=1e-6)
    diffs = net.backward()
    np.testing.assert_allclose(diffs["a"], (a - b) / 3, rtol=1e-5)
    np.testing.assert_allclose(diffs["b"], -(a - b) / 3, rtol=1e-5)


def test_reduction_operations_from_axis():
    x = rng(13).standard_normal((2, 3, 4)).astype(np.float32)
    for op, fn in [("SUM", np.sum), ("ASUM", lambda v, axis: np.abs(v).sum(axis)),
                   ("SUMSQ", lambda v, axis: (v * v).sum(axis)), ("MEAN", np.mean)]:
        net = make_net(input_layer("a", 2, 3, 4) + f'layer {{ name: "r" type: "Reduction" bottom: "a" top: "r" reduction_param {{ operation: {op} axis: 1 coeff: 2 }} }}')
        np.testing.assert_allclose(net.forward(a=x)["r"], 2 * fn(x.astype(np.float64), axis=(1, 2)), rtol=1e-6)


def test_tile_repeats_the_block_from_axis():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net = make_net(input_layer("a", 2, 3) + 'layer { name: "t" type: "Tile" bottom: "a" top: "t" tile_param { axis: 1 tiles: 2 } }')
    np.testing.assert_array_equal(net.forward(a=x)["t"], np.tile(x, (1, 2)))


def test_deconvolution_is_the_transposed_convolution_with_caffe_output_size():
    x = rng(14).standard_normal((1, 2, 3, 3)).astype(np.float32)
    net = make_net(input_layer("a", 1, 2, 3, 3) + (
        'layer { name: "d" type: "Deconvolution" bottom: "a" top: "d" '
        'convolution_param { num_output: 1 kernel_size: 3 stride: 2 pad: 1 bias_term: false weight_filler { type: "gaussian" } } }'))
    w = net.params["d"][0].data
    assert w.shape == (2, 1, 3, 3)
    out = net.forward(a=x)["d"]
    assert out.shape == (1, 1, 5, 5)  # 2·(3−1) + 3 − 2·1
    full = np.zeros((7, 7))
    for c in range(2):
        for i in range(3):
            for j in range(3):
                full[2 * i:2 * i + 3, 2 * j:2 * j + 3] += x[0, c, i, j] * w[c, 0]
    np.testing.assert_allclose(out[0, 0], full[1:6, 1:6], rtol=1e-5, atol=1e-6)


def test_argmax_breaks_ties_toward_the_larger_index():
    x = np.array([[1.0, 3.0, 3.0, 0.5]], np.float32)
    net = make_net(input_layer("a", 1, 4) + 'layer { name: "m" type: "ArgMax" bottom: "a" top: "m" argmax_param { top_k: 3 out_max_val: true } }')
    np.testing.assert_array_equal(net.forward(a=x)["m"], [[[2, 1, 0], [3, 3, 1]]])


@pytest.mark.parametrize("dims, out_max_val, expected", [
    ((2, 3, 2, 2), False, (2, 1, 2, 1)),      # 4-D bottom: (N, 1, top_k, 1)
    ((2, 3, 2, 2), True, (2, 2, 2, 1)),       # (N, 2, top_k, 1): indices then values
    ((2, 3, 2, 1, 2), True, (2, 2, 2, 1, 1)),
    ((2, 12), False, (2, 1, 2)),              # fewer than 3 axes: still 3
])
def test_argmax_without_axis_keeps_the_bottoms_axis_count(dims, out_max_val, expected):
    # ArgMaxLayer::Reshape: the top has max(num_axes, 3) axes, all 1 but N, 1|2 and top_k (axes 0-2).
    x = np.random.default_rng(3).permutation(np.prod(dims)).astype(np.float32).reshape(dims)
    flag = "true" if out_max_val else "false"
    net = make_net(input_layer("a", *dims) + 'layer { name: "m" type: "ArgMax" bottom: "a" top: "m" '
                   f'argmax_param {{ top_k: 2 out_max_val: {flag} }} }}')
    assert net.blobs["m"].data.shape == expected
    out = net.forward(a=x)["m"]
    assert out.shape == expected
    flat = x.reshape(dims[0], -1)
    top2 = np.argsort(-flat, axis=1)[:, :2]  # distinct values: no ties
    np.testing.assert_array_equal(out[:, 0].reshape(dims[0], 2), top2)
    if out_max_val:
        np.testing.assert_array_equal(out[:, 1].reshape(dims[0], 2), np.take_along_axis(flat, top2, 1))


def test_crop_takes_the_reference_shape_from_the_offsets():
    x = np.arange(2 * 5 * 6, dtype=np.float32).reshape(1, 2, 5, 6)
    text = "force_backward: true\n" + input_layer("a", 1, 2, 5, 6) + input_layer("r", 1, 2, 3, 3) + (
        'layer { name: "c" type: "Crop" bottom: "a" bottom: "r" top: "c" crop_param { axis: 2 offset: 1 offset: 2 } }')
    net = make_net(text)
    np.testing.assert_array_equal(net.forward(a=x, r=np.zeros((1, 2, 3, 3), np.float32))["c"], x[:, :, 1:4, 2:5])
    diff = net.backward(c=np.ones((1, 2, 3, 3), np.float32))["a"]
    assert diff.sum() == 18 and diff[0, 0, 1, 2] == 1 and diff[0, 0, 0, 0] == 0


def test_mvn_adds_eps_to_the_standard_deviation():
    x = rng(15).standard_normal((2, 3, 4, 4)).astype(np.float32)
    net = make_net(input_layer("a", 2, 3, 4, 4) + 'layer { name: "m" type: "MVN" bottom: "a" top: "m" mvn_param { eps: 0.5 } }')
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(2, 3), keepdims=True)
    std = np.sqrt((x64**2).mean(axis=(2, 3), keepdims=True) - mean**2)
    np.testing.assert_allclose(net.forward(a=x)["m"], (x64 - mean) / (std + 0.5), rtol=1e-5, atol=1e-6)
