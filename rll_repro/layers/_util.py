"""Small helpers shared by the layer ports: Caffe's axis/count rules, one-line build errors, and the
NHWC row view the CPU kernels read."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from rll_repro.errors import NetError

Shape = tuple[int, ...]


def fail(param, message: str) -> NetError:
    """A NetError naming the layer (name and type) and what is wrong with it."""
    return NetError(f"layer {param.name!r} (type {param.type}): {message}")


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Caffe's Blob::count(start, end): the product of the dims in [start, end)."""
    return int(math.prod(shape[start:end]))


def canonical_axis(param, axis: int, num_axes: int, allow_end: bool = False) -> int:
    """Caffe's Blob::CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    limit = num_axes + 1 if allow_end else num_axes
    if not -num_axes <= axis < limit:
        raise fail(param, f"axis {axis} out of range for a {num_axes}-axis blob")
    return axis + num_axes if axis < 0 else axis


def has(message, field: str) -> bool:
    """proto2 HasField that is False (not an exception) for fields the schema does not define."""
    try:
        return message.HasField(field)
    except ValueError:
        return False


def check_bottoms(param, bottom_shapes, n_min: int, n_max: int | None = None) -> None:
    n_max = n_min if n_max is None else n_max
    n = len(bottom_shapes)
    if not n_min <= n <= n_max:
        want = str(n_min) if n_min == n_max else f"{n_min}..{n_max}"
        raise fail(param, f"needs {want} bottom blob(s), got {n}")


def check_tops(param, n_min: int, n_max: int | None = None) -> None:
    n_max = n_min if n_max is None else n_max
    n = len(param.top)
    if not n_min <= n <= n_max:
        want = str(n_min) if n_min == n_max else f"{n_min}..{n_max}"
        raise fail(param, f"needs {want} top blob(s), got {n}")


def spatial_values(param, repeated, single_h, single_w, has_h: bool, name: str, default: int | None, n: int = 2):
    """Caffe's kernel_size/pad/stride resolution: `x_h`/`x_w` if given, else the repeated field
    (one value for all spatial axes or one per axis), else the default."""
    if has_h:
        if len(repeated):
            raise fail(param, f"either {name} or {name}_h/{name}_w may be given, not both")
        return [int(single_h), int(single_w)]
    values = [int(v) for v in repeated]
    if not values:
        if default is None:
            raise fail(param, f"{name} is required")
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise fail(param, f"{name} must be given once or {n} times, got {len(values)}")
    return values


def check_embedding_label_loss(param, bottom_shapes) -> None:
    """A pair loss layer's contract: bottoms (embeddings, labels), one top, no gradient to the labels."""
    check_bottoms(param, bottom_shapes, 2)
    check_tops(param, 1)
    if len(param.propagate_down) > 1 and param.propagate_down[1]:
        raise fail(param, "cannot backpropagate to the labels (propagate_down[1] must be 0)")


def nhwc_rows(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` (N, C, H, W) as an (N·H·W, C) view with unit channel stride and a uniform row stride of at
    least C (channels_last, or a channel slice of a wider channels_last tensor, as a Concat's backward
    hands out), else None."""
    c = t.shape[1]
    try:
        v = t.permute(0, 2, 3, 1).view(-1, c)
    except RuntimeError:
        return None
    if v.shape[0] > 1 and v.stride(0) < c or c > 1 and v.stride(1) != 1:
        return None
    return v


def nhwc_rows_for_c(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows, row stride in floats) of ``t`` for a C kernel: :func:`nhwc_rows`, or the rows of a
    channels_last copy where ``t`` has no such view. Keep the rows alive while C reads them."""
    v = nhwc_rows(t)
    if v is None:
        v = nhwc_rows(t.contiguous(memory_format=torch.channels_last))
    if v.device.type != "cpu":
        raise ValueError(f"the NHWC kernels take CPU tensors, got {v.device}")
    return v, (v.stride(0) if v.shape[0] > 1 else v.shape[1])
