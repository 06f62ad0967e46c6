"""Ranked List Loss: the RLL fork's ``DistanceWeightedValidPairLossV12`` (SPEC rll §1.1-1.4), its
CVPR-era predecessor (§1.5) and the solver-side annealing hook (§3.2).

V12, Caffe rules matched on purpose (f = embeddings, pairs i < j in lexicographic order):

- gradient direction per pair is the unit vector ``(f_i - f_j) / (d_ij + 1e-6)`` (d = sqrt of the
  float dot product; duplicates give 0, no NaN); the hinge enters only through the weights;
- weights ``w = pow(base, T * t)`` with ``base`` the float 2.71828 by default (not e), t = d - (1 - m/2)
  for positives and (1 + m/2) - d for negatives (m = pn_margin, thresholds computed in float), and
  w = 0 unless t > 0 **strictly**; ``negative_threshold`` does not enter the gradient;
- per-sample sums S+_k, S-_k start at 1e-8 (float), Z = 1e-8 + sum_k (S+_k + S-_k);
- each endpoint k of a pair gets only its own coefficient ``0.5 * w / S_k * (S+_k + S-_k) / Z``
  (the other endpoint is a constant): not the autograd gradient of any symmetric objective;
- everything is scaled by the top diff (Caffe's λ = loss_weight);
- the top value is the **unweighted** squared-hinge mean over the P pairs with thresholds
  ``negative_threshold - pn_margin`` (positives) and ``negative_threshold`` (negatives), written
  during **backward**; Caffe's forward is empty, so the forward returns the value of the previous
  backward (0 before the first one): the reported loss lags one iteration (§1.4).

How the lag is built (``DistanceWeightedValidPairLossV12.forward``): ``_LaggedRLLFunction`` returns
the stored value as a tensor connected to the embeddings; its backward computes Caffe's gradient for
this batch times the incoming grad (= loss_weight) and stores this batch's value on the layer, which
``after_backward()`` hands to the net (as Caffe's top blob holds it after Backward). Standalone use
(:mod:`rll_repro.losses`) uses ``rll_v12`` instead, which returns the current batch's value.

All of it is Gram-matrix arithmetic: O(N^2 + N D) memory, two (N, D) x (D, N)-sized matmuls.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from rll_repro.layers import _pair_native as native
from rll_repro.layers._pairwise import F64, PairBlocks
from rll_repro.layers._util import check_embedding_label_loss, fail, has
from rll_repro.layers.base import Layer
from rll_repro.layers.registry import register

f32 = np.float32
EPS_SUM = float(f32(1e-8))  # initial value of S+_k, S-_k and Z (a float in Caffe)
EPS_UNIT = 1e-6  # d + 1e-6 in the unit direction (a double literal added to a float)


@dataclass(frozen=True)
class RLLParams:
    """The layer's float members (Caffe stores them as float: every value is a float32 number).

    ``negative_threshold`` is the V12 field (default 1.2); the CVPR-era layer calls it ``margin``
    (default 1.4) and uses it, unlike V12, as the negative weighting boundary.
    """

    negative_threshold: float = 1.2
    pn_margin: float = 0.4
    scale_p: float = 0.0
    base_p: float = 2.71828
    scale_n: float = 10.0
    base_n: float = 2.71828

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            object.__setattr__(self, name, float(f32(getattr(self, name))))


def _pair_terms(d, same, params: RLLParams, pos_boundary: float, neg_boundary: float):
    """(t, w) of a block of pairs: t = d - pos_boundary for positives, neg_boundary - d for
    negatives, w = pow(base, T * t) where t > 0 strictly, else 0, in d's dtype; every operation is
    the float operation Caffe performs (d, boundaries and T are floats)."""
    t = torch.where(same, d - pos_boundary, neg_boundary - d)
    if params.scale_p == params.scale_n:
        exponent = t * params.scale_p
    else:
        exponent = t * torch.where(same, params.scale_p, params.scale_n).to(d.dtype)
    if params.base_p == params.base_n:
        w = torch.pow(params.base_p, exponent)
    else:
        w = torch.pow(torch.where(same, params.base_p, params.base_n).to(d.dtype), exponent)
    return t, w.masked_fill_(t <= 0, 0.0)


def _pair_weights(d, same, params: RLLParams, pos_boundary: float, neg_boundary: float) -> torch.Tensor:
    """The (N, N) w of :func:`_pair_terms` (diagonal 0)."""
    return _pair_terms(d, same, params, pos_boundary, neg_boundary)[1].fill_diagonal_(0.0)


def _anchor_sums(all_sum, pos_sum, dtype):
    """S+_k, S-_k (each starting at 1e-8) and the share (S+_k + S-_k) / Z, Z = 1e-8 + sum_k
    (S+_k + S-_k), from the float64 per-anchor sums over all / positive pairs."""
    sp = (pos_sum + EPS_SUM).to(dtype)
    sn = (all_sum - pos_sum + EPS_SUM).to(dtype)
    z = (sp.sum(dtype=F64) + sn.sum(dtype=F64) + EPS_SUM).to(dtype)
    return sp, sn, (sp + sn) / z


def _signed_shares(half_w, same, sp, sn, share):
    """Signed K_ij = +-0.5 w_ij / S_i * ((S+_i + S-_i) / Z) (+ for positives, - for negatives), the
    anchor's S and share broadcast against ``half_w`` = 0.5 w. ``0.5 * w`` is exact in float, so the
    float division equals Caffe's double quotient rounded; the sign rides on the divisor (exact)."""
    return torch.div(half_w, torch.where(same, sp, -sn)).mul_(share)


def _anchor_coefficients(w, same):
    """K_ij of :func:`_signed_shares` for a whole (N, N) w, each row using its own anchor."""
    sp, sn, share = _anchor_sums(w.sum(1, keepdim=True, dtype=F64), (w * same).sum(1, keepdim=True, dtype=F64), w.dtype)
    return _signed_shares(w * 0.5, same, sp, sn, share)


def _boundaries(params: RLLParams, era: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(weight boundaries, value thresholds) as Caffe's floats: V12 weighs from 1 -+ m/2, the CVPR-era
    layer from margin - m and margin; the value's thresholds are nt - m and nt in both."""
    m = f32(params.pn_margin)
    if era == "v12":
        bounds = float(f32(1) - m / f32(2)), float(f32(1) + m / f32(2))
    else:
        margin = f32(params.negative_threshold)
        bounds = float(margin - m), float(margin)
    return bounds, (float(f32(params.negative_threshold) - m), params.negative_threshold)


def _rll_value_and_grad(emb, labels, params: RLLParams, top_diff, era: str, need_grad: bool = True):
    """Value (unweighted squared-hinge mean over the P pairs, thresholds nt - m and nt) and Caffe's
    gradient, pair blocks visited once (see _pairwise); float32 CPU tensors take the C passes."""
    n, dt = emb.shape[0], emb.dtype
    bounds, value_bounds = _boundaries(params, era)
    with torch.no_grad():
        y = labels.reshape(-1)
        ids = native.class_ids(y) if native.usable(emb) else None
        pairs = PairBlocks(emb.reshape(n, -1), native=ids is not None)
        if ids is not None:
            value, grad = _rll_native(pairs, ids, params, top_diff, era, need_grad)
            return value, None if grad is None else grad.reshape(emb.shape)
        device = emb.device
        total = torch.zeros((), dtype=F64, device=device)
        all_sum = torch.zeros(n, dtype=F64, device=device)
        pos_sum = torch.zeros(n, dtype=F64, device=device)
        kept = []
        for blk in pairs.rows:
            r0, r1, k = blk.r0, blk.r1, blk.k
            d = torch.sqrt(blk.d2)
            same = y[r0:r1, None] == y[None, r0:]
            if need_grad:
                t, w = _pair_terms(d, same, params, *bounds)
                blk.diag(w).zero_()
                w64 = w.to(F64)
                wp64 = torch.where(same, w64, 0.0)
                all_sum[r0:r1] += w64.sum(1)
                pos_sum[r0:r1] += wp64.sum(1)
                if r1 < n:
                    all_sum[r1:] += w64[:, k:].sum(0)
                    pos_sum[r1:] += wp64[:, k:].sum(0)
                kept.append((d, same, w))
            if need_grad and value_bounds == bounds:
                hinge = t.clamp_min(0.0)  # the value's thresholds are the weights' ones
            else:
                lo, hi = value_bounds
                hinge = torch.where(same, d - lo, hi - d).clamp_min_(0.0)
            sq = hinge.square_()
            blk.diag(sq).zero_()
            total += blk.pair_sum(sq)
        value = (total / (n * (n - 1))).to(dt)  # both orders: 2 * sum_{i<j} / (2P)
        if not need_grad:
            return value, None
        sp, sn, share = _anchor_sums(all_sum, pos_sum, dt)
        lam = torch.as_tensor(top_diff, device=device).detach().reshape(()).to(dt)

        def coefficients():
            for blk, (d, same, w) in zip(pairs.rows, kept):
                r0, r1 = blk.r0, blk.r1
                if era == "v12":  # unit direction: c = float(1 / (d + 1e-6)), the sum taken in double
                    scale = d.to(F64, copy=True).add_(EPS_UNIT).reciprocal_().to(dt).mul_(lam)
                else:  # raw difference; the hinge mask is w > 0 (same boundaries)
                    scale = lam
                half_w = w.mul_(0.5)
                a_row = _signed_shares(half_w, same, sp[r0:r1, None], sn[r0:r1, None], share[r0:r1, None])
                a_col = _signed_shares(half_w, same, sp[None, r0:], sn[None, r0:], share[None, r0:])
                yield a_row.mul_(scale), a_col.mul_(scale)

        grad = pairs.apply(coefficients()).to(dt)
    return value, grad.reshape(emb.shape)


def _rll_native(pairs: PairBlocks, ids, params: RLLParams, top_diff, era: str, need_grad: bool):
    """_rll_value_and_grad's passes in C (pair_kernels.c ``rll_weights``, then ``rll_coefficients`` or,
    with few active pairs, ``rll_sparse_gradient``): the same float operations, w kept, d recomputed
    from d2."""
    n, dt, device = pairs.n, torch.float32, pairs.f64.device
    bounds, value_bounds = _boundaries(params, era)
    total = torch.zeros((), dtype=F64, device=device)
    all_sum, pos_sum = torch.zeros(n, dtype=F64, device=device), torch.zeros(n, dtype=F64, device=device)
    differ = None if need_grad and value_bounds == bounds else value_bounds
    scales = params.scale_p, params.scale_n, params.base_p, params.base_n
    kept = [native.rll_weights(blk.d2, ids[blk.r0:], *bounds, *scales, differ, all_sum[blk.r0:blk.r1],
                               pos_sum[blk.r0:blk.r1], all_sum[blk.r0:], pos_sum[blk.r0:], total)
            for blk in pairs.rows]
    value = (total / (n * (n - 1))).to(dt)
    if not need_grad:
        return value, None
    sparse = pairs.sparse_pays(sum(nonzeros for _, nonzeros in kept))
    kept = [w for w, _ in kept]
    sp, sn, share = _anchor_sums(all_sum, pos_sum, dt)
    lam = float(torch.as_tensor(top_diff, device=device).detach().reshape(()).to(dt))

    def shares(r0):
        return ids[r0:], sp[r0:], sn[r0:], share[r0:], lam, era == "v12"

    def coefficients():
        for blk, w in zip(pairs.rows, kept):
            yield native.rll_coefficients(blk.d2, w, *shares(blk.r0), blk.r1 < n)

    def sparse_gradient(number, blk, f, af, rowsum):
        return native.rll_sparse_gradient(blk.d2, kept[number], *shares(blk.r0), blk.r1 < n, f, af, rowsum,
                                          torch.stack((blk.near_i, blk.near_j), 1))

    return value, pairs.apply_sparse(sparse_gradient) if sparse else pairs.apply(coefficients())


def rll_v12_value_and_grad(emb: torch.Tensor, labels: torch.Tensor, params: RLLParams,
                           top_diff: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, gradient) of the V12 layer for embeddings (N, D...) and labels (N...), Caffe-exact.

    The value does not depend on ``top_diff``; the gradient is Caffe's bottom diff for top diff
    ``top_diff``. Results are in ``emb.dtype`` (float32: Caffe's float arithmetic).
    """
    return _rll_value_and_grad(emb, labels, params, top_diff, "v12")


def rll_cvpr19_value_and_grad(emb: torch.Tensor, labels: torch.Tensor, params: RLLParams,
                              top_diff: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The CVPR-era layer (commit ff2a4de4c, SPEC rll §1.5): boundaries ``margin - pn_margin`` and
    ``margin`` (= ``params.negative_threshold``), raw difference ``f_i - f_j`` instead of the unit
    vector, zero for non-violating pairs; same 0.5, S, Z, 1e-8 normalisation; value computed in
    forward (current, not lagged). The value formula is V12's with ``margin`` as the threshold."""
    return _rll_value_and_grad(emb, labels, params, top_diff, "cvpr19")


class _CurrentValueFunction(torch.autograd.Function):
    """Returns this batch's value; backward = the precomputed Caffe gradient times the grad."""

    @staticmethod
    def forward(ctx, emb, labels, params, variant):
        value, grad = _rll_value_and_grad(emb, labels, params, 1.0, variant, need_grad=emb.requires_grad)
        ctx.save_for_backward(grad if grad is not None else torch.zeros_like(emb))
        return value

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None


def rll_v12(emb: torch.Tensor, labels: torch.Tensor, params: RLLParams = RLLParams()) -> torch.Tensor:
    """V12 loss for standalone use: this batch's reported value; backward gives Caffe's gradient
    (scaled by the incoming grad). Labels get no gradient."""
    return _CurrentValueFunction.apply(emb, labels, params, "v12")


def rll_cvpr19(emb: torch.Tensor, labels: torch.Tensor, params: RLLParams = RLLParams(negative_threshold=1.4)) -> torch.Tensor:
    """CVPR-era RLL layer (§1.5), value current; ``params.negative_threshold`` is its ``margin``."""
    return _CurrentValueFunction.apply(emb, labels, params, "cvpr19")


class _LaggedRLLFunction(torch.autograd.Function):
    """V12 as the Caffe layer runs it: forward returns ``stored`` (the previous backward's value);
    backward computes this batch's gradient (times the top diff) and its value, which it writes to
    ``sink.value`` (the layer's top blob after Backward)."""

    @staticmethod
    def forward(ctx, emb, labels, stored, params, sink):
        ctx.save_for_backward(emb, labels)
        ctx.params, ctx.sink = params, sink
        return stored.detach().to(emb.dtype).clone()

    @staticmethod
    def backward(ctx, grad_out):
        emb, labels = ctx.saved_tensors
        value, grad = rll_v12_value_and_grad(emb, labels, ctx.params, grad_out)
        ctx.sink.value = value.detach()
        return grad, None, None, None, None


def _layer_params(param, cvpr19: bool) -> RLLParams:
    """RLLParams from a LayerParameter (proto defaults where a field is unset)."""
    c = param.contrastive_loss_param_v2
    tp, tn = param.softmax_t_p_param, param.softmax_t_n_param
    threshold = c.negative_threshold
    if cvpr19:  # field 1 was ``margin`` with default 1.4 in that proto
        if has(c, "margin"):
            threshold = c.margin
        elif not has(c, "negative_threshold"):
            threshold = 1.4
    return RLLParams(threshold, c.pn_margin, tp.scale, tp.base, tn.scale, tn.base)


class _Sink:
    """Where backward leaves the new loss value for ``after_backward`` (the RLL fork writes the top
    data in Backward_cpu, so the top lags one pass: SPEC rll §1.4)."""

    value: torch.Tensor | None = None


def _check_pair_bottoms(layer: Layer, bottom_shapes) -> int:
    feat, label = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
    if len(feat) < 1 or feat[0] < 2:
        raise fail(layer.param, f"needs at least 2 samples to form a pair, bottom 0 has shape {feat} "
                                "(Caffe would divide by P = 0 and report NaN)")
    if int(np.prod(label)) != feat[0]:
        raise fail(layer.param, f"bottom 1 (labels) has {int(np.prod(label))} values for {feat[0]} samples")
    return feat[0]


@register
class DistanceWeightedValidPairLossV12(Layer):
    """The RLL fork's loss layer (SPEC rll §1). See the module docstring for the value lag."""

    type_names = ("DistanceWeightedValidPairLossV12",)
    is_loss = True
    cvpr19 = False

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        check_embedding_label_loss(param, bottom_shapes)
        self.params = _layer_params(param, self.cvpr19)
        # Caffe's zero-initialised top blob: a buffer, so it follows the net to its device and dtype
        # (not persistent: it is not a weight; solver snapshots keep it in their side state)
        self.register_buffer("top_value", torch.zeros((), dtype=ctx.dtype, device=ctx.device), persistent=False)
        self._sink = _Sink()
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes):
        _check_pair_bottoms(self, bottom_shapes)
        return [()]

    def forward(self, emb, labels):
        self._sink.value = None
        if self.cvpr19:
            return (_CurrentValueFunction.apply(emb, labels, self.params, "cvpr19"),)
        if not emb.requires_grad:  # no propagate_down[0]: Caffe computes nothing at all
            return (self.top_value.to(emb.dtype).clone(),)
        return (_LaggedRLLFunction.apply(emb, labels, self.top_value, self.params, self._sink),)

    def after_backward(self):
        if self.cvpr19 or self._sink.value is None:
            return None
        self.top_value.copy_(self._sink.value)  # in place: the buffer stays the same object
        self._sink.value = None
        return [self.top_value.clone()]

    def extra_repr(self) -> str:
        p = self.params
        return (f"{self.layer_name!r}, negative_threshold={p.negative_threshold:g}, pn_margin={p.pn_margin:g}, "
                f"T_p={p.scale_p:g}, base_p={p.base_p:g}, T_n={p.scale_n:g}, base_n={p.base_n:g}")


@register
class DistanceWeightedValidPairLossV12CVPR19(DistanceWeightedValidPairLossV12):
    """The CVPR-era V12 (RLL commit ff2a4de4c, SPEC rll §1.5) under a port-only type string.

    Both eras use the Caffe type "DistanceWeightedValidPairLossV12"; write
    ``type: "DistanceWeightedValidPairLossV12CVPR19"`` to get the old layer. Its
    ``contrastive_loss_param_v2`` field 1 (``negative_threshold`` in the new schema, ``margin`` in
    the old one; default 1.4 when unset) is the margin α. The value is current (computed in forward).
    """

    type_names = ("DistanceWeightedValidPairLossV12CVPR19",)
    cvpr19 = True


# Solver field (SPEC rll §3.1) -> layer member it anneals, with the fork's proto defaults.
_ANNEALED = (
    ("negative_threshold", "negative_threshold", 1.2),
    ("pn_margin", "pn_margin", 0.4),
    ("p_temperature", "scale_p", 0.0),
    ("n_temperature", "scale_n", 10.0),
)


def anneal_toward_solver_targets(layer, solver_param, it: int) -> bool:
    """SGDSolver::ApplyUpdate's annealing (SPEC rll §3.2), called after the update of iteration
    ``it`` (0-based, before the increment) when ``layer`` is the net's last layer.

    Moves negative_threshold, pn_margin, T_p, T_n in float32: x <- x - (x - target) /
    (max_iter - it + 1). base_p/base_n are never annealed. Returns False (and does nothing) when
    ``layer`` is not a V12 layer (the CVPR-era layer had no solver fields) or ``it`` is past
    max_iter (where the formula would divide by zero).
    """
    if type(layer) is not DistanceWeightedValidPairLossV12:
        return False
    remaining = int(solver_param.max_iter) - int(it) + 1
    if remaining < 1:
        # Past max_iter (Caffe's Solve stops before; `reproduce --max-iter` may go on): the schedule
        # reached its targets at it == max_iter; Caffe's formula would divide by zero (NaN/inf).
        return False
    steps = f32(remaining)
    updates = {}
    for solver_field, member, default in _ANNEALED:
        target = f32(getattr(solver_param, solver_field, default))
        x = f32(getattr(layer.params, member))
        updates[member] = float(f32(x - f32(f32(x - target) / steps)))
    layer.params = replace(layer.params, **updates)
    return True
