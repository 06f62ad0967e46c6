"""Small helpers of the net-level tests: a TRAIN net from prototxt text with its inputs filled, and
one solver-style step (forward_backward) returning the loss and every param diff."""
from __future__ import annotations

import numpy as np

from rll_repro.caffe.io import parse_net_text
from rll_repro.net import Net


def net_with_inputs(text: str, data_shape, seed: int = 3, memory_format=None) -> Net:
    """The TRAIN net of ``text`` (fillers seeded), data ~ N(1, 2²) and labels 0, 1, 2, 1, ..."""
    net = Net(parse_net_text(text), phase="train", seed=seed)
    if memory_format is not None:
        net.set_memory_format(memory_format)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal(data_shape).astype(np.float32) * 2 + 1
    net.blobs["label"].data[...] = (np.array([0, 1, 2, 1] * data_shape[0], np.float32))[: data_shape[0]]
    return net


def solver_step(net: Net, keep) -> tuple[float, dict]:
    """(loss, {"layer/i": param diff}) of one forward_backward with ``net.keep_blob_diffs = keep``."""
    net.keep_blob_diffs = keep
    net.clear_param_diffs()
    loss = float(net.forward_backward())
    return loss, {f"{name}/{i}": p.diff.copy() for name in net.params for i, p in enumerate(net.params[name])}
