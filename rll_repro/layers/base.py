"""The contract every Caffe layer port follows, and the fork dialects.

A layer is built from its ``caffe_pb2.LayerParameter`` and the shapes of its bottoms (Caffe's
LayerSetUp + Reshape), owns its learnable blobs in Caffe order (``self.blobs``), computes its top
shapes (``reshape``), and maps bottoms to tops in ``forward`` with torch ops, so autograd gives
the backward pass. Where Caffe's gradient is not the autograd gradient of its forward (the loss
layers of the two papers, Normalization, ...), the layer uses a custom ``torch.autograd.Function``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import nn

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Dialect:
    """Arithmetic that differs between the two Caffe forks (and BVLC Caffe).

    - ``bn_blobs_learnable``: the RLL fork's BatchNorm does not mask its three blobs from the solver,
      so they are params with lr_mult 1 / decay_mult 1 (RLL SPEC §2.2); BVLC and the OSM fork force
      lr_mult 0 for them.
    - ``l2_normalization_eps``: Normalization (L2) adds nothing in the RLL fork (SPEC rll §2.1) and
      1e-12 to the squared norm in the OSM fork (SPEC osm §2.5).
    """

    name: str
    bn_blobs_learnable: bool
    l2_normalization_eps: float


DIALECTS = {
    "rll": Dialect("rll", bn_blobs_learnable=True, l2_normalization_eps=0.0),
    "osm": Dialect("osm", bn_blobs_learnable=False, l2_normalization_eps=1e-12),
    "bvlc": Dialect("bvlc", bn_blobs_learnable=False, l2_normalization_eps=0.0),
}

# Layer types that exist only in the OSM+CAA fork: a net that uses any of them is read as "osm".
OSM_ONLY_TYPES = frozenset(
    {"DistanceWeightedValidPairLossV5", "ExtractProb", "Gaussian", "WeightedSoftmaxWithLoss", "BatchPool"}
)


@dataclass
class BuildContext:
    """What a layer may know about the net it is built into."""

    phase: str = "train"  # 'train' or 'test'
    dialect: Dialect = field(default_factory=lambda: DIALECTS["rll"])
    generator: torch.Generator | None = None  # seeds the fillers (a CPU generator: the same initial
    # weights on every device, as Caffe's fillers draw on the host)
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the net runs
    runtime_generator: torch.Generator | None = None  # on ``device``: Dropout's masks (None: global RNG)
    parallel: object | None = None  # rll_repro.net.parallel.DataParallel of a data-parallel TRAIN net
    # set by the net for each forward: no blob diff is kept, so layers may fuse their backward with
    # the next layer's (BatchNorm + Scale) and leave the intermediate tensor without a gradient
    fuse_backward: bool = False


class Layer(nn.Module):
    """Base class of every Caffe layer port.

    Subclasses set ``type_names`` (the Caffe type strings they implement), build ``self.blobs`` in
    ``__init__`` (filled by their fillers, using ``ctx.generator``), and implement ``reshape`` and
    ``forward``.
    """

    type_names: ClassVar[tuple[str, ...]] = ()
    is_loss: ClassVar[bool] = False  # Caffe LossLayer: top 0 gets loss_weight 1 unless set
    # Optional capabilities the net builder reads (all off by default):
    is_input: ClassVar[bool] = False  # tops are net inputs fed from outside (Input)
    shares_bottom_memory: ClassVar[bool] = False  # top 0 shares bottom 0's data and diff (Reshape, Flatten)
    output_unused_in_backward: ClassVar[bool] = False  # backward never reads the tops: an in-place
    # layer after it (ReLU with ``forward_inplace``) may overwrite them

    def __init__(self, param, bottom_shapes: Sequence[Shape], ctx: BuildContext):
        super().__init__()
        self.param = param
        self.layer_name = param.name
        self.ctx = ctx
        self.blobs = nn.ParameterList()
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        """Caffe's Reshape: the top shapes for these bottom shapes (raise NetError if invalid)."""
        raise NotImplementedError

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def param_spec_overrides(self) -> list[dict] | None:
        """ParamSpec fields Caffe forces for this layer's blobs (e.g. BVLC BatchNorm lr_mult 0)."""
        return None

    def after_backward(self) -> list[torch.Tensor] | None:
        """Top data as Caffe holds it after Backward, for layers that write their top in Backward
        (the RLL loss, SPEC rll §1.4). None means the tops are unchanged by Backward."""
        return None

    def extra_repr(self) -> str:
        return f"{self.layer_name!r}"
