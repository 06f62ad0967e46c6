"""Exports checked against real Caffe recordings (../shared/oracle, read in place).

- Every layer case whose layers are all deploy-time layers (no loss, no BatchNorm/Dropout statistics
  recorded in the TRAIN phase): the generated module, run in a process where ``import rll_repro``
  fails, and the ONNX file under onnxruntime, each against ``rll_repro.Net`` and against the blobs
  Caffe recorded.
- The SOP deploy net in TEST phase (global BatchNorm statistics, after the recorded two copy_from):
  its 192-d embedding for the recorded batch of 4.

Tolerance 1e-5 relative (see test_export_helpers); the Caffe recordings differ from the Net by up
to 1.3e-6 on these nets.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from conftest import FIXTURES, SHARED
from rll_repro.caffe import caffe_pb2
from rll_repro.export.pysource import EXPORTABLE_TYPES, generate, instantiate
from test_export_helpers import TOL, net_outputs, onnx_bytes_or_skip, rel, run_onnx, run_standalone

ORACLE_DIRS = [SHARED / "oracle" / "rll" / "layers", SHARED / "oracle" / "osm_caa" / "layers"]


def _phase(case) -> str:
    readme = (case / "README.txt").read_text() if (case / "README.txt").exists() else ""
    return "test" if "TEST" in readme else "train"


def _deploy_time(case) -> bool:
    """All layers exportable, and none whose TEST-phase forward differs from a TRAIN recording."""
    net = text_format.Parse((case / "net.prototxt").read_text(), caffe_pb2.NetParameter())
    types = {lp.type for lp in net.layer}
    if not types <= EXPORTABLE_TYPES:
        return False
    if _phase(case) == "train":
        if "BatchNorm" in types:
            return False
        if any(lp.type == "Dropout" and lp.dropout_param.dropout_ratio > 0 for lp in net.layer):
            return False
    return True


def _cases():
    found = {}
    for root in ORACLE_DIRS:
        if root.is_dir():
            for case in sorted(root.iterdir()):
                if (case / "case.npz").exists() and _deploy_time(case):
                    found[f"{root.parent.name}/{case.name}"] = case
    if (FIXTURES / "layers").is_dir():  # the small copies run even without ../shared
        for case in sorted((FIXTURES / "layers").iterdir()):
            if (case / "case.npz").exists() and _deploy_time(case):
                fork, _, name = case.name.partition("__")
                found.setdefault(f"{fork}/{name}", case)
    return found


CASES = _cases()


def _build(case):
    from rll_repro.net import Net

    weights = case / "weights.caffemodel"
    dialect = "osm" if "osm_caa" in str(case) or case.name.startswith("osm_caa__") else "rll"
    return Net(case / "net.prototxt", weights=weights if weights.exists() else None, phase="test", dialect=dialect)


@pytest.fixture(scope="module")
def exported_cases(tmp_path_factory):
    """case id -> (inputs, recorded blobs, Net outputs, generated, standalone outputs)."""
    if not CASES:
        pytest.skip(f"no oracle layer cases under {SHARED / 'oracle'} or tests/fixtures/layers")
    rows, jobs = {}, []
    for case_id, case in sorted(CASES.items()):
        z = np.load(case / "case.npz")
        net = _build(case)
        inputs = {k[len("input/"):]: z[k] for k in z.files if k.startswith("input/")}
        generated = generate(net)
        recorded = {b: z[f"blob/{b}"] for b in generated.outputs if f"blob/{b}" in z.files}
        rows[case_id] = [inputs, recorded, net_outputs(net, generated, inputs), generated]
        jobs.append((generated, inputs))
    for case_id, out in zip(sorted(rows), run_standalone(jobs, tmp_path_factory.mktemp("standalone"))):
        rows[case_id].append(out)
    return rows


def test_the_deploy_time_layer_cases_are_found():
    if not CASES:
        pytest.skip("no oracle layer cases")
    # conv, pooling, LRN, Eltwise, Concat, Softmax, Scale, BatchNorm (TEST), Normalization, ...
    assert len(CASES) >= 20, sorted(CASES)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_generated_module_without_rll_repro_matches_net_and_caffe(exported_cases, case_id):
    inputs, recorded, reference, generated, standalone = exported_cases[case_id]
    assert recorded, f"{case_id}: no recorded output blob"
    for blob in generated.outputs:
        assert rel(standalone[blob], reference[blob]) <= TOL, blob
        if blob in recorded:
            assert rel(standalone[blob], recorded[blob]) <= TOL, blob


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_onnx_file_under_onnxruntime_matches_net_and_caffe(exported_cases, case_id):
    inputs, recorded, reference, generated, _ = exported_cases[case_id]
    out = run_onnx(onnx_bytes_or_skip(generated), inputs)
    assert list(out) == list(generated.outputs)  # the graph outputs carry the Caffe blob names
    for blob in generated.outputs:
        assert rel(out[blob], reference[blob]) <= TOL, blob
        if blob in recorded:
            assert rel(out[blob], recorded[blob]) <= TOL, blob


def test_sop_deploy_net_exports_match_caffe_embedding(shared, tmp_path):
    from oracle_cases import sop_deploy_case

    net, z = sop_deploy_case(shared)
    inputs = {"data": z["input/data"]}
    generated = generate(net)
    assert generated.outputs == ["pool5/7x7_s1"]
    feature = z["feature/pool5/7x7_s1"]
    reference = net_outputs(net, generated, inputs)["pool5/7x7_s1"]
    assert rel(reference, feature) <= TOL
    (standalone,) = run_standalone([(generated, inputs)], tmp_path)
    assert rel(standalone["pool5/7x7_s1"], feature) <= TOL
    assert rel(standalone["pool5/7x7_s1"], reference) <= TOL
    out = run_onnx(onnx_bytes_or_skip(generated), inputs)
    assert rel(out["pool5/7x7_s1"], feature) <= TOL
    assert rel(out["pool5/7x7_s1"], reference) <= TOL


def test_generated_module_in_process_is_bitwise_the_net_on_a_bn_scale_case():
    """The module does the Net's own float32 operations: BatchNorm's 1/s, then Scale's x·γ + β."""
    case = CASES.get("osm_caa/bn_scale_test")
    if case is None:
        pytest.skip("bn_scale_test case absent")
    z = np.load(case / "case.npz")
    net = _build(case)
    generated = generate(net)
    assert "CaffeBatchNorm" in generated.source and "CaffeScale" in generated.source
    with torch.no_grad():
        ours = instantiate(generated)(torch.from_numpy(z["input/data"])).numpy()
    np.testing.assert_array_equal(ours, net_outputs(net, generated, {"data": z["input/data"]})["out"])
