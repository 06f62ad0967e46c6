"""Faults: a non-finite loss or gradient stops training with one clear error; a kill -9 at any
moment never leaves a corrupt latest snapshot."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import rll_repro
from rll_repro.caffe import io as caffe_io
from rll_repro.errors import TrainingError
from rll_repro.recipes import digits
from rll_repro.train import Schedule, latest_snapshot, run_training

REPO = Path(__file__).resolve().parents[1]


class PoisonedSource:
    """Digits batches with one NaN pixel from iteration ``at`` on."""

    def __init__(self, at):
        self.inner, self.at = digits.batch_source(), at

    def batch(self, it):
        b = dict(self.inner.batch(it))
        if it >= self.at:
            b["data"] = b["data"].copy()
            b["data"][0, 0, 3, 3] = np.nan
        return b

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_nan_stops_training_naming_iteration_and_first_layer_and_keeps_snapshots(tmp_path):
    torch.set_num_threads(1)
    solver = rll_repro.get_solver(str(digits.prototxt("solver")))
    sched = Schedule(max_iter=10, output_interval=0, save_start=1, save_interval=1,
                     snapshot_prefix=str(tmp_path / "d"))
    with pytest.raises(TrainingError) as err:
        run_training(solver, PoisonedSource(at=3), sched, progress=False)
    message = str(err.value)
    assert "iteration 3:" in message and "input blob 'data'" in message and "\n" not in message
    assert solver.iter == 3  # stopped before the update of iteration 3
    latest = latest_snapshot(tmp_path / "d")
    assert latest is not None and latest.name == "d_iter_3.caffemodel.solverstate"
    assert not (tmp_path / "d_iter_4.caffemodel").exists()
    weights = solver.net.params["conv1"][0].data.copy()
    assert np.isfinite(weights).all()  # the NaN gradient was never applied
    fresh = rll_repro.get_solver(str(digits.prototxt("solver")))
    fresh.restore(latest)
    np.testing.assert_array_equal(fresh.net.params["conv1"][0].data, weights)


def test_nan_inside_the_net_names_the_layer_that_produced_it():
    solver = rll_repro.get_solver(str(digits.prototxt("solver")))
    src = digits.batch_source()
    solver.step(2, batches=src.batch)
    solver.net.params["conv2"][0].data[0, 0, 1, 1] = np.nan
    with pytest.raises(TrainingError, match=r"^iteration 2: non-finite gradient; first non-finite value in "
                                            r"layer 'conv2' \(top 'conv2'\)"):
        solver.step(1, batches=src.batch)


def test_nonfinite_gradient_alone_is_caught():
    solver = rll_repro.get_solver(str(digits.prototxt("solver")))
    src = digits.batch_source()
    solver.step(1, batches=src.batch)

    orig = solver.net.backward_losses  # the solver's backward on the tensor path

    def poisoned():
        orig()
        solver.net.learnable_params[-1].grad[0, 0] = float("inf")

    solver.net.backward_losses = poisoned
    with pytest.raises(TrainingError, match=r"iteration 1: non-finite gradient; .*layer 'fc'"):
        solver.step(1, batches=src.batch)


def _check_all_snapshots_readable(prefix: Path) -> int:
    states = sorted(prefix.parent.glob(prefix.name + "_iter_*.caffemodel.solverstate"))
    for state_path in states:
        state = caffe_io.read_solverstate(state_path)
        caffe_io.read_caffemodel(state_path.parent / Path(state.learned_net).name)
        assert Path(str(state_path) + ".rllstate").exists()
    return len(states)


def test_kill_9_during_training_never_leaves_a_corrupt_latest_snapshot(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rll_repro", "train", "--solver", str(digits.prototxt("solver")),
           "--data", "digits", "--out", str(out), "--save-start", "1", "--save-interval", "1",
           "--max-iter", "100000", "--threads", "1", "--quiet"]
    rng = random.Random()
    prefix = out / "digits"
    for attempt in range(2):  # second attempt resumes from the latest snapshot, killed again
        if attempt:
            cmd += ["--snapshot", str(latest_snapshot(prefix))]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while len(list(out.glob("digits_iter_*.caffemodel.solverstate"))) < 3 * (attempt + 1):
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "training did not start"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.4))  # kill at a random moment, mid-snapshot or mid-step
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert _check_all_snapshots_readable(prefix) >= 3
        latest = latest_snapshot(prefix)
        solver = rll_repro.get_solver(str(digits.prototxt("solver")))
        solver.restore(latest)
        assert solver.iter == int(latest.name.split("_iter_")[1].split(".")[0])
