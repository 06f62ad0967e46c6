"""pycaffe's host arrays over a device net follow Caffe's SyncedMemory (syncedmem.cpp).

Off the CPU, ``net.blobs[k].data``/``.diff`` and ``net.params[l][i].data``/``.diff`` are host copies:
made lazily, refreshed in place when the device has run since (an array taken before stays the
array), written back before the next run. ``net.host_mirror = True`` runs that path on a CPU net,
which is how it is tested here; the numbers must equal the zero-copy CPU path's exactly (the same
kernels run, only copies are added).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rll_repro
from rll_repro.net import Net

DIGITS = Path(__file__).resolve().parents[1] / "prototxt/digits"


def _pair():
    plain = Net(str(DIGITS / "train.prototxt"), phase="train", seed=3)
    mirrored = Net(str(DIGITS / "train.prototxt"), phase="train", seed=3)
    mirrored.host_mirror = True
    return plain, mirrored


def _inputs(net, seed=0):
    rng = np.random.default_rng(seed)
    shape = net.blobs["data"].shape
    return (rng.standard_normal(shape).astype(np.float32),
            rng.integers(0, 3, size=net.blobs["label"].shape).astype(np.float32))


def test_mirrored_forward_backward_equals_the_zero_copy_path():
    plain, mirrored = _pair()
    x, y = _inputs(plain)
    for net in (plain, mirrored):
        net.blobs["data"].data[...] = x  # pycaffe's way of feeding
        net.blobs["label"].data[...] = y
        net.forward()
        net.backward()
    for name in plain.blobs:
        np.testing.assert_array_equal(plain.blobs[name].data, mirrored.blobs[name].data, err_msg=name)
    for layer in plain.params:
        for a, b in zip(plain.params[layer], mirrored.params[layer]):
            np.testing.assert_array_equal(a.diff, b.diff, err_msg=layer)


def test_an_array_taken_before_a_run_is_refreshed_in_place_on_the_next_access():
    _, net = _pair()
    x, y = _inputs(net, 1)
    net.forward(data=x, label=y)
    emb = net.blobs[net.bottom_names[net.layer_names[-1]][0]]
    before = emb.data
    first = before.copy()
    x2, _ = _inputs(net, 2)
    net.forward(data=x2)
    after = emb.data
    assert after is before  # the same host memory, as pycaffe's views
    assert not np.array_equal(after, first)


def test_param_surgery_through_the_host_array_reaches_the_device_before_the_next_run():
    _, net = _pair()
    x, y = _inputs(net, 3)
    w = net.params["conv1"][0].data
    net.forward(data=x, label=y)
    w[...] = 0  # surgery on the array taken earlier
    assert net.learnable_params[0].detach().abs().sum() > 0  # the device copy is untouched until the next run
    net.forward()
    assert float(net.learnable_params[0].detach().abs().sum()) == 0.0
    assert net.params["conv1"][0].data is w


def test_solver_updates_show_in_a_params_array_taken_before_the_step():
    solver = rll_repro.get_solver(str(DIGITS / "solver.prototxt"))
    solver.net.host_mirror = True
    w = solver.net.params["conv1"][0].data
    w0 = w.copy()
    x, y = _inputs(solver.net, 4)
    solver.step(1, batches=lambda it: {"data": x, "label": y})
    assert solver.net.params["conv1"][0].data is w
    assert not np.array_equal(w, w0)
    np.testing.assert_array_equal(w, solver.net.learnable_params[0].detach().numpy())


@pytest.mark.parametrize("mirror", [False, True])
def test_in_place_layer_on_a_net_input_leaves_its_output_in_the_blob(mirror):
    """Caffe: ReLU with bottom = top = data overwrites the input blob's memory (issue 11.4)."""
    from rll_repro.caffe import io as caffe_io

    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
            inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
    """
    net = Net(caffe_io.parse_net_prototxt(text) if hasattr(caffe_io, "parse_net_prototxt")
              else _parse(text), phase="test")
    net.host_mirror = mirror
    x = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], np.float32)
    out = net.forward(data=x, blobs=["data"])
    np.testing.assert_array_equal(out["data"], np.maximum(x, 0))
    np.testing.assert_array_equal(net.blobs["data"].data, np.maximum(x, 0))
    np.testing.assert_array_equal(out["fc"], np.maximum(x, 0).sum(1, keepdims=True).repeat(2, 1))


def _parse(text):
    from google.protobuf import text_format

    from rll_repro.caffe import caffe_pb2

    return text_format.Parse(text, caffe_pb2.NetParameter())


def test_autograd_from_the_weighted_loss_gives_the_backward_losses_gradients():
    """The tensor path's contract: Σ loss_weight·sum(top) backpropagated by plain autograd seeds each
    loss top with its loss weight, exactly what backward_losses() (Caffe's Backward) does."""
    import torch

    a = Net(str(DIGITS / "train.prototxt"), phase="train", seed=3)
    b = Net(str(DIGITS / "train.prototxt"), phase="train", seed=3)
    x, y = _inputs(a, 5)
    for net in (a, b):
        net.clear_param_diffs()
    a(data=torch.from_numpy(x), label=torch.from_numpy(y))
    a.backward_losses()
    out = b(data=torch.from_numpy(x), label=torch.from_numpy(y))
    b.weighted_loss(out).backward()
    for pa, pb in zip(a.learnable_params, b.learnable_params):
        assert torch.equal(pa.grad, pb.grad)
    assert float(sum(p.grad.abs().sum() for p in a.learnable_params)) > 0
