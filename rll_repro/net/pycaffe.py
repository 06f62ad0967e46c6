"""pycaffe's numpy face over the tensor engine: ``net.blobs``, ``net.params``, ``forward``/``backward``.

On a CPU net, ``.data``/``.diff`` are zero-copy numpy views of the tensors (input blobs and params keep
their tensors, so ``net.blobs['data'].data[...] = x`` feeds the net and a params view stays valid).

On any other device they follow Caffe's SyncedMemory (syncedmem.cpp): each blob and param has one host
array, made lazily on first access (``to_cpu``), refreshed in place from the device when the device
has run since (so an array taken earlier, as pycaffe's are, shows the new values on the next access),
and, because pycaffe hands out ``mutable_cpu_data``, written back to the device before the next run
(``to_gpu``): input blobs, params and their diffs, and diffs set by hand in output blobs. The same
code path runs on a CPU net with ``net.host_mirror = True`` (how the tests check it without a GPU).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from rll_repro.errors import NetError


class HostMirror:
    """The host copy of one device tensor slot. ``stale``: the device ran since the last refresh.
    ``shadow`` is the array as last synchronised, so that a write into an array handed out earlier
    (pycaffe keeps handing out the same memory) is found and written back before the next run."""

    __slots__ = ("array", "shadow", "stale")

    def __init__(self):
        self.array: np.ndarray | None = None
        self.shadow: np.ndarray | None = None
        self.stale = True

    def get(self, tensor: torch.Tensor) -> np.ndarray:
        shape = tuple(tensor.shape)
        if self.array is None or self.array.shape != shape:
            self.array = np.empty(shape, dtype=np.float32)
            self.shadow = None
            self.stale = True
        if self.stale:
            np.copyto(self.array, tensor.detach().to("cpu").numpy().reshape(shape))
            self.shadow = self.array.copy()
            self.stale = False
        return self.array

    def modified(self) -> bool:
        """Written on the host since the last synchronisation."""
        return self.array is not None and (self.shadow is None or not np.array_equal(self.array, self.shadow,
                                                                                      equal_nan=True))

    def write_back(self, tensor: torch.Tensor | None) -> None:
        if tensor is not None and self.modified() and tuple(tensor.shape) == self.array.shape:
            with torch.no_grad():
                tensor.copy_(torch.from_numpy(self.array).to(tensor.device).reshape(tensor.shape))
            self.shadow = self.array.copy()
        self.stale = True


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


class Blob:
    """A pycaffe Blob view of one named net blob: ``.data``/``.diff`` as numpy (see the module doc)."""

    def __init__(self, net, name: str):
        self._net = net
        self.name = name

    @property
    def data(self) -> np.ndarray:
        return self._net._host_array(self.name, "data")

    @property
    def diff(self) -> np.ndarray:
        return self._net._host_array(self.name, "diff")

    @property
    def tensor(self) -> torch.Tensor:
        """The blob's data as the device tensor itself (no host copy; read-only by convention)."""
        return self._net._blob_data(self.name)

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

    def __init__(self, param: nn.Parameter, net=None):
        self.param = param
        self._net = net
        self._mirrors = {"data": HostMirror(), "diff": HostMirror()}

    def _tensor(self, which: str) -> torch.Tensor:
        if which == "data":
            return self.param.data
        if self.param.grad is None:
            self.param.grad = torch.zeros_like(self.param.data)
        return self.param.grad

    def _array(self, which: str) -> np.ndarray:
        t = self._tensor(which)
        if self._net is not None and self._net._mirrored():
            self._net._touched_params.add(self)
            return self._mirrors[which].get(t)
        return _numpy_view(t)

    @property
    def data(self) -> np.ndarray:
        return self._array("data")

    @property
    def diff(self) -> np.ndarray:
        return self._array("diff")

    def write_back(self) -> None:
        for which, mirror in self._mirrors.items():
            mirror.write_back(self._tensor(which))

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


class PycaffeFacade:
    """pycaffe's API over the engine (a mixin of :class:`rll_repro.net.Net`)."""

    host_mirror = False  # True: use the SyncedMemory host copies on a CPU net too

    def _mirrored(self) -> bool:
        return self.host_mirror or self.device.type != "cpu"

    # -- storage -----------------------------------------------------------------------------------

    def _recompute_chain_top(self, name: str) -> None:
        """An intermediate top of a fused chain (engine.py), computed into its blob."""
        if name in self._chain_tops:
            self._data[name] = self._chain_tops.pop(name)().detach()

    def _blob_data(self, name: str) -> torch.Tensor:
        for top in self._chain_sources.pop(name, ()):  # a fused chain's bottom, about to be handed out
            self._recompute_chain_top(top)  # (and maybe written through its host view): its tops first
        if name not in self._data:
            self._recompute_chain_top(name)
        t = self._data.get(name)
        if t is None:
            if name not in self._blob_shapes:
                raise KeyError(name)
            t = self._zeros(self._blob_shapes[name])
            self._data[name] = t
        return t

    def _blob_diff(self, name: str) -> torch.Tensor:
        t = self._diff.get(name)
        data = self._blob_data(name)
        if t is None or t.shape != data.shape:
            t = self._zeros(data.shape)
            self._diff[name] = t
        return t

    def _host_array(self, name: str, which: str) -> np.ndarray:
        tensor = self._blob_data(name) if which == "data" else self._blob_diff(name)
        if not self._mirrored():
            return _numpy_view(tensor)
        mirror = self._mirrors.setdefault((name, which), HostMirror())
        return mirror.get(tensor)

    def sync_host_to_device(self) -> None:
        """Caffe's to_gpu before a run: host arrays written since the last synchronisation go back to
        the device (input blob data, params and their diffs, diffs set by hand); every host array is
        then stale until its next access."""
        if not self._mirrored():
            return
        for (name, which), mirror in self._mirrors.items():
            if which == "data":
                mirror.write_back(self._blob_data(name) if name in self.inputs else None)
            else:
                mirror.write_back(self._diff.get(name))
        for pb in self._touched_params:
            pb.write_back()

    def _set_blob_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self._blob_shapes:
            raise NetError(f"no blob named {name!r}")
        self._blob_shapes[name] = shape
        self._data[name] = self._zeros(shape)
        self._chain_tops.pop(name, None)
        self._diff.pop(name, None)
        self._mirrors.pop((name, "data"), None)
        self._mirrors.pop((name, "diff"), None)
        self._shapes_dirty = True

    def _hand_set_diffs(self) -> dict[str, torch.Tensor]:
        """Output-blob diffs a user wrote through ``net.blobs[out].diff`` (pycaffe style)."""
        out = {}
        for name in self.outputs:
            if self._mirrored():
                mirror = self._mirrors.get((name, "diff"))
                if mirror is not None and mirror.modified():
                    out[name] = torch.from_numpy(mirror.array.copy()).to(self.device)
            elif name in self._diff:
                out[name] = self._diff[name]
        return out

    # -- pycaffe forward / backward ----------------------------------------------------------------

    def _check_input_shape(self, name: str, array: np.ndarray) -> None:
        current = tuple(self._blob_data(name).shape)
        if array.shape != current and not (array.size == int(np.prod(current)) and array.ndim < len(current)):
            if array.ndim != len(current):
                where = f" of {self.source}" if self.source else ""
                raise NetError(f"input {name!r}{where}: got an array of shape {array.shape}, "
                               f"the blob has {len(current)} axes {current}")

    def forward(
        self, blobs: Sequence[str] | None = None, start: str | None = None, end: str | None = None, **inputs
    ) -> dict[str, np.ndarray]:
        """pycaffe's Net.forward: set the named inputs, run the layers (from layer ``start`` to layer
        ``end``, both included, default all), return the output blobs (the ``end`` layer's tops when
        given) plus any names in ``blobs``, as numpy arrays."""
        self.sync_host_to_device()
        tensors = {}
        for name, value in inputs.items():
            if name not in self.inputs:
                raise NetError(f"{name!r} is not an input blob of the net (inputs: {', '.join(self.inputs)})")
            array = np.asarray(value, dtype=np.float32)
            tensors[name] = torch.from_numpy(np.ascontiguousarray(array))
        if self._set_input_tensors(tensors):
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

    def backward(self, diffs: Sequence[str] | None = None, **top_diffs) -> dict[str, np.ndarray]:
        """pycaffe's Net.backward: loss tops get diff = loss_weight, ``top_diffs`` name other top
        diffs; returns the input blobs' diffs (plus any names in ``diffs``)."""
        hand_set = self._hand_set_diffs()
        self.sync_host_to_device()
        tensors = {}
        for name, value in top_diffs.items():
            if name not in self._blob_shapes:
                raise NetError(f"{name!r} is not a blob of the net")
            shape = tuple(self._data[name].shape)
            array = np.asarray(value, dtype=np.float32)
            if array.size != int(np.prod(shape)):
                raise NetError(f"top diff {name!r}: got {array.size} values {array.shape}, the blob has shape {shape}")
            tensors[name] = torch.from_numpy(np.ascontiguousarray(array).reshape(shape)).to(self.device)
        self._run_backward(tensors, hand_set)
        names = list(self.inputs) + [d for d in (diffs or []) if d not in self.inputs]
        return {name: self.blobs[name].diff for name in names}

    @property
    def loss(self) -> float:
        """The summed weighted loss of the last forward (a host read)."""
        return float(self._forward_loss)
