"""The OSM+CAA fork's custom layers (SPEC osm §2.1-2.6): ``DistanceWeightedValidPairLossV5`` (online
soft mining + class-aware attention weighted contrastive loss), ``ExtractProb``, ``Gaussian`` and
``WeightedSoftmaxWithLoss``. All are CPU-only C++ in Caffe (sequential float32); the ports compute in
float64 and round where Caffe stores a float (see _pairwise).

V5, rules matched on purpose (pairs i < j, P = N(N-1)/2, m = contrastive_loss_param.margin):

- the value is the **unweighted** contrastive loss ``1/(2P) sum [y d^2 + (1-y) max(m - d, 0)^2]``
  of the current batch (computed in forward, not lagged);
- gradient of pair p (BVLC ContrastiveLoss backward with alpha = top_diff / P, the **surviving
  1/P**): positives ``alpha (f_i - f_j)``; negatives with m - d > 0 ``-alpha (m - d) / (d + 1e-4)
  (f_i - f_j)`` (the 1e-4 in the denominator), others 0; the endpoint j gets the opposite;
- OSM weight: positives the Gaussian **pdf** N(d; mean, sigma) of ``gaussian_param`` (not the
  poster's exp(-d^2/sigma^2)), negatives max(0, m - d); CAA pair score c_p = min(s_i, s_j);
  w_p = 0.5 raw_p c_p / S with S+ / S- the sums over the positive / negative set plus 1e-12
  (an empty set gives weights 0, no NaN);
- labels and scores get no gradient (Caffe: fatal); duplicates give a zero gradient.

ExtractProb, Gaussian and the weights of WeightedSoftmaxWithLoss have no backward in Caffe: their
outputs are constants here (propagate_down 0 in every released net).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rll_repro.device import host_reads_allowed
from rll_repro.errors import DataError
from rll_repro.layers import _pair_native as native
from rll_repro.layers._pairwise import F64, PairBlocks
from rll_repro.layers._util import canonical_axis, check_bottoms, check_tops, count, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register

f32 = np.float32
FLT_MIN = float(np.finfo(np.float32).tiny)
EPS_SET = 1e-12  # added to S+ and S-
EPS_NEG = float(f32(1e-4))  # Dtype(1e-4) in the negative-pair denominator


def _pdf_constants(mean: float, sigma: float, dtype: torch.dtype) -> tuple[float, float, float]:
    """mean and sigma as the layer's floats, and 1 / sqrt(2 pi sigma^2) (float32: the double divider
    rounded to float, its reciprocal in float)."""
    mean, sigma = float(f32(mean)), float(f32(sigma))
    divider = math.sqrt(2 * math.pi * sigma * sigma)
    return mean, sigma, float(f32(1) / f32(divider)) if dtype == torch.float32 else 1.0 / divider


def gaussian_pdf(x: torch.Tensor, mean: float, sigma: float) -> torch.Tensor:
    """The fork's Gaussian: (1/sqrt(2 pi sigma^2)) exp(-0.5 ((x - mean)/sigma)^2), elementwise.

    Float32 follows SPEC osm §2.3: (x - mean)/sigma in float; the exponent -0.5 q q (double, rounded
    to float: the same as the float product since -0.5 q is exact); the divider sqrt(2 pi sigma^2)
    in double rounded to float, its reciprocal in float; exp and the final product in double,
    rounded to float. Float64 input: the same formula in float64.
    """
    mean, sigma, inv_divider = _pdf_constants(mean, sigma, x.dtype)
    q = x / sigma if mean == 0.0 else (x - mean) / sigma  # x - 0 == x exactly
    exponent = (q * -0.5).mul_(q)
    return exponent.to(F64).exp_().mul_(inv_divider).to(x.dtype)


def osm_caa_value_and_grad(emb: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, margin: float = 1.2,
                           sigma: float = 0.8, mean: float = 0.0, top_diff: float | torch.Tensor = 1.0,
                           need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(value, gradient) of DistanceWeightedValidPairLossV5 for embeddings (N, D...), labels (N...)
    and CAA scores s (N...), in ``emb.dtype``; the gradient is Caffe's bottom diff for ``top_diff``.
    Every per-pair quantity is symmetric: pair blocks visited once (see _pairwise)."""
    n = emb.shape[0]
    p = n * (n - 1) // 2
    dt = emb.dtype
    margin = float(f32(margin))
    with torch.no_grad():
        y = labels.reshape(-1)
        s = scores.reshape(-1).to(dt)
        ids = native.class_ids(y) if native.usable(emb) else None
        pairs = PairBlocks(emb.reshape(n, -1), native=ids is not None)
        device = emb.device
        if ids is not None:
            value, grad = _osm_caa_native(pairs, ids, s.contiguous(), margin, sigma, mean, top_diff, need_grad)
            return value, None if grad is None else grad.reshape(emb.shape)
        value_sum = torch.zeros((), dtype=F64, device=device)
        set_sum = torch.zeros((), dtype=F64, device=device)  # both orders, all pairs
        pos_set_sum = torch.zeros((), dtype=F64, device=device)
        kept = []
        for blk in pairs.rows:
            r0, r1 = blk.r0, blk.r1
            d2 = blk.d2
            d = torch.sqrt(d2)
            same = y[r0:r1, None] == y[None, r0:]
            hinge = (margin - d).clamp_min_(0.0)
            terms = torch.where(same, d2, hinge * hinge)
            blk.diag(terms).zero_()
            value_sum += blk.pair_sum(terms)
            if not need_grad:
                continue
            caa = torch.minimum(s[r0:r1, None], s[None, r0:])
            raw = torch.where(same, gaussian_pdf(d, mean, sigma), hinge)
            rc = raw * caa
            blk.diag(rc).zero_()
            set_sum += blk.pair_sum(rc)
            pos_set_sum += blk.pair_sum(torch.where(same, rc, 0.0))
            kept.append((d, same, hinge, caa, raw))
        pair_sum = (value_sum / 2).to(dt)  # both orders counted: halve (exact)
        value = pair_sum / p / 2
        if not need_grad:
            return value, None
        s_pos = (pos_set_sum / 2).to(dt) + EPS_SET  # float S += 1e-12
        s_neg = ((set_sum - pos_set_sum) / 2).to(dt) + EPS_SET
        lam = torch.as_tensor(top_diff, device=device).detach().reshape(()).to(dt)
        alpha = lam / p  # float(top_diff) / float(P) in float (double for float64 input)
        twice_pos, twice_neg = (2 * s_pos.to(F64)), (2 * s_neg.to(F64))

        def coefficients():
            for d, same, hinge, caa, raw in kept:
                # negatives: -alpha (m - d) / (d + 1e-4); where m - d <= 0, raw = 0 and so w = 0: the
                # hinge max(m - d, 0) may stand for m - d
                beta = (hinge * -alpha).div_(d + EPS_NEG)
                coef = torch.where(same, alpha, beta)
                # w = 0.5 raw c / S in double, rounded to float (0.5 x / S == x / (2 S) exactly)
                w = raw.to(F64).mul_(caa.to(F64)).div_(torch.where(same, twice_pos, twice_neg)).to(dt)
                a = w.mul_(coef)  # duplicates (d = 0) are recomputed pairs: f_i - f_j = 0, no contribution
                yield a, a

        grad = pairs.apply(coefficients()).to(dt)
    return value, grad.reshape(emb.shape)


def _osm_caa_native(pairs: PairBlocks, ids, s, margin, sigma, mean, top_diff, need_grad):
    """osm_caa_value_and_grad's passes in C (pair_kernels.c ``osm_terms``, ``osm_coefficients``): the
    same float operations, raw kept, d, hinge and c recomputed from d2 and the scores."""
    n, dt, device = pairs.n, torch.float32, pairs.f64.device
    p = n * (n - 1) // 2
    mean, sigma, inv_divider = _pdf_constants(mean, sigma, dt)
    sums = torch.zeros(3, dtype=F64, device=device)  # value terms, raw c over all / positive pairs (both orders)
    kept = [native.osm_terms(blk.d2, ids[blk.r0:], s[blk.r0:], margin, mean, sigma, inv_divider, sums)
            for blk in pairs.rows]
    sparse = pairs.sparse_pays(sum(nonzeros for _, nonzeros in kept))
    kept = [raw for raw, _ in kept]
    # the scalar steps of the PyTorch path in numpy float32 (the same IEEE operations, no tensor ops)
    value_sum, set_sum, pos_set_sum = sums.tolist()
    fp = f32(p)
    value = torch.tensor(f32(value_sum / 2) / fp / f32(2), device=device)
    if not need_grad:
        return value, None
    s_pos = f32(pos_set_sum / 2) + f32(EPS_SET)
    s_neg = f32((set_sum - pos_set_sum) / 2) + f32(EPS_SET)
    alpha = float(f32(float(torch.as_tensor(top_diff, device=device))) / fp)
    constants = margin, alpha, EPS_NEG, 2 * float(s_pos), 2 * float(s_neg)

    def coefficients():
        for blk, raw in zip(pairs.rows, kept):
            a = native.osm_coefficients(blk.d2, raw, ids[blk.r0:], s[blk.r0:], *constants)
            yield a, a

    def sparse_gradient(number, blk, f, af, rowsum):
        return native.osm_sparse_gradient(blk.d2, kept[number], ids[blk.r0:], s[blk.r0:], *constants, blk.r1 < n,
                                          f, af, rowsum, torch.stack((blk.near_i, blk.near_j), 1))

    return value, pairs.apply_sparse(sparse_gradient) if sparse else pairs.apply(coefficients())


class OSMCAAFunction(torch.autograd.Function):
    """V5 value of the current batch; backward = Caffe's gradient times the incoming grad (λ)."""

    @staticmethod
    def forward(ctx, emb, labels, scores, margin, sigma, mean):
        value, grad = osm_caa_value_and_grad(emb, labels, scores, margin, sigma, mean, 1.0, need_grad=emb.requires_grad)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        return value

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None, None


def osm_caa_loss(emb, labels, scores, margin=1.2, sigma=0.8, mean=0.0) -> torch.Tensor:
    """DistanceWeightedValidPairLossV5 as a differentiable scalar (gradient only to ``emb``)."""
    return OSMCAAFunction.apply(emb, labels, scores, float(margin), float(sigma), float(mean))


def _no_backward_to(param, indices, what):
    for i in indices:
        if len(param.propagate_down) > i and param.propagate_down[i]:
            raise fail(param, f"cannot backpropagate to {what} (propagate_down[{i}] must be 0; Caffe: fatal)")


@register
class DistanceWeightedValidPairLossV5(Layer):
    type_names = ("DistanceWeightedValidPairLossV5",)
    is_loss = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 3)
        check_tops(param, 1)
        _no_backward_to(param, (1, 2), "the labels or the attention scores")
        self.margin = float(f32(param.contrastive_loss_param.margin))
        self.sigma = float(f32(param.gaussian_param.sigma))
        self.mean = float(f32(param.gaussian_param.mean))
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        feat = tuple(bottom_shapes[0])
        if len(feat) < 1 or feat[0] < 2:
            raise fail(self.param, f"needs at least 2 samples to form a pair, bottom 0 has shape {feat}")
        for i, what in ((1, "labels"), (2, "attention scores")):
            if count(bottom_shapes[i]) != feat[0]:
                raise fail(self.param, f"bottom {i} ({what}) has {count(bottom_shapes[i])} values for {feat[0]} samples")
        return [()]

    def forward(self, emb, labels, scores):
        return (osm_caa_loss(emb, labels, scores, self.margin, self.sigma, self.mean),)

    def extra_repr(self) -> str:
        return f"{self.layer_name!r}, margin={self.margin:g}, sigma={self.sigma:g}, mean={self.mean:g}"


@register
class Gaussian(Layer):
    """y = Gaussian pdf of x with ``gaussian_param`` {sigma (0.18), mean (0.5)}; no backward."""

    type_names = ("Gaussian",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 1)
        check_tops(param, 1)
        _no_backward_to(param, (0,), "the input of Gaussian")
        self.sigma = float(f32(param.gaussian_param.sigma))
        self.mean = float(f32(param.gaussian_param.mean))

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        return (gaussian_pdf(x.detach(), self.mean, self.sigma),)


@register
class ExtractProb(Layer):
    """top[n, 0, ...] = prob[n, int(label_n), ...] (0-based); optional top 1 = max_n top[n, 0, 0]
    (shape (1,)); no backward. A label outside [0, C) is a DataError (Caffe reads out of bounds)."""

    type_names = ("ExtractProb",)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 2)
        check_tops(param, 1, 2)
        _no_backward_to(param, (0, 1), "the probabilities or the labels of ExtractProb")
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        prob, label = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(prob) < 2:
            raise fail(self.param, f"bottom 0 must be N x C (x ...), got shape {prob}")
        if count(label) != prob[0]:
            raise fail(self.param, f"bottom 1 (labels) has {count(label)} values for {prob[0]} samples")
        tops = [(prob[0], 1) + prob[2:]]
        if len(self.param.top) > 1:
            tops.append((1,))
        return tops

    def forward(self, prob, labels):
        prob = prob.detach()
        idx = labels.detach().reshape(-1).to(torch.int64)  # Caffe: static_cast<int>
        if host_reads_allowed(idx) and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= prob.shape[1]):
            raise DataError(f"layer {self.layer_name!r} (ExtractProb): label out of range [0, {prob.shape[1]})")
        flat = prob.reshape(prob.shape[0], prob.shape[1], -1)
        top = flat[torch.arange(prob.shape[0]), idx].reshape((prob.shape[0], 1) + tuple(prob.shape[2:]))
        if len(self.param.top) > 1:
            return top, top.reshape(prob.shape[0], -1)[:, 0].max().reshape(1)
        return (top,)


class WeightedSoftmaxFunction(torch.autograd.Function):
    """-sum_k w_k log(max(q_k,l_k, FLT_MIN)) (no normalisation); grad t w_k (q_k - onehot)."""

    @staticmethod
    def forward(ctx, logits, labels, weights, axis, ignore_label):
        dt = logits.dtype
        z = logits.detach().to(F64).movedim(axis, -1)
        shape = z.shape
        z = z.reshape(-1, shape[-1])
        q = torch.softmax(z, dim=1).to(dt)  # Caffe's max-subtracted float softmax, within 1 ulp
        lab = labels.detach().reshape(-1).to(torch.int64)
        w = weights.detach().reshape(-1).to(dt)
        if lab.numel() != z.shape[0] or w.numel() != z.shape[0]:
            raise DataError(f"WeightedSoftmaxWithLoss: {z.shape[0]} predictions, {lab.numel()} labels, {w.numel()} weights")
        valid = lab != ignore_label if ignore_label is not None else torch.ones_like(lab, dtype=torch.bool)
        if host_reads_allowed(lab) and bool(((lab[valid] < 0) | (lab[valid] >= shape[-1])).any()):
            raise DataError(f"WeightedSoftmaxWithLoss: label out of range [0, {shape[-1]})")
        safe = torch.where(valid, lab, 0)
        q_true = q.gather(1, safe[:, None])[:, 0]
        terms = torch.where(valid, w * torch.log(q_true.clamp_min(FLT_MIN).to(F64)).to(dt), 0.0)
        value = (-terms.sum(dtype=F64)).to(dt)
        onehot = torch.zeros_like(q).scatter_(1, safe[:, None], 1.0)
        grad = torch.where(valid[:, None], (q - onehot) * w[:, None], 0.0)
        ctx.save_for_backward(grad.reshape(shape).movedim(-1, axis))
        return value

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None


@register
class WeightedSoftmaxWithLoss(Layer):
    """Softmax over ``softmax_param.axis`` (1), loss -sum_k w_k log(max(q, FLT_MIN)) without any
    normalisation (``loss_param.normalization`` is ignored, as in the fork), ``ignore_label``
    honoured; gradient only to the logits (SPEC osm §2.6). Weights: one per prediction."""

    type_names = ("WeightedSoftmaxWithLoss",)
    is_loss = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_bottoms(param, bottom_shapes, 3)
        check_tops(param, 1)
        _no_backward_to(param, (1, 2), "the labels or the weights")
        self.axis = canonical_axis(param, param.softmax_param.axis, len(bottom_shapes[0]))
        lp = param.loss_param
        self.ignore_label = int(lp.ignore_label) if has(lp, "ignore_label") else None
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        logits = tuple(bottom_shapes[0])
        predictions = count(logits) // max(logits[self.axis], 1)
        for i, what in ((1, "labels"), (2, "weights")):
            if count(bottom_shapes[i]) != predictions:
                raise fail(self.param, f"bottom {i} ({what}) has {count(bottom_shapes[i])} values for {predictions} predictions")
        return [()]

    def forward(self, logits, labels, weights):
        return (WeightedSoftmaxFunction.apply(logits, labels, weights, self.axis, self.ignore_label),)
