"""Every original net prototxt of both papers (../shared/reference/*/original, read in place) is covered:
each of its layer types is registered, and (slow) each net builds in both phases."""
from __future__ import annotations

import pytest

from conftest import SHARED
from rll_repro.caffe.io import read_net_prototxt
from rll_repro.layers import supported_types

ORIGINALS = sorted(p for p in SHARED.glob("reference/*/original/**/*.prototxt") if "solver" not in p.name)


def test_every_layer_type_of_the_original_nets_is_registered(shared):
    shared("reference")
    if not ORIGINALS:
        pytest.skip("no original prototxts under ../shared/reference")
    used = {layer.type for path in ORIGINALS for layer in read_net_prototxt(path).layer}
    assert {"Convolution", "BatchNorm", "Scale", "Pooling", "Slice", "BatchPool", "Eltwise"} <= used
    assert used - set(supported_types()) == set()


@pytest.mark.slow
@pytest.mark.parametrize("path", ORIGINALS, ids=lambda p: str(p.relative_to(SHARED / "reference")))
def test_original_net_builds_in_both_phases(path):
    from rll_repro.net import Net

    net_param = read_net_prototxt(path)
    for phase in ("train", "test"):
        net = Net(net_param, phase=phase, seed=0)
        assert net.outputs
