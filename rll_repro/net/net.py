"""The Net: a plan (layers and blob graph), its learnable params, blob storage on one device, and the
two faces over it: the tensor engine (``net(**tensors)``) and pycaffe's numpy API."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterable

import torch
from torch import nn

from rll_repro.device import ensure_numerics, fast_mode, resolve_device
from rll_repro.errors import NetError
from rll_repro.layers.base import BuildContext, Dialect
from rll_repro.limits import check_allocation
from rll_repro.net.engine import Engine
from rll_repro.net.parallel import data_parallel_for
from rll_repro.net.params import clear_param_diffs, collect_params
from rll_repro.net.plan import PHASES, TEST, TRAIN, build_plan, filter_layers, load_net_param, pick_dialect
from rll_repro.net.pycaffe import Blob, ParamBlob, PycaffeFacade
from rll_repro.net.weights import WeightsIO


def _generators(seed: int | None, device: torch.device):
    """(filler generator on the CPU, runtime generator on the device) for ``seed``; on a CPU net one
    generator serves both (fillers, then Dropout masks, from one stream)."""
    if seed is None:
        return None, None
    fillers = torch.Generator().manual_seed(int(seed))
    if device.type == "cpu":
        return fillers, fillers
    if device.type == "cuda":
        return fillers, torch.Generator(device=device).manual_seed(int(seed))
    return fillers, None  # meta / fake devices: no data, no generator


def _place(modules: nn.Module, device: torch.device) -> None:
    """Move every param and buffer to ``device`` as new tensors (not ``Module.to``, which swaps
    tensors in place and cannot under FakeTensorMode); done before anything else references them."""
    if device.type == "cpu":
        return
    for module in modules.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = nn.Parameter(p.data.to(device), requires_grad=p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = b.to(device)


class Net(Engine, PycaffeFacade, WeightsIO, nn.Module):
    """A Caffe net built from a prototxt (or NetParameter), on one device, with pycaffe's API.

    ``Net(prototxt, weights=None, phase='train'|'test', level=0, stages=(), dialect=None, seed=None,
    device=None)``. ``weights`` is a caffemodel path (or NetParameter) given to :meth:`copy_from`.
    ``seed`` seeds the fillers (drawn on the CPU, so every device starts from the same weights) and
    Dropout; without it torch's global RNG is used. ``dialect`` ('rll', 'osm', 'bvlc') overrides the
    fork picked from the layer types. ``device``: 'cpu', 'cuda', 'cuda:N', 'meta' (default: cuda
    when available, else cpu); every blob, param, diff and layer temporary lives there.

    Tensor path (what the solver uses): ``net(**tensors) -> {blob: tensor}``, ``net.backward_losses()``,
    ``net.weighted_loss(outputs)``, ``net.loss_tensor``.
    pycaffe surface: ``blobs`` / ``params`` (numpy ``.data`` / ``.diff``), ``inputs``, ``outputs``,
    ``layers``, ``layer_names``, ``top_names``, ``bottom_names``, ``forward(blobs=None, start=None,
    end=None, **inputs)``, ``backward(diffs=None, **top_diffs)``, ``reshape()``, ``copy_from``,
    ``save``. For the solver: ``forward_backward()``, ``clear_param_diffs()``, ``learnable_params``,
    ``params_lr``, ``params_weight_decay``, ``learnable_param_names``, ``loss_tops``. Extras:
    ``blob_shapes``, ``set_memory_format(torch.channels_last)``, ``keep_blob_diffs``, ``to_proto()``.
    A CPU net stores its 4-D weights and blobs channels_last from the start (the faster layout there;
    ``set_memory_format(torch.contiguous_format)`` for NCHW).
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
        device=None,
    ):
        nn.Module.__init__(self)
        if isinstance(weights, int) and not isinstance(weights, bool):  # pycaffe's Net(proto, phase)
            weights, phase = None, weights
        if isinstance(phase, int) and not isinstance(phase, bool):
            phase = {TRAIN: "train", TEST: "test"}.get(phase, phase)
        phase = str(phase).lower()
        if phase not in PHASES:
            raise NetError(f"phase must be 'train' or 'test', got {phase!r}")
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            ensure_numerics()
        net_param = load_net_param(source)
        self.source = str(source) if isinstance(source, (str, os.PathLike)) else None
        self.name = net_param.name
        self.phase = phase
        level = int(level or (net_param.state.level if net_param.HasField("state") else 0))
        stages = list(stages) or (list(net_param.state.stage) if net_param.HasField("state") else [])
        layer_params = filter_layers(net_param, PHASES[phase], level, stages)
        self.dialect = pick_dialect(layer_params, dialect)
        self.force_backward = bool(net_param.force_backward)
        fillers, runtime = _generators(seed, self.device)
        try:
            self.parallel = data_parallel_for(phase, layer_params)
        except NetError as exc:
            raise NetError(f"{self.source or 'net'}: {exc}") from None
        self.ctx = BuildContext(phase=phase, dialect=self.dialect, generator=fillers,
                                device=self.device, runtime_generator=runtime, parallel=self.parallel)
        try:
            plan = build_plan(layer_params, self.ctx)
            for name, shape in plan.blob_shapes.items():  # before anything is allocated
                check_allocation(shape, 4, f"blob {name!r}", NetError)
        except NetError as exc:  # name the prototxt: "net.prototxt: layer 'fc' (type ...): ..."
            if self.source is None or str(exc).startswith(self.source):
                raise
            raise NetError(f"{self.source}: {exc}") from exc
        self.layers = nn.ModuleList(step.layer for step in plan.steps)
        _place(self.layers, self.device)  # filled on the CPU, then moved
        self.layer_names = plan.layer_names
        self.layer_params = plan.layer_params
        self._steps = plan.steps
        self._blob_shapes = plan.blob_shapes
        self.inputs = plan.inputs
        self.outputs = plan.outputs
        self._alias_root = plan.alias_root
        self._alias_groups = plan.alias_groups
        self.loss_tops = plan.loss_tops
        try:
            learnable = collect_params(self._steps, self.layer_params)
        except NetError as exc:
            if self.source is None:
                raise
            raise NetError(f"{self.source}: {exc}") from exc
        self.learnable_params = learnable.params
        self.params_lr = learnable.lr
        self.params_weight_decay = learnable.weight_decay
        self.learnable_param_names = learnable.names
        self.params: "OrderedDict[str, list[ParamBlob]]" = OrderedDict(
            (layer, [ParamBlob(p, self) for p in blobs]) for layer, blobs in learnable.by_layer.items())
        self._memory_format = None
        self._mirrors: dict = {}
        self._touched_params: set = set()
        self._data: dict[str, torch.Tensor] = {name: self._zeros(self._blob_shapes[name]) for name in self.inputs}
        self._diff: dict[str, torch.Tensor] = {}
        self._chain_tops: dict = {}  # blob -> recomputes an intermediate top of a fused chain (engine.py)
        self._chain_sources: dict = {}  # a fused chain's bottom blob -> the tops recomputed from it
        self._first: dict[str, torch.Tensor] = {}
        self._grads: dict[str, torch.Tensor] = {}
        self.blobs: "OrderedDict[str, Blob]" = OrderedDict((n, Blob(self, n)) for n in self._blob_shapes)
        # Blob diffs (net.blobs[name].diff) are kept by forward()+backward(), as in pycaffe; the
        # solver's forward_backward() skips them unless this is True (holding every activation
        # gradient until the next pass costs memory and time). Param diffs are always kept.
        self.keep_blob_diffs: bool | None = None
        self._shapes_dirty = False
        self._loss_tops: list[tuple[str, float, torch.Tensor]] = []
        self._forward_graph = False
        self._forward_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        if weights is not None:
            self.copy_from(weights)
        if self.device.type == "cpu" or (fast_mode() and self.device.type == "cuda"):
            # CPU: oneDNN's NHWC convolutions make a train step faster (bench/bench_net.py) and stay
            # within the oracle tolerances (they sum in another order, as any BLAS may; BatchNorm keeps
            # accurate statistics in NHWC); --fast on a GPU: cuDNN's fast layout
            self.set_memory_format(torch.channels_last)

    def clear_param_diffs(self) -> None:
        """Caffe's Net::ClearParamDiffs: every learnable blob's diff to zero."""
        self.sync_host_to_device()
        clear_param_diffs(self.learnable_params)

    def set_memory_format(self, memory_format: torch.memory_format = torch.channels_last) -> "Net":
        """Store 4-D weights and input blobs in ``memory_format`` (e.g. channels_last, often faster on
        CPU). Values stay within float32 rounding of the default layout, not bit-identical: the
        convolution kernels sum in another order."""
        self.sync_host_to_device()
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
        return (f"Net({self.name!r}, phase={self.phase!r}, dialect={self.dialect.name!r}, "
                f"device={str(self.device)!r}, {len(self.layers)} layers)")
