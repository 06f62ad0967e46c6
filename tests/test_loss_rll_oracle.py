"""DistanceWeightedValidPairLossV12 against real Caffe (RLL fork, CPU, float32) outputs.

Fixtures: tests/fixtures/losses/rll_* (copied from ../shared/oracle/rll/layers; each has the net,
the case.npz and a README saying what it checks).

Tolerance: 1e-6 relative for the value and 1e-6 of the largest component for gradients, in
float32. Caffe sums pair by pair in float32 with BLAS kernels whose order cannot be reproduced in
Gram form; the port sums exactly and rounds where Caffe stores a float, so the measured gap is a
few ulp (value <= 2e-7 relative, gradient <= 4e-7 of the largest component). Components much
smaller than the largest one are the result of cancelling float32 sums in Caffe and carry that
absolute noise, which is why the bound is relative to the largest component, not elementwise.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle_cases import case_arrays as load
from oracle_cases import case_net as net_param
from oracle_cases import rel

from rll_repro.layers.base import DIALECTS, BuildContext
from rll_repro.layers.rll import (
    DistanceWeightedValidPairLossV12,
    RLLParams,
    _anchor_coefficients,
    _layer_params,
    _pair_weights,
    rll_v12_value_and_grad,
)

CASES = ["rll_bases", "rll_edge_duplicates", "rll_edge_no_violation", "rll_edge_single_class",
         "rll_inshop_tn12", "rll_sop_default", "rll_tp_nonzero"]
TOL = 1e-6
pytestmark = pytest.mark.usefixtures("pair_kernels")  # the C passes and the PyTorch ops alike


def loss_param(case):
    return next(lp for lp in net_param(case).layer if lp.type == "DistanceWeightedValidPairLossV12")


def build_net(case):
    from rll_repro.net import Net

    net = Net(net_param(case))
    net.keep_blob_diffs = True  # the tests read blob diffs after forward_backward
    return net


@pytest.mark.parametrize("case", CASES)
def test_v12_value_and_gradient_match_caffe(case):
    z = load(case)
    params = _layer_params(loss_param(case), cvpr19=False)
    value, grad = rll_v12_value_and_grad(torch.from_numpy(z["blob/feat"]), torch.from_numpy(z["blob/label"]), params)
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    assert rel(value, z["loss/loss"]) <= TOL
    assert rel(grad, z["diff/feat"]) <= TOL


@pytest.mark.parametrize("case", CASES)
def test_v12_through_normalization_matches_caffe_input_gradient(case):
    z = load(case)
    net = build_net(case)
    net.blobs["data"].data[...] = z["input/data"]
    net.blobs["label"].data[...] = z["input/label"]
    stale = net.forward_backward()
    assert stale == float(z["loss_fwd/loss"]) == 0.0  # fresh net: Caffe's zero-initialised top
    assert rel(net.blobs["loss"].data, z["loss/loss"]) <= TOL
    assert rel(net.blobs["data"].diff, z["diff/data"]) <= TOL


def test_reported_value_lags_one_backward_as_in_caffe():
    """rll_value_lag: three forward+backward passes; forward reports the previous backward's value."""
    z = load("rll_value_lag")
    net = build_net("rll_value_lag")
    for k in range(3):
        net.blobs["data"].data[...] = z[f"iter{k}/input/data"]
        net.blobs["label"].data[...] = z[f"iter{k}/input/label"]
        forward_value = net.forward_backward()
        assert rel(forward_value, z[f"iter{k}/loss_fwd/loss"]) <= TOL
        assert rel(net.blobs["loss"].data, z[f"iter{k}/loss/loss"]) <= TOL
        assert rel(net.blobs["data"].diff, z[f"iter{k}/diff/data"]) <= TOL


def test_layer_forward_returns_stored_value_and_backward_stores_the_new_one():
    z = load("rll_sop_default")
    layer = DistanceWeightedValidPairLossV12(loss_param("rll_sop_default"), [(12, 8, 1, 1), (12,)],
                                             BuildContext(dialect=DIALECTS["rll"]))
    feat = torch.from_numpy(z["blob/feat"]).requires_grad_()
    (top,) = layer.forward(feat, torch.from_numpy(z["blob/label"]))
    assert float(top.detach()) == 0.0 and layer.after_backward() is None  # nothing computed before backward
    top.backward(torch.tensor(1.0))
    (new_top,) = layer.after_backward()
    assert rel(new_top, z["loss/loss"]) <= TOL
    assert rel(feat.grad, z["diff/feat"]) <= TOL
    (again,) = layer.forward(feat.detach().requires_grad_(), torch.from_numpy(z["blob/label"]))
    assert float(again.detach()) == float(new_top)


def test_loss_weight_scales_gradient_like_caffe_top_diff():
    z = load("rll_bases")
    layer = DistanceWeightedValidPairLossV12(loss_param("rll_bases"), [(10, 5, 1, 1), (10,)], BuildContext())
    feat = torch.from_numpy(z["blob/feat"]).requires_grad_()
    (top,) = layer.forward(feat, torch.from_numpy(z["blob/label"]))
    top.backward(torch.tensor(3.0))
    assert rel(feat.grad, 3.0 * z["diff/feat"]) <= TOL
    assert rel(layer.after_backward()[0], z["loss/loss"]) <= TOL  # the value ignores loss_weight


def test_no_violating_pairs_give_zero_gradient():
    z = load("rll_edge_no_violation")
    _, grad = rll_v12_value_and_grad(torch.from_numpy(z["blob/feat"]), torch.from_numpy(z["blob/label"]), RLLParams())
    assert float(grad.abs().max()) == 0.0 and float(np.abs(z["diff/feat"]).max()) == 0.0


def test_duplicated_embeddings_give_finite_gradient():
    """Unit direction (f_i - f_j)/(d + 1e-6): a duplicate pair gives u = 0, no NaN (SPEC rll §1.3)."""
    z = load("rll_edge_duplicates")
    feat = z["blob/feat"].reshape(8, -1)
    assert (feat[2] == feat[3]).all() and (feat[1] == feat[6]).all()
    _, grad = rll_v12_value_and_grad(torch.from_numpy(z["blob/feat"]), torch.from_numpy(z["blob/label"]), RLLParams())
    assert bool(torch.isfinite(grad).all())
    assert rel(grad, z["diff/feat"]) <= TOL


def test_layer_reads_proto_defaults_base_is_float_2_71828_not_e():
    params = _layer_params(loss_param("rll_sop_default"), cvpr19=False)
    assert params.base_n == float(np.float32(2.71828)) != float(np.float32(np.e))
    assert (params.pn_margin, params.scale_p, params.scale_n) == (float(np.float32(0.4)), 0.0, 10.0)
    assert params.negative_threshold == float(np.float32(1.2))


def test_weight_base_is_float_2_71828_not_e():
    """w = pow(2.71828f, T_n * t): for a duplicate negative pair (d = 0, t = 1.2) and T_n = 10 that is
    2.71828^12, 8e-6 relative below e^12 (~70 float32 ulp); t > 0 is tested strictly."""
    d = torch.zeros(2, 2, dtype=torch.float32)
    same = torch.eye(2, dtype=torch.bool)
    wn = _pair_weights(d, same, RLLParams(), 0.8, float(np.float32(1.2)))
    expected = np.float32(np.float64(np.float32(2.71828)) ** np.float64(np.float32(10 * np.float32(1.2))))
    assert float(wn[0, 1]) == float(expected)
    assert abs(float(wn[0, 1]) / np.exp(12.0) - 1) > 5e-6


def test_pair_exactly_on_the_boundary_gets_weight_zero():
    """Strict t > 0: a positive pair at float32 distance exactly 1 - m/2 = 0.8f has weight 0, so a
    batch whose only violations sit on the boundaries has zero gradient."""
    feat = torch.tensor([[0.0, 0.0], [0.8, 0.0], [0.0, 2.0]], dtype=torch.float32)  # d01 = 0.8f, others > 1.2
    labels = torch.tensor([0.0, 0.0, 1.0])
    _, grad = rll_v12_value_and_grad(feat, labels, RLLParams())
    assert float(grad.abs().max()) == 0.0
    _, grad = rll_v12_value_and_grad(feat * (1 + 2 ** -20), labels, RLLParams())  # just beyond: weight 1
    assert float(grad.abs().max()) > 0.0


def test_each_endpoint_gets_only_its_own_anchor_coefficient():
    """Caffe's gradient is not the autograd gradient of the symmetric detached objective
    sum_i L_i (SPEC rll §1.3), which would give each endpoint both anchors' coefficients."""
    z = load("rll_sop_default")
    f = torch.from_numpy(z["blob/feat"]).double().reshape(12, -1)
    same = torch.from_numpy(z["blob/label"])[:, None] == torch.from_numpy(z["blob/label"])[None, :]
    d = torch.cdist(f, f)
    k = _anchor_coefficients(_pair_weights(d, same, RLLParams(), 0.8, 1.2), same) / (d + 1e-6)
    own = f * k.sum(1, keepdim=True) - k @ f
    both = f * (k + k.T).sum(1, keepdim=True) - (k + k.T) @ f
    ref = z["diff/feat"].reshape(12, -1)
    assert rel(own, ref) <= 1e-5  # float64 recomputation (cdist) of the Caffe rule
    assert rel(both, ref) > 1e-2
