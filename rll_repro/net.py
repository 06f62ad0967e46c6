"""The net builder and the pycaffe-style facade: a NetParameter becomes a blob-name DAG of layer modules.

What is matched from Caffe's ``Net`` (net.cpp) on purpose:

- Layer filtering by NetState (``FilterNet``/``StateMeetsRule``): phase, level and stages of every
  ``include``/``exclude`` rule; a layer with include rules is kept if any rule is met, a layer with
  exclude rules is dropped if any rule is met.
- Legacy net inputs (``input:`` with ``input_dim``/``input_shape``) become one Input layer named
  "input" at the front (``UpgradeNetInput``).
- In-place layers: top j may reuse the name of bottom j. A blob's data is the last version written,
  its diff the gradient at the first version (what an in-place backward leaves in the shared memory).
- A top name produced twice (not in place) and a bottom no earlier layer produces are build errors.
- ``loss_weight``: one per top or none; loss layers default to 1 on top 0. The net's loss is
  Σ loss_weight·sum(top); backward seeds every weighted top's diff with its loss_weight.
- ``propagate_down: 0`` stops the gradient into that bottom; ``force_backward`` gives the input blobs
  a diff; a blob read by several layers gets the sum of their gradients (the implicit Split).
- Param specs: ``lr_mult``/``decay_mult`` (default 1), params shared by ``name`` (the first layer
  owns the blob, later ones must match its shape; a sharer's explicit lr_mult/decay_mult must agree
  with the owner's), a param with lr_mult 0 gets no diff. Exposed in Caffe's ``learnable_params_``
  order as ``learnable_params``, ``params_lr``, ``params_weight_decay``.
- BatchNorm blobs per fork (``Dialect.bn_blobs_learnable``): lr_mult 1 / decay_mult 1 in the RLL fork,
  forced lr_mult 0 in BVLC/OSM. The dialect is "osm" when the net uses an OSM-only layer type, else "rll".
- Param diffs accumulate over backward passes until ``clear_param_diffs`` (Caffe's ClearParamDiffs).
- ``copy_from``: by layer name; layers missing from the file keep their filler values; the blob
  count and shapes must match (legacy num/channels/height/width blobs compare as 4-D, Caffe's
  ``ShapeEquals``).
- Layers that write their top in Backward (the RLL loss) are asked ``after_backward()`` for it.
"""
from __future__ import annotations

import functools
import os
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from rll_repro.errors import NetError, RLLReproError
from rll_repro.layers.base import DIALECTS, OSM_ONLY_TYPES, BuildContext, Dialect
from rll_repro.layers.registry import layer_class

PHASES = {"train": 0, "test": 1}
TRAIN, TEST = 0, 1  # pycaffe's caffe.TRAIN / caffe.TEST: Net(proto, weights, TEST) works as in pycaffe


# ----------------------------------------------------------------------------------------------
# NetParameter helpers


def _caffe_pb2():
    from rll_repro.caffe import caffe_pb2

    return caffe_pb2


def load_net_param(source) -> "object":
    """A NetParameter from a prototxt path or a NetParameter (V0/V1 nets upgraded by caffe.io)."""
    if isinstance(source, (str, os.PathLike)):
        from rll_repro.caffe import io as caffe_io

        return caffe_io.read_net_prototxt(source)
    if hasattr(source, "layer"):
        from rll_repro.caffe.upgrade import net_needs_upgrade, upgrade_net

        if net_needs_upgrade(source):
            upgraded = type(source)()
            upgraded.CopyFrom(source)
            return upgrade_net(upgraded)
        return source
    raise NetError(f"cannot build a net from {type(source).__name__} (need a prototxt path or a NetParameter)")


def state_meets_rule(phase: int, level: int, stages: Sequence[str], rule) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_layers(net_param, phase: int, level: int, stages: Sequence[str]) -> list:
    """Caffe's Net::FilterNet: the LayerParameters kept in this state."""
    kept = []
    for lp in net_param.layer:
        if len(lp.include) and len(lp.exclude):
            raise NetError(f"layer {lp.name!r}: specify either include or exclude rules, not both")
        included = len(lp.include) == 0
        for rule in lp.exclude:
            if state_meets_rule(phase, level, stages, rule):
                included = False
        for rule in lp.include:
            if state_meets_rule(phase, level, stages, rule):
                included = True
        if included:
            kept.append(lp)
    return kept


def pick_dialect(layer_params, override: str | Dialect | None = None) -> Dialect:
    """The fork whose arithmetic applies: explicit, else "osm" if an OSM-only type (or the OSM fork's
    L1 Normalization) is used, else "rll"."""
    if isinstance(override, Dialect):
        return override
    if override is not None:
        if override not in DIALECTS:
            raise NetError(f"unknown dialect {override!r}; known: {', '.join(sorted(DIALECTS))}")
        return DIALECTS[override]
    if any(lp.type in OSM_ONLY_TYPES for lp in layer_params):
        return DIALECTS["osm"]
    # Normalization L1 only works in the OSM fork (the RLL fork's L1 branch is buggy and unused).
    if any(lp.type == "Normalization" and lp.normalization_param.norm == 1 for lp in layer_params):
        return DIALECTS["osm"]
    return DIALECTS["rll"]


# ----------------------------------------------------------------------------------------------
# pycaffe-style blob views


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


class Blob:
    """A pycaffe Blob view of one named net blob: ``.data``/``.diff`` are numpy views of the tensors.

    Views are taken at access time: after the next forward/backward the blob holds new tensors
    (input blobs keep theirs, so ``net.blobs['data'].data[...] = x`` feeds the net).
    """

    def __init__(self, net: "Net", name: str):
        self._net = net
        self.name = name

    @property
    def data(self) -> np.ndarray:
        return _numpy_view(self._net._blob_data(self.name))

    @property
    def diff(self) -> np.ndarray:
        return _numpy_view(self._net._blob_diff(self.name))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._net._blob_data(self.name).shape)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)

    def _legacy(self, i: int) -> int:
        shape = self.shape
        return shape[i] if i < len(shape) else 1

    def reshape(self, *shape: int) -> None:
        """Give the blob a new shape (zeros); call ``net.reshape()`` to propagate it."""
        self._net._set_blob_shape(self.name, tuple(int(s) for s in shape))

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={self.shape})"


class ParamBlob:
    """A pycaffe view of one learnable blob: ``.data`` = the parameter, ``.diff`` = its ``.grad``."""

    def __init__(self, param: nn.Parameter):
        self.param = param

    @property
    def data(self) -> np.ndarray:
        return _numpy_view(self.param.data)

    @property
    def diff(self) -> np.ndarray:
        if self.param.grad is None:
            self.param.grad = torch.zeros_like(self.param.data)
        return _numpy_view(self.param.grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def count(self) -> int:
        return int(self.param.numel())

    def reshape(self, *shape: int) -> None:
        raise NetError("learnable blobs cannot be reshaped")

    def __repr__(self) -> str:
        return f"ParamBlob(shape={self.shape})"


# ----------------------------------------------------------------------------------------------
# The net


class _Step:
    __slots__ = ("layer", "bottoms", "tops", "propagate", "loss_weights", "index", "inplace")

    def __init__(self, layer, bottoms, tops, propagate, loss_weights, index):
        self.inplace = False  # run the layer's forward_inplace (see Net._plan_inplace)
        self.layer = layer
        self.bottoms = bottoms
        self.tops = tops
        self.propagate = propagate
        self.loss_weights = loss_weights
        self.index = index


class Net(nn.Module):
    """A Caffe net built from a prototxt (or NetParameter), with pycaffe's API.

    ``Net(prototxt, weights=None, phase='train'|'test', level=0, stages=(), dialect=None, seed=None)``.
    ``weights`` is a caffemodel path (or NetParameter) given to :meth:`copy_from`. ``seed`` seeds the
    fillers (and Dropout masks); without it torch's global RNG is used. ``dialect`` ('rll', 'osm',
    'bvlc') overrides the fork picked from the layer types.

    pycaffe surface: ``blobs`` / ``params`` (numpy ``.data`` / ``.diff`` views), ``inputs``,
    ``outputs``, ``layers``, ``layer_names``, ``top_names``, ``bottom_names``,
    ``forward(blobs=None, start=None, end=None, **inputs)``, ``backward(diffs=None, **top_diffs)``,
    ``reshape()``, ``copy_from(caffemodel)``, ``save(caffemodel)``. For the solver:
    ``forward_backward()``, ``clear_param_diffs()``, ``learnable_params``, ``params_lr``,
    ``params_weight_decay``, ``learnable_param_names``, ``loss_tops``. Extras: ``blob_shapes``,
    ``set_memory_format(torch.channels_last)``, ``keep_blob_diffs``, ``to_proto()``.
    Forward under ``torch.no_grad()`` / ``torch.inference_mode()`` for extraction (same numbers).
    """

    def __init__(
        self,
        source,
        weights=None,
        phase: str = "train",
        level: int = 0,
        stages: Iterable[str] = (),
        dialect: str | Dialect | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        if isinstance(weights, int) and not isinstance(weights, bool):  # pycaffe's Net(proto, phase)
            weights, phase = None, weights
        if isinstance(phase, int) and not isinstance(phase, bool):
            phase = {TRAIN: "train", TEST: "test"}.get(phase, phase)
        phase = str(phase).lower()
        if phase not in PHASES:
            raise NetError(f"phase must be 'train' or 'test', got {phase!r}")
        net_param = load_net_param(source)
        self.source = str(source) if isinstance(source, (str, os.PathLike)) else None
        self.name = net_param.name
        self.phase = phase
        state_phase = PHASES[phase]
        level = int(level or (net_param.state.level if net_param.HasField("state") else 0))
        stages = list(stages) or (list(net_param.state.stage) if net_param.HasField("state") else [])
        layer_params = filter_layers(net_param, state_phase, level, stages)
        self.dialect = pick_dialect(layer_params, dialect)
        self.force_backward = bool(net_param.force_backward)
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.ctx = BuildContext(phase=phase, dialect=self.dialect, generator=generator)
        self.layers = nn.ModuleList()
        self.layer_names: list[str] = []
        self.layer_params = []
        self._steps: list[_Step] = []
        self._blob_shapes: "OrderedDict[str, tuple]" = OrderedDict()
        self.inputs: list[str] = []
        try:
            self._build(layer_params)
            self._setup_params()
        except NetError as exc:  # name the prototxt: "net.prototxt: layer 'fc' (type ...): ..."
            if self.source is None or str(exc).startswith(self.source):
                raise
            raise NetError(f"{self.source}: {exc}") from exc
        self._data: dict[str, torch.Tensor] = {}
        self._diff: dict[str, torch.Tensor] = {}
        for name in self.inputs:
            self._data[name] = torch.zeros(self._blob_shapes[name], dtype=torch.float32)
        self.blobs: "OrderedDict[str, Blob]" = OrderedDict((n, Blob(self, n)) for n in self._blob_shapes)
        # Blob diffs (net.blobs[name].diff) are kept by forward()+backward(), as in pycaffe; the
        # solver's forward_backward() skips them unless this is True (holding every activation
        # gradient until the next pass costs memory and time). Param diffs are always kept.
        self.keep_blob_diffs: bool | None = None
        self._shapes_dirty = False
        self._loss_tops: list[tuple[str, float, torch.Tensor]] = []
        self._forward_graph = False
        self._forward_loss = 0.0
        if weights is not None:
            self.copy_from(weights)

    # -- building -------------------------------------------------------------------------------

    def _build(self, layer_params) -> None:
        available: dict[str, bool] = {}  # blob name -> still unconsumed (Caffe's available_blobs)
        produced: set[str] = set()
        self._alias_root: dict[str, str] = {}
        for index, lp in enumerate(layer_params):
            name = lp.name
            if name in self.layer_names:
                raise NetError(f"layer {name!r}: two layers have this name")
            cls = layer_class(lp.type, name)
            bottoms = list(lp.bottom)
            for b in bottoms:
                if b not in produced:
                    raise NetError(
                        f"layer {name!r} (type {lp.type}): bottom blob {b!r} is not produced by any earlier layer"
                    )
            tops = list(lp.top)
            for j, t in enumerate(tops):
                in_place = j < len(bottoms) and bottoms[j] == t
                if t in produced and not in_place:
                    raise NetError(f"layer {name!r} (type {lp.type}): top blob {t!r} is produced by several layers")
            if len(lp.propagate_down) not in (0, len(bottoms)):
                raise NetError(f"layer {name!r}: {len(lp.propagate_down)} propagate_down values for {len(bottoms)} bottoms")
            propagate = [bool(p) for p in lp.propagate_down] or [True] * len(bottoms)
            bottom_shapes = [self._blob_shapes[b] for b in bottoms]
            try:
                layer = cls(lp, bottom_shapes, self.ctx)
                top_shapes = layer.reshape(bottom_shapes)
            except RLLReproError:
                raise
            except (ValueError, TypeError, AttributeError, RuntimeError, IndexError, KeyError, ZeroDivisionError) as exc:
                raise NetError(f"layer {name!r} (type {lp.type}): cannot be built: {exc}") from exc
            if len(top_shapes) != len(tops):
                raise NetError(
                    f"layer {name!r} (type {lp.type}): produces {len(top_shapes)} top blob(s), the prototxt names {len(tops)}"
                )
            if len(lp.loss_weight) not in (0, len(tops)):
                raise NetError(f"layer {name!r}: {len(lp.loss_weight)} loss_weight values for {len(tops)} tops")
            if len(lp.loss_weight):
                loss_weights = [float(w) for w in lp.loss_weight]
            else:
                loss_weights = [1.0 if (cls.is_loss and j == 0) else 0.0 for j in range(len(tops))]
            for b in bottoms:
                available.pop(b, None)
            shares = getattr(layer, "shares_bottom_memory", False)
            for j, (t, shape) in enumerate(zip(tops, top_shapes)):
                self._blob_shapes[t] = tuple(int(s) for s in shape)
                if t not in self._alias_root:
                    self._alias_root[t] = self._alias_root[bottoms[0]] if shares and bottoms else t
                produced.add(t)
                available[t] = True
            if getattr(layer, "is_input", False):
                self.inputs.extend(tops)
            self.layers.append(layer)
            self.layer_names.append(name)
            self.layer_params.append(lp)
            self._steps.append(_Step(layer, bottoms, tops, propagate, loss_weights, index))
        self.outputs: list[str] = list(available)
        self._plan_inplace()
        groups: dict[str, list[str]] = {}
        for name, root in self._alias_root.items():
            groups.setdefault(root, []).append(name)
        self._alias_groups = {root: names for root, names in groups.items() if len(names) > 1}
        self.loss_tops: list[str] = [
            t for step in self._steps for t, w in zip(step.tops, step.loss_weights) if w != 0.0
        ]

    def _plan_inplace(self) -> None:
        """Let in-place layers (ReLU) overwrite their bottom tensor, as Caffe does, where that is safe
        for autograd: the bottom was just written by a layer whose backward does not read its own
        output (``output_unused_in_backward``), nothing else read it since, and it is no net input
        or shared view. Saves an allocation and a pass; the values are the same."""
        last_writer: dict[str, int] = {}
        readers_since: dict[str, int] = {}
        for k, step in enumerate(self._steps):
            for b in step.bottoms:
                readers_since[b] = readers_since.get(b, 0) + 1
            if (
                len(step.bottoms) == 1
                and step.tops == step.bottoms
                and step.propagate[0]
                and hasattr(step.layer, "forward_inplace")
                and readers_since.get(step.bottoms[0]) == 1
                and step.bottoms[0] in last_writer
            ):
                producer = self._steps[last_writer[step.bottoms[0]]]
                b = step.bottoms[0]
                if (
                    getattr(producer.layer, "output_unused_in_backward", False)
                    and not getattr(producer.layer, "shares_bottom_memory", False)
                    and self._alias_root.get(b) == b
                    and sum(1 for t in self._alias_root.values() if t == b) == 1
                ):
                    step.inplace = True
            for t in step.tops:
                last_writer[t] = k
                readers_since[t] = 0

    def _setup_params(self) -> None:
        """Caffe's AppendParam: sharing by name, lr/decay multipliers, learnable_params_ order."""
        self.learnable_params: list[nn.Parameter] = []
        self.params_lr: list[float] = []
        self.params_weight_decay: list[float] = []
        self.learnable_param_names: list[str] = []
        self.params: "OrderedDict[str, list[ParamBlob]]" = OrderedDict()
        owners: dict[str, tuple[int, tuple, bool, bool]] = {}  # spec name -> (learnable idx, shape, has_lr, has_decay)
        for step in self._steps:
            layer, lp = step.layer, self.layer_params[step.index]
            blobs = layer.blobs
            if len(lp.param) > len(blobs):
                raise NetError(f"layer {lp.name!r}: {len(lp.param)} param specs for {len(blobs)} learnable blobs")
            overrides = layer.param_spec_overrides() or []
            for i in range(len(blobs)):
                spec = lp.param[i] if i < len(lp.param) else None
                has_lr = spec is not None and spec.HasField("lr_mult")
                has_decay = spec is not None and spec.HasField("decay_mult")
                lr = float(spec.lr_mult) if has_lr else 1.0
                decay = float(spec.decay_mult) if has_decay else 1.0
                if i < len(overrides) and overrides[i]:
                    if "lr_mult" in overrides[i]:
                        lr, has_lr = float(overrides[i]["lr_mult"]), True
                    if "decay_mult" in overrides[i]:
                        decay, has_decay = float(overrides[i]["decay_mult"]), True
                share = spec.name if spec is not None and spec.name else ""
                if share and share in owners:
                    idx, shape, owner_has_lr, owner_has_decay = owners[share]
                    owner = self.learnable_params[idx]
                    mode = int(spec.share_mode) if spec.HasField("share_mode") else 0
                    if tuple(blobs[i].shape) != shape:
                        if mode == 1 and blobs[i].numel() == owner.numel():
                            raise NetError(f"layer {lp.name!r}: PERMISSIVE sharing of param {share!r} with a different shape is not supported")
                        raise NetError(
                            f"layer {lp.name!r}: shared param {share!r} has shape {tuple(blobs[i].shape)}, its owner {shape}"
                        )
                    if has_lr:
                        if owner_has_lr and self.params_lr[idx] != lr:
                            raise NetError(f"layer {lp.name!r}: shared param {share!r} has mismatched lr_mult")
                        self.params_lr[idx] = lr
                    if has_decay:
                        if owner_has_decay and self.params_weight_decay[idx] != decay:
                            raise NetError(f"layer {lp.name!r}: shared param {share!r} has mismatched decay_mult")
                        self.params_weight_decay[idx] = decay
                    owners[share] = (idx, shape, owner_has_lr or has_lr, owner_has_decay or has_decay)
                    blobs[i] = owner
                    continue
                param = blobs[i]
                param.requires_grad_(bool(param.requires_grad) and lr != 0.0)
                if param.grad is None:
                    param.grad = torch.zeros_like(param.data)
                idx = len(self.learnable_params)
                self.learnable_params.append(param)
                self.params_lr.append(lr)
                self.params_weight_decay.append(decay)
                self.learnable_param_names.append(f"{lp.name}/{i}")
                if share:
                    owners[share] = (idx, tuple(param.shape), has_lr, has_decay)
            if len(blobs):
                self.params[lp.name] = [ParamBlob(p) for p in blobs]
        # a shared param gets a gradient if any sharer trains it
        for idx, p in enumerate(self.learnable_params):
            if self.params_lr[idx] == 0.0:
                p.requires_grad_(False)

    # -- blob storage ---------------------------------------------------------------------------

    def _blob_data(self, name: str) -> torch.Tensor:
        t = self._data.get(name)
        if t is None:
            if name not in self._blob_shapes:
                raise KeyError(name)
            t = torch.zeros(self._blob_shapes[name], dtype=torch.float32)
            self._data[name] = t
        return t

    def _blob_diff(self, name: str) -> torch.Tensor:
        t = self._diff.get(name)
        data = self._blob_data(name)
        if t is None or t.shape != data.shape:
            t = torch.zeros(data.shape, dtype=torch.float32)
            self._diff[name] = t
        return t

    def _set_blob_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self._blob_shapes:
            raise NetError(f"no blob named {name!r}")
        self._blob_shapes[name] = shape
        self._data[name] = torch.zeros(shape, dtype=torch.float32)
        self._diff.pop(name, None)
        self._shapes_dirty = True

    def reshape(self) -> None:
        """Caffe's Net::Reshape: propagate the input blobs' shapes through every layer."""
        self._shapes_dirty = False
        shapes = {name: tuple(self._blob_data(name).shape) for name in self.inputs}
        for step in self._steps:
            if getattr(step.layer, "is_input", False):
                continue
            bottom_shapes = [shapes[b] for b in step.bottoms]
            try:
                top_shapes = step.layer.reshape(bottom_shapes)
            except RLLReproError:
                raise
            except (ValueError, TypeError, RuntimeError, IndexError) as exc:
                raise NetError(f"layer {step.layer.layer_name!r}: cannot reshape to {bottom_shapes}: {exc}") from exc
            for t, s in zip(step.tops, top_shapes):
                shapes[t] = tuple(int(d) for d in s)
        for name, shape in shapes.items():
            if self._blob_shapes.get(name) != shape or name not in self.inputs:
                self._blob_shapes[name] = shape
                if name not in self.inputs:
                    old = self._data.get(name)
                    if old is not None and tuple(old.shape) != shape:  # zeros of the new shape on access
                        self._data.pop(name, None)
                        self._diff.pop(name, None)

    # -- forward / backward ---------------------------------------------------------------------

    def _set_inputs(self, inputs: dict) -> bool:
        changed = False
        for name, value in inputs.items():
            if name not in self.inputs:
                raise NetError(f"{name!r} is not an input blob of the net (inputs: {', '.join(self.inputs)})")
            array = torch.as_tensor(np.asarray(value, dtype=np.float32))
            current = self._data[name]
            if tuple(array.shape) != tuple(current.shape):
                if array.numel() == current.numel() and array.dim() < current.dim():
                    array = array.reshape(current.shape)
                else:
                    fmt = getattr(self, "_memory_format", None)
                    array = array.clone()
                    if fmt is not None and array.dim() == 4:
                        array = array.contiguous(memory_format=fmt)
                    self._data[name] = array
                    changed = True
                    continue
            current.copy_(array)
        for name in self.inputs:
            if tuple(self._data[name].shape) != self._blob_shapes[name]:
                changed = True
        return changed or self._shapes_dirty

    def _run_forward(self, keep_diffs: bool = True, start: int = 0, end: int | None = None) -> float:
        track = torch.is_grad_enabled()
        keep = keep_diffs and track
        data: dict[str, torch.Tensor] = {}
        first: dict[str, torch.Tensor] = {}  # alias root -> first tensor written (its grad is the diff)
        latest: dict[str, torch.Tensor] = {}  # alias root -> last tensor written (the data)
        root_of = self._alias_root
        if start > 0:  # pycaffe's forward(start=...): earlier blobs keep their data
            data.update({k: v.detach() for k, v in self._data.items()})
        else:  # drop the previous pass's activations and diffs before making new ones (peak memory)
            self._data = {name: self._data[name] for name in self.inputs}
            self._diff, self._first, self._grads, self._loss_tops = {}, {}, {}, []
        for name in self.inputs:
            t = self._data[name]
            if track and self.force_backward:
                t = t.detach().requires_grad_(True)
            data[name] = t
            first[name] = t
            latest[name] = t
        loss_tops: list[tuple[str, float, torch.Tensor]] = []
        grads: dict[str, torch.Tensor] = {}
        self._grads = grads
        if keep:
            for name, t in first.items():
                if t.requires_grad:
                    t.register_hook(functools.partial(grads.__setitem__, name))
        total = 0.0
        for step in self._steps[start:end]:
            if getattr(step.layer, "is_input", False):
                continue
            xs = [data[b] if p else data[b].detach() for b, p in zip(step.bottoms, step.propagate)]
            if step.inplace and xs[0]._base is None:  # never in place on a view (autograd rebases it)
                outs = step.layer.forward_inplace(*xs)
            else:
                outs = step.layer(*xs)
            if not isinstance(outs, (tuple, list)):
                outs = (outs,)
            if len(outs) != len(step.tops):
                raise NetError(f"layer {step.layer.layer_name!r} returned {len(outs)} tops, expected {len(step.tops)}")
            for t_name, t, w in zip(step.tops, outs, step.loss_weights):
                if t_name not in step.bottoms and any(t is x for x in xs):
                    t = t.view_as(t)  # a pass-through top (Split, Dropout in TEST) gets its own diff
                root = root_of[t_name]
                if root not in first:
                    first[root] = t
                    if keep and t.requires_grad:
                        # a hook keeps a reference to the gradient (retain_grad would copy it); it stays
                        # on this first version, so an in-place layer after it does not change the diff
                        t.register_hook(functools.partial(grads.__setitem__, root))
                data[t_name] = t
                latest[root] = t
                if w != 0.0:
                    loss_tops.append((t_name, w, t))
                    total += w * float(t.detach().double().sum())
        for root, names in self._alias_groups.items():  # Reshape/Flatten tops share their bottom's memory
            last = latest.get(root)
            if last is not None:
                for name in names:
                    if name in data and data[name] is not last:
                        data[name] = last.reshape(data[name].shape)
        self._data.update({k: v for k, v in data.items() if k not in self.inputs})
        self._first = first
        self._loss_tops = loss_tops
        self._forward_graph = track
        self._forward_loss = total
        return total

    def forward(
        self, blobs: Sequence[str] | None = None, start: str | None = None, end: str | None = None, **inputs
    ) -> dict[str, np.ndarray]:
        """pycaffe's Net.forward: set the named inputs, run the layers (from layer ``start`` to layer
        ``end``, both included, default all), return the output blobs (the ``end`` layer's tops when
        given) plus any names in ``blobs``, as numpy arrays."""
        if self._set_inputs(inputs):
            self.reshape()
        first = self._layer_index(start) if start is not None else 0
        last = self._layer_index(end) + 1 if end is not None else len(self._steps)
        self._run_forward(keep_diffs=self.keep_blob_diffs is not False, start=first, end=last)
        outputs = list(self._steps[last - 1].tops) if end is not None else list(self.outputs)
        names = outputs + [b for b in (blobs or []) if b not in outputs]
        return {name: self.blobs[name].data for name in names}

    def _layer_index(self, name: str) -> int:
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise NetError(f"no layer named {name!r}") from None

    def _run_backward(self, top_diffs: dict[str, np.ndarray] | None = None) -> None:
        if not self._forward_graph:
            raise NetError("backward needs a forward run with gradients enabled (not under torch.no_grad)")
        roots, grads = [], []
        seeded = set()
        top_diffs = top_diffs or {}
        for name, weight, t in self._loss_tops:
            if name in top_diffs:  # an explicit diff replaces the loss_weight seed (pycaffe)
                continue
            if t.requires_grad:
                roots.append(t)
                grads.append(torch.full_like(t, weight))
            seeded.add(name)
        for name, value in (top_diffs or {}).items():
            if name not in self._blob_shapes:
                raise NetError(f"{name!r} is not a blob of the net")
            t = self._data[name]
            g = torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(t.shape)
            self._diff[name] = g.clone()
            if t.requires_grad:
                roots.append(t)
                grads.append(g)
            seeded.add(name)
        for name in self.outputs:  # diffs set by hand in output blobs (pycaffe style)
            if name in seeded or name not in self._diff:
                continue
            t, g = self._data[name], self._diff[name]
            if t.requires_grad and g.shape == t.shape and bool(g.any()):
                roots.append(t)
                grads.append(g.clone())
        if roots:
            torch.autograd.backward(roots, grads)
        self._forward_graph = False
        diffs: dict[str, torch.Tensor] = {}
        for root, g in self._grads.items():
            for name in self._alias_groups.get(root, (root,)):
                shape = self._data[name].shape
                diffs[name] = g if g.shape == shape else g.reshape(shape)
        self._grads = {}
        for name, weight, t in self._loss_tops:
            if name not in top_diffs:
                diffs[name] = torch.full(t.shape, weight, dtype=torch.float32)
        for name, value in (top_diffs or {}).items():
            diffs.setdefault(name, self._diff[name])
        self._diff = diffs
        for step in self._steps:
            new_tops = step.layer.after_backward()
            if new_tops is not None:
                for t_name, t in zip(step.tops, new_tops):
                    self._data[t_name] = t.detach()

    def backward(self, diffs: Sequence[str] | None = None, **top_diffs) -> dict[str, np.ndarray]:
        """pycaffe's Net.backward: loss tops get diff = loss_weight, ``top_diffs`` name other top
        diffs; returns the input blobs' diffs (plus any names in ``diffs``)."""
        self._run_backward(top_diffs)
        names = list(self.inputs) + [d for d in (diffs or []) if d not in self.inputs]
        return {name: self.blobs[name].diff for name in names}

    def forward_backward(self) -> float:
        """Caffe's Net::ForwardBackward on the inputs already in the input blobs; the summed
        weighted loss of the forward (param diffs accumulate). Blob diffs are only kept when
        ``keep_blob_diffs`` is True (the solver does not need them)."""
        if self._shapes_dirty or any(tuple(self._data[n].shape) != self._blob_shapes[n] for n in self.inputs):
            self.reshape()
        with torch.enable_grad():
            loss = self._run_forward(keep_diffs=bool(self.keep_blob_diffs))
            self._run_backward()
        return loss

    def clear_param_diffs(self) -> None:
        """Caffe's Net::ClearParamDiffs: every learnable blob's diff to zero."""
        for p in self.learnable_params:
            if p.grad is None:
                p.grad = torch.zeros_like(p.data)
            else:
                p.grad.zero_()

    def set_memory_format(self, memory_format: torch.memory_format = torch.channels_last) -> "Net":
        """Store 4-D weights and input blobs in ``memory_format`` (e.g. channels_last, often faster on
        CPU). Values stay within float32 rounding of the default layout, not bit-identical: the
        convolution kernels sum in another order."""
        with torch.no_grad():
            for p in self.learnable_params:
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=memory_format)
                    if p.grad is not None:
                        p.grad = p.grad.contiguous(memory_format=memory_format)
            for name in self.inputs:
                t = self._data[name]
                if t.dim() == 4:
                    self._data[name] = t.contiguous(memory_format=memory_format)
        self._memory_format = memory_format
        return self

    @property
    def loss(self) -> float:
        """The summed weighted loss of the last forward."""
        return self._forward_loss

    # -- weights --------------------------------------------------------------------------------

    def copy_from(self, source) -> None:
        """Caffe's Net::CopyTrainedLayersFrom: copy blobs by layer name from a caffemodel."""
        from rll_repro.caffe import io as caffe_io
        from rll_repro.caffe.weights import blob_to_array

        where = str(source) if isinstance(source, (str, os.PathLike)) else "weights"
        net_param = caffe_io.read_caffemodel(source) if isinstance(source, (str, os.PathLike)) else source
        by_name = {name: layer for name, layer in zip(self.layer_names, self.layers)}
        for src in net_param.layer:
            layer = by_name.get(src.name)
            if layer is None:
                continue
            targets = layer.blobs
            if len(src.blobs) != len(targets):
                raise NetError(
                    f"{where}: layer {src.name!r} has {len(src.blobs)} blobs, the net's layer has {len(targets)}"
                )
            for j, (blob, target) in enumerate(zip(src.blobs, targets)):
                shape = tuple(target.shape)
                if not blob_shape_equals(blob, shape):
                    raise NetError(
                        f"{where}: layer {src.name!r} blob {j}: source shape {describe_blob_shape(blob)} "
                        f"does not match the net's {shape}"
                    )
                array = blob_to_array(blob)
                with torch.no_grad():
                    target.data.copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).reshape(shape)))

    def to_proto(self, write_diff: bool = False):
        """Caffe's Net::ToProto: the net's layers (this phase) with their blobs."""
        from rll_repro.caffe.weights import array_to_blob

        pb = _caffe_pb2()
        out = pb.NetParameter()
        if self.name:
            out.name = self.name
        for lp, layer in zip(self.layer_params, self.layers):
            dst = out.layer.add()
            dst.CopyFrom(lp)
            del dst.blobs[:]
            for p in layer.blobs:
                blob = dst.blobs.add()
                blob.CopyFrom(array_to_blob(p.detach().numpy()))
                if write_diff and p.grad is not None:
                    blob.diff.extend(p.grad.detach().numpy().ravel().tolist())
        return out

    def save(self, path) -> None:
        """Write the net's weights as a caffemodel (Caffe's Net::ToProto + WriteProtoToBinaryFile)."""
        from rll_repro.caffe import io as caffe_io

        caffe_io.write_caffemodel(path, self.to_proto())

    # -- conveniences ---------------------------------------------------------------------------

    @property
    def top_names(self) -> "OrderedDict[str, list[str]]":
        """pycaffe's Net.top_names: layer name -> its top blob names."""
        return OrderedDict((n, list(step.tops)) for n, step in zip(self.layer_names, self._steps))

    @property
    def bottom_names(self) -> "OrderedDict[str, list[str]]":
        """pycaffe's Net.bottom_names: layer name -> its bottom blob names."""
        return OrderedDict((n, list(step.bottoms)) for n, step in zip(self.layer_names, self._steps))

    @property
    def blob_shapes(self) -> "OrderedDict[str, tuple]":
        return OrderedDict(self._blob_shapes)

    def __repr__(self) -> str:
        return f"Net({self.name!r}, phase={self.phase!r}, dialect={self.dialect.name!r}, {len(self.layers)} layers)"


def blob_shape_equals(blob, shape: tuple[int, ...]) -> bool:
    """Caffe's Blob::ShapeEquals(BlobProto): legacy num/channels/height/width compare as a 4-D shape
    (the target padded with leading 1s, at most 4 axes), else the ``shape`` dims exactly."""
    legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    if legacy:
        if len(shape) > 4:
            return False
        padded = (1,) * (4 - len(shape)) + tuple(shape)
        return padded == (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim) == tuple(shape)


def describe_blob_shape(blob) -> tuple[int, ...]:
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)
