"""The OSM+CAA head (ExtractProb, Gaussian, L1/L2 Normalization, WeightedSoftmaxWithLoss,
DistanceWeightedValidPairLossV5) against real Caffe (OSM fork, CPU, float32) outputs.

Fixtures: tests/fixtures/losses/osm_caa_head_{cars,variant} (from ../shared/oracle/osm_caa/layers).
Tolerance: 1e-6 relative for values, 1e-6 of the largest component for blobs and gradients in
float32 (measured: <= 2.2e-7; Caffe's float32 BLAS summation order is the remaining difference).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle_cases import case_arrays as load
from oracle_cases import case_net, rel

from rll_repro.caffe import caffe_pb2
from rll_repro.layers.base import DIALECTS, BuildContext
from rll_repro.layers.osm_caa import (
    DistanceWeightedValidPairLossV5,
    ExtractProb,
    Gaussian,
    WeightedSoftmaxWithLoss,
    osm_caa_value_and_grad,
)

HEADS = ["osm_caa_head_cars", "osm_caa_head_variant"]
TOL = 1e-6
pytestmark = pytest.mark.usefixtures("pair_kernels")  # the C passes and the PyTorch ops alike


def layer_params(case):
    net = case_net(case)
    return {lp.name: lp for lp in net.layer}, net


def ctx():
    return BuildContext(dialect=DIALECTS["osm"])


@pytest.mark.parametrize("case", HEADS)
def test_extract_prob_and_gaussians_match_caffe(case):
    z, (lps, _) = load(case), layer_params(case)
    prob, label = torch.from_numpy(z["blob/prob"]), torch.from_numpy(z["blob/label"])
    (p_gt,) = ExtractProb(lps["p_gt"], [prob.shape, label.shape], ctx()).forward(prob, label)
    assert np.array_equal(p_gt.numpy(), z["blob/p_gt"])
    for name in ("g_w", "att"):
        (out,) = Gaussian(lps[name], [p_gt.shape], ctx()).forward(torch.from_numpy(z["blob/p_gt"]))
        assert rel(out, z[f"blob/{name}"]) <= TOL


@pytest.mark.parametrize("case", HEADS)
def test_weighted_softmax_loss_value_and_logit_gradient_match_caffe(case):
    z, (lps, _) = load(case), layer_params(case)
    logits = torch.from_numpy(z["blob/logits"]).requires_grad_()
    label, w = torch.from_numpy(z["blob/label"]), torch.from_numpy(z["blob/w"])
    layer = WeightedSoftmaxWithLoss(lps["cls_loss"], [logits.shape, label.shape, w.shape], ctx())
    (loss,) = layer.forward(logits, label, w)
    loss.backward(torch.tensor(1.0))
    assert rel(loss.detach(), z["loss/cls_loss"]) <= TOL
    assert rel(logits.grad, z["diff/logits"]) <= TOL


@pytest.mark.parametrize("case", HEADS)
def test_v5_value_and_gradient_match_caffe(case):
    z, (lps, _) = load(case), layer_params(case)
    emb = torch.from_numpy(z["blob/emb"]).requires_grad_()
    label, att = torch.from_numpy(z["blob/label"]), torch.from_numpy(z["blob/att"])
    layer = DistanceWeightedValidPairLossV5(lps["osm"], [emb.shape, label.shape, att.shape], ctx())
    (loss,) = layer.forward(emb, label, att)
    assert rel(loss.detach(), z["loss_fwd/osm"]) <= TOL  # current value in forward: no lag in V5
    loss.backward(torch.tensor(1.0))
    assert rel(emb.grad, z["diff/emb"]) <= TOL


@pytest.mark.parametrize("case", HEADS)
def test_whole_head_through_the_net_matches_caffe(case):
    from rll_repro.net import Net

    z, (_, net_param) = load(case), layer_params(case)
    net = Net(net_param)
    net.keep_blob_diffs = True  # the test reads blob diffs after forward_backward
    assert net.dialect.name == "osm"
    for layer in ("fc_logits", "fc_feat"):
        for i, p in enumerate(net.params[layer]):
            p.data[...] = z[f"param/{layer}/{i}"]
    for blob in ("x", "label", "y"):
        net.blobs[blob].data[...] = z[f"input/{blob}"]
    net.clear_param_diffs()
    total = net.forward_backward()
    assert rel(total, float(z["loss/osm"]) + float(z["loss/cls_loss"])) <= TOL
    for blob in ("w", "emb", "att"):
        assert rel(net.blobs[blob].data, z[f"blob/{blob}"]) <= TOL
    for blob in ("emb", "logits", "feat"):
        assert rel(net.blobs[blob].diff, z[f"diff/{blob}"]) <= TOL
    for layer in ("fc_logits", "fc_feat"):
        for i, p in enumerate(net.params[layer]):
            assert rel(p.diff, z[f"paramdiff/{layer}/{i}"]) <= TOL


@pytest.mark.parametrize("labels,value", [([0.0, 1.0], 0.5 * float(np.float32(1.2)) ** 2), ([0.0, 0.0], 0.0)])
def test_v5_identical_embeddings_give_zero_gradient_not_nan(labels, value):
    """d = 0: the pair's difference is 0, so both pair types give a zero gradient (the negative
    pair's (m - d)/(d + 1e-4) is large but multiplies an exact zero)."""
    emb = torch.tensor([[0.6, 0.8], [0.6, 0.8]])
    v, grad = osm_caa_value_and_grad(emb, torch.tensor(labels), torch.tensor([0.3, 0.5]), 1.2, 0.8, 0.0)
    assert float(grad.abs().max()) == 0.0
    assert float(v) == pytest.approx(value, rel=1e-6)


def test_v5_keeps_the_one_over_p_factor():
    """Scaling N changes the gradient by 1/P (the contrastive layer's alpha = top_diff / P survives)."""
    z = load("osm_caa_head_cars")
    args = (torch.from_numpy(z["blob/emb"]), torch.from_numpy(z["blob/label"]), torch.from_numpy(z["blob/att"]))
    _, grad = osm_caa_value_and_grad(*args, 1.2, 0.8, 0.0)
    p = 14 * 13 // 2
    assert 1e-5 < float(grad.abs().max()) < 1.0 / p
    assert rel(grad, z["diff/emb"]) <= TOL


def test_labels_and_scores_cannot_receive_gradient():
    from rll_repro.errors import NetError

    lps, _ = layer_params("osm_caa_head_cars")
    bad = caffe_pb2.LayerParameter()
    bad.CopyFrom(lps["osm"])
    bad.propagate_down[2] = True
    with pytest.raises(NetError, match="propagate_down"):
        DistanceWeightedValidPairLossV5(bad, [(14, 16, 1, 1), (14,), (14, 1)], ctx())


def test_weighted_softmax_honours_ignore_label_and_does_not_normalise():
    lp = caffe_pb2.LayerParameter(name="wsm", type="WeightedSoftmaxWithLoss", bottom=["z", "l", "w"], top=["loss"])
    lp.loss_param.ignore_label = 2
    lp.loss_param.normalization = caffe_pb2.LossParameter.VALID  # parsed, ignored by the fork
    z = torch.tensor([[1.0, 2.0, 0.5], [0.1, 0.2, 3.0], [2.0, -1.0, 0.0]], requires_grad=True)
    labels, w = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.5, 0.25, 2.0])
    layer = WeightedSoftmaxWithLoss(lp, [z.shape, labels.shape, w.shape], ctx())
    (loss,) = layer.forward(z, labels, w)
    q = torch.softmax(z.detach().double(), 1)
    expected = -(0.5 * torch.log(q[0, 1]) + 2.0 * torch.log(q[2, 0]))
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward(torch.tensor(1.0))
    assert float(z.grad[1].abs().max()) == 0.0
    onehot = torch.zeros(3)
    onehot[1] = 1
    assert torch.allclose(z.grad[0].double(), 0.5 * (q[0] - onehot), rtol=1e-6, atol=1e-7)


def test_extract_prob_label_out_of_range_is_a_data_error():
    from rll_repro.errors import DataError

    lps, _ = layer_params("osm_caa_head_cars")
    prob = torch.full((3, 4), 0.25)
    layer = ExtractProb(lps["p_gt"], [prob.shape, (3,)], ctx())
    with pytest.raises(DataError, match="out of range"):
        layer.forward(prob, torch.tensor([0.0, 4.0, 1.0]))
