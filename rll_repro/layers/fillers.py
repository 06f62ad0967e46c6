"""Caffe's weight fillers (include/caffe/filler.hpp), seeded through a torch.Generator.

Caffe's RNG stream (boost mt19937) is not reproduced; the distributions are:

- ``constant``: every value = ``value``.
- ``uniform``: U[min, max).
- ``gaussian``: N(mean, std) (``sparse`` is not supported).
- ``xavier``: U(-sqrt(3/n), +sqrt(3/n)); ``msra``: N(0, sqrt(2/n)); with Caffe's fan rules
  fan_in = count / num and fan_out = count / channels (num = shape[0], channels = shape[1], 1 if the
  blob has fewer axes), n = fan_in (FAN_IN, default), fan_out (FAN_OUT) or their mean (AVERAGE).
- ``positive_unitball``: U[0, 1) then every num-slice divided by its sum.
- ``bilinear``: the upsampling kernel of a deconvolution (4-D, square).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from rll_repro.errors import NetError

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


def _field(filler, name, default):
    if filler is None:
        return default
    try:
        return getattr(filler, name)
    except AttributeError:
        return default


def fan_in_out(shape: Sequence[int]) -> tuple[int, int]:
    """Caffe's fan rules: fan_in = count / num, fan_out = count / channels (legacy accessors)."""
    n = math.prod(shape)
    num = shape[0] if len(shape) >= 1 else 1
    channels = shape[1] if len(shape) >= 2 else 1
    return n // max(num, 1), n // max(channels, 1)


def fill(filler, shape: Sequence[int], generator: torch.Generator | None = None, where: str = "?") -> torch.Tensor:
    """A float32 tensor of ``shape`` filled as Caffe's ``GetFiller(filler)->Fill`` would (in distribution).

    ``filler`` is a ``caffe_pb2.FillerParameter`` (None = Caffe's default: constant 0).
    ``where`` names the layer/field for errors.
    """
    shape = tuple(int(s) for s in shape)
    kind = _field(filler, "type", "constant")
    out = torch.empty(shape, dtype=torch.float32)
    if kind == "constant":
        out.fill_(float(_field(filler, "value", 0.0)))
    elif kind == "uniform":
        lo, hi = float(_field(filler, "min", 0.0)), float(_field(filler, "max", 1.0))
        if hi < lo:
            raise NetError(f"{where}: uniform filler has max {hi} < min {lo}")
        out.uniform_(lo, hi, generator=generator)
    elif kind == "gaussian":
        if int(_field(filler, "sparse", -1)) >= 0:
            raise NetError(f"{where}: the gaussian filler's 'sparse' option is not supported")
        out.normal_(float(_field(filler, "mean", 0.0)), float(_field(filler, "std", 1.0)), generator=generator)
    elif kind in ("xavier", "msra"):
        if not shape or math.prod(shape) == 0:
            raise NetError(f"{where}: {kind} filler needs a non-empty blob")
        fan_in, fan_out = fan_in_out(shape)
        norm = int(_field(filler, "variance_norm", FAN_IN))
        n = {FAN_IN: fan_in, FAN_OUT: fan_out, AVERAGE: (fan_in + fan_out) / 2.0}.get(norm)
        if n is None:
            raise NetError(f"{where}: unknown variance_norm {norm}")
        if kind == "xavier":
            scale = math.sqrt(3.0 / n)
            out.uniform_(-scale, scale, generator=generator)
        else:
            out.normal_(0.0, math.sqrt(2.0 / n), generator=generator)
    elif kind == "positive_unitball":
        out.uniform_(0.0, 1.0, generator=generator)
        num = shape[0] if shape else 1
        flat = out.reshape(num, -1)
        flat.div_(flat.sum(dim=1, keepdim=True))
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise NetError(f"{where}: bilinear filler needs a 4-D blob with square kernels, got {shape}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        idx = torch.arange(k, dtype=torch.float64)
        w1 = 1 - (idx / f - c).abs()
        out.copy_((w1[:, None] * w1[None, :]).to(torch.float32).expand(shape))
    else:
        raise NetError(
            f"{where}: unknown filler type {kind!r}; supported: constant, uniform, gaussian, xavier, msra, "
            "positive_unitball, bilinear"
        )
    return out
