"""Shared helpers for the oracle cases under tests/fixtures/<area>/<case>/ (net.prototxt + case.npz
dumped from real Caffe), and the relative error every oracle comparison states its tolerance in."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from rll_repro.caffe import caffe_pb2

LOSS_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "losses"


def case_arrays(case: str, root: Path = LOSS_FIXTURES) -> dict[str, np.ndarray]:
    """The case's blobs by name (``input/data``, ``blob/prob``, ``grad/data``, ...)."""
    return dict(np.load(root / case / "case.npz"))


def case_net(case: str, root: Path = LOSS_FIXTURES) -> caffe_pb2.NetParameter:
    """The case's net.prototxt, parsed as written (no upgrade)."""
    return text_format.Parse((root / case / "net.prototxt").read_text(), caffe_pb2.NetParameter())


def rel(ours, ref) -> float:
    """max |ours - ref| / max |ref| in float64 (the absolute max of ours when ref is all zero)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = np.abs(ref).max()
    return np.abs(ours - ref).max() / scale if scale else np.abs(ours).max()


def sop_deploy_case(shared):
    """The SOP deploy net in TEST phase loaded as the recording was made (train weights, then the
    BatchNorm statistics: two copy_from) and its expected.npz; ``shared`` is the conftest fixture."""
    import numpy as np

    from rll_repro.net import Net

    case = shared("oracle", "osm_caa", "net_sop_deploy_test")
    train_weights = (case / (case / "TRAIN_WEIGHTS.txt").read_text().strip()).resolve()
    net = Net(case / "net.prototxt", phase="test")
    net.copy_from(train_weights)
    net.copy_from(case / "bn_stats.caffemodel")
    return net, np.load(case / "expected.npz")
