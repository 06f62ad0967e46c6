"""The settings registry agrees with the nets it names, the SPEC schedules and the published numbers."""
from __future__ import annotations

import json

import pytest

from rll_repro import recipes
from rll_repro.errors import RLLReproError
from conftest import shared_path

PAPER_SETTINGS = ["rll-sop", "rll-inshop", "rll-market", "osm-cars", "osm-cub", "osm-mars",
                  "osm-lpw"]
SETTINGS = [s for s in recipes.all_settings() if s.paper in ("rll", "osm_caa")]
IDS = [s.name for s in SETTINGS]


def test_registry_holds_every_paper_setting():
    assert set(PAPER_SETTINGS) <= set(recipes.names())
    assert {"osm-cars-bbox", "osm-cub-bbox"} <= set(recipes.names())


def test_unknown_setting_is_a_one_line_error():
    with pytest.raises(RLLReproError) as info:
        recipes.get("rll-nope")
    assert "\n" not in str(info.value) and "rll-sop" in str(info.value)


@pytest.mark.parametrize("s", SETTINGS, ids=IDS)
def test_every_named_file_exists(s):
    for f in s.files:
        assert recipes.path(f.path).is_file(), f.path


@pytest.mark.parametrize("s", SETTINGS, ids=IDS)
def test_batch_composition_matches_train_net_input(s):
    """C x K equals the train net's input batch, as the MATLAB drivers assert."""
    net = s.train.build()
    assert net.input[0] == "data" and net.input[1] == "label"
    assert net.input_dim[0] == s.batch_size
    assert net.input_dim[4] == s.batch_size  # label
    assert net.input_dim[2] == net.input_dim[3] == s.input_size
    if s.tracklets_per_class:
        assert s.images_per_class == s.tracklets_per_class * s.frames_per_tracklet
        assert net.input[2] == "tracklet_label"
        assert net.input_dim[8] == s.classes_per_batch * s.tracklets_per_class


# (name, C, K, max_iter, save_start, save_interval): rll SPEC §4.1-4.2; osm_caa SPEC §5, §8, §9
SCHEDULES = [
    ("rll-sop", 50, 3, 30000, 1000, 1000),
    ("rll-inshop", 22, 3, 30000, 2000, 2000),
    ("rll-market", 60, 3, 6000, 1000, 1000),
    ("osm-cars", 8, 7, 10000, 1000, 250),
    ("osm-cars-bbox", 8, 7, 8000, 2000, 500),
    ("osm-cub", 8, 7, 3000, 1000, 250),
    ("osm-cub-bbox", 8, 7, 3000, 1000, 250),
    ("osm-mars", 3, 18, 100000, 40000, 5000),
    ("osm-lpw", 3, 18, 65000, 50000, 5000),
]


@pytest.mark.parametrize("name,c,k,max_iter,start,interval", SCHEDULES, ids=[r[0] for r in SCHEDULES])
def test_schedule_matches_spec(name, c, k, max_iter, start, interval):
    s = recipes.get(name)
    assert (s.classes_per_batch, s.images_per_class) == (c, k)
    assert (s.max_iter, s.save_start, s.save_interval) == (max_iter, start, interval)


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.paper == "rll"],
                         ids=[s.name for s in SETTINGS if s.paper == "rll"])
def test_rll_solver_max_iter_is_the_training_length(s):
    solver = s.solver.build()
    if not solver.HasField("max_iter"):  # CVPR-era solvers leave it to the MATLAB loop (SPEC §1.5)
        assert s.release_status == "released in an older commit" and s.max_iter == 20000
        return
    assert solver.max_iter == s.max_iter


@pytest.mark.parametrize("s", SETTINGS, ids=IDS)
def test_tested_checkpoints_are_saved_snapshots(s):
    snaps = set(s.snapshot_iters)
    for d in s.deploys:
        assert d.checkpoints and set(d.checkpoints) <= snaps, d.name


def test_snapshot_iters_follow_the_matlab_rule():
    """iter >= save_start and iter % save_interval == 0, up to max_iter (SPEC rll §4.1)."""
    assert recipes.get("rll-sop").snapshot_iters == tuple(range(1000, 30001, 1000))
    assert recipes.get("osm-mars").snapshot_iters[:2] == (40000, 45000)


@pytest.mark.parametrize("s", SETTINGS, ids=IDS)
def test_deploy_feature_blob_is_the_concat_of_its_heads(s):
    """The feature blob is produced by the last layer; a Concat lists the heads' raw FCs in order."""
    blob_of_head = {"H": "pool5/fc", "L": "loss1/fc/bn/sc/fc", "M": "loss2/fc/bn/sc/fc"}
    for d in s.deploys:
        net = d.file.build()
        last = net.layer[-1]
        assert list(last.top) == [d.feature_blob]
        if last.type == "Concat":
            assert list(last.bottom) == [blob_of_head[h] for h in d.heads]
        elif s.paper == "rll":
            assert d.heads == ("H",) and last.name == "pool5/7x7_s1/fc"


def _lookup(key: str):
    paper, *parts = key.split("/")
    node = json.loads(shared_path("reference", paper, "published.json").read_text())
    for part in parts:
        node = node[part]
    return node


@pytest.mark.parametrize("s", SETTINGS, ids=IDS)
def test_published_keys_exist_in_published_json(s):
    keys = set(s.published) | {k for d in s.deploys for k in d.published}
    assert s.published
    for key in keys:
        entry = _lookup(key)
        assert isinstance(entry, dict) and entry, key


@pytest.mark.parametrize("s", SETTINGS, ids=IDS)
def test_published_keys_resolve_in_the_eval_registry(s):
    published = pytest.importorskip("rll_repro.eval.published",
                                    reason="needs rll_repro.eval.published")
    lookup = getattr(published, "get", None) or getattr(published, "lookup", None)
    if lookup is None:
        pytest.skip("rll_repro.eval.published has no get()/lookup()")
    for key in set(s.published) | {k for d in s.deploys for k in d.published}:
        assert lookup(key) is not None, key


@pytest.mark.parametrize("s", SETTINGS, ids=IDS)
def test_transform_names_are_callables_of_the_data_module(s):
    transforms = pytest.importorskip("rll_repro.data.transforms",
                                     reason="needs rll_repro.data.transforms")
    for name in (s.train_transform, s.test_transform):
        assert callable(getattr(transforms, name, None)), f"rll_repro.data.transforms.{name}"


@pytest.mark.parametrize("s", SETTINGS, ids=IDS)
def test_sampler_names_are_classes_of_the_data_module(s):
    samplers = pytest.importorskip("rll_repro.data.samplers", reason="needs rll_repro.data.samplers")
    assert isinstance(getattr(samplers, s.sampler, None), type), f"rll_repro.data.samplers.{s.sampler}"


def test_rll_annealing_targets_equal_the_last_loss_layer():
    """SPEC rll §3.2: solver targets equal the M head's values, so annealing is a no-op."""
    for name in ("rll-sop", "rll-inshop", "rll-market"):
        s = recipes.get(name)
        solver, last = s.solver.build(), s.train.build().layer[-1]
        assert last.type == "DistanceWeightedValidPairLossV12"
        assert solver.pn_margin == last.contrastive_loss_param_v2.pn_margin
        assert solver.p_temperature == last.softmax_t_p_param.scale
        assert solver.n_temperature == last.softmax_t_n_param.scale


def test_pretrained_weights_are_user_supplied_googlenet_bn():
    for s in SETTINGS:
        assert s.pretrained_weights == "googlenet_bn.caffemodel"


@pytest.mark.parametrize("s", SETTINGS, ids=IDS)
def test_setting_is_plain_json_data(s):
    data = json.loads(json.dumps(s.as_dict()))
    assert data["name"] == s.name and data["batch_size"] == s.batch_size
    assert data["train"]["path"] == s.train.path and "build" not in data["train"]
    assert s.name in s.describe() and s.train.path in s.describe()
