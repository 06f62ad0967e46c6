"""The original training loop (RLL ``train_multiGPUs.m``, OSM+CAA ``train.m``) around a Caffe solver.

``while iter < max_iter``: assemble the batch of iteration ``iter`` (data module), put it in the
input blobs, ``solver.step(1)``; every ``output_interval`` iterations log the loss the script prints
(the loss top *after* the step: this batch, pre-update weights, SPEC rll §1.4); snapshot when
``iter >= save_start and iter % save_interval == 0`` (SPEC rll §4.1, osm §5). Caffe-format log lines
(:mod:`rll_repro.trainlog`), a progress bar on a terminal, and the loss / lr curves as a PNG.

A batch source is anything with ``batch(iteration) -> {input blob: array}`` and
``state_dict()``/``load_state_dict()``; its state goes into the snapshot's side file so a resume is
bitwise identical to an unbroken run.

Threads: on the CPU the float32 result of a training step depends on the number of torch threads.
Measured (torch 2.14.1, MKL + oneDNN): the convolution weight gradient is a sum over the batch
that oneDNN (and, with oneDNN off, the GEMMs of torch's own im2col path) splits across threads,
so its rounding changes with the thread count (1 vs 2 threads on the digits net: conv1's weight
gradient 1.1e-6 relative apart at the first step, the weights 1e-6 apart after 300 steps; training
can amplify such differences: issue 11 saw Recall@1 87.72 vs 86.38 on the digits demo). Forward
passes, matmuls of these sizes and torch's own reductions measured thread-count independent. Training
therefore runs with :data:`DEFAULT_THREADS` unless told otherwise (:func:`configure_threads`,
``--threads``), whatever the machine's core count or ``OMP_NUM_THREADS``; the count, torch and
BLAS are recorded (:func:`run_environment`) in the log header and in history.json / results.json.

History: with ``history_path`` the run's history.json holds the WHOLE run: a resumed run starts
from the history of the run that wrote the snapshot (the iterations before it), and the file is
rewritten before and after every snapshot, so a kill loses at most what the next resume redoes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np

from rll_repro.errors import DataError, TrainingError
from rll_repro.progress import Progress

#: torch CPU threads for training unless --threads says otherwise (see the module doc): one, the
#: count every machine has, so a run gives the same numbers on any of them (same CPU kind).
DEFAULT_THREADS = 1


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count for a training run: ``threads``, else
    :data:`DEFAULT_THREADS`; returns it. A count below 1 is a DataError."""
    import torch

    count = DEFAULT_THREADS if threads is None else int(threads)
    if count < 1:
        raise DataError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(count)
    return count


def run_environment(device=None) -> dict:
    """What a run's float32 numbers depend on: torch threads, torch / numpy versions, BLAS, the
    parallel backend, the CPU's vector unit and model, the device."""
    import re

    import torch

    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    backend = re.search(r"ATen parallel backend: (.+)", torch.__config__.parallel_info())
    return {"threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
            "blas": blas.group(1) if blas else "unknown",
            "parallel": backend.group(1).strip() if backend else "unknown",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": _cpu_model(),
            "device": str(device) if device is not None else "cpu"}


def _cpu_model() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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
    """Per-iteration loss (the post-step loss top) and learning rate of a run, its snapshots, and
    its segments (one per start: ``start``/``end`` iteration, ``log`` file, ``environment``)."""

    iterations: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)
    snapshot_prefix: str | None = None  # file name stem of the run's snapshots (``digits``)

    def to_json(self) -> dict:
        return {"iteration": self.iterations, "loss": self.losses, "lr": self.rates,
                "snapshots": self.snapshots, "segments": self.segments, "snapshot_prefix": self.snapshot_prefix}

    def save_json(self, path) -> None:
        from rll_repro.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json()) + "\n")

    @classmethod
    def load_json(cls, path) -> "History | None":
        """The history saved at ``path``; None when missing or not a history (never raises: an
        unreadable history only costs the curves their earlier part, never the run)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            its, losses, rates = (list(data[k]) for k in ("iteration", "loss", "lr"))
            if not (len(its) == len(losses) == len(rates)) or not all(isinstance(i, int) for i in its):
                return None
            return cls([int(i) for i in its], [float(v) for v in losses], [float(v) for v in rates],
                       [str(x) for x in data.get("snapshots", [])],
                       [dict(x) for x in data.get("segments", []) if isinstance(x, dict)],
                       data.get("snapshot_prefix") if isinstance(data.get("snapshot_prefix"), str) else None)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def before(self, iteration: int) -> "History":
        """The part of the run before ``iteration`` (what a resume from there keeps)."""
        keep = [i for i, it in enumerate(self.iterations) if it < iteration]
        segments = []
        for seg in self.segments:
            if int(seg.get("start", 0)) < iteration:
                segments.append({**seg, "end": min(int(seg.get("end", iteration)), iteration)})
        return History([self.iterations[i] for i in keep], [self.losses[i] for i in keep],
                       [self.rates[i] for i in keep],
                       [s for s in self.snapshots if (_snapshot_iteration(s) or 0) <= iteration], segments,
                       self.snapshot_prefix)


def _snapshot_iteration(path) -> int | None:
    stem = Path(path).name.rsplit("_iter_", 1)[-1].split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


def prior_history(snapshot, history_path=None) -> History | None:
    """The history of the run that wrote ``snapshot``, cut at its iteration: ``history_path`` (the
    run folder's history.json) or the history.json beside the snapshot or one folder up, the first
    that lists this snapshot or, in the snapshot's own run folder, snapshots of its name stem."""
    snapshot = Path(snapshot)
    iteration = _snapshot_iteration(snapshot)
    if iteration is None:
        return None
    stem = snapshot.name.rsplit("_iter_", 1)[0]
    own = {snapshot.parent.resolve(), snapshot.parent.parent.resolve()}
    seen = set()
    for path in (history_path, snapshot.parent / "history.json", snapshot.parent.parent / "history.json"):
        if path is None or Path(path).resolve() in seen or not Path(path).is_file():
            continue
        seen.add(Path(path).resolve())
        history = History.load_json(path)
        if history is None:
            continue
        names = {Path(s).name for s in history.snapshots}
        stems = {n.rsplit("_iter_", 1)[0] for n in names} | {history.snapshot_prefix}
        same_run = snapshot.name in names or (Path(path).parent.resolve() in own and stem in stems)
        if same_run:
            return history.before(iteration)
    return None


def loss_tensor_after_step(net):
    """Σ loss_weight · loss top as the net holds it after the step, as a float64 tensor on the net's
    device (read back in batches by :func:`run_training`); nets without tensor blobs give a float."""
    import torch

    tops = []
    for layer in getattr(net, "layers", []):
        param = layer.param
        weights = list(param.loss_weight) or ([1.0] if getattr(layer, "is_loss", False) else [])
        tops += [(top, float(w)) for top, w in zip(param.top, weights) if w]
    blobs = getattr(net, "blobs", {})
    if not tops or not all(hasattr(blobs[t], "tensor") for t, _ in tops):
        return torch.tensor(loss_after_step(net), dtype=torch.float64)
    total = None
    for top, w in tops:
        term = blobs[top].tensor.detach().to(torch.float64).sum() * w
        total = term if total is None else total + term
    return total


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
                 on_snapshot: Callable[[History], None] | None = None, history_path=None,
                 resumed_from=None) -> History:
    """Drive ``solver`` to ``schedule.max_iter`` (from ``solver.iter``, so a restored solver resumes).

    ``history_path``: history.json of the whole run, saved around every snapshot and at the end; a
    run resumed from ``resumed_from`` (the restored solverstate) starts from the history of the
    run that wrote it (:func:`prior_history`). Returns the whole run's history (without
    ``history_path``: this start's iterations only). ``on_snapshot(history)`` runs after each
    periodic snapshot. Progress: a bar on a terminal (``progress`` None: auto, False: none), and
    every ``display`` (else ``output_interval``) iterations a progress line in the log and, off a
    terminal, on stderr."""
    start = solver.iter
    history = History()
    if resumed_from is not None and start > 0:
        history = prior_history(resumed_from, history_path) or History()
    if source is not None:
        solver.state_hooks["batch_source"] = (source.state_dict, source.load_state_dict)
    elif getattr(solver.net, "inputs", None):
        raise DataError(f"the net has input blobs {', '.join(solver.net.inputs)}: give a data source")
    environment = run_environment(_net_device(solver.net))
    segment = {"start": start, "end": start, "log": log.run_path.name if getattr(log, "run_path", None) else None,
               "environment": environment}
    history.segments.append(segment)
    history.snapshot_prefix = Path(schedule.snapshot_prefix).name
    if log is not None:
        log.environment(environment)
        _log_prior_history(log, history, start, resumed_from)
        log.solving(getattr(solver.net, "name", "") or "net", solver.param.lr_policy)
        solver.log = log  # test-net lines, clipping notes, and Caffe's own lines if `display` is set

    def save() -> None:
        segment["end"] = solver.iter
        if history_path is not None:
            history.save_json(history_path)

    # The scripts' loss printout; a solver with `display` logs Caffe's lines itself instead.
    interval = 0 if int(solver.param.display) else max(int(schedule.output_interval or 0), 0)
    progress_every = int(solver.param.display) or interval
    import torch

    pending: list = []  # (iteration, rate, loss tensor) not yet read back from the device

    def flush() -> None:
        """Read the pending losses in one transfer (no host read inside a training step)."""
        if pending:
            values = torch.stack([t for _, _, t in pending]).to("cpu").tolist()
            for (it, rate, _), value in zip(pending, values):
                history.iterations.append(it)
                history.losses.append(value)
                history.rates.append(rate)
            pending.clear()

    try:
        with Progress(max(schedule.max_iter, start), "train", enabled=progress, initial=start,
                      line_every_s=None if progress_every else 30.0) as bar:
            if log is not None and log.echo and bar.draws:
                log.echo_write = bar.write  # echoed lines above the bar, not through it
            while solver.iter < schedule.max_iter:
                it = solver.iter
                rate = solver.learning_rate()
                inputs = source.batch(it) if source is not None else None
                solver.step(1, batches=(lambda _it: inputs) if inputs is not None else None)
                pending.append((it, rate, loss_tensor_after_step(solver.net)))
                last = solver.iter == schedule.max_iter
                logs_now = log is not None and interval and (it % interval == 0 or last)
                reports_now = progress_every and (it % progress_every == 0 or last)
                saves_now = schedule.saves_at(solver.iter)
                if logs_now or reports_now or saves_now or on_step is not None:
                    flush()  # the one host read of the losses since the last one
                if logs_now:
                    log.iteration_loss(it, history.losses[-1])
                    log.train_outputs(solver.net)
                    log.iteration_lr(it, rate)
                if saves_now:
                    save()  # before the snapshot too: a kill while writing it leaves a history covering it
                    history.snapshots.append(solver.snapshot(schedule.snapshot_prefix)[1])
                    save()
                    if on_snapshot is not None:
                        on_snapshot(history)
                if on_step is not None:
                    on_step(it, history.losses[-1])
                bar.update(1, postfix=f"loss {history.losses[-1]:.4g} lr {rate:.3g}" if not pending else "")
                if reports_now:
                    _report_progress(bar, log)
            flush()
    except TrainingError as exc:
        if log is not None:
            log.info(str(exc), source="solver.cpp:214", level="E")
        raise
    finally:
        if log is not None:
            log.echo_write = None
    done = solver.iter
    test_interval = int(solver.param.test_interval)
    if getattr(solver, "test_nets", None) and test_interval and done % test_interval == 0 and done > start:
        solver.test_all()  # Caffe's Solve() tests once more after the last iteration
    if schedule.snapshot_at_end and done > start and not schedule.saves_at(done):
        save()
        history.snapshots.append(solver.snapshot(schedule.snapshot_prefix)[1])
    save()
    if log is not None:
        log.info("Optimization Done.", source="solver.cpp:317")
    return history


def run_session(solver, source: BatchSource | None, schedule: Schedule, out, *, weights=None, resume=None,
                echo: bool = False, progress: bool | None = None, title: str | None = None,
                allow_no_match: bool = False, on_snapshot: Callable[["History"], None] | None = None) -> tuple["History", Path | None]:
    """One training session as ``caffe train`` runs it, the one set-up every entry point uses (the
    ``train`` verb, ``reproduce``, the digits recipe): a log of its own in ``out`` (``train.log``
    pointing at it), either a solverstate restored (``resume``: iteration, history, weights, the
    sampler through its state hook) or ``weights`` copied by layer name (Caffe's "Ignoring source
    layer X" logged for each layer the net lacks; a file of which no layer matches is an error unless
    ``allow_no_match``), :func:`run_training` to ``schedule.max_iter``, and
    ``history.json`` + ``curves.png`` of the whole run. Returns (history, this start's log file)."""
    from rll_repro.trainlog import GlogWriter, plot_curves

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with GlogWriter(out / "train.log", echo=echo) as log:
        if source is not None:  # before restore, so the side file restores the sampler too
            solver.state_hooks["batch_source"] = (source.state_dict, source.load_state_dict)
        if resume is not None:
            log.info(f"Resuming from {resume}", source="solver.cpp:442")
            solver.restore(resume)
        elif weights is not None:
            log.info(f"Copying weights from {weights}", source="net.cpp:758")
            for name in solver.net.copy_from(str(weights), allow_no_match=allow_no_match) or []:
                log.info(f"Ignoring source layer {name}", source="net.cpp:768")
        history = run_training(solver, source, schedule, log, progress=progress, on_snapshot=on_snapshot,
                               history_path=out / "history.json", resumed_from=resume)
    if history.iterations:  # the whole run (every resumed session), redrawn even if nothing was left to do
        plot_curves(history.iterations, history.losses, history.rates, out / "curves.png", title=title or "")
    return history, log.run_path


def _report_progress(bar: Progress, log) -> None:
    """The progress line: into the log (echoed with it), and on stderr off a terminal unless the
    log already echoes it there."""
    status = bar.status()
    if log is not None:
        log.progress(status)
    if log is None or not log.echo:
        bar.report(f"train: {status}")


def _log_prior_history(log, history: History, start: int, resumed_from) -> None:
    if resumed_from is None or start == 0:
        return
    its = history.iterations
    if not its:
        log.info(f"No history of iterations 0-{start - 1} found for {Path(resumed_from).name}: "
                 f"history.json and the curves start at iteration {start}", source="train.py:150", level="W")
    elif its[0] != 0 or its[-1] != start - 1 or len(its) != start:
        log.info(f"The history of {Path(resumed_from).name} holds {len(its)} of iterations 0-{start - 1}: "
                 "the curves have a gap", source="train.py:153", level="W")


def _net_device(net):
    device = getattr(net, "device", None)
    if device is not None:
        return device
    for tensor in getattr(net, "learnable_params", None) or ():
        return getattr(tensor, "device", None)
    return None


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
