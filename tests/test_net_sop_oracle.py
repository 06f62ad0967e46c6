"""The original SOP nets end to end against the real Caffe forks (../shared/oracle, read in place).

- ``rll/net_sop_train``: the BN-Inception SOP train net (batch 6, Caffe's own filler initialisation);
  ``expected.npz`` holds per-array summaries (sum, abs-sum, sum of squares, values at fixed indices).
- ``osm_caa/net_sop_deploy_test``: the SOP deploy net in TEST (global BatchNorm statistics) after two
  ``copy_from`` calls, batch 4; the 192-d embedding is stored whole.

Error of an array against its summary: the largest of |Δsum|/abssum, |Δabssum|/abssum,
|Δsumsq|/sumsq and max|Δvalue|/max|value| over the sampled indices.

Tolerances and why:
- Deploy net (no batch statistics, no backward): 1e-5 on every blob, as for single layers (observed 1.3e-6).
- Train net forward: 2e-4 on every blob (observed 7.5e-5). BatchNorm over 6 images amplifies the
  float32 rounding of each layer; Caffe's own blobs differ from a float64 evaluation of the same net
  by up to 4e-5 at inception_5b, ours by as much; the port's are no further from Caffe's.
- Train net losses 1e-5 (observed 2e-6) and BatchNorm running sums after forward 1e-4 (observed 2.3e-5).
- Parameter gradients: 1e-4 on the aggregate summaries (sum/abssum/sumsq) and 2e-4 on sampled single
  values for the heads (loss1/*, loss2/*, pool5/7x7_s1/fc; observed <= 4.2e-5 and 9.1e-5).
  Below them the gradient is not a continuous function of float32 rounding: a ReLU input within
  rounding distance of 0 switches its gradient on or off. Between a float32 and a float64 evaluation of
  this net 22 ReLU inputs switch sign, and each switch moves every gradient below it by ~1e-3
  relative. Caffe's own float32 gradients differ from the float64 evaluation by up to 3.3e-3 (aggregates)
  and 2.2e-2 (single values) in the backbone; the port's differ from Caffe's by as much (2.5e-3 and
  4e-2). Which inputs switch depends on the CPU's kernels (oneDNN's SSE4.1 convolutions: 6.5e-3 on
  the aggregates), so the backbone is held at 1e-2 = 3 x Caffe's own float32-vs-float64 distance
  (aggregates) and 1e-1 (single values); the slow test checks that the port is no further from
  Caffe than exact (float64) arithmetic is, up to a factor 3.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rll_repro.net import Net

HEADS = ("loss1/", "loss2/", "pool5/7x7_s1/fc")


def summary_errors(z, key: str, array: np.ndarray) -> dict[str, float]:
    """Errors of ``array`` against the summaries stored under ``<kind>/<key>``."""
    a = np.asarray(array, dtype=np.float64).ravel()
    ref_abs, ref_sq = float(z["abssum/" + key]), float(z["sumsq/" + key])
    if ref_abs == 0:
        return {"aggregate": float(np.abs(a).max()) if a.size else 0.0, "values": 0.0}
    idx, val = z["idx/" + key], z["val/" + key].astype(np.float64)
    aggregate = max(
        abs(a.sum() - float(z["sum/" + key])) / ref_abs,
        abs(np.abs(a).sum() - ref_abs) / ref_abs,
        abs((a * a).sum() - ref_sq) / ref_sq,
    )
    values = float(np.abs(a[idx] - val).max() / np.abs(val).max()) if len(idx) else 0.0
    return {"aggregate": aggregate, "values": values}


def _keys(z, kind: str) -> list[str]:
    prefix = f"shape/{kind}/"
    return [k[len("shape/"):] for k in z.files if k.startswith(prefix) and "_split_" not in k]


@pytest.fixture(scope="module")
def sop_train():
    from conftest import shared_path

    case = shared_path("oracle", "rll", "net_sop_train")
    z = np.load(case / "expected.npz")
    inputs = np.load(case / "input.npz")
    net = Net(case / "net.prototxt", weights=case / "weights.caffemodel", phase="train")
    assert net.dialect.name == "rll"
    net.forward(data=inputs["data"], label=inputs["label"])
    forward = {}
    for key in _keys(z, "blob"):
        forward[key] = summary_errors(z, key, net.blobs[key[len("blob/"):]].data)
    for key in _keys(z, "param_after_fwd"):
        layer, i = key[len("param_after_fwd/"):].rsplit("/", 1)
        forward[key] = summary_errors(z, key, net.params[layer][int(i)].data)
    net.backward()
    grads = {}
    for key in _keys(z, "paramdiff"):
        layer, i = key[len("paramdiff/"):].rsplit("/", 1)
        grads[key] = summary_errors(z, key, net.params[layer][int(i)].diff)
    losses = {k: float(net.blobs[k[len("loss/"):]].data) for k in z.files if k.startswith("loss/")}
    return net, z, inputs, forward, grads, losses


def _worst(errors: dict, which: str):
    key = max(errors, key=lambda k: errors[k][which])
    return key, errors[key][which]


def test_sop_train_net_forward_blobs_match_caffe(sop_train):
    _, _, _, forward, _, _ = sop_train
    blobs = {k: v for k, v in forward.items() if k.startswith("blob/")}
    assert len(blobs) > 250
    for which in ("aggregate", "values"):
        key, err = _worst(blobs, which)
        assert err <= 2e-4, f"{key}: {which} relative error {err:.2e}"


def test_sop_train_net_batchnorm_running_sums_after_forward_match_caffe(sop_train):
    _, _, _, forward, _, _ = sop_train
    params = {k: v for k, v in forward.items() if k.startswith("param_after_fwd/")}
    for which in ("aggregate", "values"):
        key, err = _worst(params, which)
        assert err <= 1e-4, f"{key}: {which} relative error {err:.2e}"


def test_sop_train_net_loss_values_after_backward_match_caffe(sop_train):
    _, z, _, _, _, losses = sop_train
    assert len(losses) == 3
    for key, value in losses.items():
        assert abs(value - float(z[key])) <= 1e-5 * abs(float(z[key])), key


def test_sop_train_net_head_gradients_match_caffe_within_1e4(sop_train):
    _, _, _, _, grads, _ = sop_train
    heads = {k: v for k, v in grads.items() if k[len("paramdiff/"):].startswith(HEADS)}
    assert len(heads) >= 20
    key, err = _worst(heads, "aggregate")
    assert err <= 1e-4, f"{key}: aggregate relative error {err:.2e}"
    key, err = _worst(heads, "values")
    assert err <= 2e-4, f"{key}: sampled values relative error {err:.2e}"


def test_sop_train_net_backbone_gradients_match_caffe_within_float32_noise(sop_train):
    _, _, _, _, grads, _ = sop_train
    assert len(grads) == 441
    key, err = _worst(grads, "aggregate")
    assert err <= 1e-2, f"{key}: aggregate relative error {err:.2e}"
    key, err = _worst(grads, "values")
    assert err <= 1e-1, f"{key}: sampled values relative error {err:.2e}"


def test_sop_train_net_solver_step_gradients_match_caffe_as_closely(sop_train):
    """The solver's forward_backward keeps no blob diff, so each BatchNorm -> Scale -> ReLU chain
    runs as one C operation (layers/batchnorm_chain.py; without the kernels each BatchNorm + Scale
    pair takes its backward in one pass, layers/scale.py), channels_last CPU: the same tolerances
    hold for the blobs (the chains' BatchNorm tops recomputed when read) and the gradients."""
    _, z, inputs, _, pycaffe_grads, _ = sop_train
    from conftest import shared_path

    case = shared_path("oracle", "rll", "net_sop_train")
    net = Net(case / "net.prototxt", weights=case / "weights.caffemodel", phase="train")
    for name in ("data", "label"):
        net.blobs[name].reshape(*inputs[name].shape)
    net.reshape()
    net.blobs["data"].data[...] = inputs["data"]
    net.blobs["label"].data[...] = inputs["label"]
    net.clear_param_diffs()
    net.forward_backward()
    from rll_repro.layers import batchnorm_chain

    if batchnorm_chain.usable(torch.empty(2, 2, 2, 2).contiguous(memory_format=torch.channels_last)):
        # the BatchNorm -> Scale -> ReLU chains ran in C: their BatchNorm tops are recomputed on read
        assert len(net._chain_tops) >= 70
    loss_tops = {name for name, _, _ in net._loss_tops}  # the RLL layers rewrite theirs in backward
    blobs = {key: summary_errors(z, key, net.blobs[key[len("blob/"):]].data)
             for key in _keys(z, "blob") if key[len("blob/"):] not in loss_tops}
    assert len(blobs) > 250
    for which in ("aggregate", "values"):
        key, err = _worst(blobs, which)
        assert err <= 2e-4, f"{key}: {which} relative error {err:.2e}"
    grads = {}
    for key in pycaffe_grads:
        layer, i = key[len("paramdiff/"):].rsplit("/", 1)
        grads[key] = summary_errors(z, key, net.params[layer][int(i)].diff)
    heads = {k: v for k, v in grads.items() if k[len("paramdiff/"):].startswith(HEADS)}
    for errors, limits in ((heads, (1e-4, 2e-4)), (grads, (1e-2, 1e-1))):
        for which, limit in zip(("aggregate", "values"), limits):
            key, err = _worst(errors, which)
            assert err <= limit, f"{key}: {which} relative error {err:.2e}"


@pytest.mark.slow
def test_sop_train_net_gradients_are_as_close_to_caffe_as_float64_arithmetic_is(sop_train):
    net32, z, inputs, _, grads32, _ = sop_train
    from conftest import shared_path

    case = shared_path("oracle", "rll", "net_sop_train")
    net = Net(case / "net.prototxt", weights=case / "weights.caffemodel", phase="train").double()
    for p in net.learnable_params:
        p.grad = torch.zeros_like(p.data)
    net._data["data"] = torch.from_numpy(inputs["data"].astype(np.float64))
    net._data["label"] = torch.from_numpy(inputs["label"].astype(np.float64))
    net.forward_backward()
    grads64 = {}
    for key in grads32:
        layer, i = key[len("paramdiff/"):].rsplit("/", 1)
        grads64[key] = summary_errors(z, key, net.params[layer][int(i)].diff)
    for which in ("aggregate", "values"):
        ours, exact = _worst(grads32, which)[1], _worst(grads64, which)[1]
        assert ours <= 3 * exact, f"{which}: port {ours:.2e} vs float64 {exact:.2e}"


def test_sop_deploy_net_in_test_phase_matches_caffe_after_two_copy_from(shared):
    from oracle_cases import sop_deploy_case

    net, z = sop_deploy_case(shared)
    with torch.no_grad():
        out = net.forward(data=z["input/data"])
    feature = z["feature/pool5/7x7_s1"]
    ours = out["pool5/7x7_s1"].reshape(feature.shape)
    assert np.abs(ours - feature).max() <= 1e-5 * np.abs(feature).max()
    keys = _keys(z, "blob")
    assert len(keys) > 240
    for key in keys:
        errors = summary_errors(z, key, net.blobs[key[len("blob/"):]].data)
        assert max(errors.values()) <= 1e-5, f"{key}: {errors}"
