"""The learnable blobs of a net: Caffe's ``Net::AppendParam``.

- Param specs: ``lr_mult``/``decay_mult`` (default 1), params shared by ``name`` (the first layer
  owns the blob, later ones must match its shape; a sharer's explicit lr_mult/decay_mult must agree
  with the owner's), a param with lr_mult 0 gets no diff. Kept in Caffe's ``learnable_params_``
  order as ``params``, ``lr``, ``weight_decay``, ``names`` (``layer/index``).
- BatchNorm blobs per fork come from the layer (``param_spec_overrides``): lr_mult 1 / decay_mult 1
  in the RLL fork, forced lr_mult 0 in BVLC/OSM.
- Every learnable blob starts with a zero diff (Caffe's blobs are zero-initialised), on the net's device.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from rll_repro.errors import NetError


@dataclass
class LearnableParams:
    params: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    weight_decay: list = field(default_factory=list)
    names: list = field(default_factory=list)
    by_layer: "OrderedDict[str, list]" = field(default_factory=OrderedDict)  # layer -> its blobs (shared included)


def collect_params(steps, layer_params) -> LearnableParams:
    """Caffe's AppendParam over the layers in order: sharing by name, lr/decay multipliers."""
    out = LearnableParams()
    owners: dict[str, tuple[int, tuple, bool, bool]] = {}  # spec name -> (learnable idx, shape, has_lr, has_decay)
    for step in steps:
        layer, lp = step.layer, layer_params[step.index]
        blobs = layer.blobs
        if len(lp.param) > len(blobs):
            raise NetError(f"layer {lp.name!r}: {len(lp.param)} param specs for {len(blobs)} learnable blobs")
        overrides = layer.param_spec_overrides() or []
        for i in range(len(blobs)):
            spec = lp.param[i] if i < len(lp.param) else None
            has_lr = spec is not None and spec.HasField("lr_mult")
            has_decay = spec is not None and spec.HasField("decay_mult")
            lr = float(spec.lr_mult) if has_lr else 1.0
            decay = float(spec.decay_mult) if has_decay else 1.0
            if i < len(overrides) and overrides[i]:
                if "lr_mult" in overrides[i]:
                    lr, has_lr = float(overrides[i]["lr_mult"]), True
                if "decay_mult" in overrides[i]:
                    decay, has_decay = float(overrides[i]["decay_mult"]), True
            share = spec.name if spec is not None and spec.name else ""
            if share and share in owners:
                idx, shape, owner_has_lr, owner_has_decay = owners[share]
                owner = out.params[idx]
                mode = int(spec.share_mode) if spec.HasField("share_mode") else 0
                if tuple(blobs[i].shape) != shape:
                    if mode == 1 and blobs[i].numel() == owner.numel():
                        raise NetError(f"layer {lp.name!r}: PERMISSIVE sharing of param {share!r} with a different shape is not supported")
                    raise NetError(
                        f"layer {lp.name!r}: shared param {share!r} has shape {tuple(blobs[i].shape)}, its owner {shape}"
                    )
                if has_lr:
                    if owner_has_lr and out.lr[idx] != lr:
                        raise NetError(f"layer {lp.name!r}: shared param {share!r} has mismatched lr_mult")
                    out.lr[idx] = lr
                if has_decay:
                    if owner_has_decay and out.weight_decay[idx] != decay:
                        raise NetError(f"layer {lp.name!r}: shared param {share!r} has mismatched decay_mult")
                    out.weight_decay[idx] = decay
                owners[share] = (idx, shape, owner_has_lr or has_lr, owner_has_decay or has_decay)
                blobs[i] = owner
                continue
            param = blobs[i]
            param.requires_grad_(bool(param.requires_grad) and lr != 0.0)
            if param.grad is None:
                param.grad = torch.zeros_like(param.data)
            idx = len(out.params)
            out.params.append(param)
            out.lr.append(lr)
            out.weight_decay.append(decay)
            out.names.append(f"{lp.name}/{i}")
            if share:
                owners[share] = (idx, tuple(param.shape), has_lr, has_decay)
        if len(blobs):
            out.by_layer[lp.name] = list(blobs)
    # a shared param gets a gradient if any sharer trains it
    for idx, p in enumerate(out.params):
        if out.lr[idx] == 0.0:
            p.requires_grad_(False)
    return out


def clear_param_diffs(params) -> None:
    """Caffe's Net::ClearParamDiffs: every learnable blob's diff to zero (one fused op per dtype)."""
    missing = [p for p in params if p.grad is None]
    for p in missing:
        p.grad = torch.zeros_like(p.data)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)


__all__ = ["LearnableParams", "collect_params", "clear_param_diffs"]
