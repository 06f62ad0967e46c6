"""Every generated deploy net builds with rll_repro.net.Net and yields the feature its setting names.

Shapes only (no forward): the feature blob ``pool5/7x7_s1`` is D x (number of heads) for RLL
(raw FC outputs concatenated, rll SPEC §5) and the 1024-d ``loss2/fc/bn/sc`` for OSM+CAA (osm_caa
SPEC §6), both at the declared input size and at 227 x 227, to which the RLL test code reshapes.
"""
from __future__ import annotations

import pytest

from rll_repro import recipes

# One deploy per distinct topology runs by default (each build initialises ~11M weights, ~1 s);
# the rest are marked slow.
FAST = {"rll-sop:H", "rll-sop:concat", "osm-cars:M"}
DEPLOYS = [pytest.param(s, d, id=f"{s.name}:{d.name}",
                        marks=() if f"{s.name}:{d.name}" in FAST else pytest.mark.slow)
           for s in recipes.all_settings() if s.paper in ("rll", "osm_caa")
           for d in s.deploys if not s.name.endswith("-bbox")]


def _dim(s, d) -> int:
    if s.paper == "osm_caa":
        return 1024
    train = s.train.build()
    fc = next(l for l in train.layer if l.name == "pool5/7x7_s1/fc")
    return fc.inner_product_param.num_output * len(d.heads)


@pytest.mark.parametrize("s,d", DEPLOYS)
def test_deploy_builds_and_gives_the_feature_dimension(s, d):
    net_module = pytest.importorskip("rll_repro.net", reason="needs rll_repro.net")
    net = net_module.Net(d.file.build(), phase="test")
    assert net.inputs == ["data"]
    assert d.feature_blob in net.outputs
    assert tuple(net.blobs[d.feature_blob].shape)[:2] == (1, _dim(s, d))
    if s.paper == "rll":
        net.blobs["data"].reshape(2, 3, 227, 227)
        net.reshape()
        assert tuple(net.blobs[d.feature_blob].shape)[:2] == (2, _dim(s, d))
