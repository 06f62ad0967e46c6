"""1x1 convolutions' backward as matrix products on channels_last float32 CPU tensors
(rll_repro/layers/pointwise_conv.py): the forward is oneDNN's convolution unchanged (bit for bit);
the gradients are held to a float64 convolution within 1e-6 of each array's largest value (float32
products of length C or N·H·W in another order), with and without bias, for channel-slice
gradients, and only where it applies (stride 1, pad 0, one group, channels_last CPU float32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rll_repro.layers import pointwise_conv


def _tensors(n=4, c=24, h=9, w=7, out=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out, c, 1, 1, generator=g).contiguous(memory_format=torch.channels_last)
    return x, weight, torch.randn(out, generator=g)


def _relative(a, b):
    return float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("with_bias", [True, False])
def test_gradients_agree_with_a_float64_convolution(with_bias):
    x, weight, bias = _tensors()
    bias = bias if with_bias else None
    leaves = [t.requires_grad_(True) for t in (x, weight) + ((bias,) if with_bias else ())]
    y = pointwise_conv.PointwiseConvolution.apply(x, weight, bias)
    assert torch.equal(y, F.conv2d(x.detach(), weight.detach(), None if bias is None else bias.detach()))
    wide = torch.randn(4, 40, 9, 7).contiguous(memory_format=torch.channels_last)[:, 8:24]  # a Concat's slice
    y.backward(wide)
    exact = [t.detach().double().requires_grad_(True) for t in leaves]
    F.conv2d(exact[0], exact[1], exact[2] if with_bias else None).backward(wide.double())
    for ours, ref in zip(leaves, exact):
        assert ours.grad.shape == ref.grad.shape
        assert _relative(ours.grad, ref.grad) <= 1e-6
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_applies_only_to_pointwise_channels_last_cpu_float32_with_a_gradient():
    x, weight, _ = _tensors()
    x.requires_grad_(True)
    assert pointwise_conv.applies(x, weight, (1, 1), (0, 0), 1)
    assert not pointwise_conv.applies(x, weight, (2, 2), (0, 0), 1)
    assert not pointwise_conv.applies(x, weight, (1, 1), (1, 1), 1)
    assert not pointwise_conv.applies(x, weight, (1, 1), (0, 0), 2)
    assert not pointwise_conv.applies(x.contiguous(), weight, (1, 1), (0, 0), 1)  # NCHW
    assert not pointwise_conv.applies(x.double(), weight.double(), (1, 1), (0, 0), 1)
    assert not pointwise_conv.applies(x, torch.randn(16, 24, 3, 3), (1, 1), (0, 0), 1)
    with torch.no_grad():
        assert not pointwise_conv.applies(x, weight, (1, 1), (0, 0), 1)
    meta = torch.empty(x.shape, device="meta", requires_grad=True).contiguous(memory_format=torch.channels_last)
    assert not pointwise_conv.applies(meta, weight, (1, 1), (0, 0), 1)


# -- sibling 1x1 convolutions of one bottom, run as one on the solver path -----------------------

SIBLINGS = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 8 dim: 6 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
  convolution_param { num_output: 5 kernel_size: 1 BIAS_A weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "b" type: "Convolution" bottom: "data" top: "b"
  convolution_param { num_output: 3 kernel_size: 1 bias_term: false weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "b/bn" type: "BatchNorm" bottom: "b" top: "b/bn" }
layer { name: "b/sc" type: "Scale" bottom: "b/bn" top: "b/sc" scale_param { bias_term: true } }
layer { name: "b/relu" type: "ReLU" bottom: "b/sc" top: "b/sc" }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "d" type: "Convolution" bottom: "data" top: "d"
  convolution_param { num_output: 2 kernel_size: 1 bias_term: false weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b/sc" bottom: "c" bottom: "d" top: "cat" }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc" inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def _sibling_net(bias_a="bias_term: false"):
    from net_steps import net_with_inputs

    return net_with_inputs(SIBLINGS.replace("BIAS_A", bias_a), (4, 8, 6, 6))


def test_sibling_pointwise_convolutions_of_one_blob_are_grouped():
    net = _sibling_net()
    groups = [[net._steps[i].layer.layer_name for i in s.siblings] for s in net._steps if s.siblings]
    assert groups == [["a", "b", "d"]]  # not the 3x3 "c"
    mixed = _sibling_net("bias_term: true")  # a with bias, b and d without: b and d only
    assert [[mixed._steps[i].layer.layer_name for i in s.siblings] for s in mixed._steps if s.siblings] == [["b", "d"]]


def test_grouped_step_matches_the_layer_by_layer_step(monkeypatch):
    from net_steps import solver_step

    calls = []
    real = pointwise_conv.siblings
    monkeypatch.setattr(pointwise_conv, "siblings", lambda *a: (lambda r: (calls.append(r is not None), r)[1])(real(*a)))
    kept_net, grouped_net = _sibling_net(), _sibling_net()
    loss_kept, kept = solver_step(kept_net, keep=True)  # pycaffe path: every layer on its own
    assert calls == []
    loss_grouped, grouped = solver_step(grouped_net, keep=None)
    assert calls == [True]
    assert "b/bn" in grouped_net._chain_tops  # the chain after "b" read its channel slice in place
    assert abs(loss_grouped - loss_kept) <= 1e-6 * abs(loss_kept)
    for key in kept:
        assert np.abs(grouped[key] - kept[key]).max() <= 1e-5 * np.abs(kept[key]).max(), key
    for name in ("a", "b", "b/bn", "b/sc", "d", "cat"):
        ours, ref = grouped_net.blobs[name].data, kept_net.blobs[name].data
        assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max(), name


def test_siblings_do_not_apply_to_nchw_tensors():
    net = _sibling_net()
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    layers = [net._steps[i].layer for s in net._steps if s.siblings for i in s.siblings]
    assert pointwise_conv.siblings(layers, x) is None
    assert len(pointwise_conv.siblings(layers, x.contiguous(memory_format=torch.channels_last))) == 3
