"""The training log is Caffe's glog format: Caffe's tools/extra/parse_log.py reads it.

``parse_caffe_log`` below re-implements parse_log.py (BVLC master) and extract_seconds.py: the
same regular expressions, the 'Solving' start line, the time stamp parsing, the row logic.
"""
from __future__ import annotations

import datetime
import re
from collections import OrderedDict

import pytest
import torch

import rll_repro
from rll_repro.recipes import digits
from rll_repro.train import Schedule, run_training
from rll_repro.trainlog import GlogWriter, glog_prefix

REGEX_ITERATION = re.compile(r"Iteration (\d+)")
REGEX_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
REGEX_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def extract_datetime_from_line(line, year):
    line = line.strip().split()
    month, day = int(line[0][1:3]), int(line[0][3:5])
    timestamp = line[1]
    pos = timestamp.rfind(".")
    hour, minute, second = [int(x) for x in timestamp[:pos].split(":")]
    return datetime.datetime(year, month, day, hour, minute, second, int(timestamp[pos + 1:]))


def parse_caffe_log(path):
    year = datetime.datetime.now().year
    rows, row = [], None
    iteration, learning_rate = -1, float("nan")
    with open(path) as f:
        start = None
        for line in f:
            if "Solving" in line:
                start = extract_datetime_from_line(line, year)
                break
        assert start is not None, "parse_log.py needs a 'Solving' line"
        for line in f:
            m = REGEX_ITERATION.search(line)
            if m:
                iteration = float(m.group(1))
            if iteration == -1:
                continue
            seconds = (extract_datetime_from_line(line, year) - start).total_seconds()
            m = REGEX_LEARNING_RATE.search(line)
            if m:
                learning_rate = float(m.group(1))
            m = REGEX_TRAIN_OUTPUT.search(line)
            if m:
                if not row or row["NumIters"] != iteration:
                    if row:
                        rows.append(row)
                    row = OrderedDict([("NumIters", iteration), ("Seconds", seconds), ("LearningRate", learning_rate)])
                row[m.group(2)] = float(m.group(3))
            if row and len(rows) >= 1 and len(row) == len(rows[0]):
                rows.append(row)
                row = None
    if row:
        rows.append(row)
    if len(rows) > 1:
        rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return rows


def test_glog_prefix_is_glogs_layout():
    when = datetime.datetime(2026, 11, 24, 4, 0, 0, 123456)
    line = glog_prefix("I", "solver.cpp:228", when) + "Iteration 20, loss = 0.123"
    assert re.fullmatch(r"I1124 04:00:00\.123456 [ \d]{5} solver\.cpp:228\] Iteration 20, loss = 0\.123", line)


@pytest.fixture(scope="module")
def digits_log(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("log")
    solver = rll_repro.get_solver(str(digits.prototxt("solver")))
    sched = Schedule(max_iter=45, output_interval=20, snapshot_prefix=str(out / "d"), snapshot_at_end=False)
    with GlogWriter(out / "train.log") as log:
        history = run_training(solver, digits.batch_source(), sched, log, progress=False)
    return out / "train.log", history


def test_caffe_parse_log_reads_loss_rows_at_the_output_interval(digits_log):
    path, history = digits_log
    rows = parse_caffe_log(path)
    assert [r["NumIters"] for r in rows] == [0, 20, 40, 44]
    for r in rows:
        k = history.iterations.index(int(r["NumIters"]))
        assert r["loss"] == pytest.approx(history.losses[k], rel=1e-5)  # printed with 6 digits
    assert all(r["LearningRate"] == pytest.approx(0.01) for r in rows)
    assert rows[-1]["Seconds"] >= rows[0]["Seconds"] >= 0


def test_log_has_caffes_solver_lines(digits_log):
    text = digits_log[0].read_text()
    assert "] Solving digits_rll\n" in text
    assert "] Learning Rate Policy: multistep\n" in text
    assert re.search(r"\] Iteration 20, loss = [\d.e+-]+\n", text)
    assert re.search(r"\]     Train net output #0: loss = ([\d.e+-]+) \(\* 1 = \1 loss\)\n", text)
    assert re.search(r"\] Iteration 20, lr = 0\.01\n", text)
    assert text.rstrip().endswith("Optimization Done.")
