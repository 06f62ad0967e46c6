"""One log per start, and history.json / curves.png of the whole run after a kill and a resume.

Caffe's tools/extra/parse_log.py (re-implemented in test_train_log.py) must see one monotone run
per file: a rerun or a resume writes a new ``train.log.<yyyymmdd-hhmmss>.<pid>`` (glog's naming)
and ``train.log`` points at the latest, instead of appending iterations 0.. again.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_log import parse_caffe_log

from rll_repro import cli
from rll_repro.recipes import digits
from rll_repro.train import latest_snapshot
from rll_repro.trainlog import GlogWriter, run_log_paths

REPO = Path(__file__).resolve().parents[1]
SOLVER = str(digits.prototxt("solver"))


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _train(out: Path, *extra: str) -> None:
    assert cli.main(["train", "--solver", SOLVER, "--data", "digits", "--out", str(out), "--quiet", *extra]) == 0


def _iterations(rows) -> list[int]:
    return [int(r["NumIters"]) for r in rows]


def test_a_rerun_writes_a_new_log_and_train_log_points_at_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.log").write_text("I1124 04:00:00.000000  1234 solver.cpp:289] Solving old\n")  # an older appended log
    _train(out, "--max-iter", "25")
    _train(out, "--max-iter", "25")
    runs = run_log_paths(out / "train.log")
    assert len(runs) == 3 and runs[0].name.endswith(".appended")  # the old plain log is kept, renamed
    assert "Solving old" in runs[0].read_text()
    assert (out / "train.log").is_symlink() and (out / "train.log").resolve() == runs[2].resolve()
    for log in runs[1:]:
        text = log.read_text()
        assert text.startswith("Log file created at: ") and text.count("] Solving digits_rll") == 1
        assert _iterations(parse_caffe_log(log)) == [0, 20, 24]  # one monotone run per file


def test_without_symlinks_train_log_is_a_copy_of_the_latest_run(tmp_path, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    for _ in range(2):
        with GlogWriter(tmp_path / "train.log") as log:
            log.info("Solving x", source="solver.cpp:289")
            log.info("Iteration 0, loss = 1")
    assert not (tmp_path / "train.log").is_symlink()
    assert (tmp_path / "train.log").read_text() == log.run_path.read_text()
    assert len(run_log_paths(tmp_path / "train.log")) == 2


def test_killed_and_resumed_run_keeps_the_whole_history_and_curves(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rll_repro", "train", "--solver", SOLVER, "--data", "digits", "--out", str(out),
           "--save-start", "1", "--save-interval", "3", "--max-iter", "100000", "--output-interval", "5"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("digits_iter_*.caffemodel.solverstate"))) < 4:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    latest = latest_snapshot(out / "digits")
    resumed_at = int(latest.name.split("_iter_")[1].split(".")[0])
    first_log = run_log_paths(out / "train.log")[0]
    first_rows = parse_caffe_log(first_log)
    target = resumed_at + 7
    _train(out, "--snapshot", str(latest), "--max-iter", str(target), "--output-interval", "5")

    history = json.loads((out / "history.json").read_text())
    assert history["iteration"] == list(range(target))  # all segments, back to iteration 0
    for row in first_rows:  # the killed segment's losses, as its log printed them
        if row["NumIters"] < resumed_at:
            assert history["loss"][int(row["NumIters"])] == pytest.approx(row["loss"], rel=1e-5)
    assert [(s["start"], s["end"]) for s in history["segments"]] == [(0, resumed_at), (resumed_at, target)]
    assert (out / "curves.png").stat().st_size > 0

    logs = run_log_paths(out / "train.log")
    assert len(logs) == 2 and (out / "train.log").resolve() == logs[1].resolve()
    second = _iterations(parse_caffe_log(logs[1]))
    assert second[0] >= resumed_at and second == sorted(second)  # the resumed segment: its own file
    assert _iterations(first_rows) == sorted(_iterations(first_rows))

    # a resume with nothing left to do still (re)draws the whole run's curves
    (out / "curves.png").unlink()
    final = latest_snapshot(out / "digits")
    _train(out, "--snapshot", str(final), "--max-iter", str(target))
    assert (out / "curves.png").is_file()
    assert json.loads((out / "history.json").read_text())["iteration"] == list(range(target))


def test_a_resume_into_another_folder_continues_the_history_of_the_snapshots_run(tmp_path):
    _train(tmp_path / "a", "--max-iter", "6", "--save-start", "3", "--save-interval", "3")
    _train(tmp_path / "b", "--snapshot", str(tmp_path / "a" / "digits_iter_3.caffemodel.solverstate"),
           "--max-iter", "8")
    a = json.loads((tmp_path / "a" / "history.json").read_text())
    b = json.loads((tmp_path / "b" / "history.json").read_text())
    assert b["iteration"] == list(range(8)) and b["loss"][:3] == a["loss"][:3]
    assert b["loss"][3:6] == a["loss"][3:6]  # a bitwise resume: the redone iterations agree


def test_a_snapshot_without_any_history_says_so_in_the_log(tmp_path):
    _train(tmp_path / "a", "--max-iter", "3", "--save-start", "3", "--save-interval", "3")
    (tmp_path / "a" / "history.json").unlink()
    _train(tmp_path / "a", "--snapshot", str(tmp_path / "a" / "digits_iter_3.caffemodel.solverstate"),
           "--max-iter", "5")
    assert json.loads((tmp_path / "a" / "history.json").read_text())["iteration"] == [3, 4]
    assert "No history of iterations 0-2 found for digits_iter_3.caffemodel.solverstate" in \
        (tmp_path / "a" / "train.log").read_text()
