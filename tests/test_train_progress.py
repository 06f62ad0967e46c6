"""Progress of a training run: lines in the log (and on a non-terminal stderr) every `display`
iterations, and on a terminal a bar whose ETA comes from recent iterations, not from the start-up."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch

from rll_repro import cli
from rll_repro.progress import Progress
from rll_repro.recipes import digits

PROGRESS = re.compile(r"(\d+)/(\d+) \(\d+%\), (\d\d:\d\d) elapsed, ETA (\?|\d\d:\d\d)")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_eta_comes_from_recent_iterations_not_from_the_start_up():
    clock = FakeClock()
    with Progress(10, "train", stream=io.StringIO(), enabled=False, clock=clock, window=3) as bar:
        clock.now += 100.0  # step 1: start-up (allocations, first touch of the data)
        bar.update()
        assert bar.eta() is None and "ETA ?" in bar.status()  # no estimate from step 1 alone
        for _ in range(4):
            clock.now += 1.0
            bar.update()
        assert bar.eta() == pytest.approx(5.0)  # 5 left at 1 s each; from step 1 on it would be 104 / 5 * 5
        assert "104 s" not in bar.status() and "01:44 elapsed, ETA 00:05" in bar.status()
        for _ in range(3):  # slower now: the estimate follows the last `window` updates
            clock.now += 3.0
            bar.update()
        assert bar.eta() == pytest.approx(2 * 3.0)


def test_terminal_bar_shows_elapsed_and_eta():
    clock, term = FakeClock(), FakeTerminal()
    with Progress(10, "train", stream=term, clock=clock, initial=4) as bar:  # a run resumed at 4
        for _ in range(3):
            clock.now += 2.0
            bar.update(postfix="loss 0.1")
        bar._bar.refresh()
        drawn = term.getvalue().rsplit("\r", 1)[-1]
    assert "7/10" in drawn and "00:06 elapsed" in drawn and "ETA 00:06" in drawn and "loss 0.1" in drawn


def test_off_a_terminal_nothing_is_drawn_and_report_writes_plain_lines():
    plain = io.StringIO()
    with Progress(5, "train", stream=plain) as bar:
        bar.update(2)
        bar.report()
    assert plain.getvalue().count("\n") == 1 and "\r" not in plain.getvalue()
    assert PROGRESS.search(plain.getvalue())
    silent = io.StringIO()
    with Progress(5, "train", stream=silent, enabled=False) as bar:
        bar.update(2)
        bar.report()
    assert silent.getvalue() == ""


def test_other_long_work_off_a_terminal_reports_itself_every_30_seconds():
    """Feature extraction and the like (no display cadence of their own)."""
    clock, plain = FakeClock(), io.StringIO()
    with Progress(100, "extract", stream=plain, clock=clock) as bar:
        for _ in range(10):
            clock.now += 10.0
            bar.update(10)
    assert [m.group(1) for m in PROGRESS.finditer(plain.getvalue())] == ["30", "60", "90"]
    assert plain.getvalue().startswith("extract: 30/100 (30%), 00:30 elapsed, ETA 01:10")


def test_reproduce_digits_with_stderr_to_a_file_shows_progress(tmp_path, capsys):
    """The issue: `reproduce` with stderr to a file printed its description, then nothing."""
    before = torch.get_num_threads()
    try:
        assert cli.main(["reproduce", "digits", "--max-iter", "45", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err  # pytest's capture: not a terminal
    lines = [m.group(1, 2) for m in PROGRESS.finditer(err)]
    assert lines == [("1", "45"), ("21", "45"), ("41", "45"), ("45", "45")]  # every 20 iterations and the last
    log = (tmp_path / "train.log").read_text()
    assert [m.group(1) for m in re.finditer(r"\] Progress: (\d+)/45 ", log)] == ["1", "21", "41", "45"]


def test_progress_follows_the_solvers_display_and_stays_readable_by_parse_log(tmp_path):
    from test_train_log import parse_caffe_log

    solver = tmp_path / "solver.prototxt"
    (tmp_path / "train.prototxt").write_text(digits.prototxt("train").read_text())
    solver.write_text(digits.prototxt("solver").read_text() + "\ndisplay: 10\n")
    before = torch.get_num_threads()
    try:
        assert cli.main(["train", "--solver", str(solver), "--data", "digits", "--out", str(tmp_path / "run"),
                         "--max-iter", "25", "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    path = Path(tmp_path / "run" / "train.log")
    assert [m.group(1) for m in re.finditer(r"\] Progress: (\d+)/25 ", path.read_text())] == ["1", "11", "21", "25"]
    assert [r["NumIters"] for r in parse_caffe_log(path)] == [0, 10, 20]  # Caffe's own display lines
