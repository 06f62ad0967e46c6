"""Snapshots and resume: Caffe's ``Solver::Snapshot``/``Restore`` plus a side file.

Caffe's files: ``<prefix>_iter_<N>.caffemodel`` and, as the RLL fork names it,
``<prefix>_iter_<N>.caffemodel.solverstate`` (iter, learned_net, history, current_step). The side
file ``<solverstate>.rllstate`` holds what Caffe cannot store (the RNG states, the RLL layer's
lagging top value and annealed settings, the data sampler's state), so that a resume continues the
uninterrupted run exactly. Every file is written atomically; the solverstate is written last.

Device-independent: everything is written from host copies and restored onto the solver's device
(a snapshot written on a GPU resumes on a CPU, and back; a CUDA RNG state is only restored onto a
CUDA device). The side file is a ``torch.save`` of plain containers, numbers, strings and tensors
only, read back with ``torch.load(weights_only=True)``: snapshots are files people exchange, and a
crafted side file must not run code.
"""
from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import torch

from rll_repro.device import rng_state, set_rng_state
from rll_repro.errors import FormatError, RLLReproError
from rll_repro.net.parallel import is_main_process

SIDE_SUFFIX = ".rllstate"
SIDE_FORMAT = 2


def _to_plain(value):
    """numpy arrays/scalars and tuples in a state as weights_only-loadable values."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value)), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_plain(v) for v in value]}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(value):
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy().astype(value["dtype"], copy=False)
        if "__tuple__" in value:
            return tuple(_from_plain(v) for v in value["__tuple__"])
        return {k: _from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_plain(v) for v in value]
    return value


def _net_generators(net) -> dict:
    """The generators the net's layers draw from (fillers, Dropout), when it has its own."""
    ctx = getattr(net, "ctx", None)
    out = {}
    for key in ("generator", "runtime_generator"):
        gen = getattr(ctx, key, None)
        if isinstance(gen, torch.Generator):
            out[key] = gen
    return out


class SnapshotMixin:
    """snapshot / restore for :class:`rll_repro.solver.base.Solver`."""

    def snapshot_prefix(self) -> str:
        from rll_repro.solver.base import resolve_path

        return resolve_path(self.param.snapshot_prefix, Path.cwd()) if self.param.snapshot_prefix else "snapshot"

    def snapshot(self, prefix: str | os.PathLike | None = None) -> tuple[str, str]:
        """Write the side file, ``<prefix>_iter_<N>.caffemodel`` and ``...caffemodel.solverstate``,
        each atomically and in that order, so an existing solverstate always has its model and side
        file (a kill at any moment leaves the previous snapshot the latest complete one). Refused
        (TrainingError) when a weight is NaN/Inf. Returns (model, solverstate)."""
        from rll_repro.caffe import caffe_pb2
        from rll_repro.caffe.weights import array_to_blob
        from rll_repro.fileio import atomic_write_bytes

        if self.check_finite:
            self._check_params_finite()
        prefix = os.fsdecode(prefix) if prefix is not None else self.snapshot_prefix()
        model = f"{prefix}_iter_{self.iter}.caffemodel"
        state_path = model + ".solverstate"
        if not is_main_process():  # data-parallel: every rank holds the same state; rank 0 writes it
            self.last_snapshot_iter = self.iter
            return model, state_path
        atomic_write_bytes(state_path + SIDE_SUFFIX, self._side_state_bytes())
        self.save_model(model)
        state = caffe_pb2.SolverState()
        state.iter = self.iter
        state.learned_net = model.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        state.current_step = self.current_step
        for h in self.history:
            state.history.add().CopyFrom(array_to_blob(h.detach().to("cpu").numpy()))
        atomic_write_bytes(state_path, state.SerializeToString())  # last: a solverstate means all three exist
        self.last_snapshot_iter = self.iter
        if self.log is not None:
            self.log.info(f"Snapshotting to binary proto file {model}", source="solver.cpp:454")
            self.log.info(f"Snapshotting solver state to binary proto file {state_path}", source="sgd_solver.cpp:273")
        return model, state_path

    def save_model(self, path: str) -> None:
        """The net's weights as a caffemodel (written atomically by caffe.io.write_caffemodel)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.net.save(str(path))

    def restore(self, path: str | os.PathLike) -> None:
        """Caffe's Solver::Restore from a .solverstate (ours or Caffe's): iter, current_step, history,
        and the weights of ``learned_net`` (which must be a model of this net); plus the side file
        when present (exact resume)."""
        from rll_repro.caffe import io as caffe_io
        from rll_repro.caffe.weights import blob_to_array

        path = Path(path)
        if path.suffix == ".h5":
            raise FormatError(f"{path}: HDF5 solver states are not supported (use snapshot_format BINARYPROTO)")
        state = caffe_io.read_solverstate(str(path))
        if len(state.history) != len(self.history):
            raise FormatError(f"{path}: solverstate has {len(state.history)} history blobs, the "
                              f"{self.type_name} solver of this net needs {len(self.history)}")
        arrays = []
        for i, blob in enumerate(state.history):
            try:
                arr = blob_to_array(blob)
            except RLLReproError as exc:
                raise FormatError(f"{path}: history blob {i}: {exc}") from None
            if arr.size != self.history[i].numel():
                raise FormatError(f"{path}: history blob {i} has {arr.size} values, the net's param "
                                  f"({self._param_owner[i % len(self.learnable_params)]}) has {self.history[i].numel()}")
            arrays.append(arr)
        if state.learned_net:
            model = Path(state.learned_net)
            if not model.is_absolute() and not model.exists():
                model = path.parent / model.name
            if not model.exists():
                local = path.parent / model.name
                model = local if local.exists() else model
            if not model.exists():
                raise FormatError(f"{path}: learned_net {state.learned_net!r} not found")
            try:
                self.net.copy_from(str(model))
            except RLLReproError as exc:
                raise FormatError(f"{path}: learned_net {model}: {exc}") from None
        for h, arr in zip(self.history, arrays):
            host = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(h.shape))
            h.copy_(host.to(h.device))
        self.iter = int(state.iter)
        self.current_step = int(state.current_step)
        self._reset_loss_window()
        side = Path(str(path) + SIDE_SUFFIX)
        if side.exists():
            self._load_side_state(side)

    # side file: what Caffe cannot store
    def _side_state_bytes(self) -> bytes:
        layers = {}
        for layer in getattr(self.net, "layers", []):
            entry = {}
            if isinstance(getattr(layer, "top_value", None), torch.Tensor):
                entry["top_value"] = layer.top_value.detach().to("cpu").clone()
            params = getattr(layer, "params", None)
            if dataclasses.is_dataclass(params) and not isinstance(params, type):
                entry["params"] = dataclasses.asdict(params)
            if entry:
                layers[layer.layer_name] = entry
        state = {
            "format": SIDE_FORMAT,
            "iter": self.iter,
            "rng": rng_state(self.device),
            "net_generators": {k: g.get_state() for k, g in _net_generators(self.net).items()},
            "numpy_rng": _to_plain(np.random.get_state()),
            "layers": layers,
            "hooks": {name: _to_plain(save()) for name, (save, _) in self.state_hooks.items()},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def _load_side_state(self, path: Path) -> None:
        try:
            state = torch.load(str(path), weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any unreadable (or code-carrying) side file is refused
            raise FormatError(f"{path}: cannot read the resume side file: not a plain-data rllstate "
                              f"({exc.__class__.__name__}; delete it to resume without it)") from None
        try:
            self._apply_side_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise FormatError(f"{path}: damaged resume side file ({exc.__class__.__name__}: {exc})") from None

    def _apply_side_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != SIDE_FORMAT:
            raise ValueError(f"format {state.get('format') if isinstance(state, dict) else '?'}, expected {SIDE_FORMAT}")
        if state.get("iter") != self.iter:
            raise ValueError(f"side file is for iteration {state.get('iter')}, the solverstate for {self.iter}")
        set_rng_state(state["rng"], self.device)
        gens = _net_generators(self.net)
        for key, value in state.get("net_generators", {}).items():
            gen = gens.get(key)
            if gen is not None and (gen.device.type == "cpu" or self.device.type == gen.device.type):
                gen.set_state(value)
        np.random.set_state(_from_plain(state["numpy_rng"]))
        by_name = {layer.layer_name: layer for layer in getattr(self.net, "layers", [])}
        for name, entry in state["layers"].items():
            layer = by_name.get(name)
            if layer is None:
                continue
            if "top_value" in entry:
                current = getattr(layer, "top_value")
                value = entry["top_value"].to(current.device, current.dtype)
                if "top_value" in getattr(layer, "_buffers", {}):  # a registered buffer: keep the object
                    current.copy_(value.reshape(current.shape))
                else:
                    layer.top_value = value
            if "params" in entry:
                layer.params = dataclasses.replace(layer.params, **entry["params"])
        for name, value in state.get("hooks", {}).items():
            if name in self.state_hooks:
                self.state_hooks[name][1](_from_plain(value))
