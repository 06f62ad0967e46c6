"""The committed bindings match caffe.proto, and the schema carries both forks' fields exactly."""
from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys

import pytest

from rll_repro.caffe import caffe_pb2

from conftest import REPO

PROTO = REPO / "rll_repro" / "caffe" / "caffe.proto"
PB2 = REPO / "rll_repro" / "caffe" / "caffe_pb2.py"


def test_bindings_were_generated_from_the_current_proto():
    """tools/gen_proto.py stamps the .proto hash into caffe_pb2.py; an edit without regenerating fails."""
    stamp = next(line for line in PB2.read_text().splitlines() if line.startswith("# caffe.proto sha256: "))
    assert stamp.split(": ")[1] == hashlib.sha256(PROTO.read_bytes()).hexdigest(), \
        "caffe.proto changed: run .venv/bin/python tools/gen_proto.py"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (dev extra) not installed")
def test_regenerating_the_bindings_reproduces_the_committed_file():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gen_proto.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bindings_have_no_runtime_version_gate():
    """One committed file serves every protobuf runtime in the pinned range (>= 5.26, < 7)."""
    assert "ValidateProtobufRuntimeVersion" not in PB2.read_text()


def _field(message, name):
    return message.DESCRIPTOR.fields_by_name[name]


@pytest.mark.parametrize("message,name,number,default", [
    # SPEC rll 3.1
    (caffe_pb2.LayerParameter, "contrastive_loss_param_v2", 10641, None),
    (caffe_pb2.ContrastiveLossParameterV2, "negative_threshold", 1, 1.2),
    (caffe_pb2.ContrastiveLossParameterV2, "legacy_version", 2, False),
    (caffe_pb2.ContrastiveLossParameterV2, "pn_margin", 3, 0.4),
    (caffe_pb2.LayerParameter, "softmax_t_p_param", 10638, None),
    (caffe_pb2.SoftmaxTPParameter, "scale", 1, 0.0),
    (caffe_pb2.SoftmaxTPParameter, "base", 2, 2.71828),
    (caffe_pb2.LayerParameter, "softmax_t_n_param", 10639, None),
    (caffe_pb2.SoftmaxTNParameter, "scale", 1, 10.0),
    (caffe_pb2.SoftmaxTNParameter, "base", 2, 2.71828),
    (caffe_pb2.LayerParameter, "normalization_param", 111150, None),
    (caffe_pb2.NormalizationParameter, "norm", 1, caffe_pb2.NormalizationParameter.L2),
    (caffe_pb2.SolverParameter, "negative_threshold", 44, 1.2),
    (caffe_pb2.SolverParameter, "pn_margin", 43, 0.4),
    (caffe_pb2.SolverParameter, "p_temperature", 42, 0.0),
    (caffe_pb2.SolverParameter, "n_temperature", 41, 10.0),
    # SPEC osm_caa 4
    (caffe_pb2.LayerParameter, "gaussian_param", 10634, None),
    (caffe_pb2.GaussianParameter, "sigma", 1, 0.18),
    (caffe_pb2.GaussianParameter, "mean", 2, 0.5),
    (caffe_pb2.LayerParameter, "batch_pool_param", 11149, None),
    (caffe_pb2.BatchPoolParameter, "pool", 1, caffe_pb2.BatchPoolParameter.AVE),
    (caffe_pb2.LayerParameter, "contrastive_loss_param", 105, None),
    (caffe_pb2.ContrastiveLossParameter, "margin", 1, 1.0),
    (caffe_pb2.LossParameter, "pre_fixed_normalizer", 4, 1.0),
    (caffe_pb2.ReshapeParameter, "default_insert", 4, 1),
    (caffe_pb2.DropoutParameter, "scale_train", 2, True),
    (caffe_pb2.NetParameter, "mem_param", 200, None),
])
def test_fork_field_has_the_forks_number_and_default(message, name, number, default):
    field = _field(message, name)
    assert field.number == number
    if default is not None:
        assert field.default_value == pytest.approx(default, rel=1e-7)


def test_float_defaults_are_float32_like_caffe():
    """Defaults are float fields: 1.2 reads back as float32(1.2), as in Caffe."""
    import numpy as np
    assert caffe_pb2.SolverParameter().negative_threshold == float(np.float32(1.2))


def test_layer_146_to_148_keep_bvlc_meaning_and_fork_names_still_parse():
    """Collision note 1: numbers 146-148 are BVLC's; the fork's names parse from text."""
    from google.protobuf import text_format
    assert _field(caffe_pb2.LayerParameter, "recurrent_param").number == 146
    assert _field(caffe_pb2.LayerParameter, "swish_param").number == 147
    assert _field(caffe_pb2.LayerParameter, "clip_param").number == 148
    layer = text_format.Parse('name: "n" type: "Normalize" normalize_param { coeff: 2 }', caffe_pb2.LayerParameter())
    assert layer.normalize_param.coeff == 2


def test_solver_41_42_are_the_rll_fork_fields_and_bvlc_names_still_parse():
    """Collision note 2."""
    from google.protobuf import text_format
    solver = text_format.Parse('layer_wise_reduce: false weights: "a.caffemodel" n_temperature: 12',
                               caffe_pb2.SolverParameter())
    assert solver.n_temperature == 12 and list(solver.weights) == ["a.caffemodel"]
    assert not solver.layer_wise_reduce


def test_loss_normalization_uses_fork_numbering():
    """Collision note 3: PRE_FIXED = 3, NONE = 4 (BVLC NONE = 3 decodes as PRE_FIXED with normaliser 1)."""
    mode = caffe_pb2.LossParameter.NormalizationMode
    assert mode.Value("PRE_FIXED") == 3 and mode.Value("NONE") == 4
    bvlc_none = caffe_pb2.LossParameter()
    bvlc_none.ParseFromString(b"\x18\x03")  # field 3, varint 3: what BVLC writes for NONE
    assert bvlc_none.normalization == mode.Value("PRE_FIXED") and bvlc_none.pre_fixed_normalizer == 1.0


def test_pooling_round_mode_defaults_to_ceil_like_the_forks():
    """Collision note 4."""
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert _field(caffe_pb2.PoolingParameter, "round_mode").number == 13
