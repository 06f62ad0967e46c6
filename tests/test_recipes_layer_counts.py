"""Generated nets have the layer counts of the originals (realdata MANIFEST: SOP train 332, test_H 300).

Counts are of the prototxt's ``layer`` entries as written (legacy ``input:`` lines are not layers);
after Caffe's UpgradeNetInput one ``Input`` layer is added in front.
"""
from __future__ import annotations

from collections import Counter

import pytest

from rll_repro import recipes
from rll_repro.caffe import caffe_pb2
from rll_repro.recipes import generate

FILES = {f.path: f for f in generate.unique_files()}

EXPECTED = {
    "prototxt/rll/sop/train.prototxt": 332,          # 3 Dropout (ratio 0) more than the others
    "prototxt/rll/sop/deploy/test_H_d64.prototxt": 300,
    "prototxt/rll/sop/deploy/test_concat_d64.prototxt": 321,
    "prototxt/rll/inshop/train.prototxt": 329,
    "prototxt/rll/inshop/deploy/test_H_d128.prototxt": 300,
    "prototxt/rll/inshop/deploy/test_concatHM_d128.prototxt": 321,
    "prototxt/rll/market/train.prototxt": 329,
    "prototxt/rll/market/deploy/test_concat.prototxt": 321,
    "prototxt/osm_caa/cars/train.prototxt": 339,
    "prototxt/osm_caa/cub/train.prototxt": 339,
    "prototxt/osm_caa/mars/train.prototxt": 363,
    "prototxt/osm_caa/lpw/train.prototxt": 363,
    "prototxt/osm_caa/cars/test_M.prototxt": 248,
}


@pytest.mark.parametrize("rel,count", EXPECTED.items(), ids=list(EXPECTED))
def test_layer_count_matches_original(rel, count):
    assert len(FILES[rel].build().layer) == count


@pytest.mark.parametrize("s", [s for s in recipes.all_settings() if s.paper in ("rll", "osm_caa")],
                         ids=lambda s: s.name)
def test_train_net_is_bn_inception_with_its_losses(s):
    """71 bias-free convolutions, 73 BN/Scale/ReLU triples; 3 RLL losses or 1-2 OSM+CAA losses."""
    types = Counter(layer.type for layer in s.train.build().layer)
    assert types["Convolution"] == 71
    assert types["BatchNorm"] == types["Scale"] == types["ReLU"] == 73
    assert types["Concat"] == (11 if s.tracklets_per_class else 10)
    if s.paper == "rll":
        # the CVPR-era settings run the port's type string for that era's layer (SPEC rll §1.5)
        assert types["DistanceWeightedValidPairLossV12"] + types["DistanceWeightedValidPairLossV12CVPR19"] == 3
    else:
        assert types["DistanceWeightedValidPairLossV5"] == (2 if s.tracklets_per_class else 1)
        assert types["WeightedSoftmaxWithLoss"] == (4 if s.tracklets_per_class else 3)


def test_every_convolution_is_bias_free_xavier_with_unit_multipliers():
    net = FILES["prototxt/rll/sop/train.prototxt"].build()
    for layer in net.layer:
        if layer.type == "Convolution":
            assert not layer.convolution_param.bias_term
            assert layer.convolution_param.weight_filler.type == "xavier"
            assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1)]


def test_embedding_fcs_learn_ten_times_faster():
    """rll SPEC §2.4: the three D-dim embedding FCs have lr_mult 10; loss1/fc, loss2/fc have 1."""
    net = FILES["prototxt/rll/sop/train.prototxt"].build()
    lr = {l.name: l.param[0].lr_mult for l in net.layer if l.type == "InnerProduct"}
    assert lr == {"pool5/7x7_s1/fc": 10, "loss1/fc": 1, "loss1/fc/bn/sc/fc": 10, "loss2/fc": 1,
                  "loss2/fc/bn/sc/fc": 10}


def test_upgraded_train_net_gains_one_input_layer():
    upgrade = pytest.importorskip("rll_repro.caffe.upgrade", reason="needs rll_repro.caffe.upgrade")
    raw = FILES["prototxt/rll/sop/train.prototxt"].build()
    net = caffe_pb2.NetParameter()
    net.CopyFrom(raw)
    net = upgrade.upgrade_net(net) or net
    assert len(net.layer) == 333
    assert net.layer[0].type == "Input" and list(net.layer[0].top) == ["data", "label"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[150, 3, 227, 227],
                                                                      [150, 1, 1, 1]]


def _inspect_json(file, capsys) -> dict:
    import json

    from rll_repro import cli

    assert cli.main(["inspect", str(file), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("rel,count", EXPECTED.items(), ids=list(EXPECTED))
def test_rll_repro_inspect_reports_the_original_layer_count(rel, count, capsys):
    """``rll-repro inspect`` shows the layers plus Caffe's upgraded ``Input`` layer (332 -> 333)."""
    pytest.importorskip("rll_repro.commands.inspect_", reason="needs rll-repro inspect")
    report = _inspect_json(recipes.path(rel), capsys)
    assert report["num_layers"] == count + 1
    assert report["layer_types"].pop("Input") == 1
    assert sum(report["layer_types"].values()) == count


@pytest.mark.parametrize("rel", EXPECTED, ids=list(EXPECTED))
def test_rll_repro_inspect_of_generated_and_original_agree(rel, capsys):
    from conftest import shared_path

    pytest.importorskip("rll_repro.commands.inspect_", reason="needs rll-repro inspect")
    original = shared_path(FILES[rel].original.shared_path)
    ours, theirs = _inspect_json(recipes.path(rel), capsys), _inspect_json(original, capsys)
    for report in (ours, theirs):
        report.pop("file"), report.pop("bytes")
    assert ours == theirs
