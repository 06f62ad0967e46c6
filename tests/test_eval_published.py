"""The published-number registry (package data) and its query API."""
from __future__ import annotations

import json

import pytest

from rll_repro.errors import DataError
from rll_repro.eval import published


def test_paper_entry_in_percent_with_source():
    e = published.get("rll/SOP/paper/RLL-(L,M,H)")
    assert e["R@1"] == 79.8 and e["R@10"] == 91.3 and e["R@100"] == 96.3 and e["NMI"] == 90.4
    assert e["source"].startswith("rll: RLL_CVPR19_V01.pdf slide 18")


def test_repository_fractions_come_back_in_percent():
    # stored as 0.786 (fraction) in the RLL file's repo_* group
    e = published.get("rll/SOP/repo_SOP_Simp_25042020_b150_d64_iter30000/(H,L,M)")
    assert (e["R@1"], e["R@10"], e["R@100"]) == (78.6, 90.5, 95.9)


def test_osm_metric_names_are_normalised():
    e = published.get("osm_caa/MARS/OSM+CAA (Ours)")
    assert e["R@1"] == 84.7 and e["R@5"] == 94.1 and e["mAP"] == 72.4
    assert "R1" not in e and "attention" not in e


def test_null_values_are_left_out():
    e = published.get("baselines/SOP/ProxyNCA")
    assert e == {"R@1": 73.7, "source": e["source"]}


def test_nested_groups_flatten_with_slash():
    e = published.get("rll/Market1501/repo_Market1501_GooLeNetV2_V02_11042020_b180_d512/iter6000")
    assert e["single_query/mAP"] == pytest.approx(71.0651) and e["multi_query_max_rerank/R@1"] == pytest.approx(91.8052)


def test_group_entry_inherits_source():
    e = published.get("rll/SOP/paper/ablation_m (alpha=1.2,T=10)/m=0.2")
    assert e["R@1"] == 79.0 and "Table 4" in e["source"]


def test_unknown_key_suggests_close_matches():
    with pytest.raises(DataError, match=r"did you mean rll/SOP/paper/RLL-\(L,M,H\)"):
        published.get("rll/SOP/paper/RLL-(L,M,X)")


def test_unknown_source_is_an_error():
    with pytest.raises(DataError, match="unknown published source"):
        published.get("nope/SOP")


def test_every_listed_key_resolves_to_numbers():
    keys = published.keys()
    assert len(keys) > 100
    for key in keys:
        entry = published.get(key)
        assert any(k != "source" for k in entry), key
        assert all(isinstance(v, float) for k, v in entry.items() if k != "source"), key


def test_package_data_equals_shared_reference(shared):
    for name in published.SOURCES:
        ref = json.loads(shared("reference", name, "published.json").read_text(encoding="utf-8"))
        assert published.load(name) == ref, name
