"""The ablation knobs (``reproduce SETTING --set KNOB=VALUE``, rll_repro/recipes/ablations.py).

Each generated ablation prototxt is compared, as a parsed caffe message, with the SOP original
(../shared, read in place) or with the CVPR-era base: the fields in which they differ must be
exactly the fields the knob's entry in ``KNOBS`` names, no more, no fewer. Knobs the Caffe layer's
gradient ignores (alpha on V12, rll SPEC §0.2) are refused; knobs whose V12 meaning differs from the
paper's table (m, SPEC §1.3) warn.
"""
from __future__ import annotations

import pytest
from google.protobuf import text_format

from rll_repro import cli, recipes
from rll_repro.caffe import caffe_pb2
from rll_repro.eval import published
from rll_repro.recipes import ablations, edits
from rll_repro.recipes.ablations import KNOBS, LOSS, RecipeError
from rll_repro.reproduce import default_deploys, published_key
from conftest import shared_path

SOP_ORIGINAL = "reference/rll/original/SOP_Simp_25042020/150_T10_pn04_v50"
# (knob=value, base settings it applies to): every published ablation value plus off-table ones
ITEMS = ["alpha=1.4", "alpha=1.0", "alpha=1.3", "m=0", "m=0.2", "m=0.6", "m=1.2", "T=0", "T=5",
         "T=15", "T=20", "batch=40x3", "batch=55x3", "batch=65x3", "batch=30x4", "level=H", "level=L",
         "level=M", "level=(L,M,H)"]
V12_ITEMS = [i for i in ITEMS if not i.startswith("alpha")]


def _parse(path, cls):
    msg = cls()
    text_format.Merge(path.read_text(encoding="utf-8"), msg)
    return msg


def _normalised(paths, net) -> set[str]:
    """field_diff paths with every RLL loss layer written as LOSS (the KNOBS notation)."""
    losses = {layer.name for layer in edits.rll_losses(net)}
    out = set()
    for p in paths:
        for name in losses:
            p = p.replace(f"layer[{name}]", LOSS)
        out.add(p)
    return out


def _derive(base, item, tmp_path):
    return ablations.derive(recipes.get(base), [item], tmp_path / "run")


def _expected_train_paths(knob, value_equals_base: bool) -> set[str]:
    return set() if value_equals_base else set(knob.train_paths)


@pytest.mark.parametrize("item", V12_ITEMS)
def test_generated_ablation_differs_from_the_sop_original_only_in_its_knobs_fields(item, tmp_path):
    """rll-sop --set ...: written prototxt vs the released SOP train.prototxt / solver.prototxt."""
    a = _derive("rll-sop", item, tmp_path)
    ablations.write(a)
    knob = a.assignments[0].knob
    original_train = _parse(shared_path(SOP_ORIGINAL, "train.prototxt"), caffe_pb2.NetParameter)
    original_solver = _parse(shared_path(SOP_ORIGINAL, "solver.prototxt"), caffe_pb2.SolverParameter)
    if knob.name == "level":  # training unchanged: the base's own files, one deploy
        assert a.setting.train is a.base.train and a.setting.solver is a.base.solver
        assert [d.name for d in a.setting.deploys] == [ablations.LEVEL_DEPLOYS[a.assignments[0].value]]
        return
    ours_train = _parse(recipes.path(a.setting.train.path), caffe_pb2.NetParameter)
    ours_solver = _parse(recipes.path(a.setting.solver.path), caffe_pb2.SolverParameter)
    assert ours_solver.net == "train.prototxt"
    ours_solver.ClearField("net")
    original_solver.ClearField("net")
    assert _normalised(edits.field_diff(ours_train, original_train), original_train) == set(knob.train_paths)
    # V12: the solver's annealing target moves with the layer field (SPEC §3.2), nothing else
    assert set(edits.field_diff(ours_solver, original_solver)) == set(knob.solver_paths)


@pytest.mark.parametrize("item", ITEMS)
def test_cvpr_ablation_differs_from_its_base_only_in_its_knobs_fields(item, tmp_path):
    """rll-sop-cvpr --set ...: the CVPR-era solver has no annealing fields, so it never changes."""
    a = _derive("rll-sop-cvpr", item, tmp_path)
    knob = a.assignments[0].knob
    base_train, base_solver = a.base.train.build(), a.base.solver.build()
    if knob.name == "level":
        assert a.setting.train is a.base.train
        return
    ablations.write(a)
    train = _parse(recipes.path(a.setting.train.path), caffe_pb2.NetParameter)
    solver = _parse(recipes.path(a.setting.solver.path), caffe_pb2.SolverParameter)
    same = item in ("alpha=1.2", "m=0.4", "T=10", "batch=60x3")
    assert _normalised(edits.field_diff(train, base_train), base_train) == _expected_train_paths(knob, same)
    assert edits.field_diff(solver, base_solver) == []


def test_knob_values_land_in_the_fields_they_name(tmp_path):
    net = _derive("rll-sop-cvpr", "alpha=1.4", tmp_path).setting.train.build()
    assert [l.contrastive_loss_param_v2.negative_threshold for l in edits.rll_losses(net)] == pytest.approx([1.4] * 3)
    net = _derive("rll-sop-cvpr", "T=5", tmp_path).setting.train.build()
    assert [l.softmax_t_n_param.scale for l in edits.rll_losses(net)] == [5.0] * 3
    a = _derive("rll-sop", "m=0.2", tmp_path)
    assert a.setting.solver.build().pn_margin == pytest.approx(0.2)
    a = _derive("rll-sop-cvpr", "batch=40x3", tmp_path)
    net = a.setting.train.build()
    assert (net.input_dim[0], net.input_dim[4]) == (120, 120)
    assert (a.setting.classes_per_batch, a.setting.images_per_class, a.setting.batch_size) == (40, 3, 120)


def test_alpha_on_the_v12_layer_is_refused_with_the_reason():
    """SPEC rll §0.2: V12 hard-codes its boundaries to 1 -/+ m/2; negative_threshold never reaches
    the gradient, so running it would silently repeat the base experiment."""
    for base in ("rll-sop", "rll-cub", "rll-inshop"):
        with pytest.raises(RecipeError) as info:
            ablations.derive(recipes.get(base), ["alpha=1.4"])
        message = str(info.value)
        assert "\n" not in message
        assert "negative_threshold" in message and "gradient" in message and "rll-sop-cvpr" in message


def test_m_on_the_v12_layer_warns_that_alpha_moves_with_it(tmp_path):
    a = _derive("rll-sop", "m=0.2", tmp_path)
    assert any("1 - m/2 = 0.9" in w and "1 + m/2 = 1.1" in w and "alpha becomes 1.1" in w for w in a.warnings)
    assert not _derive("rll-sop-cvpr", "m=0.2", tmp_path).warnings
    assert not _derive("rll-sop", "T=5", tmp_path).warnings[:-1]  # only the config-differs note


@pytest.mark.parametrize("key", [k for k in published.keys("rll/SOP/paper/")
                                 if k.count("/") == 4 and "ablation_" in k])
def test_every_ablation_row_is_the_diff_reference_of_its_run(key):
    """The run for a table row diffs exactly that row: its concat (or level) deploy names it first,
    so reproduce's published_key picks it."""
    group, row = key.split("/")[3], key.split("/")[4]
    knob = next(k for k in KNOBS.values() if k.table == group)
    value = row if knob.name == "level" else row.partition("=")[2]
    a = ablations.derive(recipes.get("rll-sop-cvpr"), [f"{knob.name}={value}"])
    assert a.row == key
    deploy = next(d for d in default_deploys(a.setting) if d.published)
    assert published_key(deploy, deploy.checkpoints[-1]) == key
    assert sum(bool(d.published) for d in a.setting.deploys) == 1


def test_combined_knobs_have_no_published_row(tmp_path):
    a = ablations.derive(recipes.get("rll-sop-cvpr"), ["m=0.2", "T=5"], tmp_path / "run")
    assert a.row is None and all(not d.published for d in a.setting.deploys)
    net = a.setting.train.build()
    layer = edits.rll_losses(net)[0]
    assert layer.contrastive_loss_param_v2.pn_margin == pytest.approx(0.2) and layer.softmax_t_n_param.scale == 5


@pytest.mark.parametrize("items,needle", [
    (["beta=1"], "unknown knob 'beta'"),
    (["alpha"], "expected KNOB=VALUE"),
    (["T=hot"], "expected a number"),
    (["T=-1"], "must be >= 0"),
    (["m=nan"], "finite"),
    (["batch=7"], "not a multiple of K = 3"),
    (["batch=1x3"], "C >= 2"),
    (["level=X"], "expected one of"),
    (["T=5", "T=6"], "given twice"),
])
def test_bad_knobs_are_one_line_errors(items, needle):
    with pytest.raises(RecipeError, match=needle) as info:
        ablations.derive(recipes.get("rll-sop-cvpr"), items)
    assert "\n" not in str(info.value)


def test_knobs_act_only_on_rll_settings():
    with pytest.raises(RecipeError, match="not a Ranked List Loss setting"):
        ablations.derive(recipes.get("osm-cub"), ["T=5"])


def test_cli_refuses_alpha_on_rll_sop_in_one_line(capsys):
    assert cli.main(["reproduce", "rll-sop", "--set", "alpha=1.4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rll-sop-cvpr --set alpha=1.4" in err[0]


def test_cli_writes_the_derived_prototxts_into_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    # no --weights: the run stops at the input check, after the knobs' files are written
    assert cli.main(["reproduce", "rll-sop-cvpr", "--set", "T=5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "diff against: rll/SOP/paper/ablation_T (m=0.4,alpha=1.2)/T=5" in err
    train = _parse(out / "prototxt" / "train.prototxt", caffe_pb2.NetParameter)
    expected = _derive("rll-sop-cvpr", "T=5", tmp_path).setting.train.build()
    assert train == expected
    assert _parse(out / "prototxt" / "solver.prototxt", caffe_pb2.SolverParameter).net == "train.prototxt"


def test_default_run_folder_is_named_after_the_knobs():
    a = ablations.derive(recipes.get("rll-sop-cvpr"), ["batch=120"])
    assert a.setting.name == "rll-sop-cvpr+batch=40x3"
    assert a.run_folder.as_posix() == "runs/rll-sop-cvpr+batch=40x3"
