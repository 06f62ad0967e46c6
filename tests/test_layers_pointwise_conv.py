"""1x1 convolutions' backward as matrix products on channels_last float32 CPU tensors
(rll_repro/layers/pointwise_conv.py): the forward is oneDNN's convolution unchanged (bit for bit);
the gradients are held to a float64 convolution within 1e-6 of each array's largest value (float32
products of length C or N·H·W in another order), with and without bias, for channel-slice
gradients, and only where it applies (stride 1, pad 0, one group, channels_last CPU float32)."""
from __future__ import annotations

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
