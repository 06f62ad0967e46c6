"""Layers the net may run as one operation on the solver path: BatchNorm -> Scale (-> ReLU) chains,
and sibling 1x1 convolutions of one bottom.

A chain is fused only where nothing can tell: consecutive layers, each reading the previous one's top
and nothing else reading that version of the blob, no propagate_down 0, no loss weight, no blob
shared with a Reshape/Flatten. Whether it runs fused is decided per forward (the net keeps no blob
diffs, the input is a channels_last float32 CPU tensor, the C kernels are built:
rll_repro.layers.batchnorm_chain); otherwise its layers run one by one as always.
"""
from __future__ import annotations

from dataclasses import dataclass

from rll_repro.layers.pointwise_conv import pointwise


@dataclass(frozen=True)
class Chain:
    """Steps ``start`` .. ``start + length - 1`` of the plan: BatchNorm, Scale and, when ``relu``, ReLU."""

    start: int
    length: int
    relu: bool


def _versions_read(plan):
    """(k, step, [(bottom, version)]) for each step, a version being the index of the step that wrote
    the blob (-1: a net input)."""
    writer: dict[str, int] = {name: -1 for name in plan.inputs}
    for k, step in enumerate(plan.steps):
        yield k, step, [(b, writer.get(b, -1)) for b in step.bottoms]
        for t in step.tops:
            writer[t] = k


def _version_readers(plan) -> dict[tuple[str, int], int]:
    """How many layers read each (blob, version)."""
    readers: dict[tuple[str, int], int] = {}
    for _, _, read in _versions_read(plan):
        for key in read:
            readers[key] = readers.get(key, 0) + 1
    return readers


def _single(step, type_name: str) -> bool:
    return (step.layer.param.type == type_name and len(step.bottoms) == 1 and len(step.tops) == 1
            and all(step.propagate) and not any(step.loss_weights))


def _own_memory(plan, name: str) -> bool:
    return plan.alias_root.get(name) == name and name not in plan.alias_groups


def plan_chains(plan) -> None:
    """Mark each fusable BatchNorm -> Scale (-> ReLU with negative_slope 0) on its first step
    (``step.chain``); the net's outputs and loss tops are never an intermediate top."""
    readers = _version_readers(plan)
    outputs = set(plan.outputs) | set(plan.loss_tops)
    steps = plan.steps
    for k in range(len(steps) - 1):
        bn, scale = steps[k], steps[k + 1]
        if not (_single(bn, "BatchNorm") and _single(scale, "Scale") and scale.bottoms == bn.tops):
            continue
        top = bn.tops[0]
        if readers.get((top, k)) != 1 or top in outputs or not _own_memory(plan, top):
            continue
        if not scale.layer.channelwise_bias() or not _own_memory(plan, scale.tops[0]):
            continue
        relu = False
        if k + 2 < len(steps):
            act = steps[k + 2]
            relu = (_single(act, "ReLU") and act.bottoms == scale.tops and act.layer.negative_slope == 0.0
                    and readers.get((scale.tops[0], k + 1)) == 1 and scale.tops[0] not in outputs
                    and _own_memory(plan, act.tops[0]))
        bn.chain = Chain(k, 3 if relu else 2, relu)


def plan_siblings(plan) -> None:
    """Group the pointwise Convolutions that read the same version of a blob (two or more, the same
    bias_term, each with its own new top): ``step.siblings`` on the first lists the group's step
    indices; the others run at the first one's place when the group runs as one."""
    groups: dict[tuple, list[int]] = {}
    for k, step, read in _versions_read(plan):
        if (len(step.bottoms) == 1 and len(step.tops) == 1 and step.tops != step.bottoms and all(step.propagate)
                and not any(step.loss_weights) and pointwise(step.layer) and _own_memory(plan, step.tops[0])):
            groups.setdefault((*read[0], step.layer.bias_term), []).append(k)
    for members in groups.values():
        if len(members) > 1:
            plan.steps[members[0]].siblings = tuple(members)
