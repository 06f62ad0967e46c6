"""The run: the plan's layers applied to tensors on the net's device, autograd for the backward.

Matched from Caffe's ``Net::Forward``/``Backward``:

- The net's loss is Σ loss_weight·sum(top) over the loss tops, summed in float64 (then float32 by
  the solver, as Caffe's Dtype loss); backward seeds every weighted top's diff with its loss_weight,
  so autograd from the loss tops gives Caffe's gradients.
- ``propagate_down: 0`` stops the gradient into that bottom; ``force_backward`` gives the input blobs
  a diff; a blob read by several layers gets the sum of their gradients (the implicit Split).
- In-place layers: a blob's data is the last version written, its diff the gradient at the first
  version. An in-place layer on a net input (ReLU on ``data``) leaves its output in that blob, as
  Caffe's shared memory does.
- Param diffs accumulate over backward passes until ``clear_param_diffs``.
- Layers that write their top in Backward (the RLL loss) are asked ``after_backward()`` for it.

Nothing here reads a value back to the host: the loss stays a device tensor (``loss_tensor``), and
every tensor made here is made on the device of the tensors it goes with.
"""
from __future__ import annotations

import functools
from typing import Mapping

import torch

from rll_repro.errors import DataError, NetError, RLLReproError
from rll_repro.layers import batchnorm_chain, pointwise_conv
from rll_repro.net.parallel import runs_gathered


class Engine:
    """The tensor side of :class:`rll_repro.net.Net` (a mixin: the Net owns the plan and storage)."""

    # -- the tensor path -------------------------------------------------------------------------

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensor path: ``net(data=x, label=y) -> {blob: tensor}`` for the output blobs and the loss
        tops, on ``net.device``; under grad mode the graph is kept for :meth:`backward_losses` (or
        for autograd from the loss tops, each seeded with its loss weight). Inputs on another device
        are moved (non-blocking); inputs not given keep their current contents."""
        self.sync_host_to_device()
        if self._set_input_tensors(inputs):
            self.reshape()
        data = self._run_forward(keep_diffs=bool(self.keep_blob_diffs))
        names = list(self.outputs) + [t for t in self.loss_tops if t not in self.outputs]
        return {name: data[name] for name in names}

    def weighted_loss(self, outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Σ loss_weight·sum(top) over the loss tops (float32, differentiable): ``.backward()`` on it
        seeds each loss top with exactly its loss weight, as Caffe's Backward does."""
        tops = outputs if outputs is not None else {n: t for n, _, t in self._loss_tops}
        total = None
        for name, weight, t in self._loss_tops:
            term = tops[name].sum() * weight
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), dtype=torch.float32, device=self.device)
        return total

    def backward_losses(self) -> None:
        """Backward of the last tensor-path forward from its loss tops (seeded with the loss weights),
        then the layers that write their top in Backward. Param diffs accumulate."""
        self._run_backward(None)

    @property
    def loss_tensor(self) -> torch.Tensor:
        """The last forward's Σ loss_weight·sum(top), float64 on the device (no host read)."""
        return self._forward_loss

    # -- inputs and shapes -------------------------------------------------------------------------

    def _set_input_tensors(self, inputs: Mapping[str, torch.Tensor]) -> bool:
        """Write tensors into the input blobs; True when an input's shape changed (a reshape is due)."""
        changed = False
        for name, value in inputs.items():
            if name not in self._blob_shapes or name not in self.inputs:
                where = f" of {self.source}" if self.source else ""
                raise DataError(f"{name!r} is not an input blob of the net{where} "
                                f"(its inputs: {', '.join(self.inputs) or 'none'})")
            if not torch.is_tensor(value):
                value = torch.as_tensor(value)
            if value.dtype != torch.float32:
                value = value.to(torch.float32)
            if value.device != self.device:
                value = value.to(self.device, non_blocking=True)
            current = self._data[name]
            if tuple(value.shape) != tuple(current.shape):
                if value.numel() == current.numel() and value.dim() < current.dim():
                    value = value.reshape(current.shape)
                else:
                    value = value.detach().clone()
                    if self._memory_format is not None and value.dim() == 4:
                        value = value.contiguous(memory_format=self._memory_format)
                    self._data[name] = value
                    changed = True
                    continue
            with torch.no_grad():
                current.copy_(value)
        for name in self.inputs:
            if tuple(self._data[name].shape) != self._blob_shapes[name]:
                changed = True
        return changed or self._shapes_dirty

    def _zeros(self, shape) -> torch.Tensor:
        """A zero float32 blob of ``shape`` on the net's device (Caffe's blobs start at zero), 4-D ones
        in the net's memory format."""
        t = torch.zeros(shape, dtype=torch.float32, device=self.device)
        if self._memory_format is not None and t.dim() == 4:
            t = t.contiguous(memory_format=self._memory_format)
        return t

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
                if self._blob_shapes.get(name) != shape:  # a fused chain's top of the old shape
                    self._chain_tops.pop(name, None)
                self._blob_shapes[name] = shape
                if name not in self.inputs:
                    old = self._data.get(name)
                    if old is not None and tuple(old.shape) != shape:  # zeros of the new shape on access
                        self._data.pop(name, None)
                        self._diff.pop(name, None)

    # -- forward -----------------------------------------------------------------------------------

    def _run_forward(self, keep_diffs: bool = True, start: int = 0, end: int | None = None) -> dict:
        track = torch.is_grad_enabled()
        keep = keep_diffs and track
        self.ctx.fuse_backward = track and not keep and start == 0
        data: dict[str, torch.Tensor] = {}
        first: dict[str, torch.Tensor] = {}  # alias root -> first tensor written (its grad is the diff)
        latest: dict[str, torch.Tensor] = {}  # alias root -> last tensor written (the data)
        root_of = self._alias_root
        if start > 0:  # pycaffe's forward(start=...): earlier blobs keep their data
            self._materialize_chain_tops()
            data.update({k: v.detach() for k, v in self._data.items()})
        else:  # drop the previous pass's activations and diffs before making new ones (peak memory)
            self._data = {name: self._data[name] for name in self.inputs}
            self._chain_tops, self._chain_sources = {}, {}
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
        total = None
        steps = self._steps
        stop = len(steps) if end is None else min(end, len(steps))
        fuse = self.ctx.fuse_backward and self.parallel is None
        ran_early: set[int] = set()  # sibling convolutions already run with their group's first
        k = start
        while k < stop:
            step = steps[k]
            k += 1
            if getattr(step.layer, "is_input", False) or k - 1 in ran_early:
                continue
            if fuse and step.siblings is not None and all(i < stop for i in step.siblings):
                tops = pointwise_conv.siblings([steps[i].layer for i in step.siblings], data[step.bottoms[0]])
                if tops is not None:
                    for i, t in zip(step.siblings, tops):
                        name = steps[i].tops[0]
                        first.setdefault(root_of[name], t)
                        data[name] = t
                        latest[root_of[name]] = t
                    ran_early.update(step.siblings)
                    continue
            chain = step.chain if fuse else None
            if chain is not None and chain.start + chain.length <= stop:
                fused = self._run_chain(chain, data[step.bottoms[0]])
                if fused is not None:
                    for t_name, t in fused.items():
                        if t is None:  # recomputed when read: an earlier version must not stand in
                            data.pop(t_name, None)
                            continue
                        root = root_of[t_name]
                        first.setdefault(root, t)
                        data[t_name] = t
                        latest[root] = t
                    k = chain.start + chain.length
                    continue
            xs = [data[b] if p else data[b].detach() for b, p in zip(step.bottoms, step.propagate)]
            gathered = runs_gathered(step.layer) if self.parallel is not None else None
            if gathered:  # a loss/Accuracy/L1-Normalization layer of a data-parallel net sees the global batch
                xs = [self.parallel.gather(x, gathered) for x in xs]
            if step.inplace and xs[0]._base is None:  # never in place on a view (autograd rebases it)
                outs = step.layer.forward_inplace(*xs)
            else:
                outs = step.layer(*xs)
            if not isinstance(outs, (tuple, list)):
                outs = (outs,)
            if gathered:  # per-sample tops back to this rank's rows
                outs = tuple(self.parallel.cut(t) if t.dim() >= 2 and t.shape[0] == self.parallel.batch else t
                             for t in outs)
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
                    term = t.detach().double().sum() * w
                    total = term if total is None else total + term
        for root, names in self._alias_groups.items():  # Reshape/Flatten tops share their bottom's memory
            last = latest.get(root)
            if last is not None:
                for name in names:
                    if name in data and data[name] is not last:
                        data[name] = last.reshape(data[name].shape)
        # blob data as Caffe's memory holds it: an in-place layer on a net input overwrote the input
        self._data.update({k: (v if k not in self.inputs else v.detach())
                           for k, v in data.items() if k not in self.inputs or v is not first[k]})
        self._first = first
        self._loss_tops = loss_tops
        self._forward_graph = track
        self._forward_loss = total if total is not None else torch.zeros((), dtype=torch.float64, device=self.device)
        return data

    def _run_chain(self, chain, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """A BatchNorm -> Scale (-> ReLU) chain in one operation (rll_repro.layers.batchnorm_chain):
        {top: tensor} for the tops whose blob holds the chain's output, {top: None} for the others,
        whose blobs are recomputed when read (``_chain_tops``). None where the chain does not run
        fused."""
        steps = self._steps[chain.start:chain.start + chain.length]
        fused = batchnorm_chain.run(steps[0].layer, steps[1].layer, chain.relu, x)
        if fused is None:
            return None
        out, recompute = fused
        stage_of = {}  # each blob's last writer in the chain: 0 BatchNorm, 1 Scale, 2 ReLU
        for stage, step in enumerate(steps):
            stage_of[step.tops[0]] = stage
        last = len(steps) - 1
        source = steps[0].bottoms[0]  # its host view could be written: the tops are computed before
        for name, stage in stage_of.items():
            if stage != last:
                self._chain_tops[name] = functools.partial(recompute, stage)
                self._chain_sources.setdefault(source, []).append(name)
        return {name: out if stage == last else None for name, stage in stage_of.items()}

    def _materialize_chain_tops(self) -> None:
        """Every intermediate top of the last forward's fused chains, computed into its blob."""
        for name in list(self._chain_tops):
            self._blob_data(name)

    # -- backward ----------------------------------------------------------------------------------

    def _run_backward(self, top_diffs: Mapping[str, torch.Tensor] | None = None,
                      hand_set: Mapping[str, torch.Tensor] | None = None) -> None:
        """Autograd from the loss tops (seeded with their loss weight), from ``top_diffs`` (which replace
        a loss top's seed, as in pycaffe), and from diffs set by hand in output blobs (``hand_set``)."""
        if not self._forward_graph:
            raise NetError("backward needs a forward run with gradients enabled (not under torch.no_grad)")
        roots, grads = [], []
        seeded = set()
        top_diffs = dict(top_diffs or {})
        for name, weight, t in self._loss_tops:
            if name in top_diffs:
                continue
            if t.requires_grad:
                roots.append(t)
                grads.append(torch.full_like(t, weight))
            seeded.add(name)
        for name, g in top_diffs.items():
            t = self._blob_data(name)
            self._diff[name] = g
            if t.requires_grad:
                roots.append(t)
                grads.append(g)
            seeded.add(name)
        for name, g in (hand_set or {}).items():
            if name in seeded:
                continue
            t = self._blob_data(name)
            if t.requires_grad and g.shape == t.shape:
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
                diffs[name] = torch.full(t.shape, weight, dtype=torch.float32, device=t.device)
        for name in top_diffs:
            diffs.setdefault(name, self._diff[name])
        self._diff = diffs
        for step in self._steps:
            new_tops = step.layer.after_backward()
            if new_tops is not None:
                for t_name, t in zip(step.tops, new_tops):
                    self._data[t_name] = t.detach()

    def forward_backward(self) -> torch.Tensor:
        """Caffe's Net::ForwardBackward on the inputs already in the input blobs; the summed weighted
        loss of the forward as a float64 device tensor (param diffs accumulate). Blob diffs are only
        kept when ``keep_blob_diffs`` is True (the solver does not need them)."""
        self.sync_host_to_device()
        if self._shapes_dirty or any(tuple(self._data[n].shape) != self._blob_shapes[n] for n in self.inputs):
            self.reshape()
        with torch.enable_grad():
            self._run_forward(keep_diffs=bool(self.keep_blob_diffs))
            self._run_backward()
        return self._forward_loss
