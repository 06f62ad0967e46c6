"""The CVPR-era settings of commit ff2a4de4c (rll SPEC §1.5) and the reconstructed rll-cars.

Those originals are not in ../shared; what is there is the released Market net, and (checked
against ff2a4de4c when these recipes were written) the older train prototxts are that net with a
few fields changed. So each generated net is compared, as a parsed message, with the Market
original: the differing fields must be exactly the ones SPEC §1.5 names. Solvers are checked
field by field against §1.5's numbers.
"""
from __future__ import annotations

import pytest
from google.protobuf import text_format

from rll_repro import cli, recipes
from rll_repro.caffe import caffe_pb2
from rll_repro.recipes import edits
from rll_repro.recipes.ablations import LOSS
from conftest import shared_path

MARKET = "reference/rll/original/Market1501_GooLeNetV2_V02_11042020"
FC = [f"layer[{name}].param[0].lr_mult" for name in edits.EMBEDDING_FCS]


def _market_train():
    msg = caffe_pb2.NetParameter()
    text_format.Merge(shared_path(MARKET, "180_pn04_tp0_tn10_onlyRLLv02", "train.prototxt").read_text(), msg)
    return msg


def _diff(net, base) -> set[str]:
    names = {layer.name for layer in edits.rll_losses(base)}
    out = set()
    for p in edits.field_diff(net, base):
        for name in names:
            p = p.replace(f"layer[{name}]", LOSS)
        out.add(p)
    return out


@pytest.mark.parametrize("name,alpha", [("rll-sop-cvpr", 1.2), ("rll-sop-cvpr-m10", 1.0)])
def test_cvpr_sop_train_is_the_market_net_with_the_old_layer_and_its_margin(name, alpha):
    """180_T10_m12_pn04_step5000 = Market's train net + ``margin: 1.2`` (field 1) in each loss; the
    port runs it with the CVPR-era layer's type string."""
    net, base = recipes.get(name).train.build(), _market_train()
    assert _diff(net, base) == {f"{LOSS}.type", f"{LOSS}.contrastive_loss_param_v2.negative_threshold"}
    for layer in edits.rll_losses(net):
        assert layer.type == edits.CVPR19_TYPE
        assert layer.contrastive_loss_param_v2.negative_threshold == pytest.approx(alpha)
        assert layer.contrastive_loss_param_v2.pn_margin == pytest.approx(0.4)


def test_cub_train_is_the_market_net_at_batch_60_with_lr_mult_100_and_its_thresholds():
    net, base = recipes.get("rll-cub").train.build(), _market_train()
    assert _diff(net, base) == {"input_dim[0]", "input_dim[4]", *FC,
                                f"{LOSS}.contrastive_loss_param_v2.negative_threshold",
                                f"{LOSS}.contrastive_loss_param_v2.pn_margin"}
    assert (net.input_dim[0], net.input_dim[4]) == (60, 60)
    for layer in edits.rll_losses(net):
        assert layer.type == edits.V12_TYPE  # released field names -> the released layer (§1.5)
        c = layer.contrastive_loss_param_v2
        assert (c.negative_threshold, c.pn_margin) == pytest.approx((1.4, 0.2))


def test_solvers_carry_the_spec_schedules():
    sop = recipes.get("rll-sop-cvpr").solver.build()
    assert list(sop.stepvalue) == [5000, 10000, 15000] and sop.lr_policy == "multistep"
    assert (sop.base_lr, sop.gamma, sop.weight_decay, sop.momentum) == pytest.approx((0.01, 0.5, 1e-5, 0.9))
    assert not sop.HasField("max_iter") and not sop.HasField("pn_margin")  # no annealing fields then
    cub = recipes.get("rll-cub").solver.build()
    assert list(cub.stepvalue) == [2000, 4000, 6000, 8000] and cub.max_iter == 10000
    assert (cub.base_lr, cub.gamma, cub.weight_decay, cub.momentum) == pytest.approx((0.001, 0.5, 2e-5, 0.9))
    assert (cub.negative_threshold, cub.pn_margin, cub.p_temperature, cub.n_temperature) == pytest.approx(
        (1.4, 0.2, 0, 10))


def test_deploys_are_the_market_deploy_files():
    """The older commits' deploy_prototxts/test_{concat,H,L,M} are byte-identical to Market's."""
    market = {d.name: d.file.path for d in recipes.get("rll-market").deploys}
    for name in ("rll-sop-cvpr", "rll-sop-cvpr-m10", "rll-cub", "rll-cars"):
        s = recipes.get(name)
        assert {d.name: d.file.path for d in s.deploys} == market
    assert [d.name for d in recipes.get("rll-sop-cvpr").deploys if d.file.used_by_release] == [
        "concat", "H", "L", "M"]  # test_v02.m, test_H.m, test_L.m, test_M.m
    assert [d.name for d in recipes.get("rll-cub").deploys if d.file.used_by_release] == ["concat"]


@pytest.mark.parametrize("name,c,max_iter,start,interval,ckpts,transform", [
    ("rll-sop-cvpr", 60, 20000, 2000, 2000, tuple(range(10000, 20001, 2000)), "MarketTrainTransform"),
    ("rll-cub", 20, 10000, 500, 500, tuple(range(500, 10001, 500)), "MarketTrainTransform"),
    ("rll-cars", 20, 10000, 500, 500, tuple(range(500, 10001, 500)), "MarketTrainTransform"),
])
def test_schedules_and_preprocessing_of_the_older_drivers(name, c, max_iter, start, interval, ckpts, transform):
    """train_v02.m / CUB train_multiGPUs.m: C x 3, save cadence, test loop; process_ori_image_aug_v02
    is the Market transform at crop 227."""
    s = recipes.get(name)
    assert (s.classes_per_batch, s.images_per_class) == (c, 3)
    assert (s.max_iter, s.save_start, s.save_interval) == (max_iter, start, interval)
    assert s.deploy("concat").checkpoints == ckpts and s.deploy("concat").batch_size == 64
    assert s.train_transform == transform and s.input_size == 227


def test_standing_of_each_setting():
    status = {s.name: s.release_status for s in recipes.all_settings()}
    assert status["rll-sop"] == status["rll-market"] == status["osm-cub"] == "as released"
    assert status["rll-sop-cvpr"] == status["rll-sop-cvpr-m10"] == status["rll-cub"] == "released in an older commit"
    assert status["rll-cars"] == "reconstructed"


def test_rll_cars_names_every_choice_the_sources_leave_open():
    notes = recipes.get("rll-cars").notes
    for choice in ("(1)", "(2)", "(3)", "(4)", "(5)", "(6)", "(7)", "(8)"):
        assert choice in notes
    for word in ("batch 60", "512-d", "pn_margin 0.2", "preprocessing", "8,054", "CARS196_", "--deploys concat,H"):
        assert word in notes, word


def test_list_marks_each_recipe(capsys):
    assert cli.main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert "rll-sop [as released]:" in out
    assert "rll-sop-cvpr [released in an older commit]:" in out
    assert "rll-cub [released in an older commit]:" in out
    assert "rll-cars [reconstructed]:" in out
