"""rll_repro.losses: the standalone, pytorch-metric-learning-style API.

Caffe mode is checked against the Caffe oracle (same tolerance as the layer tests: 1e-6 of the
largest component, float32); paper mode with torch.autograd.gradcheck in float64 (its defaults,
eps 1e-6, atol 1e-5, rtol 1e-3).
"""
from __future__ import annotations

import pytest
import torch
from oracle_cases import case_arrays as load
from oracle_cases import rel

from rll_repro.errors import DataError, RLLReproError
from rll_repro.losses import OSMCAALoss, RankedListLoss



def test_ranked_list_loss_returns_current_value_and_caffe_gradient_at_the_raw_input():
    """normalize=True applies the RLL fork's Normalization; the value is this batch's (no lag)."""
    z = load("rll_sop_default")
    x = torch.from_numpy(z["input/data"]).reshape(12, -1).requires_grad_()
    loss = RankedListLoss(pn_margin=0.4, t_n=10.0, t_p=0.0)(x, torch.from_numpy(z["input/label"]))
    assert loss.dim() == 0
    loss.backward()
    assert rel(loss.detach(), z["loss/loss"]) <= 1e-6
    assert rel(x.grad, z["diff/data"].reshape(12, -1)) <= 1e-6


def test_ranked_list_loss_accepts_integer_labels():
    z = load("rll_bases")
    x = torch.from_numpy(z["blob/feat"]).reshape(10, -1).requires_grad_()
    loss_fn = RankedListLoss(pn_margin=0.6, t_p=1.0, base_p=2.0, t_n=8.0, base_n=3.0, normalize=False)
    loss_fn(x, torch.from_numpy(z["blob/label"]).long()).backward()
    assert rel(x.grad, z["diff/feat"].reshape(10, -1)) <= 1e-6


def test_osm_caa_loss_matches_caffe_from_the_pre_normalisation_features():
    z = load("osm_caa_head_cars")
    feat = torch.from_numpy(z["blob/feat"]).reshape(14, -1).requires_grad_()
    loss = OSMCAALoss(margin=1.2, sigma=0.8)(feat, torch.from_numpy(z["blob/label"]).long(),
                                              torch.from_numpy(z["blob/att"]).reshape(-1))
    loss.backward()
    assert rel(loss.detach(), z["loss/osm"]) <= 1e-6
    relu_mask = feat.detach() > 0  # the fixture's diff/feat is after the in-place ReLU backward
    assert rel(feat.grad * relu_mask, z["diff/feat"].reshape(14, -1)) <= 1e-6


def test_incoming_gradient_scales_the_caffe_gradient():
    torch.manual_seed(0)
    x = torch.randn(9, 4, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    RankedListLoss()(x, y).backward()
    g1 = x.grad.clone()
    x.grad = None
    (0.5 * RankedListLoss()(x, y)).backward()
    assert torch.allclose(x.grad, 0.5 * g1, rtol=1e-6, atol=0)


def test_cvpr19_variant_uses_raw_differences():
    torch.manual_seed(1)
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    RankedListLoss(variant="cvpr19")(x, y).backward()
    g_old = x.grad.clone()
    x.grad = None
    RankedListLoss()(x, y).backward()
    assert not torch.allclose(g_old, x.grad)


@pytest.mark.parametrize("t_p", [0.0, 1.0])
def test_paper_mode_ranked_list_loss_passes_gradcheck(t_p):
    torch.manual_seed(2)
    x = torch.randn(10, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    loss_fn = RankedListLoss(mode="paper", t_p=t_p)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, y), (x,))


def test_paper_mode_osm_caa_loss_passes_gradcheck():
    torch.manual_seed(3)
    x = torch.randn(10, 5, dtype=torch.float64).abs().requires_grad_()
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    a = torch.rand(10, dtype=torch.float64)
    loss_fn = OSMCAALoss(mode="paper")
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, y, a), (x,))


def test_paper_and_caffe_modes_differ():
    torch.manual_seed(4)
    x = torch.randn(12, 6)
    y = torch.arange(12) % 3
    assert float(RankedListLoss(mode="paper")(x, y)) != pytest.approx(float(RankedListLoss()(x, y)), rel=1e-3)


def bad_calls():
    x = torch.randn(6, 4)
    y = torch.arange(6) % 2
    a = torch.rand(6)
    rll, osm = RankedListLoss(), OSMCAALoss()
    return {
        "labels wrong length": lambda: rll(x, y[:5]),
        "labels bool": lambda: rll(x, y.bool()),
        "labels not a tensor": lambda: rll(x, [0, 1, 0, 1, 0, 1]),
        "labels NaN": lambda: rll(x, torch.tensor([0.0, 1, float("nan"), 1, 0, 1])),
        "embeddings NaN": lambda: rll(torch.where(x > 1, float("nan"), x), y),
        "embeddings Inf": lambda: osm(torch.where(x > 1, float("inf"), x), y, a),
        "embeddings int": lambda: rll(x.long(), y),
        "embeddings half": lambda: rll(x.half(), y),
        "embeddings 1-D": lambda: rll(x[:, 0], y),
        "one sample": lambda: rll(x[:1], y[:1]),
        "zero samples": lambda: osm(x[:0], y[:0], a[:0]),
        "attention wrong length": lambda: osm(x, y, a[:3]),
        "attention negative": lambda: osm(x, y, -a),
        "zero embedding without epsilon": lambda: rll(torch.cat([torch.zeros(1, 4), x[1:]]), y),
    }


@pytest.mark.parametrize("case", sorted(bad_calls()))
def test_bad_input_is_a_one_line_data_error(case):
    with pytest.raises(DataError) as info:
        bad_calls()[case]()
    assert isinstance(info.value, RLLReproError)
    message = str(info.value)
    assert "\n" not in message and message.split(":")[0] in ("RankedListLoss", "OSMCAALoss")


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        RankedListLoss(mode="pml")


@pytest.mark.parametrize("mode", ["caffe", "paper"])
@pytest.mark.parametrize("row", [0.0, 1e-30], ids=["zero", "underflowing"])
def test_an_embedding_whose_squared_norm_is_zero_is_a_data_error_not_a_silent_nan(mode, row):
    """Issue 11.6c: float32 x*x underflows for |x| ~ 1e-30, so normalising gives 0/0 = NaN."""
    from rll_repro.errors import DataError
    from rll_repro.losses import RankedListLoss

    emb = torch.randn(6, 4)
    emb[2] = row
    with pytest.raises(DataError, match="embedding 2 has a squared norm of 0"):
        RankedListLoss(mode=mode)(emb, torch.arange(6) % 3)


def test_huge_finite_embeddings_whose_sum_overflows_are_accepted():
    """The finite check sums the batch first; an overflowing sum of finite values (3e38 each) must
    fall back to the elementwise test, not be reported as NaN/Inf."""
    x = torch.full((6, 4), 3e38)
    x[:, 1] = torch.arange(6.0) * 1e37
    loss = RankedListLoss()(x, torch.tensor([0, 1, 0, 1, 0, 1]))
    assert torch.isfinite(loss)
