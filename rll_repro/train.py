"""The original training loop (RLL ``train_multiGPUs.m``, OSM+CAA ``train.m``) around a Caffe solver.

``while iter < max_iter``: assemble the batch of iteration ``iter`` (data module), put it in the
input blobs, ``solver.step(1)``; every ``output_interval`` iterations log the loss the script prints
(the loss top *after* the step: this batch, pre-update weights, SPEC rll §1.4); snapshot when
``iter >= save_start and iter % save_interval == 0`` (SPEC rll §4.1, osm §5). Caffe-format log lines
(:mod:`rll_repro.trainlog`), a progress bar on a terminal, and the loss / lr curves as a PNG.

A batch source is anything with ``batch(iteration) -> {input blob: array}`` and
``state_dict()``/``load_state_dict()``; its state goes into the snapshot's side file so a resume is
bitwise identical to an unbroken run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np

from rll_repro.errors import DataError, TrainingError
from rll_repro.progress import Progress


class BatchSource(Protocol):
    def batch(self, iteration: int) -> Mapping[str, np.ndarray]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Schedule:
    """The driver's loop settings (the MATLAB scripts' variables)."""

    max_iter: int
    output_interval: int = 20
    save_start: int | None = None      # None: no periodic snapshots
    save_interval: int | None = None
    snapshot_prefix: str = "checkpoint"
    snapshot_at_end: bool = True       # Caffe's snapshot_after_train
    extra_saves: frozenset = frozenset()  # more iterations to snapshot (checkpoints to be evaluated)

    def saves_at(self, it: int) -> bool:
        if it in self.extra_saves:
            return True
        return bool(self.save_interval) and it >= (self.save_start or 0) and it % self.save_interval == 0


@dataclass
class History:
    """Per-iteration loss (the post-step loss top) and learning rate of a run."""

    iterations: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)

    def save_json(self, path) -> None:
        from rll_repro.fileio import atomic_write_text

        atomic_write_text(path, json.dumps({"iteration": self.iterations, "loss": self.losses,
                                            "lr": self.rates, "snapshots": self.snapshots}) + "\n")


def loss_after_step(net) -> float:
    """Sum of loss_weight * loss top as the net holds it after the step (what the scripts print)."""
    total = 0.0
    for layer in getattr(net, "layers", []):
        param = layer.param
        tops = list(param.top)
        weights = list(param.loss_weight)
        if not weights and getattr(layer, "is_loss", False):
            weights = [1.0]
        for top, w in zip(tops, weights):
            if w:
                total += float(w) * float(np.asarray(net.blobs[top].data, dtype=np.float64).sum())
    return total


class ArrayBatchSource:
    """Batches from in-memory arrays and a sampler with ``batch_indices(iteration)`` (the digits
    demo, OSM's pre-processed .mat cells): data[indices], labels as float32."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, sampler, data_blob: str = "data",
                 label_blob: str = "label"):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.labels = np.asarray(labels)
        self.sampler = sampler
        self.data_blob, self.label_blob = data_blob, label_blob

    def batch(self, iteration: int) -> dict[str, np.ndarray]:
        idx = self.sampler.batch_indices(iteration)
        self.sampler.iteration = iteration + 1
        return {self.data_blob: self.images[idx], self.label_blob: self.labels[idx].astype(np.float32)}

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class LoaderBatchSource:
    """Batches from :func:`rll_repro.data.loader.make_train_loader` (one per solver iteration)."""

    def __init__(self, loader, data_blob: str = "data", label_blob: str = "label"):
        self.loader = loader
        self.data_blob, self.label_blob = data_blob, label_blob
        self._it = None
        self._next = None

    def batch(self, iteration: int) -> dict[str, np.ndarray]:
        if self._next != iteration:
            state = self.loader.state_dict()
            state["iteration"] = iteration
            self.loader.load_state_dict(state)
            self._it = iter(self.loader)
        data, labels = next(self._it)[:2]
        self._next = iteration + 1
        return {self.data_blob: np.asarray(data, np.float32), self.label_blob: np.asarray(labels, np.float32)}

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._next = None


def run_training(solver, source: BatchSource | None, schedule: Schedule, log=None, *,
                 progress: bool | None = None, on_step: Callable[[int, float], None] | None = None,
                 on_snapshot: Callable[[History], None] | None = None) -> History:
    """Drive ``solver`` to ``schedule.max_iter`` (from ``solver.iter``, so a restored solver resumes).
    ``on_snapshot(history)`` runs after each periodic snapshot (e.g. to save the history so far)."""
    history = History()
    if source is not None:
        solver.state_hooks["batch_source"] = (source.state_dict, source.load_state_dict)
    elif getattr(solver.net, "inputs", None):
        raise DataError(f"the net has input blobs {', '.join(solver.net.inputs)}: give a data source")
    if log is not None:
        log.solving(getattr(solver.net, "name", "") or "net", solver.param.lr_policy)
        solver.log = log  # test-net lines, clipping notes, and Caffe's own lines if `display` is set
    # The scripts' loss printout; a solver with `display` logs Caffe's lines itself instead.
    interval = 0 if int(solver.param.display) else max(int(schedule.output_interval or 0), 0)
    start = solver.iter
    try:
        with Progress(max(schedule.max_iter - start, 0), "train", enabled=progress) as bar:
            while solver.iter < schedule.max_iter:
                it = solver.iter
                rate = solver.learning_rate()
                inputs = source.batch(it) if source is not None else None
                solver.step(1, batches=(lambda _it: inputs) if inputs is not None else None)
                loss = loss_after_step(solver.net)
                history.iterations.append(it)
                history.losses.append(loss)
                history.rates.append(rate)
                if log is not None and interval and (it % interval == 0 or solver.iter == schedule.max_iter):
                    log.iteration_loss(it, loss)
                    log.train_outputs(solver.net)
                    log.iteration_lr(it, rate)
                if schedule.saves_at(solver.iter):
                    history.snapshots.append(solver.snapshot(schedule.snapshot_prefix)[1])
                    if on_snapshot is not None:
                        on_snapshot(history)
                if on_step is not None:
                    on_step(it, loss)
                bar.update(1, postfix=f"loss {loss:.4g} lr {rate:.3g}")
    except TrainingError as exc:
        if log is not None:
            log.info(str(exc), source="solver.cpp:214", level="E")
        raise
    done = solver.iter
    test_interval = int(solver.param.test_interval)
    if getattr(solver, "test_nets", None) and test_interval and done % test_interval == 0 and done > start:
        solver.test_all()  # Caffe's Solve() tests once more after the last iteration
    if schedule.snapshot_at_end and done > start and not schedule.saves_at(done):
        history.snapshots.append(solver.snapshot(schedule.snapshot_prefix)[1])
    if log is not None:
        log.info("Optimization Done.", source="solver.cpp:317")
    return history


def latest_snapshot(prefix: str | Path) -> Path | None:
    """The solverstate of the highest iteration under ``prefix`` that reads cleanly (ignoring the
    temporaries a killed writer leaves), or None."""
    from rll_repro.caffe import io as caffe_io

    prefix = Path(prefix)
    found = []
    for path in prefix.parent.glob(f"{prefix.name}_iter_*.caffemodel.solverstate"):
        stem = path.name[len(prefix.name) + len("_iter_"):-len(".caffemodel.solverstate")]
        if stem.isdigit():
            found.append((int(stem), path))
    for _, path in sorted(found, reverse=True):
        try:
            state = caffe_io.read_solverstate(path)
        except Exception:  # noqa: BLE001 - a corrupt file is skipped, never used
            continue
        model = Path(state.learned_net)
        if not model.exists():
            model = path.parent / model.name
        if model.exists():
            return path
    return None
