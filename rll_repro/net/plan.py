"""From a NetParameter to a plan: the kept layers, built, in order, with their blob graph.

Matched from Caffe's ``Net::Init`` (net.cpp):

- Layer filtering by NetState (``FilterNet``/``StateMeetsRule``): phase, level and stages of every
  ``include``/``exclude`` rule; a layer with include rules is kept if any rule is met, a layer with
  exclude rules is dropped if any rule is met.
- In-place layers: top j may reuse the name of bottom j. A blob's data is the last version written,
  its diff the gradient at the first version (what an in-place backward leaves in the shared memory).
- A top name produced twice (not in place) and a bottom no earlier layer produces are build errors.
- ``loss_weight``: one per top or none; loss layers default to 1 on top 0.
- ``propagate_down``: none or one per bottom.
- The net's outputs are the blobs no later layer consumes (Caffe's ``available_blobs_``).
- Reshape/Flatten tops share their bottom's memory (an alias group: one data, one diff).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

from rll_repro.errors import NetError, RLLReproError
from rll_repro.layers.base import DIALECTS, OSM_ONLY_TYPES, Dialect
from rll_repro.layers.registry import layer_class
from rll_repro.net.fusion import plan_chains, plan_siblings

PHASES = {"train": 0, "test": 1}
TRAIN, TEST = 0, 1  # pycaffe's caffe.TRAIN / caffe.TEST: Net(proto, weights, TEST) works as in pycaffe


def load_net_param(source) -> "object":
    """A NetParameter from a prototxt path or a NetParameter (V0/V1 nets upgraded by caffe.io)."""
    if isinstance(source, (str, os.PathLike)):
        from rll_repro.caffe import io as caffe_io

        return caffe_io.read_net_prototxt(source)
    if hasattr(source, "layer"):
        from rll_repro.caffe.upgrade import net_needs_upgrade, upgrade_net

        if net_needs_upgrade(source):
            upgraded = type(source)()
            upgraded.CopyFrom(source)
            return upgrade_net(upgraded)
        return source
    raise NetError(f"cannot build a net from {type(source).__name__} (need a prototxt path or a NetParameter)")


def state_meets_rule(phase: int, level: int, stages: Sequence[str], rule) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_layers(net_param, phase: int, level: int, stages: Sequence[str]) -> list:
    """Caffe's Net::FilterNet: the LayerParameters kept in this state."""
    kept = []
    for lp in net_param.layer:
        if len(lp.include) and len(lp.exclude):
            raise NetError(f"layer {lp.name!r}: specify either include or exclude rules, not both")
        included = len(lp.include) == 0
        for rule in lp.exclude:
            if state_meets_rule(phase, level, stages, rule):
                included = False
        for rule in lp.include:
            if state_meets_rule(phase, level, stages, rule):
                included = True
        if included:
            kept.append(lp)
    return kept


def pick_dialect(layer_params, override: str | Dialect | None = None) -> Dialect:
    """The fork whose arithmetic applies: explicit, else "osm" if an OSM-only type (or the OSM fork's
    L1 Normalization) is used, else "rll"."""
    if isinstance(override, Dialect):
        return override
    if override is not None:
        if override not in DIALECTS:
            raise NetError(f"unknown dialect {override!r}; known: {', '.join(sorted(DIALECTS))}")
        return DIALECTS[override]
    if any(lp.type in OSM_ONLY_TYPES for lp in layer_params):
        return DIALECTS["osm"]
    # Normalization L1 only works in the OSM fork (the RLL fork's L1 branch is buggy and unused).
    if any(lp.type == "Normalization" and lp.normalization_param.norm == 1 for lp in layer_params):
        return DIALECTS["osm"]
    return DIALECTS["rll"]


class Step:
    """One layer of the plan: the module, its blob names, propagate_down, loss weights, and whether it
    runs in place on its bottom's tensor (see :func:`plan_inplace`)."""

    __slots__ = ("layer", "bottoms", "tops", "propagate", "loss_weights", "index", "inplace", "chain", "siblings")

    def __init__(self, layer, bottoms, tops, propagate, loss_weights, index):
        self.inplace = False
        self.chain = None  # a rll_repro.net.fusion.Chain starting here, if any
        self.siblings = None  # step indices of sibling 1x1 convolutions run as one from here, if any
        self.layer = layer
        self.bottoms = bottoms
        self.tops = tops
        self.propagate = propagate
        self.loss_weights = loss_weights
        self.index = index


@dataclass
class Plan:
    """The built layers in order and their blob graph."""

    steps: list = field(default_factory=list)
    layer_names: list = field(default_factory=list)
    layer_params: list = field(default_factory=list)
    blob_shapes: "OrderedDict[str, tuple]" = field(default_factory=OrderedDict)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    alias_root: dict = field(default_factory=dict)  # blob -> the blob whose memory it shares
    alias_groups: dict = field(default_factory=dict)  # root -> its names, for groups of 2+
    loss_tops: list = field(default_factory=list)


def build_plan(layer_params, ctx) -> Plan:
    """Build every kept layer (Caffe's LayerSetUp + Reshape) and check the blob graph."""
    plan = Plan()
    available: dict[str, bool] = {}  # blob name -> still unconsumed (Caffe's available_blobs)
    produced: set[str] = set()
    for index, lp in enumerate(layer_params):
        name = lp.name
        if name in plan.layer_names:
            raise NetError(f"layer {name!r}: two layers have this name")
        cls = layer_class(lp.type, name)
        bottoms = list(lp.bottom)
        for b in bottoms:
            if b not in produced:
                raise NetError(
                    f"layer {name!r} (type {lp.type}): bottom blob {b!r} is not produced by any earlier layer"
                )
        tops = list(lp.top)
        for j, t in enumerate(tops):
            in_place = j < len(bottoms) and bottoms[j] == t
            if t in produced and not in_place:
                raise NetError(f"layer {name!r} (type {lp.type}): top blob {t!r} is produced by several layers")
        if len(lp.propagate_down) not in (0, len(bottoms)):
            raise NetError(f"layer {name!r}: {len(lp.propagate_down)} propagate_down values for {len(bottoms)} bottoms")
        propagate = [bool(p) for p in lp.propagate_down] or [True] * len(bottoms)
        bottom_shapes = [plan.blob_shapes[b] for b in bottoms]
        try:
            layer = cls(lp, bottom_shapes, ctx)
            top_shapes = layer.reshape(bottom_shapes)
        except RLLReproError:
            raise
        except (ValueError, TypeError, AttributeError, RuntimeError, IndexError, KeyError, ZeroDivisionError) as exc:
            raise NetError(f"layer {name!r} (type {lp.type}): cannot be built: {exc}") from exc
        if len(top_shapes) != len(tops):
            raise NetError(
                f"layer {name!r} (type {lp.type}): produces {len(top_shapes)} top blob(s), the prototxt names {len(tops)}"
            )
        if len(lp.loss_weight) not in (0, len(tops)):
            raise NetError(f"layer {name!r}: {len(lp.loss_weight)} loss_weight values for {len(tops)} tops")
        if len(lp.loss_weight):
            loss_weights = [float(w) for w in lp.loss_weight]
        else:
            loss_weights = [1.0 if (cls.is_loss and j == 0) else 0.0 for j in range(len(tops))]
        for b in bottoms:
            available.pop(b, None)
        shares = getattr(layer, "shares_bottom_memory", False)
        for t, shape in zip(tops, top_shapes):
            plan.blob_shapes[t] = tuple(int(s) for s in shape)
            if t not in plan.alias_root:
                plan.alias_root[t] = plan.alias_root[bottoms[0]] if shares and bottoms else t
            produced.add(t)
            available[t] = True
        if getattr(layer, "is_input", False):
            plan.inputs.extend(tops)
        plan.layer_names.append(name)
        plan.layer_params.append(lp)
        plan.steps.append(Step(layer, bottoms, tops, propagate, loss_weights, index))
    plan.outputs = list(available)
    plan_inplace(plan)
    groups: dict[str, list[str]] = {}
    for name, root in plan.alias_root.items():
        groups.setdefault(root, []).append(name)
    plan.alias_groups = {root: names for root, names in groups.items() if len(names) > 1}
    plan.loss_tops = [t for step in plan.steps for t, w in zip(step.tops, step.loss_weights) if w != 0.0]
    plan_chains(plan)
    plan_siblings(plan)
    return plan


def plan_inplace(plan: Plan) -> None:
    """Let in-place layers (ReLU) overwrite their bottom tensor, as Caffe does, where that is safe
    for autograd: the bottom was just written by a layer whose backward does not read its own
    output (``output_unused_in_backward``), nothing else read it since, and it is no net input
    or shared view. Saves an allocation and a pass; the values are the same."""
    last_writer: dict[str, int] = {}
    readers_since: dict[str, int] = {}
    for k, step in enumerate(plan.steps):
        for b in step.bottoms:
            readers_since[b] = readers_since.get(b, 0) + 1
        if (
            len(step.bottoms) == 1
            and step.tops == step.bottoms
            and step.propagate[0]
            and hasattr(step.layer, "forward_inplace")
            and readers_since.get(step.bottoms[0]) == 1
            and step.bottoms[0] in last_writer
        ):
            producer = plan.steps[last_writer[step.bottoms[0]]]
            b = step.bottoms[0]
            if (
                getattr(producer.layer, "output_unused_in_backward", False)
                and not getattr(producer.layer, "shares_bottom_memory", False)
                and plan.alias_root.get(b) == b
                and sum(1 for t in plan.alias_root.values() if t == b) == 1
            ):
                step.inplace = True
        for t in step.tops:
            last_writer[t] = k
            readers_since[t] = 0
