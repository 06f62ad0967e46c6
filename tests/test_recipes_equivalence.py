"""Every generated prototxt equals the original it reproduces, as a parsed caffe protobuf message.

The originals are third-party files read in place from ../shared/reference/*/original (skipped
visibly when absent); nothing of them is copied into the repository. Equality is proto2 message
equality: same fields *set* (``pad: 0`` written is not ``pad`` left out), same values (floats as
float32), same repeated order (layer order included).

The only normalisation: a solver's ``net`` path. Ours is relative to the solver's own directory
(``train.prototxt``); the originals' is relative to the MATLAB driver's folder
(``../<config>/train.prototxt``). Both must name ``train.prototxt``; the field is then cleared.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from google.protobuf import text_format

from rll_repro.caffe import caffe_pb2
from rll_repro.recipes import generate, path
from conftest import REPO, SHARED, shared_path

FILES = generate.unique_files()


def _parse(file: Path, cls):
    msg = cls()
    text_format.Merge(file.read_text(encoding="utf-8"), msg)
    return msg


def _message_class(f):
    return caffe_pb2.SolverParameter if f.kind == "solver" else caffe_pb2.NetParameter


def _normalise_solver_net(ours, original, solver_file: Path) -> None:
    assert PurePosixPath(original.net).name == "train.prototxt"
    assert ours.net == "train.prototxt"
    assert (solver_file.parent / ours.net).is_file(), "solver net: must resolve beside the solver"
    ours.ClearField("net")
    original.ClearField("net")


def _first_difference(ours, original) -> str:
    """A short description of where two NetParameters first differ (for the failure message)."""
    if not isinstance(ours, caffe_pb2.NetParameter):
        return f"ours:\n{ours}\noriginal:\n{original}"
    if len(ours.layer) != len(original.layer):
        return f"{len(ours.layer)} layers vs {len(original.layer)} in the original"
    for a, b in zip(ours.layer, original.layer):
        if a != b:
            return f"layer {b.name!r}:\nours:\n{a}\noriginal:\n{b}"
    return "net-level fields differ"


@pytest.mark.parametrize("f", FILES, ids=[f.path for f in FILES])
def test_generated_file_equals_original_message(f):
    original_file = shared_path(f.original.shared_path)
    ours = _parse(path(f.path), _message_class(f))
    original = _parse(original_file, _message_class(f))
    if f.kind == "solver":
        _normalise_solver_net(ours, original, path(f.path))
    assert ours == original, _first_difference(ours, original)


@pytest.mark.parametrize("f", [f for f in FILES if f.kind != "solver"],
                         ids=[f.path for f in FILES if f.kind != "solver"])
def test_generated_net_equals_original_after_io_upgrade(f):
    """Also equal after rll_repro.caffe.io's reader (legacy ``input:`` -> V2 upgrade) on both."""
    io = pytest.importorskip("rll_repro.caffe.io", reason="needs rll_repro.caffe.io")
    original_file = shared_path(f.original.shared_path)
    ours = io.read_net_prototxt(path(f.path))
    original = io.read_net_prototxt(original_file)
    assert ours == original, _first_difference(ours, original)


def test_equality_is_presence_sensitive():
    """The check above would catch a recipe that leaves out an explicit default (``pad: 0``)."""
    sop_train = next(f for f in FILES if f.path == "prototxt/rll/sop/train.prototxt")
    net = sop_train.build()
    changed = caffe_pb2.NetParameter()
    changed.CopyFrom(net)
    layer = next(l for l in changed.layer if l.name == "conv2/3x3_reduce")
    assert list(layer.convolution_param.pad) == [0]
    layer.convolution_param.ClearField("pad")
    assert changed != net


def test_committed_prototxt_is_byte_identical_to_regeneration():
    """prototxt/ cannot drift from the recipes: regenerate and compare bytes."""
    stale = generate.stale_files(REPO)
    assert not stale, f"stale generated files (run tools/gen_prototxt.py): {stale}"


def test_no_orphan_files_under_generated_folders():
    generated = set(generate.generated_files())
    for folder in ("prototxt/rll", "prototxt/osm_caa"):
        for file in (REPO / folder).rglob("*"):
            if file.is_file():
                rel = file.relative_to(REPO).as_posix()
                assert rel in generated, f"{rel} is not produced by tools/gen_prototxt.py"


def _released_originals() -> set[str]:
    """Original prototxts the released scripts use (rll SPEC §5, osm_caa SPEC §6, §13)."""
    root = shared_path("reference")
    rll = root / "rll" / "original"
    osm = root / "osm_caa" / "original"
    out = set()
    for p in list(rll.glob("*/*/train.prototxt")) + list(rll.glob("*/*/solver.prototxt")):
        out.add(p)
    out |= set(rll.glob("SOP_Simp_25042020/deploy_prototxts/*_d64.prototxt"))
    out |= set(rll.glob("InshopClothes_Simp_21042020/deploy_prototxts/*_d128.prototxt"))
    out |= set(rll.glob("Market1501_GooLeNetV2_V02_11042020/deploy_prototxts/test_concat.prototxt"))
    out |= set(osm.glob("*/*/*.prototxt"))
    return {p.relative_to(SHARED).as_posix() for p in out}


def test_every_released_original_is_generated():
    covered = {f.original.shared_path for f in FILES}
    missing = _released_originals() - covered
    assert not missing, f"originals without a generated equivalent: {sorted(missing)}"
    assert len(_released_originals()) == 33  # 21 RLL + 12 OSM+CAA files
