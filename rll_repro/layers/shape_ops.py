"""Layers that only move data: Concat, Slice, Split, Reshape, Flatten, Silence, Tile.

- Concat: tops joined along ``axis`` (default 1; legacy ``concat_dim``); all other dims must agree.
- Slice: the bottom cut along ``axis`` (legacy ``slice_dim``) at ``slice_point``s, or into equal
  parts (one per top) when none are given.
- Split: copies the bottom to every top; the gradients of the tops add (Caffe's SplitLayer, also the
  implicit split of a blob read by several layers).
- Reshape and Flatten share the bottom's data and diff memory (Caffe's ShareData/ShareDiff): after
  backward the top's diff is whatever the bottom's producer side left there (e.g. the pre-ReLU
  gradient when an in-place ReLU sits on the bottom); the net keeps that aliasing.
- Reshape: ``shape`` dims with 0 = copy the bottom dim, −1 = infer (at most one), replacing the
  axes [axis, axis + num_axes) (defaults 0 and −1 = to the end); the count must be preserved.
- Flatten: axes [axis, end_axis] (defaults 1, −1) merged into one.
- Silence: consumes its bottoms, no tops, no gradient.
"""
from __future__ import annotations

import torch

from rll_repro.layers._util import canonical_axis, check_bottoms, check_tops, count, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register


@register
class Concat(Layer):
    type_names = ("Concat",)
    output_unused_in_backward = True  # a following in-place layer may overwrite the top

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1, 1 << 20)
        check_tops(param, 1)
        p = param.concat_param
        if has(p, "concat_dim") and has(p, "axis"):
            raise fail(param, "either axis or concat_dim may be given, not both")
        self.axis_field = int(p.concat_dim) if has(p, "concat_dim") else int(p.axis)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        first = bottom_shapes[0]
        self.axis = canonical_axis(self.param, self.axis_field, len(first))
        total = 0
        for shape in bottom_shapes:
            if len(shape) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(shape, first)) if i != self.axis
            ):
                raise fail(self.param, f"bottom shapes {[tuple(s) for s in bottom_shapes]} differ outside the concat axis {self.axis}")
            total += shape[self.axis]
        out = list(first)
        out[self.axis] = total
        return [tuple(out)]

    def forward(self, *bottoms):
        if len(bottoms) == 1:
            return (bottoms[0],)
        return (torch.cat(bottoms, dim=self.axis),)


@register
class Slice(Layer):
    type_names = ("Slice",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1, 1 << 20)
        p = param.slice_param
        if has(p, "slice_dim") and has(p, "axis"):
            raise fail(param, "either axis or slice_dim may be given, not both")
        self.axis_field = int(p.slice_dim) if has(p, "slice_dim") else int(p.axis)
        self.slice_points = [int(v) for v in p.slice_point]
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.axis = canonical_axis(self.param, self.axis_field, len(shape))
        n_top = len(self.param.top)
        size = shape[self.axis]
        if self.slice_points:
            if len(self.slice_points) != n_top - 1:
                raise fail(self.param, f"{len(self.slice_points)} slice points for {n_top} tops (need {n_top - 1})")
            bounds = [0] + self.slice_points + [size]
            sizes = [b - a for a, b in zip(bounds, bounds[1:])]
            if any(s <= 0 for s in sizes):
                raise fail(self.param, f"slice points {self.slice_points} are not increasing inside (0, {size})")
        else:
            if size % n_top:
                raise fail(self.param, f"axis {self.axis} of size {size} cannot be cut into {n_top} equal parts")
            sizes = [size // n_top] * n_top
        self.sizes = sizes
        tops = []
        for s in sizes:
            out = list(shape)
            out[self.axis] = s
            tops.append(tuple(out))
        return tops

    def forward(self, x):
        return tuple(torch.split(x, self.sizes, dim=self.axis))


@register
class Split(Layer):
    type_names = ("Split",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def forward(self, x):
        return tuple(x for _ in self.param.top)


class _BlobView(Layer):
    """A layer whose top is the bottom's memory under another shape (Caffe's Reshape and Flatten:
    top->ShareData/ShareDiff(bottom)); ``reshape`` sets ``top_shape`` for the bottom shape ``in_shape``."""

    shares_bottom_memory = True
    in_shape: tuple[int, ...] = ()
    top_shape: tuple[int, ...] = ()

    def forward(self, x):
        if tuple(x.shape) != self.in_shape:
            self.reshape([tuple(x.shape)])
        return (x.reshape(self.top_shape),)


@register
class Reshape(_BlobView):
    type_names = ("Reshape",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        p = param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        if sum(d == -1 for d in self.dims) > 1:
            raise fail(param, "at most one -1 dimension may be inferred")
        if any(d < -1 for d in self.dims):
            raise fail(param, f"invalid dimension in shape {self.dims}")
        self.axis_field = int(p.axis)
        self.num_axes = int(p.num_axes)
        if self.num_axes < -1:
            raise fail(param, "num_axes must be >= -1")
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        ndim = len(shape)
        start = self.axis_field + ndim + 1 if self.axis_field < 0 else self.axis_field
        if not 0 <= start <= ndim:
            raise fail(self.param, f"axis {self.axis_field} out of range for bottom shape {shape}")
        end = ndim if self.num_axes == -1 else start + self.num_axes
        if end > ndim:
            raise fail(self.param, f"axis {start} + num_axes {self.num_axes} exceeds bottom shape {shape}")
        out = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= ndim:
                    raise fail(self.param, f"dimension {i} copies bottom axis {start + i}, which shape {shape} lacks")
                out.append(shape[start + i])
            else:
                out.append(d)
        new = list(shape[:start]) + out + list(shape[end:])
        total = count(shape)
        if -1 in new:
            known = count([d for d in new if d != -1])
            if known == 0 or total % known:
                raise fail(self.param, f"cannot infer a dimension: {total} values into shape {out}")
            new[new.index(-1)] = total // known
        if count(new) != total:
            raise fail(self.param, f"cannot reshape {shape} ({total} values) to {tuple(new)} ({count(new)} values)")
        self.top_shape = tuple(new)
        self.in_shape = shape
        return [self.top_shape]


@register
class Flatten(_BlobView):
    type_names = ("Flatten",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        p = self.param.flatten_param
        start = canonical_axis(self.param, int(p.axis), len(shape))
        end = canonical_axis(self.param, int(p.end_axis), len(shape))
        self.top_shape = shape[:start] + (count(shape, start, end + 1),) + shape[end + 1:]
        self.in_shape = shape
        return [self.top_shape]


@register
class Silence(Layer):
    type_names = ("Silence",)

    def reshape(self, bottom_shapes):
        return []

    def forward(self, *bottoms):
        return ()


@register
class Tile(Layer):
    """Tile: the bottom repeated ``tiles`` times along ``axis`` (Caffe's TileLayer); gradients add up."""

    type_names = ("Tile",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        p = param.tile_param
        self.tiles = int(p.tiles)
        if self.tiles <= 0:
            raise fail(param, f"tiles must be positive, got {self.tiles}")
        self.axis_field = int(p.axis)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = list(bottom_shapes[0])
        self.axis = canonical_axis(self.param, self.axis_field, len(shape))
        shape[self.axis] *= self.tiles
        return [tuple(shape)]

    def forward(self, x):
        # Caffe copies the whole block [axis:] `tiles` times for every outer index
        outer = x.shape[: self.axis]
        block = x.reshape(*outer, 1, -1).expand(*outer, self.tiles, -1)
        shape = list(x.shape)
        shape[self.axis] *= self.tiles
        return (block.reshape(shape),)
