"""The solver path's fused BatchNorm + Scale backward (rll_repro/layers/scale.py, _BatchNormScaleBias).

When no blob diff is kept (Net.forward_backward, the solver's step), a channel-wise Scale with bias
that reads a TRAIN BatchNorm's channels_last CPU output differentiates both layers in one ATen
BatchNorm backward, where the whole BatchNorm -> Scale -> ReLU chain does not run in C
(rll_repro/layers/batchnorm_chain.py, tested in test_layers_batchnorm_chain.py): here with the C
kernels turned off (``RLL_REPRO_NATIVE=0``). It must change nothing but float32 summation order: the forward values are the
same tensors, the parameter gradients agree with the two-layer backward (pycaffe path, every blob
diff kept) within 1e-5 of each array's largest value (the sums over 4 x 6 x 6 values are ordered
differently; the conv bias before the BatchNorm is rounding noise in both, held against 1e-2 of the
largest gradient), and it only runs where it applies. The SOP train net's oracle test covers the
real net (tests/test_net_sop_oracle.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from net_steps import net_with_inputs, solver_step
from rll_repro.layers import scale

NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }
layer { name: "sc" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true
  filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "bn" top: "bn" }
layer { name: "fc" type: "InnerProduct" bottom: "bn" top: "fc" inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def _net(memory_format=torch.channels_last):
    return net_with_inputs(NET, (4, 3, 8, 8), memory_format=memory_format)


_step = solver_step


@pytest.fixture()
def fused_calls(monkeypatch):
    monkeypatch.setenv("RLL_REPRO_NATIVE", "0")  # no C chain: the layers' own fused backward
    calls = []
    backward = scale._BatchNormScaleBias.backward
    monkeypatch.setattr(scale._BatchNormScaleBias, "backward",
                        staticmethod(lambda ctx, grad: (calls.append(1), backward(ctx, grad))[1]))
    return calls


def test_fused_backward_gives_the_two_layer_gradients(fused_calls):
    loss_kept, kept = _step(_net(), keep=True)
    assert fused_calls == []  # diffs kept: the layers run one by one
    loss_fused, fused = _step(_net(), keep=None)
    assert fused_calls == [1]
    assert loss_fused == loss_kept  # the forward is unchanged
    largest = max(float(np.abs(g).max()) for g in kept.values())
    for key in kept:  # conv/1, the bias before the BatchNorm, is 0 up to rounding (~1e-8) in both
        scale_ = max(float(np.abs(kept[key]).max()), 1e-2 * largest)
        assert np.abs(fused[key] - kept[key]).max() <= 1e-5 * scale_, key
    assert np.abs(fused["sc/0"]).max() > 0 and np.abs(fused["conv/0"]).max() > 0


def test_fused_path_keeps_running_statistics_and_blob_data(monkeypatch):
    monkeypatch.setenv("RLL_REPRO_NATIVE", "0")
    a, b = _net(), _net()
    _step(a, keep=True)
    _step(b, keep=None)
    for i in range(3):
        assert np.array_equal(a.params["bn"][i].data, b.params["bn"][i].data)
    assert np.array_equal(a.blobs["bn"].data, b.blobs["bn"].data)


def test_no_fusion_in_nchw_nor_when_diffs_are_kept(fused_calls):
    _step(_net(torch.contiguous_format), keep=None)
    net = _net()
    net.forward()
    net.backward()  # pycaffe path: blob diffs wanted
    assert fused_calls == []
    assert np.abs(net.blobs["conv"].diff).max() > 0
