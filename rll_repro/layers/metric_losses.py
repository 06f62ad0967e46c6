"""The baseline metric-learning losses as Caffe layer types, so that a prototxt can train them in the
same pipeline as the two papers' losses:

    layer { name: "loss" type: "MultiSimilarityLoss" bottom: "embedding" bottom: "label" top: "loss"
            metric_loss_param { alpha: 2 beta: 50 } }

Types (one per class of :mod:`rll_repro.losses`, same name): ContrastiveLoss, TripletLoss,
LiftedStructureLoss, BinomialDevianceLoss, MarginLoss, NCALoss, MultiSimilarityLoss.

- bottoms: embeddings (N, D) or (N, D, 1, 1), N >= 2; labels with N values ((N,), (N, 1, 1, 1));
  no gradient into the labels (``propagate_down`` 1 must be 0); top: the scalar loss (a Caffe
  LossLayer: loss_weight 1 unless set);
- parameters: ``metric_loss_param`` (an rll_repro-only message, caffe.proto field 900200), each field
  the constructor argument of the same name; an unset field is the class's default, so a layer
  without ``metric_loss_param`` equals ``rll_repro.losses.<Type>()`` in value and gradient;
- the value is the current batch's (no lag, unlike the RLL fork's layer) and the backward is
  autograd's through the loss formula, times the top diff (loss_weight); the layer reads nothing
  back to the host (the standalone classes' NaN/shape checks are the net's job here: a NaN embedding
  gives a NaN loss, which the solver reports);
- MarginLoss samples with the device's default generator, or with ``metric_loss_param.seed`` its own
  generator on the embeddings' device; with ``learn_beta`` its beta is the layer's learnable blob.

``ContrastiveLoss`` is also a BVLC Caffe type with three bottoms (a, b, similarity) and
``contrastive_loss_param``: a ContrastiveLoss layer with three bottoms is BVLC's layer
(:class:`BVLCContrastiveLoss` rules below), with two it is the batch loss above. The dispatch is on
the bottom count, so BVLC siamese prototxts keep working.

The formulas live in :mod:`rll_repro.losses` (the standalone classes); these layers only wrap them.
"""
from __future__ import annotations

import inspect

import torch

from rll_repro.layers._util import check_embedding_label_loss, check_tops, count, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register
from rll_repro.losses import (BinomialDevianceLoss, ContrastiveLoss, LiftedStructureLoss, MarginLoss,
                              MultiSimilarityLoss, NCALoss, TripletLoss)

INTEGER_FIELDS = ("seed", "num_classes")
NOT_LAYER_FIELDS = ()  # constructor arguments a layer cannot take


def loss_kwargs(param, loss_class) -> dict:
    """Constructor arguments of ``loss_class`` from ``param.metric_loss_param`` (set fields only)."""
    message = param.metric_loss_param
    accepted = [name for name in inspect.signature(loss_class).parameters if name not in NOT_LAYER_FIELDS]
    kwargs = {}
    for field in message.DESCRIPTOR.fields:
        if not has(message, field.name):
            continue
        if field.name not in accepted:
            raise fail(param, f"metric_loss_param.{field.name} is not a parameter of {param.type} "
                              f"(it takes: {', '.join(accepted)})")
        value = getattr(message, field.name)
        kwargs[field.name] = int(value) if field.name in INTEGER_FIELDS else value
    return kwargs


def check_embedding_and_label_shapes(param, bottom_shapes) -> None:
    feat, label = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
    if len(feat) < 2 or feat[0] < 2 or count(feat[2:]) != 1:
        raise fail(param, f"bottom 0 (embeddings) must be (N, D) or (N, D, 1, 1) with N >= 2, got {feat}")
    if count(label) != feat[0]:
        raise fail(param, f"bottom 1 (labels) has {count(label)} values for {feat[0]} embeddings")


class MetricLossLayer(Layer):
    """A :mod:`rll_repro.losses` baseline as a Caffe loss layer (see the module docstring)."""

    is_loss = True
    loss_class: type = None

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_embedding_label_loss(param, bottom_shapes)
        try:
            self.loss = self.loss_class(**loss_kwargs(param, self.loss_class))
        except ValueError as exc:  # a bad choice string (mining, variant, ...)
            raise fail(param, f"metric_loss_param: {exc}") from None
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        check_embedding_and_label_shapes(self.param, bottom_shapes)
        return [()]

    def forward(self, emb, labels):
        return (self.loss.compute(self.loss.prepare(emb, labels, check=False)),)

    def extra_repr(self) -> str:
        return f"{self.layer_name!r}"


def _register_type(loss_class) -> type:
    layer = type(f"{loss_class.__name__}Layer", (MetricLossLayer,), {
        "type_names": (loss_class.__name__,), "loss_class": loss_class,
        "__doc__": f"Caffe type {loss_class.__name__!r}: :class:`rll_repro.losses.{loss_class.__name__}` as a layer.",
        "__module__": __name__,
    })
    return register(layer)


TripletLossLayer = _register_type(TripletLoss)
LiftedStructureLossLayer = _register_type(LiftedStructureLoss)
BinomialDevianceLossLayer = _register_type(BinomialDevianceLoss)


@register
class MarginLossLayer(MetricLossLayer):
    """Caffe type 'MarginLoss': :class:`rll_repro.losses.MarginLoss` as a layer. With
    ``metric_loss_param { learn_beta: true }`` beta (one value, or ``num_classes`` values) is the
    layer's blob 0, learned by the solver like any weight (``param { lr_mult ... }``; Wu et al.
    learn it), saved in the caffemodel; with ``num_classes`` the labels are checked against it on
    each batch (one host read)."""

    type_names = ("MarginLoss",)
    loss_class = MarginLoss

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        if self.loss.learn_beta:
            self.loss.beta.data = self.loss.beta.data.to(ctx.dtype)
            self.blobs.append(self.loss.beta)

NCALossLayer = _register_type(NCALoss)
MultiSimilarityLossLayer = _register_type(MultiSimilarityLoss)


class _BVLCContrastiveFunction(torch.autograd.Function):
    """BVLC ContrastiveLossLayer Forward_cpu/Backward_cpu (contrastive_loss_layer.cpp)."""

    @staticmethod
    def forward(ctx, a, b, sim, margin: float, legacy: bool):
        n = a.shape[0]
        diff = (a - b).reshape(n, -1)
        dist_sq = (diff * diff).sum(1)
        similar = sim.reshape(n).to(torch.int64) != 0  # static_cast<int>(label): truncation
        if legacy:
            dissimilar = (margin - dist_sq).clamp_min(0)
        else:
            dissimilar = (margin - torch.sqrt(dist_sq)).clamp_min(0) ** 2
        loss = torch.where(similar, dist_sq, dissimilar).sum() / n / 2.0
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy, ctx.shapes = margin, legacy, (a.shape, b.shape)
        return loss

    @staticmethod
    def backward(ctx, top_diff):
        diff, dist_sq, similar = ctx.saved_tensors
        n = diff.shape[0]
        alpha = top_diff / n  # bottom 0: +alpha, bottom 1: -alpha
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha * torch.ones_like(dist_sq)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)  # Caffe's 1e-4, not autograd's 1/dist
        coeff = torch.where(similar, alpha.expand_as(dist_sq), torch.where(mdist > 0, beta, torch.zeros_like(beta)))
        grad = coeff[:, None] * diff
        grad_a = grad.reshape(ctx.shapes[0]) if ctx.needs_input_grad[0] else None
        grad_b = (-grad).reshape(ctx.shapes[1]) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None, None


@register
class ContrastiveLossLayer(MetricLossLayer):
    """Caffe type 'ContrastiveLoss': two bottoms (embeddings, labels) = :class:`rll_repro.losses.ContrastiveLoss`
    over all pairs of the batch; three bottoms (a, b, similarity) = BVLC Caffe's ContrastiveLossLayer::

        E = 1/(2N) sum_n [ y_n d_n^2 + (1 - y_n) max(margin - d_n, 0)^2 ]     (legacy_version: max(margin - d_n^2, 0))

    with ``contrastive_loss_param`` (margin 1.0, legacy_version false), y_n = int(similarity) != 0,
    and BVLC's backward (the dissimilar gradient divides by d + 1e-4). Bottom 2 gets no gradient.
    """

    type_names = ("ContrastiveLoss",)
    loss_class = ContrastiveLoss

    def __init__(self, param, bottom_shapes, ctx):
        self.bvlc = len(bottom_shapes) == 3
        if not self.bvlc:
            if has(param, "contrastive_loss_param"):
                raise fail(param, "contrastive_loss_param is for BVLC's three-bottom ContrastiveLoss (a, b, "
                                  "similarity); with two bottoms (embeddings, labels) use metric_loss_param "
                                  "{ pos_margin neg_margin ... }")
            super().__init__(param, bottom_shapes, ctx)
            return
        Layer.__init__(self, param, bottom_shapes, ctx)
        check_tops(param, 1)
        if len(param.propagate_down) > 2 and param.propagate_down[2]:
            raise fail(param, "cannot backpropagate to the similarity labels (propagate_down[2] must be 0)")
        if has(param, "metric_loss_param"):
            raise fail(param, "metric_loss_param is for the two-bottom ContrastiveLoss; BVLC's three-bottom "
                              "layer takes contrastive_loss_param")
        c = param.contrastive_loss_param
        self.margin, self.legacy = float(c.margin), bool(c.legacy_version)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        if not self.bvlc:
            return super().reshape(bottom_shapes)
        a, b, y = (tuple(s) for s in bottom_shapes)
        if len(a) < 2 or count(a[2:]) != 1 or a != b:
            raise fail(self.param, f"bottoms 0 and 1 must both be (N, C[, 1, 1]) of one shape, got {a} and {b}")
        if count(y) != a[0]:
            raise fail(self.param, f"bottom 2 (similarity) has {count(y)} values for {a[0]} pairs")
        return [()]

    def forward(self, *bottoms):
        if not self.bvlc:
            return super().forward(*bottoms)
        a, b, sim = bottoms
        return (_BVLCContrastiveFunction.apply(a, b, sim.detach(), self.margin, self.legacy),)

    def extra_repr(self) -> str:
        if self.bvlc:
            return f"{self.layer_name!r}, BVLC, margin={self.margin:g}, legacy_version={self.legacy}"
        return super().extra_repr()
