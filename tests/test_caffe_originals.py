"""Every prototxt and solver the papers (and the oracle cases) ship parses with our schema."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SHARED
from rll_repro.caffe import io as caffe_io

ORIGINALS = sorted((SHARED / "reference").glob("*/original/**/*.prototxt"))
ORACLE = sorted((SHARED / "oracle").glob("**/*.prototxt"))


def _id(path: Path) -> str:
    return str(path.relative_to(SHARED))


def _read(path: Path):
    kind = caffe_io.detect_kind(path)
    reader = caffe_io.read_solver_prototxt if kind == "solver_prototxt" else caffe_io.read_net_prototxt
    return kind, reader(path)


def test_the_originals_are_there(shared):
    shared("reference", "rll", "original")
    assert len(ORIGINALS) >= 40


@pytest.mark.parametrize("path", ORIGINALS, ids=_id)
def test_original_prototxt_parses(path):
    kind, message = _read(path)
    if kind == "net_prototxt":
        assert len(message.layer) > 0 and not len(message.layers)
    else:
        assert message.HasField("base_lr")


@pytest.mark.parametrize("path", ORACLE, ids=_id)
def test_oracle_prototxt_parses(path):
    kind, message = _read(path)
    assert kind == ("solver_prototxt" if path.name == "solver.prototxt" else "net_prototxt")


def test_rll_solver_fork_fields_are_read(shared):
    """SPEC rll 3.1: the RLL solvers set pn_margin / p_temperature / n_temperature (fork numbers 41-44)."""
    solver = caffe_io.read_solver_prototxt(shared("oracle", "rll", "solver", "sgd_multistep_anneal", "solver.prototxt"))
    assert (solver.pn_margin, solver.p_temperature, solver.n_temperature) == pytest.approx((0.2, 1.0, 14.0))


def test_rll_train_net_fork_layer_params_are_read(shared):
    """The SOP train net's RLL layer carries contrastive_loss_param_v2 and the two temperature params."""
    net = caffe_io.read_net_prototxt(shared("oracle", "rll", "net_sop_train", "net.prototxt"))
    rll = [layer for layer in net.layer if layer.type == "DistanceWeightedValidPairLossV12"]
    assert len(rll) == 3
    assert all(layer.HasField("contrastive_loss_param_v2") for layer in rll)
    assert {round(layer.softmax_t_n_param.scale, 4) for layer in rll} == {10.0}
    norms = [layer for layer in net.layer if layer.type == "Normalization"]
    assert norms and all(layer.normalization_param.norm == layer.normalization_param.L2 for layer in norms)


def test_legacy_net_inputs_become_an_input_layer(shared):
    """Caffe's UpgradeNetInput: `input:` + `input_dim:` in a deploy net -> Input layer 'input' first."""
    net = caffe_io.read_net_prototxt(shared("realdata", "caffe", "bn_inception_rll_sop", "test_H.prototxt"))
    first = net.layer[0]
    assert (first.name, first.type) == ("input", "Input")
    assert len(first.input_param.shape) == 1 and len(first.input_param.shape[0].dim) == 4
    assert not len(net.input) and not len(net.input_dim)
