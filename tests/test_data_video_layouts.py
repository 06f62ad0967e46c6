"""make-lists mars|lpw: tracklet lists from tiny MARS / LPW folders in the standard layouts, read back
by the loader `reproduce osm-mars|osm-lpw` uses, and a tiny MARS-protocol run on the written lists."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from rll_repro import cli
from rll_repro.data import lists, video_layouts, writers
from rll_repro.errors import DataError
from rll_repro.matfile import loadmat, savemat

MARS_TRAIN = [(1, 1, 3), (1, 2, 2), (3, 1, 4), (3, 4, 2), (8, 2, 3), (8, 5, 2)]   # (pid, camera, frames)
MARS_TEST = [(0, 1, 2), (5, 1, 3), (5, 2, 3), (6, 1, 3), (6, 3, 3), (-1, 2, 2), (7, 1, 3), (7, 2, 3)]


def image_bytes(colour, rng) -> bytes:
    """A small real PNG (the loader decodes by content, so the .jpg names of the datasets are fine)."""
    import torch

    img = np.clip(np.asarray(colour)[:, None, None] + rng.normal(0, 30, (3, 36, 24)), 0, 255).astype(np.uint8)
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import encode_png

        return bytes(encode_png(torch.from_numpy(img)).numpy())


def fake_mars(root: Path, images: bool = False) -> Path:
    """bbox_train/, bbox_test/ (PPPP/PPPPCcTttttFfff.jpg) and info/ as the MARS evaluation kit has them."""
    rng = np.random.default_rng(5)
    colours = {}
    for split, tracks in (("train", MARS_TRAIN), ("test", MARS_TEST)):
        names, rows = [], []
        for t, (pid, cam, n) in enumerate(tracks, start=1):
            folder = "00-1" if pid == -1 else f"{pid:04d}"
            first = len(names) + 1
            for f in range(1, n + 1):
                name = f"{folder}C{cam}T{t:04d}F{f:03d}.jpg"
                names.append(name)
                path = root / f"bbox_{split}" / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                colour = colours.setdefault(pid, rng.integers(0, 256, 3))
                path.write_bytes(image_bytes(colour, rng) if images else b"")
            rows.append([first, len(names), pid, cam])
        (root / "info").mkdir(parents=True, exist_ok=True)
        (root / "info" / f"{split}_name.txt").write_text("\n".join(names) + "\n")
        savemat(root / "info" / f"tracks_{split}_info.mat", {f"track_{split}_info": np.array(rows, float)})
    savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.array([[2.0, 4.0, 7.0]])})  # the camera-1 ones
    return root


def fake_lpw(root: Path) -> Path:
    """pep_256x128/scen<S>/view<V>/<pid>/<n>.jpg: scene 1 (test) has views 1-3, scenes 2 and 3 (train) 1-4."""
    layout = {1: {1: [1, 2], 2: [1, 2], 3: [2]}, 2: {1: [1, 4], 4: [4]}, 3: {2: [1], 3: [1, 3]}}
    for scene, views in layout.items():
        for view, pids in views.items():
            for pid in pids:
                folder = root / "pep_256x128" / f"scen{scene}" / f"view{view}" / str(pid)
                folder.mkdir(parents=True)
                for f in (0, 2, 10):  # frame-number order is 0, 2, 10 (not the string order 0, 10, 2)
                    (folder / f"{f}.jpg").write_bytes(b"")
    (root / "pep_256x128" / "scen2" / "view1" / "9").mkdir()  # an empty folder: no tracklet
    (root / "pep_256x128" / "scen2" / "view1" / "Thumbs.db").write_bytes(b"")
    return root


def test_mars_train_and_test_lists_follow_the_track_info(tmp_path):
    root = fake_mars(tmp_path / "MARS")
    train = writers.build_lists("mars", root, "train")
    assert len(train["train_tracklets"]) == 6 and train["train_labels"].shape == (6, 1)
    assert train["train_tracklets"][0] == [f"bbox_train/0001/0001C1T0001F00{f}.jpg" for f in (1, 2, 3)]
    assert train["train_labels"].ravel().tolist() == [0, 0, 1, 1, 2, 2]  # pids 1, 3, 8 -> 0..K-1
    test = writers.build_lists("mars", root, "test")
    assert test["test_labels"].ravel().tolist() == [0, 5, 5, 6, 6, -1, 7, 7]  # junk and distractors kept
    assert test["test_cameras"].ravel().tolist() == [1, 1, 2, 1, 3, 2, 1, 2]
    assert test["test_tracklets"][5] == ["bbox_test/00-1/00-1C2T0006F001.jpg", "bbox_test/00-1/00-1C2T0006F002.jpg"]
    assert writers.build_lists("mars", root, "query")["query_IDX"].tolist() == [[2.0, 4.0, 7.0]]


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_mars_lists_read_back_as_reproduce_reads_them(tmp_path, version, capsys):
    root = fake_mars(tmp_path / "MARS")
    out = tmp_path / "lists"
    out.mkdir()
    for split, name in (("train", "train_data_r.mat"), ("test", "test_data_r.mat"), ("query", "query_IDX.mat")):
        args = ["make-lists", "mars", str(root), str(out / name), "--split", split, "--check-images"]
        assert cli.main(args + (["--v7.3"] if version == "v7.3" else [])) == 0
    assert "train_tracklets 6 x 1 (16 frames)" in capsys.readouterr().out
    train = lists.load_tracklets(out / "train_data_r.mat", "train", data_root=str(root))
    assert train.frames[2][0] == str(root / "bbox_train/0003/0003C1T0003F001.jpg")
    fed = train.frame_list(feed_stored_labels=True)  # MARS feeds its stored labels
    assert len(fed.paths) == 16 and set(fed.labels.tolist()) == {0.0, 1.0, 2.0}
    test = lists.load_tracklets(out / "test_data_r.mat", "test", data_root=str(root))
    assert test.labels.tolist() == [0, 5, 5, 6, 6, -1, 7, 7] and test.cameras.tolist() == [1, 1, 2, 1, 3, 2, 1, 2]
    assert lists.load_query_idx(out / "query_IDX.mat").tolist() == [1, 3, 6]


def test_mars_bad_track_info_is_one_line(tmp_path):
    root = fake_mars(tmp_path / "MARS")
    savemat(root / "info" / "tracks_train_info.mat", {"track_train_info": np.array([[1.0, 99, 1, 1]])})
    with pytest.raises(DataError, match=r"tracks_train_info.mat: row 1 spans frames 1..99, outside the 16 names"):
        writers.build_lists("mars", root, "train")
    savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.array([[0.0, 4.0]])})
    with pytest.raises(DataError, match="query_IDX must index the 8 test tracklets"):
        writers.build_lists("mars", root, "query")
    (root / "info" / "test_name.txt").unlink()
    with pytest.raises(DataError, match="expected info/test_name.txt"):
        writers.build_lists("mars", root, "test")


def test_lpw_train_is_scenes_2_and_3_and_test_puts_the_view_2_probes_first(tmp_path):
    root = fake_lpw(tmp_path)
    train = writers.build_lists("lpw", root, "train")  # ROOT may be pep_256x128's parent
    assert [t[0] for t in train["train_tracklets"]] == [
        "pep_256x128/scen2/view1/1/0.jpg", "pep_256x128/scen2/view1/4/0.jpg", "pep_256x128/scen2/view4/4/0.jpg",
        "pep_256x128/scen3/view2/1/0.jpg", "pep_256x128/scen3/view3/1/0.jpg", "pep_256x128/scen3/view3/3/0.jpg"]
    assert train["train_tracklets"][0][1:] == ["pep_256x128/scen2/view1/1/2.jpg", "pep_256x128/scen2/view1/1/10.jpg"]
    # identities are per scene: (2,1) (2,4) (3,1) (3,3) -> 1..4 (LPW feeds label - 1)
    assert train["train_labels"].ravel().tolist() == [1, 2, 2, 3, 3, 4]
    test = writers.build_lists("lpw", root / "pep_256x128", "test")
    assert test["test_cameras"].ravel().tolist() == [2, 2, 1, 1, 3]
    assert test["test_labels"].ravel().tolist() == [1, 2, 1, 2, 2]
    assert test["test_tracklets"][0][0] == "scen1/view2/1/0.jpg"


def test_lpw_lists_read_back_with_the_fed_labels(tmp_path):
    root = fake_lpw(tmp_path) / "pep_256x128"
    out = tmp_path / "train_data_tracklet_format.mat"
    assert cli.main(["make-lists", "lpw", str(root), str(out), "--v7.3"]) == 0
    train = lists.load_tracklets(out, "train", data_root=str(root))
    fed = train.frame_list(feed_stored_labels=False)
    assert len(fed.paths) == 18 and sorted(set(fed.labels.tolist())) == [0.0, 1.0, 2.0, 3.0]
    assert Path(fed.paths[0]).is_file()


def test_lpw_wrong_root_and_mars_query_split_for_lpw_are_one_line(tmp_path, capsys):
    with pytest.raises(DataError, match="expected scen1/"):
        video_layouts.build_lpw(tmp_path, "train")
    fake_lpw(tmp_path)
    assert cli.main(["make-lists", "lpw", str(tmp_path), str(tmp_path / "x.mat"), "--split", "query"]) == 2
    assert "lpw has splits train and test" in capsys.readouterr().err


def test_reproduce_runs_the_mars_protocol_on_lists_written_by_make_lists(tmp_path, monkeypatch):
    from test_reproduce_video import register_tiny_mars

    root = fake_mars(tmp_path / "MARS", images=True)
    out, nets = tmp_path / "lists", tmp_path / "prototxt"
    out.mkdir()
    for split, name in (("train", "train_data_r.mat"), ("test", "test_data_r.mat"), ("query", "query_IDX.mat")):
        assert cli.main(["make-lists", "mars", str(root), str(out / name), "--split", split]) == 0
    name = "tiny-mars-make-lists"
    weights = register_tiny_mars(monkeypatch, nets, tmp_path, name, "tiny MARS from make-lists")
    code = cli.main(["reproduce", name, "--data-root", str(root), "--lists", str(out), "--weights", str(weights),
                     "--out", str(tmp_path / "run"), "--threads", "1"])
    assert code == 0
    result = json.loads((tmp_path / "run" / "results" / "M_iter_2.json").read_text())
    assert result["_meta"]["tracklets"] == 8 and "mAP" in result
    assert loadmat(out / "query_IDX.mat")["query_IDX"].shape == (1, 3)
