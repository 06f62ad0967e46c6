"""Layer-level rules of the loss layers: registration, bottoms, N < 2, the CVPR-era layer and the
solver-side annealing hook (SPEC rll §3.2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rll_repro.caffe import caffe_pb2
from rll_repro.errors import NetError
from rll_repro.layers import layer_class
from rll_repro.layers.base import DIALECTS, BuildContext
from rll_repro.layers.rll import (
    DistanceWeightedValidPairLossV12,
    DistanceWeightedValidPairLossV12CVPR19,
    RLLParams,
    anneal_toward_solver_targets,
    rll_cvpr19_value_and_grad,
)


def v12_param(type_name="DistanceWeightedValidPairLossV12", **fields):
    lp = caffe_pb2.LayerParameter(name="loss", type=type_name, bottom=["feat", "label"], top=["loss"])
    lp.propagate_down.extend([True, False])
    for key, value in fields.items():
        sub, field = key.split("__")
        setattr(getattr(lp, sub), field, value)
    return lp


@pytest.mark.parametrize("type_name", ["DistanceWeightedValidPairLossV12", "DistanceWeightedValidPairLossV5",
                                       "Normalization", "Gaussian", "ExtractProb", "WeightedSoftmaxWithLoss",
                                       "DistanceWeightedValidPairLossV12CVPR19"])
def test_every_loss_type_is_registered(type_name):
    assert layer_class(type_name).type_names == (type_name,)


@pytest.mark.parametrize("shapes", [[(1, 4, 1, 1), (1,)], [(0, 4), (0,)]])
def test_fewer_than_two_samples_is_a_net_error(shapes):
    """Caffe would compute 0/0 = NaN for N = 1; the port refuses to build/reshape instead."""
    with pytest.raises(NetError, match="at least 2"):
        DistanceWeightedValidPairLossV12(v12_param(), shapes, BuildContext())


def test_label_count_must_match_batch():
    with pytest.raises(NetError, match="labels"):
        DistanceWeightedValidPairLossV12(v12_param(), [(6, 4, 1, 1), (5,)], BuildContext())


def test_backprop_to_labels_is_a_net_error():
    lp = v12_param()
    lp.propagate_down[1] = True
    with pytest.raises(NetError, match="propagate_down"):
        DistanceWeightedValidPairLossV12(lp, [(6, 4, 1, 1), (6,)], BuildContext())


def test_no_gradient_needed_means_no_value_computed():
    """Without propagate_down[0] Caffe's Backward does nothing, so the top keeps its old value."""
    layer = DistanceWeightedValidPairLossV12(v12_param(), [(6, 4, 1, 1), (6,)], BuildContext())
    (top,) = layer.forward(torch.randn(6, 4, 1, 1), torch.arange(6.0) % 2)
    assert float(top) == 0.0 and layer.after_backward() is None


def test_cvpr19_layer_reads_margin_default_1_4_and_reports_the_current_value():
    layer = DistanceWeightedValidPairLossV12CVPR19(v12_param("DistanceWeightedValidPairLossV12CVPR19"),
                                                   [(8, 4, 1, 1), (8,)], BuildContext())
    assert layer.params.negative_threshold == float(np.float32(1.4))
    torch.manual_seed(0)
    feat = torch.nn.functional.normalize(torch.randn(8, 4, 1, 1), dim=1).requires_grad_()
    labels = torch.arange(8.0) % 3
    (top,) = layer.forward(feat, labels)
    value, grad = rll_cvpr19_value_and_grad(feat.detach(), labels, layer.params)
    assert float(top.detach()) == float(value) != 0.0
    top.backward(torch.tensor(1.0))
    assert torch.equal(feat.grad, grad)
    assert layer.after_backward() is None


def solver(**fields):
    sp = caffe_pb2.SolverParameter(max_iter=100)
    for k, v in fields.items():
        setattr(sp, k, v)
    return sp


def test_annealing_is_a_no_op_when_solver_targets_equal_layer_values():
    layer = DistanceWeightedValidPairLossV12(v12_param(), [(6, 4, 1, 1), (6,)], BuildContext())
    before = layer.params
    assert anneal_toward_solver_targets(layer, solver(), 0)
    assert layer.params == before


def test_annealing_moves_linearly_toward_the_solver_target_in_float32():
    """x <- x - (x - target)/(max_iter - it + 1): after the update at iteration t,
    x = target + (a - target)(max_iter - t)/(max_iter + 1)."""
    lp = v12_param(softmax_t_n_param__scale=12.0, contrastive_loss_param_v2__pn_margin=0.6)
    layer = DistanceWeightedValidPairLossV12(lp, [(6, 4, 1, 1), (6,)], BuildContext())
    sp = solver(n_temperature=10.0, pn_margin=0.4)
    x = np.float32(12.0)
    for it in range(5):
        anneal_toward_solver_targets(layer, sp, it)
        x = np.float32(x - np.float32(np.float32(x - np.float32(10.0)) / np.float32(100 - it + 1)))
        assert layer.params.scale_n == float(x)
    assert layer.params.scale_n == pytest.approx(10 + 2 * (100 - 4) / 101, rel=1e-6)
    assert layer.params.pn_margin == pytest.approx(0.4 + 0.2 * (100 - 4) / 101, rel=1e-6)
    assert layer.params.base_n == float(np.float32(2.71828))  # bases are never annealed


def test_annealing_ignores_other_layers():
    layer = DistanceWeightedValidPairLossV12CVPR19(v12_param("DistanceWeightedValidPairLossV12CVPR19"),
                                                   [(6, 4, 1, 1), (6,)], BuildContext())
    before = layer.params
    assert not anneal_toward_solver_targets(layer, solver(n_temperature=1.0), 0)
    assert layer.params == before


def test_annealed_members_are_used_by_the_next_backward():
    lp = v12_param(softmax_t_n_param__scale=10.0)
    layer = DistanceWeightedValidPairLossV12(lp, [(8, 4, 1, 1), (8,)], BuildContext(dialect=DIALECTS["rll"]))
    anneal_toward_solver_targets(layer, solver(max_iter=1, n_temperature=2.0), 0)
    assert layer.params == RLLParams(scale_n=float(np.float32(10 - np.float32(8) / 2)))


def test_annealing_holds_the_targets_past_max_iter():
    """At it == max_iter the formula lands on the target; past it Caffe's divisor would be 0
    (NaN members). Training past max_iter (reproduce --max-iter) must keep finite targets."""
    lp = v12_param(softmax_t_n_param__scale=12.0)
    layer = DistanceWeightedValidPairLossV12(lp, [(6, 4, 1, 1), (6,)], BuildContext())
    sp = solver(max_iter=3, n_temperature=10.0)
    for it in range(6):
        anneal_toward_solver_targets(layer, sp, it)
    assert layer.params.scale_n == 10.0
    assert all(np.isfinite(v) for v in vars(layer.params).values() if isinstance(v, float))
