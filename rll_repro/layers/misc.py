"""ArgMax, Crop, MVN (Caffe's ArgMaxLayer, CropLayer, MVNLayer).

- ArgMax: the ``top_k`` largest values per sample (over all of C×H×W when ``axis`` is unset, else
  along ``axis``), ordered by value, ties by the larger index first (Caffe sorts (value, index) pairs
  descending). Top without ``axis``: N×1×top_k indices, or N×2×top_k (indices, then values) with
  ``out_max_val``; with ``axis``: the values (``out_max_val``) or indices, that axis of size top_k.
  No gradient.
- Crop: bottom 0 cut to bottom 1's shape on the axes from ``axis`` (default 2), starting at ``offset``
  (one for all those axes or one per axis, default 0); the gradient goes back to the kept region.
- MVN: per sample and channel (or per sample with ``across_channels``) subtract the mean and, with
  ``normalize_variance``, divide by sqrt(E[x²] − E[x]²) + eps (eps added to the standard deviation).
"""
from __future__ import annotations

import torch

from rll_repro.layers._util import canonical_axis, check_bottoms, check_tops, count, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register


@register
class ArgMax(Layer):
    type_names = ("ArgMax",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        p = param.argmax_param
        self.top_k = int(p.top_k)
        self.out_max_val = bool(p.out_max_val)
        self.has_axis = has(p, "axis")
        self.axis_field = int(p.axis)
        if self.top_k < 1:
            raise fail(param, "top_k must be at least 1")
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if self.has_axis:
            self.axis = canonical_axis(self.param, self.axis_field, len(shape))
            if self.top_k > shape[self.axis]:
                raise fail(self.param, f"top_k {self.top_k} exceeds axis size {shape[self.axis]}")
            out = list(shape)
            out[self.axis] = self.top_k
            return [tuple(out)]
        if self.top_k > count(shape, 1):
            raise fail(self.param, f"top_k {self.top_k} exceeds the {count(shape, 1)} values per sample")
        # ArgMaxLayer::Reshape: max(num_axes, 3) axes, all 1 but (N, 1 | 2 with out_max_val, top_k)
        return [(shape[0], 2 if self.out_max_val else 1, self.top_k) + (1,) * max(len(shape) - 3, 0)]

    def forward(self, x):
        with torch.no_grad():
            data = x.detach()
            if self.has_axis:
                moved = data.movedim(self.axis, -1)
            else:
                moved = data.reshape(data.shape[0], -1)
            n = moved.shape[-1]
            # descending by value, ties by the larger index first: stable sort of the reversed axis
            values, order = torch.sort(moved.flip(-1), dim=-1, descending=True, stable=True)
            values, index = values[..., : self.top_k], (n - 1 - order[..., : self.top_k]).to(x.dtype)
            if self.has_axis:
                out = (values if self.out_max_val else index).movedim(-1, self.axis)
            elif self.out_max_val:
                out = torch.stack([index, values], dim=1)
            else:
                out = index.unsqueeze(1)
            if not self.has_axis and data.dim() > 3:
                out = out.reshape(out.shape + (1,) * (data.dim() - 3))
            return (out.contiguous(),)


@register
class Crop(Layer):
    type_names = ("Crop",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 2)
        check_tops(param, 1)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        a, b = (tuple(s) for s in bottom_shapes)
        p = self.param.crop_param
        if len(a) != len(b):
            raise fail(self.param, f"bottoms have different numbers of axes: {a} and {b}")
        self.axis = canonical_axis(self.param, int(p.axis), len(a))
        n = len(a) - self.axis
        offsets = [int(o) for o in p.offset]
        if len(offsets) == 0:
            offsets = [0] * n
        elif len(offsets) == 1:
            offsets = offsets * n
        elif len(offsets) != n:
            raise fail(self.param, f"{len(offsets)} offsets for {n} cropped axes")
        self.offsets = offsets
        out = list(a)
        for i, off in enumerate(offsets):
            k = self.axis + i
            if off + b[k] > a[k]:
                raise fail(self.param, f"crop of {b[k]} at offset {off} exceeds axis {k} of size {a[k]}")
            out[k] = b[k]
        self.out_shape = tuple(out)
        return [self.out_shape]

    def forward(self, x, ref):
        index = [slice(None)] * self.axis + [
            slice(off, off + ref.shape[self.axis + i]) for i, off in enumerate(self.offsets)
        ]
        return (x[tuple(index)],)


@register
class MVN(Layer):
    type_names = ("MVN",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        p = param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        n = x.shape[0]
        groups = x.reshape(n, -1) if self.across_channels else x.reshape(n * (x.shape[1] if x.dim() > 1 else 1), -1)
        mean = groups.mean(dim=1, keepdim=True)
        centred = groups - mean
        if self.normalize_variance:
            var = (groups * groups).mean(dim=1, keepdim=True) - mean * mean
            centred = centred / (var.clamp_min(0).sqrt() + self.eps)
        return (centred.reshape(x.shape),)
