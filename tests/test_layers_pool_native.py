"""MAX and AVE pooling of channels_last float32 CPU tensors in C (rll_repro/layers/pool_kernels.c).

Held bit for bit against PyTorch's CPU kernels, which the layer uses everywhere else (and whose
semantics the pooling oracle tests hold to Caffe): MAX values with ties (the first maximum) and NaN
(which wins), the gradients as a gather in PyTorch's scatter order, AVE's backward with Caffe's
divisor at padded borders, channel-slice gradients (a Concat's backward), every thread count.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rll_repro.layers import pool_native
from rll_repro.layers.pooling import caffe_pooled_size

pytestmark = pytest.mark.skipif(pool_native._KERNELS.get() is None,
                                reason=f"pool kernels not built here: {pool_native.status()}")

GEOMETRIES = [  # N, C, H, W, kernel, stride, pad
    (4, 16, 15, 15, 3, 2, 0), (2, 8, 14, 14, 3, 1, 1), (3, 5, 9, 11, 2, 2, 0), (2, 4, 7, 7, 3, 2, 1),
    (1, 3, 7, 7, 7, 1, 0), (2, 6, 10, 10, 5, 3, 2),
]


def _input(n, c, h, w, seed=0):
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    x[0, 0, 2, 2] = float("nan")
    x[-1, 1] = 1.0  # every window of this channel a tie
    return x.contiguous(memory_format=torch.channels_last)


def _run(fn, x, k, s, p, grad):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x, k, s, p)
    y.backward(grad)
    return y.detach(), x.grad


def _ours(method):
    def run(x, k, s, p):
        out_hw = [caffe_pooled_size(d, k, p, s) for d in x.shape[2:]]
        return getattr(pool_native, method)(x, (k, k), (s, s), (p, p), out_hw)
    return run


def _channel_slice(grad):
    """``grad``'s values as a channel slice of a wider channels_last tensor (row stride > C)."""
    n, c, h, w = grad.shape
    wide = torch.zeros(n, c + 5, h, w).contiguous(memory_format=torch.channels_last)[:, 2:2 + c]
    wide.copy_(grad)
    return wide


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("method,reference", [
    ("max_pool", lambda x, k, s, p: F.max_pool2d(x, k, s, p, 1, True)),
    ("average_pool", lambda x, k, s, p: F.avg_pool2d(x, k, s, p, True, True)),
])
def test_values_and_gradients_are_pytorchs_bit_for_bit(geometry, method, reference):
    n, c, h, w, k, s, p = geometry
    x = _input(n, c, h, w)
    grad = torch.randn(reference(x, k, s, p).shape, generator=torch.Generator().manual_seed(1))
    y_ref, dx_ref = _run(reference, x, k, s, p, grad)
    for g in (grad.contiguous(memory_format=torch.channels_last), grad.contiguous(), _channel_slice(grad)):
        y, dx = _run(_ours(method), x, k, s, p, g)
        assert y.shape == y_ref.shape
        assert torch.equal(y.nan_to_num(7.0), y_ref.nan_to_num(7.0))
        assert torch.equal(dx.nan_to_num(7.0), dx_ref.nan_to_num(7.0))
        assert dx.is_contiguous(memory_format=torch.channels_last)


def test_same_bits_for_every_thread_count():
    x = _input(3, 24, 33, 29)
    grad = torch.randn(3, 24, 16, 14)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_run(_ours("max_pool"), x, 3, 2, 0, grad) + _run(_ours("average_pool"), x, 3, 2, 0, grad))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) for a, b in zip(results[0], other))


def test_the_layer_uses_the_kernels_only_with_a_gradient_on_channels_last_cpu_float32(monkeypatch):
    from rll_repro.caffe.io import parse_net_text
    from rll_repro.net import Net

    calls = []
    monkeypatch.setattr(pool_native, "max_pool", lambda *a: (calls.append(1), F.max_pool2d(*a[:4], 1, True))[1])
    text = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
"""
    net = Net(parse_net_text(text), phase="train")
    net.force_backward = True
    net.forward()
    assert calls == [1]
    with torch.no_grad():
        net.forward()
    net.set_memory_format(torch.contiguous_format)
    net.forward()
    assert calls == [1]
    x = _input(2, 3, 9, 9)
    assert pool_native.usable(x) and not pool_native.usable(x.contiguous()) and not pool_native.usable(x.double())
    assert not pool_native.usable(torch.empty(2, 3, 9, 9, device="meta").contiguous(memory_format=torch.channels_last))
