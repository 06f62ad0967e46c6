"""Softmax, SoftmaxWithLoss, Accuracy (Caffe's SoftmaxLayer, SoftmaxWithLossLayer, AccuracyLayer).

- Softmax over ``softmax_param.axis`` (default 1): exp(x − max)/Σ; backward (dy − Σ dy·y)·y.
- SoftmaxWithLoss (bottoms: scores, label; tops: loss, optional prob): with outer = count(0, axis),
  inner = count(axis + 1), loss = −Σ log(max(p[label], FLT_MIN)) / normalizer over the positions whose
  label is not ``ignore_label``. ``loss_param.normalization``: FULL = outer·inner, VALID (default) =
  the number of non-ignored positions, BATCH_SIZE = outer, NONE = 1, PRE_FIXED (forks) =
  ``pre_fixed_normalizer``; the legacy ``normalize``
  (when set) picks VALID (true) or BATCH_SIZE (false); the normalizer is at least 1. Backward:
  (p − onehot(label))·loss_weight/normalizer, 0 at ignored positions; none to the label.
- Accuracy (bottoms: scores, label; tops: accuracy, optional per-class accuracy): a position is correct
  when fewer than ``top_k`` scores are >= the true class's score besides itself; the mean over
  non-ignored positions. No gradient.
"""
from __future__ import annotations

import numpy as np
import torch

from rll_repro.device import host_reads_allowed
from rll_repro.errors import DataError
from rll_repro.layers._util import canonical_axis, check_bottoms, check_tops, count, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register

FLT_MIN = float(np.finfo(np.float32).tiny)


@register
class Softmax(Layer):
    type_names = ("Softmax",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        self.axis = canonical_axis(param, int(param.softmax_param.axis), len(bottom_shapes[0]))

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        return (torch.softmax(x, dim=self.axis),)


def _check_label_count(layer, bottom_shapes) -> tuple[int, ...]:
    """Caffe's SoftmaxWithLoss/Accuracy Reshape check: one label per (outer, inner) position of the
    scores (outer = dims before ``axis``, inner = dims after it). Returns the scores' shape."""
    shape = tuple(bottom_shapes[0])
    outer, inner = count(shape, 0, layer.axis), count(shape, layer.axis + 1)
    if count(bottom_shapes[1]) != outer * inner:
        raise fail(layer.param, f"label count {count(bottom_shapes[1])} must equal {outer}x{inner} for scores of shape {shape}")
    return shape


def _labels(layer, label: torch.Tensor, outer: int, inner: int) -> torch.Tensor:
    if label.numel() != outer * inner:
        raise DataError(
            f"layer {layer.layer_name!r}: label count {label.numel()} does not match {outer}x{inner} predictions"
        )
    return label.detach().reshape(outer, inner).to(torch.long)


def _cast(normalizer, dtype):
    """A normalizer that is a Python number or (VALID, counted on the device) a 0-d tensor."""
    return normalizer.to(dtype) if torch.is_tensor(normalizer) else normalizer


class _SoftmaxLossFunction(torch.autograd.Function):
    """Caffe's SoftmaxWithLoss forward/backward (the gradient is p − onehot, not autograd's log path)."""

    @staticmethod
    def forward(ctx, scores, prob, labels, valid, normalizer):
        ctx.save_for_backward(prob, labels, valid)
        ctx.normalizer = normalizer
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        p = prob.gather(1, safe.unsqueeze(1)).squeeze(1)
        logp = torch.log(torch.clamp(p, min=FLT_MIN)).to(torch.float64)
        loss = -(logp * valid).sum() / _cast(normalizer, torch.float64)
        return loss.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad):
        prob, labels, valid = ctx.saved_tensors
        diff = prob.clone()
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        diff.scatter_add_(1, safe.unsqueeze(1), -valid.to(diff.dtype).unsqueeze(1))
        diff = diff * valid.unsqueeze(1).to(diff.dtype)
        scale = grad / _cast(ctx.normalizer, grad.dtype)
        return diff * scale, None, None, None, None


@register
class SoftmaxWithLoss(Layer):
    type_names = ("SoftmaxWithLoss",)
    is_loss = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 2)
        check_tops(param, 1, 2)
        self.axis = canonical_axis(param, int(param.softmax_param.axis), len(bottom_shapes[0]))
        lp = param.loss_param
        modes = type(lp)  # LossParameter: the forks number NONE 4 and add PRE_FIXED 3
        self.ignore_label = int(lp.ignore_label) if has(lp, "ignore_label") else None
        if has(lp, "normalize"):
            self.normalization = "VALID" if lp.normalize else "BATCH_SIZE"
        else:
            self.normalization = modes.NormalizationMode.Name(lp.normalization)
        self.pre_fixed = float(getattr(lp, "pre_fixed_normalizer", 1.0))
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = _check_label_count(self, bottom_shapes)
        tops = [()]
        if len(self.param.top) == 2:
            tops.append(shape)
        return tops

    def forward(self, scores, label):
        shape = scores.shape
        outer, channels, inner = count(shape, 0, self.axis), shape[self.axis], count(shape, self.axis + 1)
        prob = torch.softmax(scores, dim=self.axis)
        prob3 = prob.detach().reshape(outer, channels, inner)
        labels = _labels(self, label, outer, inner)
        valid = torch.ones_like(labels, dtype=torch.bool) if self.ignore_label is None else labels != self.ignore_label
        if host_reads_allowed(labels):  # on a GPU the check would sync every step (Caffe: a DCHECK)
            bad = valid & ((labels < 0) | (labels >= channels))
            if bool(bad.any()):
                raise DataError(f"layer {self.layer_name!r}: label {int(labels[bad][0])} outside [0, {channels})")
        if self.normalization == "VALID":  # counted on the device: no host read
            normalizer = valid.sum().clamp(min=1).to(torch.float32)
        else:
            normalizer = {
                "FULL": outer * inner, "BATCH_SIZE": outer, "NONE": 1, "PRE_FIXED": self.pre_fixed,
            }[self.normalization]
            normalizer = float(max(1.0, normalizer))
        scores3 = scores.reshape(outer, channels, inner)
        loss = _SoftmaxLossFunction.apply(scores3, prob3, labels, valid, normalizer)
        if len(self.param.top) == 2:
            return loss, prob.detach()
        return (loss,)


@register
class Accuracy(Layer):
    type_names = ("Accuracy",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 2)
        check_tops(param, 1, 2)
        p = param.accuracy_param
        self.top_k = int(p.top_k)
        self.axis = canonical_axis(param, int(p.axis), len(bottom_shapes[0]))
        self.ignore_label = int(p.ignore_label) if has(p, "ignore_label") else None
        channels = bottom_shapes[0][self.axis]
        if self.top_k > channels:
            raise fail(param, f"top_k {self.top_k} exceeds the {channels} classes")
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        shape = _check_label_count(self, bottom_shapes)
        tops = [()]
        if len(self.param.top) == 2:
            tops.append((shape[self.axis],))
        return tops

    def forward(self, scores, label):
        with torch.no_grad():
            shape = scores.shape
            outer, channels, inner = count(shape, 0, self.axis), shape[self.axis], count(shape, self.axis + 1)
            s = scores.reshape(outer, channels, inner)
            labels = _labels(self, label, outer, inner)
            valid = torch.ones_like(labels, dtype=torch.bool) if self.ignore_label is None else labels != self.ignore_label
            safe = torch.where(valid, labels, torch.zeros_like(labels))
            if host_reads_allowed(labels) and bool((valid & ((labels < 0) | (labels >= channels))).any()):
                raise DataError(f"layer {self.layer_name!r}: a label is outside [0, {channels})")
            true_score = s.gather(1, safe.unsqueeze(1))
            better = (s >= true_score).sum(dim=1) - 1
            correct = (better < self.top_k) & valid
            n_valid = valid.sum()  # 0/0 is taken as 0 (Caffe's count == 0 case), without a host read
            acc = (correct.sum().to(torch.float64) / n_valid.clamp(min=1)).to(scores.dtype)
            if len(self.param.top) == 1:
                return (acc,)
            # Caffe: per class, correct / count (0 for a class absent from the batch)
            counts = torch.bincount(labels[valid].long(), minlength=channels).to(torch.float64)
            hits = torch.bincount(labels[correct].long(), minlength=channels).to(torch.float64)
            per_class = torch.where(counts > 0, hits / counts.clamp(min=1), torch.zeros_like(counts))
            return acc, per_class.to(scores.dtype)
