"""Training results do not depend on the machine's thread count by default, and a run records the
thread count (and torch / BLAS) it used.

On the CPU the float32 convolution weight gradient is a batch sum split across threads, so runs
with 1 and 2 threads differ (see rll_repro/train.py); whether they differ on a given CPU is not
what is tested. What is: without --threads, runs under different OMP_NUM_THREADS (torch's own
default thread count) use the same count and give bitwise the same weights; with --threads the
count is recorded, so two runs whose numbers differ always say so in their records.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

import rll_repro
from rll_repro import cli
from rll_repro.recipes import digits
from rll_repro.train import DEFAULT_THREADS, Schedule, configure_threads, run_training
from rll_repro.trainlog import GlogWriter

REPO = Path(__file__).resolve().parents[1]


def _train_cli(out: Path, *extra: str) -> list[str]:
    return ["train", "--solver", str(digits.prototxt("solver")), "--data", "digits", "--out", str(out),
            "--max-iter", "4", "--quiet", *extra]


def _recorded(out: Path) -> tuple[int, int, bytes]:
    """(threads in history.json, threads in the log header, final weights file bytes)."""
    env = json.loads((out / "history.json").read_text())["segments"][-1]["environment"]
    header = re.search(r"\] Environment: threads=(\d+) torch=\S+ numpy=\S+ blas=\S+",
                       (out / "train.log").read_text())
    assert header, "the log header records the thread count, torch and BLAS"
    return env["threads"], int(header.group(1)), (out / "digits_iter_4.caffemodel").read_bytes()


def test_runs_are_the_same_whatever_the_thread_count_torch_would_pick(tmp_path):
    """A child process whose torch starts with 2 threads (OMP_NUM_THREADS=2) and runs here with
    torch set to 3 and to 2 threads first, all without --threads: the same count, the same weights.
    With --threads 2 the count is honoured and recorded, so a run whose numbers differ says so."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    child = subprocess.Popen([sys.executable, "-m", "rll_repro", *_train_cli(tmp_path / "omp2")], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = torch.get_num_threads()
    try:
        for name, preset, extra in (("preset3", 3, ()), ("preset2", 2, ()), ("threads2", 1, ("--threads", "2"))):
            torch.set_num_threads(preset)  # what torch would have chosen on some machine
            assert cli.main(_train_cli(tmp_path / name, *extra)) == 0
    finally:
        torch.set_num_threads(before)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    omp2, preset3, preset2, threads2 = (_recorded(tmp_path / n) for n in ("omp2", "preset3", "preset2", "threads2"))
    for run in (omp2, preset3, preset2):  # the default: one fixed count, so the same numbers
        assert run[:2] == (DEFAULT_THREADS, DEFAULT_THREADS)
        assert run[2] == preset3[2], "default runs gave different weights"
    assert threads2[:2] == (2, 2)
    assert threads2[2] == preset3[2] or threads2[0] != preset3[0]


def test_configure_threads_defaults_and_rejects_nonsense():
    before = torch.get_num_threads()
    try:
        assert configure_threads() == DEFAULT_THREADS == torch.get_num_threads()
        assert configure_threads(2) == 2 == torch.get_num_threads()
        try:
            configure_threads(0)
        except rll_repro.errors.DataError as exc:
            assert "--threads must be >= 1" in str(exc)
        else:
            raise AssertionError("--threads 0 accepted")
    finally:
        torch.set_num_threads(before)


def test_each_segment_of_a_run_records_its_environment(tmp_path):
    before = torch.get_num_threads()
    try:
        configure_threads(1)
        solver = rll_repro.get_solver(str(digits.prototxt("solver")))
        with GlogWriter(tmp_path / "train.log") as log:
            history = run_training(solver, digits.batch_source(), Schedule(max_iter=2, output_interval=0,
                                   snapshot_prefix=str(tmp_path / "d")), log, progress=False,
                                   history_path=tmp_path / "history.json")
    finally:
        torch.set_num_threads(before)
    (segment,) = json.loads((tmp_path / "history.json").read_text())["segments"]
    assert segment["start"] == 0 and segment["end"] == 2 and segment["log"] == log.run_path.name
    env = segment["environment"]
    assert env == history.segments[0]["environment"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__
    assert {"blas", "parallel", "cpu_capability", "cpu", "device", "numpy"} <= env.keys()
