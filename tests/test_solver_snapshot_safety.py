"""Snapshots are files people exchange: the resume side file is plain data read with
``torch.load(weights_only=True)``, and no snapshot is ever written holding NaN weights (issue 11.6a,
11.6c)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

import rll_repro
from rll_repro.errors import FormatError, TrainingError
from rll_repro.solver import SIDE_SUFFIX

DIGITS = Path(__file__).resolve().parents[1] / "prototxt/digits"


def _solver(tmp_path):
    solver = rll_repro.get_solver(str(DIGITS / "solver.prototxt"))
    solver.param.snapshot_prefix = str(tmp_path / "digits")
    return solver


def _batch(net, seed=0):
    rng = np.random.default_rng(seed)
    return {"data": rng.standard_normal(net.blobs["data"].shape).astype(np.float32),
            "label": (np.arange(net.blobs["label"].shape[0]) % 5).astype(np.float32)}


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_a_side_file_carrying_code_is_refused_and_never_runs(tmp_path):
    solver = _solver(tmp_path)
    batch = _batch(solver.net)
    solver.step(1, batches=lambda it: batch)
    _, state = solver.snapshot()
    marker = tmp_path / "marker.txt"
    buf = io.BytesIO()
    torch.save({"format": 2, "iter": 1, "payload": _Payload(marker)}, buf)
    Path(state + SIDE_SUFFIX).write_bytes(buf.getvalue())
    fresh = _solver(tmp_path)
    with pytest.raises(FormatError, match=r"rllstate: cannot read the resume side file"):
        fresh.restore(state)
    assert not marker.exists()


def test_the_side_file_round_trips_with_weights_only(tmp_path):
    solver = _solver(tmp_path)
    solver.state_hooks["sampler"] = (lambda: {"seed": 3, "iteration": 1, "order": np.arange(4)},
                                     lambda s: None)
    batch = _batch(solver.net)
    solver.step(1, batches=lambda it: batch)
    _, state = solver.snapshot()
    loaded = torch.load(state + SIDE_SUFFIX, weights_only=True)  # plain data only
    assert loaded["iter"] == 1 and "rng" in loaded
    got = {}
    fresh = _solver(tmp_path)
    fresh.state_hooks["sampler"] = (lambda: {}, got.update)
    fresh.restore(state)
    assert fresh.iter == 1 and got["seed"] == 3
    np.testing.assert_array_equal(got["order"], np.arange(4))


def test_no_snapshot_is_written_holding_nan_weights(tmp_path):
    solver = _solver(tmp_path)
    batch = _batch(solver.net)
    solver.step(1, batches=lambda it: batch)
    with torch.no_grad():
        solver.net.params["conv1/bn"][1].param[0] = float("nan")  # a BatchNorm running blob
    with pytest.raises(TrainingError, match=r"conv1/bn.*not writing a snapshot.*no snapshot was written"):
        solver.snapshot()
    assert not list(tmp_path.glob("digits_iter_*"))


def test_the_message_names_the_last_intact_snapshot(tmp_path):
    solver = _solver(tmp_path)
    batch = _batch(solver.net)
    solver.step(1, batches=lambda it: batch)
    solver.snapshot()
    bad = dict(batch, data=np.full_like(batch["data"], np.nan))
    with pytest.raises(TrainingError, match=r"the last snapshot \(iteration 1\) is intact"):
        solver.step(1, batches=lambda it: bad)
