"""Training logs in Caffe's glog line format, one file per run, and the loss / learning-rate plot.

Lines look like Caffe's, so Caffe's ``tools/extra/parse_log.py`` (and anything built on it) reads
them::

    I1124 04:00:00.123456  1234 solver.cpp:289] Solving digits_rll
    I1124 04:00:00.223456  1234 solver.cpp:228] Iteration 20, loss = 0.123
    I1124 04:00:00.223470  1234 solver.cpp:244]     Train net output #0: loss = 0.123 (* 1 = 0.123 loss)
    I1124 04:00:00.223480  1234 sgd_solver.cpp:106] Iteration 20, lr = 0.01

parse_log.py needs the ``Solving`` line (its start time), ``Iteration N`` before the outputs, and
``lr = X`` lines; the time stamp is ``I<mmdd> <HH:MM:SS.ffffff>`` with the thread id right-aligned
in 5 columns, as glog writes it. Every line after ``Solving`` is a glog line (parse_log.py reads a
time stamp from each).

One file per run, as glog names one per start (``caffe.<host>.<user>.log.INFO.<date>-<time>.<pid>``
with ``caffe.INFO`` pointing at the latest): ``GlogWriter("run/train.log")`` writes
``run/train.log.<yyyymmdd-hhmmss>.<pid>`` and makes ``run/train.log`` a symlink to it (a plain
copy, written alongside, where the file system has no symlinks). parse_log.py thus sees one
monotone run per file: a rerun or a resume never appends iterations 0.. again to an old log. A
``train.log`` left as a plain file by an older version (appended runs, no glog header) is kept,
renamed ``train.log.<its date>.appended``. Each file starts with glog's header lines (creation time, machine, line format).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import os
import re
import sys
from pathlib import Path
from typing import IO, Sequence

import numpy as np


def glog_prefix(level: str = "I", source: str = "solver.cpp:228", now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now()
    return f"{level}{now:%m%d %H:%M:%S}.{now.microsecond:06d} {os.getpid() % 100000:5d} {source}] "


def _g(value: float) -> str:
    """Numbers as C++ ostream prints floats (6 significant digits)."""
    return f"{float(value):.6g}"


RUN_STAMP = "%Y%m%d-%H%M%S"   # glog's <date>-<time> of a log file name


def run_log_paths(path: str | os.PathLike) -> list[Path]:
    """The per-run logs of ``path`` (``train.log.<stamp>.<pid>``), oldest first."""
    path = Path(path)
    runs = [p for p in path.parent.glob(glob.escape(path.name) + ".*") if _RUN_SUFFIX.match(p.name[len(path.name):])]
    def order(p: Path):
        stamp, rest = p.name[len(path.name) + 1:].split(".", 1)
        return stamp, not rest.startswith("appended"), len(rest), rest  # an appended log holds older runs

    return sorted(runs, key=order)


_RUN_SUFFIX = re.compile(r"^\.\d{8}-\d{6}\.(\d+|appended)(\.\d+)?$")


class GlogWriter:
    """Writes glog-format lines to a file and/or a stream (stderr when ``echo``).

    With ``per_run`` (default) the lines go to a new file per run and ``path`` points at it (see the
    module doc; :attr:`run_path` is the file); ``per_run=False`` writes ``path`` itself (truncated).
    ``echo_write`` (a callable taking a line) replaces the plain stream write, e.g. to print above a
    progress bar."""

    def __init__(self, path: str | os.PathLike | None = None, echo: bool = False, stream: IO | None = None, *,
                 per_run: bool = True):
        from rll_repro.net.parallel import is_main_process

        if not is_main_process():  # data-parallel: rank 0 writes the run's one log
            path, echo = None, False
        self.path = Path(path) if path is not None else None
        self.run_path: Path | None = None
        self._file = None
        self._mirror = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if per_run:
                self._file, self.run_path = _open_run_file(self.path)
                self._mirror = _point_at(self.path, self.run_path)
            else:
                self._file, self.run_path = open(self.path, "w", encoding="utf-8"), self.path
            self._write_file(_glog_header())
        self.echo = echo
        self.stream = stream or sys.stderr
        self.echo_write = None

    def _write_file(self, text: str) -> None:
        for handle in (self._file, self._mirror):
            if handle is not None:
                handle.write(text)
                handle.flush()

    def info(self, message: str, source: str = "solver.cpp:228", level: str = "I") -> None:
        line = glog_prefix(level, source) + message + "\n"
        self._write_file(line)
        if self.echo:
            if self.echo_write is not None:
                self.echo_write(line.rstrip("\n"))
            else:
                self.stream.write(line)
                self.stream.flush()

    def environment(self, env: dict) -> None:
        """The header line recording what the numbers depend on (thread count, torch, BLAS, CPU)."""
        self.info("Environment: " + " ".join(f"{k}={_quoted(v)}" for k, v in env.items()), source="train.py:60")

    def progress(self, status: str) -> None:
        """``Progress: 120/300 (40%), 00:03 elapsed, ETA 00:05, ...`` (never the word 'Iteration N',
        which parse_log.py would take for an iteration)."""
        self.info(f"Progress: {status}", source="train.py:170")

    # the lines Caffe's Solver writes
    def solving(self, net_name: str, lr_policy: str) -> None:
        self.info(f"Solving {net_name}", source="solver.cpp:289")
        self.info(f"Learning Rate Policy: {lr_policy}", source="solver.cpp:290")

    def iteration_loss(self, it: int, loss: float) -> None:
        self.info(f"Iteration {it}, loss = {_g(loss)}", source="solver.cpp:228")

    def train_output(self, index: int, name: str, value: float, loss_weight: float = 1.0) -> None:
        extra = f" (* {_g(loss_weight)} = {_g(loss_weight * value)} loss)" if loss_weight else ""
        self.info(f"    Train net output #{index}: {name} = {_g(value)}{extra}", source="solver.cpp:244")

    def train_outputs(self, net) -> None:
        """Every element of every output blob of the net, numbered as Caffe does."""
        index = 0
        for name in getattr(net, "outputs", []):
            values = np.asarray(net.blobs[name].data).reshape(-1)
            weight = 1.0 if name in _loss_tops(net) else 0.0
            for v in values:
                self.train_output(index, name, float(v), weight)
                index += 1

    def iteration_lr(self, it: int, rate: float) -> None:
        self.info(f"Iteration {it}, lr = {_g(rate)}", source="sgd_solver.cpp:106")

    def close(self) -> None:
        for handle in (self._file, self._mirror):
            if handle is not None:
                handle.close()
        self._file = self._mirror = None

    def __enter__(self) -> "GlogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _quoted(value) -> str:
    text = str(value)
    return f'"{text}"' if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def _glog_header(now: _dt.datetime | None = None) -> str:
    """The three lines glog writes at the top of every log file."""
    import socket

    now = now or _dt.datetime.now()
    return (f"Log file created at: {now:%Y/%m/%d %H:%M:%S}\n"
            f"Running on machine: {socket.gethostname()}\n"
            "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")


def _is_run_copy(path: Path) -> bool:
    """A plain ``train.log`` written as the copy of a per-run log (it starts with glog's header,
    which the older appended logs never had)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_HEADER_START)) == _HEADER_START
    except OSError:
        return False


_HEADER_START = b"Log file created at: "


def _open_run_file(path: Path) -> tuple[IO, Path]:
    """A new ``<path>.<yyyymmdd-hhmmss>.<pid>`` (``.1``, ``.2``... if a run of this second exists).
    A start in the same second as an earlier run's (of another process) waits for the next second,
    so that the names sort in start order (pids do not)."""
    import time

    now = _dt.datetime.now()
    stamp = f"{now:{RUN_STAMP}}"
    if any(path.parent.glob(glob.escape(f"{path.name}.{stamp}.") + "*")):
        time.sleep(max(0.0, 1.0 - now.microsecond / 1e6) + 0.01)
        stamp = f"{_dt.datetime.now():{RUN_STAMP}}"
    base = f"{path.name}.{stamp}.{os.getpid()}"
    for n in range(1000):
        candidate = path.with_name(base if n == 0 else f"{base}.{n}")
        try:
            return open(candidate, "x", encoding="utf-8"), candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: too many logs named {base}")


def _point_at(link: Path, target: Path):
    """Make ``link`` a symlink to ``target`` (same folder), replacing an older link atomically; a
    plain file there (an older appended log) is kept under a per-run name. Where symlinks cannot be
    made, returns an open ``link`` to write a copy of the lines into."""
    if link.is_file() and not link.is_symlink() and not _is_run_copy(link):
        stamp = _dt.datetime.fromtimestamp(link.stat().st_mtime)
        kept = link.with_name(f"{link.name}.{stamp:{RUN_STAMP}}.appended")
        if not kept.exists():
            os.replace(link, kept)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target.name, tmp)
        os.replace(tmp, link)
        return None
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        with contextlib.suppress(OSError):
            if link.is_symlink():
                os.unlink(link)
        return open(link, "w", encoding="utf-8")


def _loss_tops(net) -> set[str]:
    out = set()
    for layer in getattr(net, "layers", []):
        if getattr(layer, "is_loss", False):
            out.update(getattr(layer.param, "top", [])[:1])
        else:
            out.update(t for t, w in zip(getattr(layer.param, "top", []), getattr(layer.param, "loss_weight", [])) if w)
    return out


def plot_curves(iterations: Sequence[int], losses: Sequence[float], rates: Sequence[float], path: str | os.PathLike,
                title: str = "training") -> None:
    """PNG with the loss (log scale when positive) and the learning rate against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rll_repro.fileio import atomic_write

    it = np.asarray(iterations)
    loss = np.asarray(losses, dtype=np.float64)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax1.plot(it, loss, lw=1)
    if np.any(loss > 0):
        ax1.set_yscale("log", nonpositive="mask")  # a loss of exactly 0 is left out
    ax1.set_ylabel("loss")
    ax1.set_title(title)
    ax1.grid(alpha=0.3)
    ax2.plot(it, np.asarray(rates), lw=1, color="tab:orange")
    ax2.set_ylabel("learning rate")
    ax2.set_xlabel("iteration")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
