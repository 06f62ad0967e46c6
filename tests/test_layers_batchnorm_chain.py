"""BatchNorm -> Scale -> ReLU in one operation on the solver path (rll_repro/layers/batchnorm_chain.c,
planned by rll_repro/net/fusion.py).

What is held and why:
- The elementwise arithmetic is Caffe's operation for operation: given the kernel's μ and σ, its
  tops equal a numpy float32 evaluation of (x − μ)/σ, ·γ, + β, max(·, 0) bit for bit (numpy rounds
  each operation; the kernel is built without contraction).
- The statistics and the backward's sums are float64 sums rounded once; against a float64 evaluation
  of the three layers: μ within 1 ulp of the rounded exact mean, σ² within 1e-7 relative, the output
  and the gradients within 1e-6 of each array's largest value (float32 rounding of the terms).
- The same bits for 1, 2 and 3 threads (chunks fixed by the size).
- In a net it changes nothing a caller can see but float32 rounding: blob data (the intermediate tops
  recomputed when read), running sums and parameter gradients agree with the layer-by-layer pycaffe
  path within 1e-5 of each array's largest value (the conv bias before a BatchNorm, which is rounding
  noise, within 1e-2 of the largest gradient, as in test_layers_bn_scale_fused.py). The SOP train
  net's oracle test holds the solver path to Caffe (tests/test_net_sop_oracle.py).
- It runs only where it can: no chain where another layer reads an intermediate top, a ReLU with a
  negative slope is left out of it, nothing on NCHW, meta or float64 tensors, or with the C kernels off.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from net_steps import net_with_inputs, solver_step
from rll_repro.layers import batchnorm_chain
from rll_repro.layers._util import nhwc_rows

pytestmark = pytest.mark.skipif(batchnorm_chain._KERNELS.get() is None,
                                reason=f"chain kernels not built here: {batchnorm_chain.status()}")


def _input(shape=(6, 16, 9, 7), mean=1.5, std=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * std + mean
    return x.float().contiguous(memory_format=torch.channels_last)


def _params(c, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, generator=g) + 0.5, torch.rand(c, generator=g) - 0.5


def _apply(x, gamma, beta, relu=True):
    return batchnorm_chain._BatchNormScaleReLU.apply(x, gamma, beta, 1e-5, relu)


def _caffe_float32(x, mean, std, gamma, beta):
    """Caffe's three layers in numpy float32, one rounding per operation."""
    a = x.permute(0, 2, 3, 1).numpy()
    y = (a - mean.numpy()) / std.numpy()
    z = y * gamma.numpy() + beta.numpy()
    return y, z, np.maximum(z, np.float32(0))


def _nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("relu", [True, False])
def test_tops_are_caffes_float32_operations_bit_for_bit(relu):
    x = _input()
    gamma, beta = _params(16)
    out, mean, var, std = _apply(x, gamma, beta, relu)
    y, z, r = _caffe_float32(x, mean, std, gamma, beta)
    assert np.array_equal(_nhwc(out), r if relu else z)
    assert np.array_equal(std.numpy(), np.sqrt(var.numpy() + np.float32(1e-5)))
    for stage, want in ((batchnorm_chain.STAGE_BATCHNORM, y), (batchnorm_chain.STAGE_SCALE, z)):
        top = batchnorm_chain.intermediate(x, mean, std, gamma, beta, stage)
        assert np.array_equal(_nhwc(top), want)


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (1e3, 0.1), (-5e4, 3.0), (1.0, 1e-4)])
def test_statistics_are_the_rounded_float64_mean_and_variance(mean, std):
    x = _input((8, 32, 9, 9), mean, std)
    x[0, :, 0, 0] += 50 * std  # the first row (the shift of the one-pass sums) an outlier
    _, mu, var, _ = _apply(x, torch.ones(32), torch.zeros(32))
    x64 = x.double()
    exact_mean = x64.mean((0, 2, 3))
    ulps = (mu.view(torch.int32).long() - exact_mean.float().view(torch.int32).long()).abs()
    assert int(ulps.max()) <= 1
    exact_var = ((x64 - mu.double().view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
    assert float(((var.double() - exact_var) / exact_var).abs().max()) <= 1e-7


def _float64_chain(x, gamma, beta, relu):
    x = x.double().requires_grad_(True)
    g, b = gamma.double().requires_grad_(True), beta.double().requires_grad_(True)
    mu = x.mean((0, 2, 3), keepdim=True)
    var = ((x - mu) ** 2).mean((0, 2, 3), keepdim=True)
    z = (x - mu) / torch.sqrt(var + 1e-5) * g.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    return (torch.relu(z) if relu else z), (x, g, b)


def _relative(a, b):
    return float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("relu", [True, False])
def test_forward_and_gradients_agree_with_float64_layers(relu):
    x = _input().requires_grad_(True)
    gamma, beta = (p.requires_grad_(True) for p in _params(16))
    out, *_ = _apply(x, gamma, beta, relu)
    ref, (x64, g64, b64) = _float64_chain(x.detach(), gamma.detach(), beta.detach(), relu)
    assert _relative(out, ref) <= 1e-6
    top = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    out.backward(top)
    ref.backward(top.double())
    for ours, exact in ((x.grad, x64.grad), (gamma.grad, g64.grad), (beta.grad, b64.grad)):
        assert _relative(ours, exact) <= 1e-6


def test_a_channel_slice_gradient_is_read_in_place():
    """A Concat's backward hands each branch a channel slice of its gradient (row stride > C)."""
    x = _input().requires_grad_(True)
    gamma, beta = _params(16)
    wide = torch.randn(6, 40, 9, 7).contiguous(memory_format=torch.channels_last)
    grad = wide[:, 8:24]
    assert nhwc_rows(grad) is not None and not grad.is_contiguous(memory_format=torch.channels_last)
    out, *_ = _apply(x, gamma, beta)
    (dx_slice,) = torch.autograd.grad(out, x, grad)
    (dx_dense,) = torch.autograd.grad(_apply(x, gamma, beta)[0], x, grad.contiguous(memory_format=torch.channels_last))
    assert torch.equal(dx_slice, dx_dense)


def test_same_bits_for_every_thread_count():
    x = _input((4, 24, 40, 40)).requires_grad_(True)  # 6400 rows: several chunks
    gamma, beta = _params(24)
    top = torch.randn(x.shape).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out, mean, var, _ = _apply(x, gamma, beta)
            (dx,) = torch.autograd.grad(out, x, top)
            results.append((out, mean, var, dx))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_usable_only_for_real_channels_last_float32_cpu_tensors(monkeypatch):
    x = _input()
    assert batchnorm_chain.usable(x)
    assert not batchnorm_chain.usable(x.contiguous())  # NCHW
    assert not batchnorm_chain.usable(x.double())
    assert not batchnorm_chain.usable(torch.empty(x.shape, device="meta").contiguous(memory_format=torch.channels_last))
    assert not batchnorm_chain.usable(_input((1, 16, 1, 1)))  # one value per channel
    monkeypatch.setenv("RLL_REPRO_NATIVE", "0")
    assert not batchnorm_chain.usable(x)


# -- in a net --------------------------------------------------------------------------------------

HEAD = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 12 dim: 12 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.2 } } }
"""
CHAIN = """
layer { name: "conv/bn" type: "BatchNorm" bottom: "conv" top: "conv/bn" }
layer { name: "conv/bn/sc" type: "Scale" bottom: "conv/bn" top: "conv/bn/sc" scale_param { bias_term: true
  filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "conv/relu" type: "ReLU" bottom: "conv/bn/sc" top: "conv/bn/sc" RELU }
"""
TAIL = """
layer { name: "pool" type: "Pooling" bottom: "conv/bn/sc" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def _net(text):
    return net_with_inputs(text, (4, 3, 12, 12))


_step = solver_step


@pytest.fixture()
def chain_calls(monkeypatch):
    calls = []
    run = batchnorm_chain.run
    monkeypatch.setattr(batchnorm_chain, "run",
                        lambda *a: (lambda r: (calls.append(r is not None), r)[1])(run(*a)))
    return calls


def _close(a, b, floor=0.0):
    scale = max(float(np.abs(b).max()), floor)
    return float(np.abs(a - b).max()) <= 1e-5 * scale


def test_fused_net_step_matches_the_layer_by_layer_step(chain_calls):
    text = HEAD + CHAIN.replace("RELU", "") + TAIL
    kept_net, fused_net = _net(text), _net(text)
    loss_kept, kept = _step(kept_net, keep=True)
    assert chain_calls == []  # diffs kept: the layers run one by one
    loss_fused, fused = _step(fused_net, keep=None)
    assert chain_calls == [True]
    assert abs(loss_fused - loss_kept) <= 1e-6 * abs(loss_kept)
    largest = max(float(np.abs(g).max()) for g in kept.values())
    for key in kept:  # conv/1 (the bias before the BatchNorm) is rounding noise in both
        assert _close(fused[key], kept[key], 1e-2 * largest if key == "conv/1" else 0.0), key
    assert set(fused_net._chain_tops) == {"conv/bn"}  # not written by the forward
    for name in ("conv/bn", "conv/bn/sc", "pool"):  # conv/bn is recomputed on this read
        assert _close(fused_net.blobs[name].data, kept_net.blobs[name].data), name
    assert "conv/bn" not in fused_net._chain_tops  # materialized once
    for i in range(3):  # the running sums
        assert _close(fused_net.params["conv/bn"][i].data, kept_net.params["conv/bn"][i].data), i


def test_chain_with_every_layer_in_place_holds_the_relu_output():
    text = HEAD + """
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
""" + TAIL.replace("conv/bn/sc", "conv")
    kept_net, fused_net = _net(text), _net(text)
    assert fused_net._steps[3].chain is not None and fused_net._steps[3].chain.relu
    _step(kept_net, keep=True)
    _step(fused_net, keep=None)
    assert fused_net._chain_tops == {}
    assert _close(fused_net.blobs["conv"].data, kept_net.blobs["conv"].data)
    assert float(fused_net.blobs["conv"].data.min()) == 0.0


def test_an_in_place_batchnorm_blob_holds_the_scale_output_when_the_relu_writes_elsewhere():
    """BatchNorm and Scale in place on the convolution's blob, the ReLU to a new one: that blob's data
    is the Scale's top (recomputed), not the convolution's output it held before the chain."""
    text = HEAD + """
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv/relu" }
""" + TAIL.replace("conv/bn/sc", "conv/relu")
    kept_net, fused_net = _net(text), _net(text)
    _step(kept_net, keep=True)
    _step(fused_net, keep=None)
    assert set(fused_net._chain_tops) == {"conv"}
    assert _close(fused_net.blobs["conv"].data, kept_net.blobs["conv"].data)
    assert float(fused_net.blobs["conv"].data.min()) < 0  # before the ReLU
    assert _close(fused_net.blobs["conv/relu"].data, kept_net.blobs["conv/relu"].data)


def test_recomputed_tops_are_taken_before_their_bottom_is_handed_out():
    """Writing a chain's bottom through its host view (pycaffe's blob.data) after the step must not
    change the tops that blob fed, as it cannot in Caffe, where every top is stored; an in-place
    torch write is refused by name."""
    text = HEAD + CHAIN.replace("RELU", "") + TAIL
    kept_net, fused_net = _net(text), _net(text)
    _step(kept_net, keep=True)
    _step(fused_net, keep=None)
    assert "conv/bn" in fused_net._chain_tops
    fused_net.blobs["conv"].data[...] = 0.0  # the tops were computed when "conv" was handed out
    assert "conv/bn" not in fused_net._chain_tops
    assert _close(fused_net.blobs["conv/bn"].data, kept_net.blobs["conv/bn"].data)
    _step(fused_net, keep=None)
    fused_net._data["conv"].add_(1.0)  # a torch in-place write: the recipe's check refuses it
    from rll_repro.errors import NetError

    with pytest.raises(NetError, match="conv/bn.*overwritten"):
        fused_net._chain_tops["conv/bn"]()


def _chains(text):
    return [s.chain for s in _net(text)._steps if s.chain is not None]


def test_chains_are_planned_only_where_no_other_layer_sees_an_intermediate_top():
    assert [(c.length, c.relu) for c in _chains(HEAD + CHAIN.replace("RELU", "") + TAIL)] == [(3, True)]
    leaky = _chains(HEAD + CHAIN.replace("RELU", "relu_param { negative_slope: 0.1 }") + TAIL)
    assert [(c.length, c.relu) for c in leaky] == [(2, False)]
    read_twice = HEAD + CHAIN.replace("RELU", "") + TAIL + """
layer { name: "peek" type: "Pooling" bottom: "conv/bn" top: "peek" pooling_param { pool: AVE global_pooling: true } }
layer { name: "silence" type: "Silence" bottom: "peek" }
"""
    assert _chains(read_twice) == []
    no_bias = HEAD + CHAIN.replace("bias_term: true", "bias_term: false").replace("RELU", "") + TAIL
    assert _chains(no_bias) == []


def test_no_chain_in_nchw_or_with_the_kernels_off(chain_calls, monkeypatch):
    text = HEAD + CHAIN.replace("RELU", "") + TAIL
    net = _net(text)
    net.set_memory_format(torch.contiguous_format)
    _step(net, keep=None)
    monkeypatch.setenv("RLL_REPRO_NATIVE", "0")
    _step(_net(text), keep=None)
    assert chain_calls == [False, False]


def test_a_later_forward_or_reshape_drops_the_recomputed_tops():
    net = _net(HEAD + CHAIN.replace("RELU", "") + TAIL)
    _step(net, keep=None)
    assert set(net._chain_tops) == {"conv/bn"}
    first = net.blobs["conv/bn"].data.copy()
    net.blobs["data"].data[...] *= 2
    _step(net, keep=None)
    assert "conv/bn" in net._chain_tops  # the new forward's recipe, not the old tensor
    assert not np.array_equal(net.blobs["conv/bn"].data, first)
    _step(net, keep=None)
    net.blobs["data"].reshape(2, 3, 12, 12)
    net.blobs["label"].reshape(2)
    net.reshape()
    assert "conv/bn" not in net._chain_tops
    assert net.blobs["conv/bn"].data.shape == (2, 8, 10, 10)
