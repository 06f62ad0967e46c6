"""Caffe's ``Solver::Step`` + ``SGDSolver::ApplyUpdate``, on the net's device.

One step, as Caffe does it (float32 throughout, Caffe's order of operations):

1. ``net.clear_param_diffs()``; ``iter_size`` times: fill the inputs, forward + backward on the
   tensor path (``net(**inputs)``, ``net.backward_losses()``: gradients accumulate);
   loss = sum / iter_size.
2. rate = the lr policy at ``iter`` (:mod:`rll_repro.lr_policy`).
3. ClipGradients: if clip_gradients >= 0 and the global L2 norm of ALL diffs (before the iter_size
   normalisation, ignoring lr_mult) exceeds it, scale every diff by clip/norm.
4. Per learnable param, in Caffe's learnable_params order:
   Normalize (diff *= 1/iter_size), Regularize (L2: diff += wd*decay_mult * w; L1: diff +=
   wd*decay_mult * sign(w), sign(0) = 0), ComputeUpdateValue (solver type, :mod:`.rules`; SGD:
   h = momentum*h + (rate*lr_mult)*diff, the learning rate INSIDE the history, unlike
   torch.optim.SGD; diff = h).
5. Net::Update: w -= diff. Then the RLL fork's annealing of the net's last layer (SPEC rll §3.2),
   then iter += 1.

Caffe's cblas_saxpy (y += a*x, in Regularize and in every axpby) is one fused multiply-add per
element on OpenBLAS's AVX2 kernels; torch's ``add_(x, alpha=a)`` may or may not fuse depending on
the CPU's vector unit, so the update rules agree with a float32 transcription of Caffe's code to a
few ulps (tests/test_solver_update_rules.py). Params with equal (decay_mult, lr_mult) are updated
together with ``torch._foreach_*`` ops. ``test_net``/``test_iter``/``test_interval`` run Caffe's
TestAll on TEST-phase nets sharing the train weights, fed by ``solver.test_batches``.

No host synchronisation inside a step: the loss, the smoothed loss (Caffe's ``average_loss``
window) and the finiteness checks stay on the device; the host reads them when it logs (every
``display`` iterations), before it writes a snapshot, or when asked (``solver.last_loss``,
``solver.smoothed_loss``, ``solver.check_finite_now()``). On a CPU net, where reading is free, the
finiteness check runs after every forward/backward, before the update (``check_finite="step"``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from rll_repro.device import solver_device
from rll_repro.errors import DataError, TrainingError
from rll_repro.host_memory import retain_freed_memory
from rll_repro.lr_policy import learning_rate
from rll_repro.solver.snapshot import SnapshotMixin

f32 = np.float32

#: the deprecated ``solver_type`` enum values -> ``type`` strings (Caffe's UpgradeSolverType)
SOLVER_TYPE_NAMES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}

BatchProvider = Callable[[int], "Mapping[str, np.ndarray | torch.Tensor] | None"]


def read_solver_param(source):
    """SolverParameter from a path or a message; returns (param, directory used to resolve paths)."""
    from rll_repro.caffe import caffe_pb2

    if isinstance(source, caffe_pb2.SolverParameter):
        return source, Path.cwd()
    from rll_repro.caffe import io as caffe_io

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    return caffe_io.read_solver_prototxt(str(path)), path.resolve().parent


def resolve_path(path: str, base: Path) -> str:
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


def _as_tensor(value, device: torch.device) -> torch.Tensor:
    """A batch array as a float32 tensor on ``device`` (pinned + non-blocking from host memory)."""
    if torch.is_tensor(value):
        t = value
    else:
        t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    if t.device != device:
        if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
            t = t.pin_memory()
        t = t.to(device, non_blocking=True)
    return t


class Solver(SnapshotMixin):
    """Base class: Caffe's Solver + SGDSolver machinery; subclasses define ``compute_update_value``.

    pycaffe names: ``solver.net``, ``solver.iter``, ``solver.step(n)``, ``solver.snapshot()``,
    ``solver.restore(path)``. ``step`` runs on the inputs already in ``solver.net.blobs`` unless a
    ``batches`` callable is given (called as ``batches(iter)`` before every forward/backward, returning
    {input blob name: array or tensor} or None). ``device``: where the train net is built when the
    solver builds it (default: the solver's ``solver_mode``/``device_id``, else cuda when available).
    ``check_finite``: "step" (after every forward/backward, before the update; the default on a CPU),
    "display" (at display iterations and before snapshots, with no host read inside a step; the
    default elsewhere), or False.
    """

    type_name = "SGD"
    history_per_param = 1

    def __init__(self, param, net=None, *, device=None, check_finite=True, log=None):
        self.param, self._base_dir = read_solver_param(param)
        self.log = log  # a trainlog.GlogWriter or None
        self.iter = 0
        self.current_step = 0
        self.state_hooks: dict[str, tuple[Callable[[], object], Callable[[object], None]]] = {}
        self.last_snapshot_iter: int | None = None
        self._check_param()
        if int(self.param.random_seed) >= 0:
            # Caffe::set_random_seed before the nets are built: seeds the fillers and dropout.
            torch.manual_seed(int(self.param.random_seed))
        self.net = net if net is not None else self._build_train_net(solver_device(self.param, device))
        self.device = getattr(self.net, "device", torch.device("cpu"))
        if self.device.type == "cpu":
            retain_freed_memory()  # Caffe allocates its blobs once: no page faults every step
        if check_finite is True:
            check_finite = "step" if self.device.type == "cpu" else "display"
        self.check_finite = check_finite
        self.learnable_params = list(self.net.learnable_params)
        self.lr_mults = [f32(v) for v in self.net.params_lr]
        self.decay_mults = [f32(v) for v in self.net.params_weight_decay]
        n = len(self.learnable_params)
        self.history = [torch.zeros_like(self.learnable_params[i % n].detach())
                        for i in range(n * self.history_per_param)]
        self._param_owner = self._param_owners()
        self._reset_loss_window()
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

    def _build_train_net(self, device):
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
            net_param = resolve_path(getattr(p, field), self._base_dir)
        return Net(net_param, phase="train", device=device)

    def _build_test_nets(self) -> list:
        """Caffe's Solver::InitTestNets: test_net_param entries, then test_net files, then the
        generic net (net / net_param) for the remaining test_iter entries, all in phase TEST."""
        p = self.param
        if not len(p.test_iter):
            return []
        from rll_repro.net import Net

        sources = list(p.test_net_param) + [resolve_path(f, self._base_dir) for f in p.test_net]
        if p.HasField("net_param"):
            generic = p.net_param
        elif p.HasField("net"):
            generic = resolve_path(p.net, self._base_dir)
        else:
            generic = None
        if generic is not None:
            sources += [generic] * (len(p.test_iter) - len(sources))
        if len(sources) != len(p.test_iter):
            raise TrainingError(f"solver: {len(p.test_iter)} test_iter entries for {len(sources)} test nets")
        return [Net(src, phase="test", device=self.device) for src in sources]

    def test_all(self) -> list[dict[str, float]]:
        """Caffe's Solver::TestAll: every test net shares the train net's weights (by layer name) and
        averages its outputs over test_iter forward passes; logged as 'Test net output #k'. Without
        ``solver.test_batches`` nothing feeds the test nets, so nothing is tested (and nothing is
        logged): Caffe would average the outputs of its data layers, which this port does not have."""
        if self.test_batches is None:
            self.test_results = []
            return self.test_results
        self.test_results = [self._test(i) for i in range(len(self.test_nets))]
        return self.test_results

    @torch.no_grad()
    def _test(self, index: int) -> dict[str, float]:
        net = self.test_nets[index]
        for name, blobs in net.params.items():  # ShareTrainedLayersWith
            src = self.net.params.get(name)
            if src is not None:
                for dst, s in zip(blobs, src):
                    dst.param.data.copy_(s.param.data)
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
    def _check_batch_names(self, inputs) -> None:
        for name in inputs:
            if name not in self.net.blobs:
                where = f" {self.net.source}" if getattr(self.net, "source", None) else ""
                raise DataError(f"the batches feed blob {name!r}, which the net{where} does not have "
                                f"(its input blobs: {', '.join(self.net.inputs) or 'none'})")

    def _forward_backward(self, inputs) -> torch.Tensor:
        """One forward/backward on the tensor path; the weighted loss as a device tensor."""
        if inputs:
            self._check_batch_names(inputs)
        if hasattr(self.net, "backward_losses"):
            tensors = {n: _as_tensor(v, self.device) for n, v in (inputs or {}).items()}
            if getattr(self.net, "parallel", None) is not None and tensors:
                tensors = self.net.parallel.shard(tensors)  # this rank's rows of the global batch
            with torch.enable_grad():
                self.net(**tensors)
                self.net.backward_losses()
            return self.net.loss_tensor
        for name, value in (inputs or {}).items():  # any other net with pycaffe's API
            blob = self.net.blobs[name]
            value = np.asarray(value, dtype=np.float32)
            if tuple(blob.shape) != value.shape:
                blob.reshape(*value.shape)
            blob.data[...] = value
        return torch.as_tensor(self.net.forward_backward(), dtype=torch.float64)

    def step(self, iters: int = 1, batches: BatchProvider | None = None) -> None:
        """Caffe's Solver::Step(iters). The last iteration's loss is ``solver.last_loss`` (a host read
        when asked)."""
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self._loss_segments.append(start_iter)
        iter_size = int(self.param.iter_size)
        display = int(self.param.display)
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            interval = int(self.param.test_interval)
            if self.test_nets and interval and self.iter % interval == 0 and (
                    self.iter > 0 or self.param.test_initialization):
                self.test_all()
            loss = None
            for _ in range(iter_size):
                term = self._forward_backward(batches(self.iter) if batches is not None else None).to(torch.float32)
                loss = term if loss is None else loss + term
            if iter_size != 1:
                loss = loss / float(f32(iter_size))
            if getattr(self.net, "parallel", None) is not None:
                self.net.parallel.reduce_gradients(self.learnable_params)  # = the one-process gradient
            self._pending_losses.append((start_iter, self.iter, loss.detach()))
            if self.check_finite:
                self._watch_finite(loss)
            if display and self.iter % display == 0 and self.log is not None:
                self.check_finite_now()
                self.log.iteration_loss(self.iter, self.smoothed_loss)
                self.log.train_outputs(self.net)
            self.apply_update()
            if int(self.param.snapshot) and self.iter % int(self.param.snapshot) == 0:
                self.snapshot()

    # ------------------------------------------------------------------ the loss window (host side, lazy)
    def _reset_loss_window(self) -> None:
        self._pending_losses: list[tuple[int, int, torch.Tensor]] = []
        self._loss_segments: list[int] = []
        self._window: list[float] = []
        self._window_start: int | None = None
        self._smoothed = 0.0
        self._last_loss = float("nan")
        self._finite_flag: torch.Tensor | None = None
        self._finite_since = 0

    def _catch_up(self) -> None:
        """Read the pending losses (one host transfer) and replay Solver::UpdateSmoothedLoss on them;
        the window restarts at every step() call, as Caffe clears losses_ in Step()."""
        if not self._pending_losses:
            return
        values = torch.stack([t for _, _, t in self._pending_losses]).to("cpu").tolist()
        for (start, it, _), loss in zip(self._pending_losses, values):
            if start != self._window_start:
                self._window_start, self._window, self._smoothed = start, [], 0.0
            average_loss = max(int(self.param.average_loss), 1)
            if len(self._window) < average_loss:
                self._window.append(loss)
                size = len(self._window)
                self._smoothed = (self._smoothed * (size - 1) + loss) / size
            else:
                idx = (it - start) % average_loss
                self._smoothed += (loss - self._window[idx]) / average_loss
                self._window[idx] = loss
            self._last_loss = loss
        self._pending_losses = []

    @property
    def smoothed_loss(self) -> float:
        self._catch_up()
        return self._smoothed

    @property
    def last_loss(self) -> float:
        self._catch_up()
        return self._last_loss

    # ------------------------------------------------------------------ the update
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
        sync = getattr(self.net, "sync_host_to_device", None)
        if sync is not None:
            sync()
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
        """SGDSolver::ClipGradients: global L2 norm over all params (lr_mult ignored), float32 sums in
        Caffe's order, on the device (the scale is applied there; the log line only where the norm
        can be read for free, on a CPU)."""
        clip = f32(self.param.clip_gradients)
        if clip < 0 or not grads:
            return
        sumsq = None
        for g in grads:
            d = torch.dot(g.reshape(-1), g.reshape(-1))
            sumsq = d if sumsq is None else sumsq + d
        l2norm = torch.sqrt(sumsq)
        clip_t = torch.full((), float(clip), dtype=torch.float32, device=l2norm.device)
        scale = torch.where(l2norm > clip_t, clip_t / l2norm, torch.ones_like(l2norm))
        if self.log is not None and l2norm.device.type == "cpu" and bool(l2norm > clip_t):
            self.log.info(f"Gradient clipping: scaling down gradients (L2 norm {float(l2norm):g} > {clip:g}) "
                          f"by scale factor {float(scale):g}", source="sgd_solver.cpp:94")
        torch._foreach_mul_(grads, scale)

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
    def _grad_probe(self) -> torch.Tensor | None:
        grads = [p.grad for p in self.learnable_params if p.grad is not None]
        if not grads:
            return None
        # NaN/inf propagate into the sum of norms (a finite overflow only sends us to the exact check)
        return torch.stack(torch._foreach_norm(grads)).sum()

    def _watch_finite(self, loss: torch.Tensor) -> None:
        if self.check_finite == "step":
            probe = self._grad_probe()
            finite = math.isfinite(float(loss)) and (probe is None or bool(torch.isfinite(probe)))
            if not finite:
                self._raise_nonfinite(float(loss))
            return
        flag = torch.isfinite(loss)
        probe = self._grad_probe()
        if probe is not None:
            flag = flag & torch.isfinite(probe)
        if self._finite_flag is None:
            self._finite_since = self.iter
            self._finite_flag = flag
        else:
            self._finite_flag = self._finite_flag & flag

    def check_finite_now(self) -> None:
        """Read the device-side finiteness flag of the steps since the last check (one host read)."""
        if self._finite_flag is None:
            return
        flag, since = self._finite_flag, self._finite_since
        self._finite_flag = None
        if not bool(flag):
            raise TrainingError(
                f"a non-finite loss or gradient appeared between iterations {since} and {self.iter}; "
                f"training stopped; {self._snapshot_state_phrase()}")

    def _snapshot_state_phrase(self) -> str:
        if self.last_snapshot_iter is None:
            return "no snapshot was written in this session"
        return f"the last snapshot (iteration {self.last_snapshot_iter}) is intact"

    def _raise_nonfinite(self, loss: float) -> None:
        bad_grads = [i for i, p in enumerate(self.learnable_params)
                     if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        where = self._first_nonfinite_blob()
        if where is None and bad_grads:
            layer = self._param_owner[bad_grads[-1]].rsplit("/", 1)[0]
            where = f"the gradient of layer {layer!r} (first reached by backward)"
        what = f"loss is {loss}" if not math.isfinite(loss) else "non-finite gradient"
        raise TrainingError(f"iteration {self.iter}: {what}; first non-finite value in {where or 'the loss'}; "
                            f"training stopped before the update; {self._snapshot_state_phrase()}")

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

    def _check_params_finite(self) -> None:
        """Before a snapshot: every learnable blob (BatchNorm's running statistics included) finite,
        so no snapshot is written holding NaN."""
        self.check_finite_now()
        params = [p.detach() for p in self.learnable_params]
        if not params or bool(torch.isfinite(torch.stack(torch._foreach_norm(params)).sum())):
            return
        for i, p in enumerate(params):
            if not bool(torch.isfinite(p).all()):
                raise TrainingError(
                    f"iteration {self.iter}: the weights of layer {self._param_owner[i].rsplit('/', 1)[0]!r} "
                    f"(blob {self._param_owner[i]}) hold NaN or Inf; not writing a snapshot of them; "
                    f"{self._snapshot_state_phrase()}")


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


__all__ = ["Solver", "read_solver_param", "resolve_path", "solver_type_of", "SOLVER_TYPE_NAMES"]
