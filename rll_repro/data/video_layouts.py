"""MARS and LPW tracklet lists from the datasets' standard folders (``rll-repro make-lists mars|lpw``).

The OSM+CAA scripts read (SPEC osm §7) ``train_data_r.mat`` (``train_tracklets``: a cell of
frame-path cells, ``train_labels``), ``test_data_r.mat`` (``test_tracklets``, ``test_labels``,
``test_cameras``) and, for MARS, ``query_IDX.mat`` (``query_IDX``); LPW's
``train_data_tracklet_format.mat`` / ``test_data_tracklet_format.mat`` hold the same variables.
:func:`rll_repro.data.lists.load_tracklets` reads them back.

MARS (ROOT = the MARS folder): ``bbox_train/PPPP/<name>.jpg``, ``bbox_test/PPPP/<name>.jpg`` and the
evaluation kit's ``info/``: ``train_name.txt`` / ``test_name.txt`` (one frame name per line),
``tracks_train_info.mat`` / ``tracks_test_info.mat`` (``track_train_info`` / ``track_test_info``:
one row per tracklet ``[first last pid camera]``, 1-based rows of the name list) and
``query_IDX.mat`` (1-based test-tracklet indices of the 1,980 queries). A frame ``<name>`` lives in
``bbox_<split>/<first 4 characters of name>/``. Train labels are the sorted person ids relabelled
0..K-1 (625 classes): MARS feeds its stored labels as they are into a 625-way classifier (SPEC osm
§9). Test labels are the person ids as the kit gives them (0 = junk, -1 = distractor, which the MARS
protocol needs), cameras its camera ids; ``query`` writes ``query_IDX`` (1 x Q, 1-based, checked
against the test tracklets).

LPW (ROOT = ``pep_256x128``, or its parent): ``scen<S>/view<V>/<pid>/<frame number>.jpg``, one
tracklet per ``(scene, view, pid)`` folder, identities per scene. Standard split: train = scenes 2
and 3 (1,975 identities, labels 1..K over the sorted ``(scene, pid)``: LPW feeds ``label - 1``),
test = scene 1 with the view-2 tracklets FIRST (the 756 probes the protocol takes as the first test
tracklets), then the other views as gallery; test labels are the scene-1 person ids, cameras the
view numbers. Frames are in frame-number order; folders without frames are skipped.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from rll_repro.errors import DataError
from rll_repro.matfile import loadmat

MARS_SPLITS = ("train", "test", "query")
LPW_SPLITS = ("train", "test")
LPW_TRAIN_SCENES = (2, 3)
LPW_TEST_SCENE, LPW_PROBE_VIEW = 1, 2
_FRAME_NAME = re.compile(r"^(\d+)\.(jpe?g|png)$", re.IGNORECASE)
_NUMBERED = re.compile(r"^(scen|view)?(\d+)$")


def _column(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def _paths(root: Path, rel: list[str], absolute: bool) -> list[str]:
    return [str((root / p).resolve()) for p in rel] if absolute else rel


# ------------------------------------------------------------------------------------------ MARS
def _info(root: Path, name: str) -> Path:
    path = root / "info" / name
    if not path.is_file():
        raise DataError(f"{root}: expected info/{name} (ROOT is the MARS folder holding bbox_train/, "
                        "bbox_test/ and the evaluation kit's info/)")
    return path


def _mat_variable(path: Path, name: str) -> np.ndarray:
    """``name`` from a .mat file, or its only numeric variable (MATLAB's ``importdata``)."""
    data = loadmat(path)
    if name not in data:
        numeric = [k for k, v in data.items() if isinstance(v, np.ndarray) and v.dtype.kind in "iuf"]
        if len(numeric) != 1:
            raise DataError(f"{path}: no variable {name} (has {', '.join(sorted(data)) or 'none'})")
        name = numeric[0]
    value = data[name]
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
        raise DataError(f"{path}: {name} must be a numeric matrix")
    if value.size and not np.array_equal(value, np.round(value)):
        raise DataError(f"{path}: {name} must hold integers")
    return value


def _mars_names(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def mars_tracks(root: Path, split: str) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """(frame paths relative to ROOT per tracklet, person ids, cameras) of MARS ``train`` or ``test``."""
    folder = f"bbox_{split}"
    if not (root / folder).is_dir():
        raise DataError(f"{root}: expected {folder}/ (is ROOT the MARS folder?)")
    names_path, info_path = _info(root, f"{split}_name.txt"), _info(root, f"tracks_{split}_info.mat")
    names = _mars_names(names_path)
    info = _mat_variable(info_path, f"track_{split}_info")
    if info.ndim != 2 or info.shape[1] < 4:
        raise DataError(f"{info_path}: expected one row [first last pid camera] per tracklet, got shape {info.shape}")
    info = info.astype(np.int64)
    first, last = info[:, 0], info[:, 1]
    bad = np.flatnonzero((first < 1) | (last < first) | (last > len(names)))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{info_path}: row {k + 1} spans frames {first[k]}..{last[k]}, outside the "
                        f"{len(names)} names of {names_path.name}")
    frames = [[f"{folder}/{n[:4]}/{n}" for n in names[a - 1:b]] for a, b in zip(first, last)]
    return frames, info[:, 2], info[:, 3]


def build_mars(root, split: str, *, absolute: bool = False) -> dict[str, Any]:
    """The variables of ``train_data_r.mat``, ``test_data_r.mat`` or ``query_IDX.mat``."""
    root = Path(root)
    if split == "query":
        n_test = len(mars_tracks(root, "test")[0])
        path = _info(root, "query_IDX.mat")
        idx = _mat_variable(path, "query_IDX").ravel()
        if idx.size == 0 or idx.min() < 1 or idx.max() > n_test:
            raise DataError(f"{path}: query_IDX must index the {n_test} test tracklets (1-based)")
        return {"query_IDX": idx.astype(np.float64).reshape(1, -1)}
    frames, pids, cams = mars_tracks(root, split)
    frames = [_paths(root, f, absolute) for f in frames]
    if split == "train":
        _, labels = np.unique(pids, return_inverse=True)
        return {"train_tracklets": frames, "train_labels": _column(labels)}
    return {"test_tracklets": frames, "test_labels": _column(pids), "test_cameras": _column(cams)}


# ------------------------------------------------------------------------------------------- LPW
def _numbered_dirs(path: Path, prefix: str) -> list[tuple[int, str]]:
    """Sub-folders ``<prefix><n>`` of ``path`` as (n, name), by n."""
    out = []
    for name in os.listdir(path):
        m = _NUMBERED.match(name)
        if m and (m.group(1) or "") == prefix and (path / name).is_dir():
            out.append((int(m.group(2)), name))
    return sorted(out)


def _lpw_root(root: Path) -> Path:
    if not (root / "scen1").is_dir() and (root / "pep_256x128" / "scen1").is_dir():
        root = root / "pep_256x128"
    if not (root / "scen1").is_dir():
        raise DataError(f"{root}: expected scen1/, scen2/, scen3/ (ROOT is LPW's pep_256x128 folder)")
    return root


def lpw_tracks(root: Path, scene: int) -> list[tuple[int, int, list[str]]]:
    """(view, pid, frame paths relative to ROOT) of every tracklet of one scene, by view then pid."""
    scene_dir = root / f"scen{scene}"
    if not scene_dir.is_dir():
        raise DataError(f"{root}: expected scen{scene}/ (LPW's standard layout)")
    tracks = []
    for view, view_name in _numbered_dirs(scene_dir, "view"):
        for pid, pid_name in _numbered_dirs(scene_dir / view_name, ""):
            rel = f"scen{scene}/{view_name}/{pid_name}"
            found = [(int(m.group(1)), n) for n in os.listdir(root / rel) if (m := _FRAME_NAME.match(n))]
            if found:
                tracks.append((view, pid, [f"{rel}/{n}" for _, n in sorted(found)]))
    if not tracks:
        raise DataError(f"{scene_dir}: no view<V>/<pid>/<frame>.jpg tracklets")
    return tracks


def build_lpw(root, split: str, *, absolute: bool = False) -> dict[str, Any]:
    """The variables of ``train_data_tracklet_format.mat`` or ``test_data_tracklet_format.mat``."""
    given = Path(root)
    root = _lpw_root(given)
    prefix = root.relative_to(given)

    def paths(rel: list[str]) -> list[str]:
        return _paths(given, [str(prefix / p) if str(prefix) != "." else p for p in rel], absolute)

    if split == "train":
        tracks = [(scene, pid, frames) for scene in LPW_TRAIN_SCENES for _, pid, frames in lpw_tracks(root, scene)]
        identities = sorted({(scene, pid) for scene, pid, _ in tracks})
        label = {key: k + 1 for k, key in enumerate(identities)}
        return {"train_tracklets": [paths(f) for _, _, f in tracks],
                "train_labels": _column([label[(s, p)] for s, p, _ in tracks])}
    tracks = lpw_tracks(root, LPW_TEST_SCENE)
    tracks = [t for t in tracks if t[0] == LPW_PROBE_VIEW] + [t for t in tracks if t[0] != LPW_PROBE_VIEW]
    return {"test_tracklets": [paths(f) for _, _, f in tracks], "test_labels": _column([p for _, p, _ in tracks]),
            "test_cameras": _column([v for v, _, _ in tracks])}
