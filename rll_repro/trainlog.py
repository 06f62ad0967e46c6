"""Training logs in Caffe's glog line format, and the loss / learning-rate plot.

Lines look like Caffe's, so Caffe's ``tools/extra/parse_log.py`` (and anything built on it) reads
them::

    I1124 04:00:00.123456  1234 solver.cpp:289] Solving digits_rll
    I1124 04:00:00.223456  1234 solver.cpp:228] Iteration 20, loss = 0.123
    I1124 04:00:00.223470  1234 solver.cpp:244]     Train net output #0: loss = 0.123 (* 1 = 0.123 loss)
    I1124 04:00:00.223480  1234 sgd_solver.cpp:106] Iteration 20, lr = 0.01

parse_log.py needs the ``Solving`` line (its start time), ``Iteration N`` before the outputs, and
``lr = X`` lines; the time stamp is ``I<mmdd> <HH:MM:SS.ffffff>`` with the thread id right-aligned
in 5 columns, as glog writes it.
"""
from __future__ import annotations

import datetime as _dt
import os
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


class GlogWriter:
    """Writes glog-format lines to a file and/or a stream (stderr when ``echo``)."""

    def __init__(self, path: str | os.PathLike | None = None, echo: bool = False, stream: IO | None = None):
        self.path = Path(path) if path is not None else None
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self.echo = echo
        self.stream = stream or sys.stderr

    def info(self, message: str, source: str = "solver.cpp:228", level: str = "I") -> None:
        line = glog_prefix(level, source) + message + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        if self.echo:
            self.stream.write(line)
            self.stream.flush()

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
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "GlogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
