"""Caffe's solvers (``Solver::Step`` + ``SGDSolver::ApplyUpdate`` and its subclasses), snapshots, resume.

One step, as Caffe does it (float32 throughout, Caffe's order of operations):

1. ``net.clear_param_diffs()``; ``iter_size`` times: fill the inputs, ``net.forward_backward()``
   (gradients accumulate); loss = sum / iter_size.
2. rate = the lr policy at ``iter`` (:mod:`rll_repro.lr_policy`).
3. ClipGradients: if clip_gradients >= 0 and the global L2 norm of ALL diffs (before the iter_size
   normalisation, ignoring lr_mult) exceeds it, scale every diff by clip/norm.
4. Per learnable param, in Caffe's learnable_params order:
   Normalize (diff *= 1/iter_size), Regularize (L2: diff += wd*decay_mult * w; L1: diff +=
   wd*decay_mult * sign(w), sign(0) = 0), ComputeUpdateValue (solver type; SGD: h = momentum*h +
   (rate*lr_mult)*diff, the learning rate INSIDE the history, unlike torch.optim.SGD; diff = h).
5. Net::Update: w -= diff. Then the RLL fork's annealing of the net's last layer (SPEC rll §3.2),
   then iter += 1.

Caffe's cblas_saxpy (y += a*x, in Regularize and in every axpby) is one fused multiply-add per
element on OpenBLAS's AVX2 kernels; torch's ``add_(x, alpha=a)`` is too, and the update rules are
bitwise equal to a float32 transcription of Caffe's CPU code (tests/test_solver_update_rules.py).
Params with equal (decay_mult, lr_mult) are updated together with ``torch._foreach_*`` ops (the same
per-tensor kernels, without the Python overhead per blob). ``test_net``/``test_iter``/
``test_interval`` run Caffe's TestAll on TEST-phase nets sharing the train weights, fed by
``solver.test_batches``.

BatchNorm blobs in the RLL fork are ordinary params (SPEC rll §2.2): their diff is 0, so each step
applies weight decay and momentum to them; nothing here special-cases them.

Snapshots are Caffe's files (``<prefix>_iter_<N>.caffemodel`` and, as the RLL fork names it,
``<prefix>_iter_<N>.caffemodel.solverstate``: iter, learned_net, history, current_step) plus a side
file ``<solverstate>.rllstate`` with what Caffe cannot store (RNG states, the RLL layer's lagging top
value and annealed settings, the data sampler's state), so that a resume is bitwise identical to an
uninterrupted run on CPU. Every file is written atomically; the solverstate is written last.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from rll_repro.errors import DataError, FormatError, RLLReproError, TrainingError
from rll_repro.lr_policy import learning_rate

f32 = np.float32

#: the deprecated ``solver_type`` enum values -> ``type`` strings (Caffe's UpgradeSolverType)
SOLVER_TYPE_NAMES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}

SIDE_SUFFIX = ".rllstate"

BatchProvider = Callable[[int], "Mapping[str, np.ndarray] | None"]


def _read_solver_param(source):
    """SolverParameter from a path or a message; returns (param, directory used to resolve paths)."""
    from rll_repro.caffe import caffe_pb2

    if isinstance(source, caffe_pb2.SolverParameter):
        return source, Path.cwd()
    from rll_repro.caffe import io as caffe_io

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    return caffe_io.read_solver_prototxt(str(path)), path.resolve().parent


def _resolve(path: str, base: Path) -> str:
    """Caffe opens paths relative to the working directory; we also accept them relative to the
    solver file (so solvers can be run from anywhere)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    alt = base / p
    return str(alt) if alt.exists() else str(p)


def solver_type_of(param) -> str:
    """The solver type string, honouring the deprecated ``solver_type`` enum as Caffe's upgrade does."""
    if param.HasField("solver_type") and not param.HasField("type"):
        return SOLVER_TYPE_NAMES[int(param.solver_type)]
    return param.type or "SGD"


class Solver:
    """Base class: Caffe's Solver + SGDSolver machinery; subclasses define ``compute_update_value``.

    pycaffe names: ``solver.net``, ``solver.iter``, ``solver.step(n)``, ``solver.snapshot()``,
    ``solver.restore(path)``. ``step`` runs on the inputs already in ``solver.net.blobs`` unless a
    ``batches`` callable is given (called as ``batches(iter)`` before every forward/backward, returning
    {input blob name: array} or None).
    """

    type_name = "SGD"
    history_per_param = 1

    def __init__(self, param, net=None, *, check_finite: bool = True, log=None):
        self.param, self._base_dir = _read_solver_param(param)
        self.check_finite = check_finite
        self.log = log  # a trainlog.GlogWriter or None
        self.iter = 0
        self.current_step = 0
        self.smoothed_loss = 0.0
        self._losses: list[float] = []
        self.last_loss = float("nan")
        self.state_hooks: dict[str, tuple[Callable[[], object], Callable[[object], None]]] = {}
        self._check_param()
        if int(self.param.random_seed) >= 0:
            # Caffe::set_random_seed before the nets are built: seeds the fillers and dropout.
            torch.manual_seed(int(self.param.random_seed))
        self.net = net if net is not None else self._build_train_net()
        self.learnable_params = list(self.net.learnable_params)
        self.lr_mults = [f32(v) for v in self.net.params_lr]
        self.decay_mults = [f32(v) for v in self.net.params_weight_decay]
        n = len(self.learnable_params)
        self.history = [torch.zeros_like(self.learnable_params[i % n].detach())
                        for i in range(n * self.history_per_param)]
        self._param_owner = self._param_owners()
        #: test_batches(test_net_index, k) -> {input blob: array} feeds the test nets' inputs
        self.test_batches: Callable[[int, int], "Mapping[str, np.ndarray] | None"] | None = None
        self.test_results: list[dict[str, float]] = []
        self.test_nets = self._build_test_nets() if net is None else []

    # ------------------------------------------------------------------ construction
    def _check_param(self) -> None:
        p = self.param
        if int(p.iter_size) < 1:
            raise TrainingError(f"solver: iter_size must be >= 1, got {p.iter_size}")
        if p.regularization_type not in ("L1", "L2"):
            raise TrainingError(f"solver: unknown regularization_type {p.regularization_type!r} (expected L1 or L2)")

    def _build_train_net(self):
        from rll_repro.net import Net

        p = self.param
        sources = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(sources) != 1:
            raise TrainingError("solver: give exactly one of net, net_param, train_net, train_net_param "
                                f"(found {', '.join(sources) or 'none'})")
        field = sources[0]
        if field in ("net_param", "train_net_param"):
            net_param = getattr(p, field)
        else:
            net_param = _resolve(getattr(p, field), self._base_dir)
        return Net(net_param, phase="train")

    def _build_test_nets(self) -> list:
        """Caffe's Solver::InitTestNets: test_net_param entries, then test_net files, then the
        generic net (net / net_param) for the remaining test_iter entries, all in phase TEST."""
        p = self.param
        if not len(p.test_iter):
            return []
        from rll_repro.net import Net

        sources = list(p.test_net_param) + [_resolve(f, self._base_dir) for f in p.test_net]
        if p.HasField("net_param"):
            generic = p.net_param
        elif p.HasField("net"):
            generic = _resolve(p.net, self._base_dir)
        else:
            generic = None
        if generic is not None:
            sources += [generic] * (len(p.test_iter) - len(sources))
        if len(sources) != len(p.test_iter):
            raise TrainingError(f"solver: {len(p.test_iter)} test_iter entries for {len(sources)} test nets")
        return [Net(src, phase="test") for src in sources]

    def test_all(self) -> list[dict[str, float]]:
        """Caffe's Solver::TestAll: every test net shares the train net's weights (by layer name) and
        averages its outputs over test_iter forward passes; logged as 'Test net output #k'."""
        self.test_results = [self._test(i) for i in range(len(self.test_nets))]
        return self.test_results

    @torch.no_grad()
    def _test(self, index: int) -> dict[str, float]:
        net = self.test_nets[index]
        for name, blobs in net.params.items():  # ShareTrainedLayersWith
            src = self.net.params.get(name)
            if src is not None:
                for dst, s in zip(blobs, src):
                    dst.data[...] = s.data
        if self.log is not None:
            self.log.info(f"Iteration {self.iter}, Testing net (#{index})", source="solver.cpp:341")
        sums: dict[str, np.ndarray] = {}
        iters = int(self.param.test_iter[index])
        for k in range(iters):
            inputs = self.test_batches(index, k) if self.test_batches is not None else None
            outputs = net.forward(**{n: np.asarray(v, np.float32) for n, v in (inputs or {}).items()})
            for name, value in outputs.items():
                value = np.asarray(value, np.float64).reshape(-1)
                sums[name] = sums[name] + value if name in sums else value.copy()
        results, out_index = {}, 0
        weights = _output_loss_weights(net)
        for name, total in sums.items():
            for j, v in enumerate(total / max(iters, 1)):
                key = name if total.size == 1 else f"{name}[{j}]"
                results[key] = float(v)
                if self.log is not None:
                    w = weights.get(name, 0.0)
                    extra = f" (* {w:g} = {w * v:g} loss)" if w else ""
                    self.log.info(f"    Test net output #{out_index}: {name} = {v:g}{extra}", source="solver.cpp:414")
                out_index += 1
        return results

    def _param_owners(self) -> list[str]:
        """``layer/index`` of each learnable param (for error messages)."""
        names = list(getattr(self.net, "learnable_param_names", []) or [])
        if len(names) != len(self.learnable_params):
            names = [f"param #{i}" for i in range(len(self.learnable_params))]
        return names

    # ------------------------------------------------------------------ stepping
    def _feed(self, inputs) -> None:
        if not inputs:
            return
        for name, value in inputs.items():
            if name not in self.net.blobs:
                where = f" {self.net.source}" if getattr(self.net, "source", None) else ""
                raise DataError(f"the batches feed blob {name!r}, which the net{where} does not have "
                                f"(its input blobs: {', '.join(self.net.inputs) or 'none'})")
            blob = self.net.blobs[name]
            value = np.asarray(value, dtype=np.float32)
            if tuple(blob.shape) != value.shape:
                blob.reshape(*value.shape)
            blob.data[...] = value

    def step(self, iters: int = 1, batches: BatchProvider | None = None) -> float:
        """Caffe's Solver::Step(iters). Returns the last iteration's loss."""
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = max(int(self.param.average_loss), 1)
        self._losses = []
        self.smoothed_loss = 0.0
        iter_size = int(self.param.iter_size)
        display = int(self.param.display)
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            interval = int(self.param.test_interval)
            if self.test_nets and interval and self.iter % interval == 0 and (
                    self.iter > 0 or self.param.test_initialization):
                self.test_all()
            loss = f32(0)
            for _ in range(iter_size):
                if batches is not None:
                    self._feed(batches(self.iter))
                loss = f32(loss + f32(float(self.net.forward_backward())))
            loss = f32(loss / f32(iter_size))
            self.last_loss = float(loss)
            self._update_smoothed_loss(float(loss), start_iter, average_loss)
            if self.check_finite:
                self._check_finite(float(loss))
            if display and self.iter % display == 0 and self.log is not None:
                self.log.iteration_loss(self.iter, self.smoothed_loss)
                self.log.train_outputs(self.net)
            self.apply_update()
            if int(self.param.snapshot) and self.iter % int(self.param.snapshot) == 0:
                self.snapshot()
        return self.last_loss

    def _update_smoothed_loss(self, loss: float, start_iter: int, average_loss: int) -> None:
        """Solver::UpdateSmoothedLoss (the window restarts at every step() call, as in Caffe)."""
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self._losses[idx]) / average_loss
            self._losses[idx] = loss

    def _grads(self) -> list[torch.Tensor]:
        grads = []
        for p in self.learnable_params:
            if p.grad is None:  # params autograd never touches (BatchNorm blobs): Caffe's diff is 0
                p.grad = torch.zeros_like(p.detach())
            grads.append(p.grad)
        return grads

    def learning_rate(self) -> float:
        """The rate the next update will use (does not advance multistep's current_step)."""
        return learning_rate(self.param, self.iter, self.current_step)[0]

    @torch.no_grad()
    def apply_update(self) -> None:
        """SGDSolver::ApplyUpdate: rate, ClipGradients, Normalize/Regularize/ComputeUpdateValue per
        param, Net::Update (w -= diff), the RLL fork's annealing, iter += 1."""
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        self.last_rate = rate
        display = int(self.param.display)
        if display and self.iter % display == 0 and self.log is not None:
            self.log.iteration_lr(self.iter, rate)
        grads = self._grads()
        self._clip_gradients(grads)
        iter_size = int(self.param.iter_size)
        norm = f32(f32(1.0) / f32(iter_size))
        weight_decay = f32(self.param.weight_decay)
        l1 = self.param.regularization_type == "L1"
        rate32 = f32(rate)
        # Params are independent, so they are processed in groups of equal (decay_mult, lr_mult) with
        # torch's _foreach ops (on CPU the same per-tensor kernels, minus the Python overhead).
        for (decay_mult, lr_mult), idx in self._groups().items():
            ps = [self.learnable_params[i] for i in idx]
            gs = [grads[i] for i in idx]
            if iter_size != 1:
                torch._foreach_mul_(gs, float(norm))
            local_decay = f32(weight_decay * decay_mult)
            if local_decay:
                torch._foreach_add_(gs, torch._foreach_sign(ps) if l1 else ps, alpha=float(local_decay))
            self.compute_update_values(idx, ps, gs, f32(rate32 * lr_mult))
        torch._foreach_sub_(self.learnable_params, grads)
        self._anneal()
        self.iter += 1

    def _clip_gradients(self, grads: list[torch.Tensor]) -> None:
        """SGDSolver::ClipGradients: global L2 norm over all params (lr_mult ignored), float32."""
        clip = f32(self.param.clip_gradients)
        if clip < 0:
            return
        sumsq = f32(0)
        for g in grads:
            sumsq = f32(sumsq + f32(torch.dot(g.reshape(-1), g.reshape(-1)).item()))
        l2norm = f32(np.sqrt(sumsq))
        if l2norm > clip:
            scale = f32(clip / l2norm)
            if self.log is not None:
                self.log.info(f"Gradient clipping: scaling down gradients (L2 norm {l2norm:g} > {clip:g}) "
                              f"by scale factor {scale:g}", source="sgd_solver.cpp:94")
            for g in grads:
                g.mul_(float(scale))

    def _groups(self) -> dict[tuple, list[int]]:
        if getattr(self, "_group_cache", None) is None:
            groups: dict[tuple, list[int]] = {}
            for i, (d, lr) in enumerate(zip(self.decay_mults, self.lr_mults)):
                groups.setdefault((d, lr), []).append(i)
            self._group_cache = groups
        return self._group_cache

    def compute_update_values(self, idx: list[int], ps, gs, local_rate) -> None:
        """ComputeUpdateValue for the params ``idx`` sharing one local rate (default: one by one)."""
        for i, p, g in zip(idx, ps, gs):
            self.compute_update_value(i, p, g, local_rate)

    def compute_update_value(self, i: int, p: torch.Tensor, g: torch.Tensor, local_rate) -> None:
        raise NotImplementedError

    def _anneal(self) -> None:
        """RLL fork (SPEC rll §3.2): after Net::Update, move the net's LAST layer's settings toward the
        solver's targets, if that layer is a DistanceWeightedValidPairLossV12."""
        layers = getattr(self.net, "layers", None)
        if not layers:
            return
        last = layers[-1]
        if getattr(getattr(last, "param", None), "type", "") != "DistanceWeightedValidPairLossV12":
            return
        from rll_repro.layers.rll import anneal_toward_solver_targets

        anneal_toward_solver_targets(last, self.param, self.iter)

    # ------------------------------------------------------------------ faults
    def _check_finite(self, loss: float) -> None:
        """Stop on a non-finite loss or gradient, naming the iteration and the first layer where a
        non-finite value appears (forward order over the blobs; else the param gradient reached
        first by backward). Raised before the update: weights and snapshots stay as they were."""
        grads = [p.grad for p in self.learnable_params if p.grad is not None]
        # fast path: one reduction per blob; NaN/inf propagate into the total (a finite overflow
        # only sends us to the exact check below)
        if math.isfinite(loss) and (not grads or bool(torch.isfinite(torch.stack([g.sum() for g in grads]).sum()))):
            return
        bad_grads = [i for i, p in enumerate(self.learnable_params)
                     if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if math.isfinite(loss) and not bad_grads:
            return
        where = self._first_nonfinite_blob()
        if where is None and bad_grads:
            layer = self._param_owner[bad_grads[-1]].rsplit("/", 1)[0]
            where = f"the gradient of layer {layer!r} (first reached by backward)"
        what = f"loss is {loss}" if not math.isfinite(loss) else "non-finite gradient"
        raise TrainingError(f"iteration {self.iter}: {what}; first non-finite value in {where or 'the loss'}; "
                            "training stopped before the update, the last snapshot is intact")

    def _first_nonfinite_blob(self) -> str | None:
        blobs = getattr(self.net, "blobs", {})
        producers = _blob_producers(self.net)
        inputs = set(getattr(self.net, "inputs", []) or [])
        for name, blob in blobs.items():
            data = getattr(blob, "data", None)
            if isinstance(data, np.ndarray) and data.size and not np.isfinite(data).all():
                if name in inputs:
                    return f"the input blob {name!r}"
                layer = producers.get(name)
                return f"layer {layer!r} (top {name!r})" if layer else f"blob {name!r}"
        return None

    # ------------------------------------------------------------------ snapshots
    def snapshot_prefix(self) -> str:
        return _resolve(self.param.snapshot_prefix, Path.cwd()) if self.param.snapshot_prefix else "snapshot"

    def snapshot(self, prefix: str | os.PathLike | None = None) -> tuple[str, str]:
        """Write the side file, ``<prefix>_iter_<N>.caffemodel`` and ``...caffemodel.solverstate``,
        each atomically and in that order, so an existing solverstate always has its model and side
        file (a kill at any moment leaves the previous snapshot the latest complete one).
        Returns (model, solverstate)."""
        from rll_repro.caffe import caffe_pb2
        from rll_repro.caffe.weights import array_to_blob
        from rll_repro.fileio import atomic_write_bytes

        prefix = str(prefix) if prefix is not None else self.snapshot_prefix()
        model = f"{prefix}_iter_{self.iter}.caffemodel"
        state_path = model + ".solverstate"
        atomic_write_bytes(state_path + SIDE_SUFFIX, self._side_state_bytes())
        self.save_model(model)
        state = caffe_pb2.SolverState()
        state.iter = self.iter
        state.learned_net = model
        state.current_step = self.current_step
        for h in self.history:
            state.history.add().CopyFrom(array_to_blob(h.numpy()))
        atomic_write_bytes(state_path, state.SerializeToString())  # last: a solverstate means all three exist
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
        and the weights of ``learned_net``; plus the side file when present (bitwise resume)."""
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
                raise FormatError(f"{path}: learned_net {state.learned_net!r} not found")
            self.net.copy_from(str(model))
        for h, arr in zip(self.history, arrays):
            h.copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(h.shape)))
        self.iter = int(state.iter)
        self.current_step = int(state.current_step)
        side = Path(str(path) + SIDE_SUFFIX)
        if side.exists():
            self._load_side_state(side)

    # side file: what Caffe cannot store
    def _side_state_bytes(self) -> bytes:
        layers = {}
        for layer in getattr(self.net, "layers", []):
            entry = {}
            if isinstance(getattr(layer, "top_value", None), torch.Tensor):
                entry["top_value"] = layer.top_value.clone()
            params = getattr(layer, "params", None)
            if dataclasses.is_dataclass(params) and not isinstance(params, type):
                entry["params"] = dataclasses.asdict(params)
            if entry:
                layers[layer.layer_name] = entry
        gen = _net_generator(self.net)
        state = {
            "format": 1,
            "iter": self.iter,
            "torch_rng": torch.get_rng_state(),
            "net_generator": gen.get_state() if isinstance(gen, torch.Generator) else None,
            "numpy_rng": np.random.get_state(),
            "layers": layers,
            "hooks": {name: save() for name, (save, _) in self.state_hooks.items()},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def _load_side_state(self, path: Path) -> None:
        try:
            state = torch.load(str(path), weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable side file is a format error
            raise FormatError(f"{path}: cannot read the resume side file ({exc.__class__.__name__})") from None
        if state.get("iter") != self.iter:
            raise FormatError(f"{path}: side file is for iteration {state.get('iter')}, the solverstate for {self.iter}")
        torch.set_rng_state(state["torch_rng"])
        gen = _net_generator(self.net)
        if isinstance(gen, torch.Generator) and state.get("net_generator") is not None:
            gen.set_state(state["net_generator"])
        np.random.set_state(state["numpy_rng"])
        by_name = {layer.layer_name: layer for layer in getattr(self.net, "layers", [])}
        for name, entry in state["layers"].items():
            layer = by_name.get(name)
            if layer is None:
                continue
            if "top_value" in entry:
                layer.top_value = entry["top_value"]
            if "params" in entry:
                layer.params = dataclasses.replace(layer.params, **entry["params"])
        for name, value in state.get("hooks", {}).items():
            if name in self.state_hooks:
                self.state_hooks[name][1](value)


def _net_generator(net) -> torch.Generator | None:
    """The generator the net's layers draw from (fillers, Dropout), when it has its own."""
    gen = getattr(getattr(net, "ctx", None), "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def _output_loss_weights(net) -> dict[str, float]:
    """Output blob -> its loss weight (loss layers' first top default to 1)."""
    out = {}
    for layer in getattr(net, "layers", []):
        weights = list(layer.param.loss_weight) or ([1.0] if getattr(layer, "is_loss", False) else [])
        for top, w in zip(layer.param.top, weights):
            if w:
                out[top] = float(w)
    return out


def _blob_producers(net) -> dict[str, str]:
    """top blob name -> name of the last layer writing it (in-place layers included)."""
    out = {}
    for layer in getattr(net, "layers", []):
        for top in getattr(getattr(layer, "param", None), "top", []):
            out[top] = layer.layer_name
    return out


class SGDSolver(Solver):
    """Caffe SGD: h = momentum*h + local_rate*diff (cblas scal then axpy); diff = h."""

    type_name = "SGD"

    def compute_update_value(self, i, p, g, local_rate):
        h = self.history[i]
        h.mul_(float(f32(self.param.momentum))).add_(g, alpha=float(local_rate))
        g.copy_(h)

    def compute_update_values(self, idx, ps, gs, local_rate):
        hs = [self.history[i] for i in idx]
        torch._foreach_mul_(hs, float(f32(self.param.momentum)))
        torch._foreach_add_(hs, gs, alpha=float(local_rate))
        torch._foreach_copy_(gs, hs)


class NesterovSolver(Solver):
    """Caffe Nesterov: u = h; h = momentum*h + local_rate*diff; diff = (1+momentum)*h - momentum*u."""

    type_name = "Nesterov"

    def compute_update_value(self, i, p, g, local_rate):
        m = f32(self.param.momentum)
        h = self.history[i]
        update = h.clone()
        h.mul_(float(m)).add_(g, alpha=float(local_rate))
        update.mul_(float(-m)).add_(h, alpha=float(f32(f32(1) + m)))
        g.copy_(update)


class AdaGradSolver(Solver):
    """Caffe AdaGrad: h += diff^2; diff = local_rate * diff / (sqrt(h) + delta). Needs momentum 0."""

    type_name = "AdaGrad"

    def _check_param(self):
        super()._check_param()
        if self.param.momentum != 0:
            raise TrainingError("solver: AdaGrad needs momentum 0 (Caffe checks this)")

    def compute_update_value(self, i, p, g, local_rate):
        h = self.history[i]
        h.add_(g * g)
        update = h.sqrt().add_(float(f32(self.param.delta)))
        torch.div(g, update, out=update)
        g.copy_(update.mul_(float(local_rate)))


class RMSPropSolver(Solver):
    """Caffe RMSProp: h = rms_decay*h + (1-rms_decay)*diff^2; diff = local_rate*diff/(sqrt(h)+delta)."""

    type_name = "RMSProp"

    def _check_param(self):
        super()._check_param()
        if self.param.momentum != 0:
            raise TrainingError("solver: RMSProp needs momentum 0 (Caffe checks this)")

    def compute_update_value(self, i, p, g, local_rate):
        decay = f32(self.param.rms_decay)
        h = self.history[i]
        h.mul_(float(decay)).add_(g * g, alpha=float(f32(f32(1) - decay)))
        update = h.sqrt().add_(float(f32(self.param.delta)))
        torch.div(g, update, out=update)
        g.copy_(update.mul_(float(local_rate)))


class AdaDeltaSolver(Solver):
    """Caffe AdaDelta (history: [grad^2 averages..., update^2 averages...], decay = momentum)."""

    type_name = "AdaDelta"
    history_per_param = 2

    def compute_update_value(self, i, p, g, local_rate):
        m = f32(self.param.momentum)
        delta = float(f32(self.param.delta))
        n = len(self.learnable_params)
        hg, hu = self.history[i], self.history[n + i]
        one_minus = float(f32(f32(1) - m))
        hg.mul_(float(m)).add_(g * g, alpha=one_minus)
        update = hu + delta
        update.div_(hg + delta).sqrt_()
        g.mul_(update)
        hu.mul_(float(m)).add_(g * g, alpha=one_minus)
        g.mul_(float(local_rate))


class AdamSolver(Solver):
    """Caffe Adam: m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; diff = local_rate*correction *
    m/(sqrt(v)+delta), correction = sqrt(1-b2^t)/(1-b1^t) with t = iter+1 (computed in double)."""

    type_name = "Adam"
    history_per_param = 2

    def compute_update_value(self, i, p, g, local_rate):
        b1, b2 = f32(self.param.momentum), f32(self.param.momentum2)
        n = len(self.learnable_params)
        m, v = self.history[i], self.history[n + i]
        t = self.iter + 1
        correction = f32(math.sqrt(1.0 - float(b2) ** t) / (1.0 - float(b1) ** t))
        m.mul_(float(b1)).add_(g, alpha=float(f32(f32(1) - b1)))
        v.mul_(float(b2)).add_(g * g, alpha=float(f32(f32(1) - b2)))
        update = v.sqrt().add_(float(f32(self.param.delta)))
        torch.div(m, update, out=update)
        g.copy_(update.mul_(float(f32(local_rate * correction))))


SOLVERS = {cls.type_name: cls for cls in
           (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver)}


def get_solver(solver_prototxt, net=None, **kwargs) -> Solver:
    """pycaffe's ``caffe.get_solver``: the solver class named by the prototxt's ``type``."""
    param, _ = _read_solver_param(solver_prototxt)
    name = solver_type_of(param)
    cls = SOLVERS.get(name)
    if cls is None:
        raise TrainingError(f"solver: unknown type {name!r} (expected one of {', '.join(SOLVERS)})")
    return cls(solver_prototxt, net, **kwargs)


__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver", "get_solver"]
