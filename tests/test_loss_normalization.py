"""Normalization in both forks against real Caffe outputs (forward and backward).

Fixtures: tests/fixtures/losses/{normalization_l2 (RLL fork), osm_normalization_l1, osm_normalization_l2}.
Tolerance: 1e-6 of the largest component in float32 (measured <= 1.7e-7: Caffe's BLAS asum/dot
order for the squared norm is the only difference).
"""
from __future__ import annotations

import pytest
import torch
from oracle_cases import case_arrays, case_net, rel

from rll_repro.caffe import caffe_pb2
from rll_repro.errors import NetError
from rll_repro.layers.base import DIALECTS, BuildContext
from rll_repro.layers.normalization import Normalization, l2_normalize

TOL = 1e-6


def norm_layer(case, dialect):
    net = case_net(case)
    lp = next(lp for lp in net.layer if lp.type == "Normalization")
    z = case_arrays(case)
    return Normalization(lp, [z["input/data"].shape], BuildContext(dialect=DIALECTS[dialect])), z


@pytest.mark.parametrize("case,dialect", [("normalization_l2", "rll"), ("osm_normalization_l2", "osm"),
                                          ("osm_normalization_l1", "osm")])
def test_forward_and_backward_match_caffe(case, dialect):
    layer, z = norm_layer(case, dialect)
    x = torch.from_numpy(z["input/data"]).requires_grad_()
    (y,) = layer.forward(x)
    y.backward(torch.from_numpy(z["topdiff/out"]))
    assert rel(y.detach(), z["blob/out"]) <= TOL
    assert rel(x.grad, z["diff/data"]) <= TOL


def test_osm_l1_normalises_the_first_n_elements_across_the_batch():
    layer, z = norm_layer("osm_normalization_l1", "osm")
    (y,) = layer.forward(torch.from_numpy(z["input/data"]))
    flat = y.reshape(-1)
    n = z["input/data"].shape[0]
    assert abs(float(flat[:n].abs().sum()) - 1) < 1e-6
    assert float(flat[n:].abs().max()) == 0.0  # never written by Caffe


def test_rll_l2_has_no_epsilon_osm_l2_adds_1e_12():
    x = torch.zeros(2, 3)
    x[1] = 1.0
    assert bool(torch.isnan(l2_normalize(x, DIALECTS["rll"].l2_normalization_eps)[0]).all())
    assert float(l2_normalize(x, DIALECTS["osm"].l2_normalization_eps)[0].abs().max()) == 0.0
    tiny = torch.full((1, 4), 1e-7)  # |x|^2 = 4e-14: the epsilon dominates in the OSM fork
    assert float(l2_normalize(tiny, 0.0).norm()) == pytest.approx(1.0, rel=1e-6)
    assert float(l2_normalize(tiny, 1e-12).norm()) < 0.25


def test_l1_in_the_rll_dialect_is_a_clear_error():
    layer_param = caffe_pb2.LayerParameter(name="n1", type="Normalization", bottom=["a"], top=["b"])
    layer_param.normalization_param.norm = caffe_pb2.NormalizationParameter.L1
    with pytest.raises(NetError, match="n1"):
        Normalization(layer_param, [(4, 1)], BuildContext(dialect=DIALECTS["rll"]))


def test_float64_input_stays_float64():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    y = l2_normalize(x, 1e-12)
    y.backward(torch.ones_like(y))
    assert y.dtype == x.grad.dtype == torch.float64
    expected = torch.nn.functional.normalize(x.detach(), dim=1)
    assert torch.allclose(y.detach(), expected, rtol=1e-12, atol=0)
