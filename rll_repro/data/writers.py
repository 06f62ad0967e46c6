"""Build the original .mat lists from the standard dataset folder layouts (``rll-repro make-lists``).

================  ==============================================  =====================================
dataset           what ROOT holds                                 splits -> variables
================  ==============================================  =====================================
``cub``           CUB_200_2011: ``images.txt``,                    train (classes 1-100) / test (101-200):
                  ``image_class_labels.txt``,                      ``Train/TestImagePathBoxCell``,
                  ``bounding_boxes.txt``, ``images/``              ``class_ids`` (original ids)
``cars``          Cars196: ``cars_annos.mat`` + ``car_ims/``, or   train (classes 1-98) / test (99-196),
                  ``devkit/cars_{train_annos,test_annos_with       as cub
                  labels}.mat`` + ``cars_train/``, ``cars_test/``
``sop``           Stanford_Online_Products: ``Ebay_train.txt``,    train / test: ``Train/TestImagePath
                  ``Ebay_test.txt``                                BoxCell``, ``class_ids`` relabelled 1..K
``inshop``        In-shop: ``list_eval_partition.txt``, ``img/``   train: ``TrainImagePathBoxCell``;
                                                                  eval: ``TestImagePathBoxCell`` =
                                                                  [query; gallery], ``query_num``
``market``        Market-1501: ``bounding_box_train/``,             train: ``ImagePathBoxCell``;
                  ``bounding_box_test/``, ``query/``, ``gt_bbox/``  evaluation: ``testID testCAM
                                                                  testImagesCell queryID queryCAM
                                                                  queryImagesCell multiQueryImagesCell``
``mars``/``lpw``  tracklet lists (``train/test_tracklets``, ``_labels``, ``test_cameras``; MARS
                  ``query_IDX``): :mod:`rll_repro.data.video_layouts`
================  ==============================================  =====================================

Relabelling (SOP, In-shop, Market) maps the sorted original ids to 1..K, as the original
converters did (In-shop eval jointly over query + gallery). Paths are written relative to ROOT
(give ``data_root`` when loading) unless ``absolute``. ``boxes`` writes ``N x 2`` cells
``{path, [x1 y1 x2 y2]}`` (1-based inclusive pixels; CUB's ``x y w h`` becomes
``[x+1, y+1, x+w, y+h]``). ``osm_data`` (cub/cars) writes the OSM+CAA preprocessed data cells
(``train_data_cell``/``test_data_cell`` for Cars, ``CUB_200_2011_Train/TestImageDataCell`` for CUB)
holding 224 x 224 x 3 single images in MATLAB's W x H x BGR layout. In-shop's ``query_num`` and
every variable name other than the originals' are additions; the loaders accept files without them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from rll_repro.data import video_layouts
from rll_repro.errors import DataError
from rll_repro.matfile import loadmat, savemat

SPLITS = {
    "cub": ("train", "test"), "cars": ("train", "test"), "sop": ("train", "test"),
    "inshop": ("train", "eval"), "market": ("train", "evaluation"),
    "mars": video_layouts.MARS_SPLITS, "lpw": video_layouts.LPW_SPLITS,
}


def _need(root: Path, *names: str) -> Path:
    path = root.joinpath(*names)
    if not path.exists():
        raise DataError(f"{root}: expected {'/'.join(names)} (is ROOT the dataset folder?)")
    return path


def _read_table(path: Path, skip: int = 0) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for k, line in enumerate(handle):
            if k < skip or not line.strip():
                continue
            rows.append(line.split())
    return rows


def relabel(ids) -> np.ndarray:
    """Sorted unique original ids -> 1..K (float64 N x 1, as MATLAB stores it)."""
    ids = np.asarray(ids)
    _, inverse = np.unique(ids, return_inverse=True)
    return (inverse + 1).astype(np.float64).reshape(-1, 1)


def _cell(paths: list[str], boxes: np.ndarray | None):
    if boxes is None:
        return list(paths)
    cell = np.empty((len(paths), 2), dtype=object)
    for i, p in enumerate(paths):
        cell[i, 0], cell[i, 1] = p, np.asarray(boxes[i], dtype=np.float64).reshape(1, 4)
    return cell


def _list_name(split: str) -> str:
    return "TrainImagePathBoxCell" if split == "train" else "TestImagePathBoxCell"


def _paths(root: Path, rel: list[str], absolute: bool) -> list[str]:
    return [str((root / p).resolve()) for p in rel] if absolute else list(rel)


# ---- one reader per layout: returns (relative paths, original class ids, boxes or None) --------
def cub_split(root: Path, split: str):
    images = {r[0]: r[1] for r in _read_table(_need(root, "images.txt"))}
    labels = {r[0]: int(r[1]) for r in _read_table(_need(root, "image_class_labels.txt"))}
    bbox_file = root / "bounding_boxes.txt"
    boxes = {r[0]: [float(v) for v in r[1:5]] for r in _read_table(bbox_file)} if bbox_file.exists() else {}
    keep = [k for k in images if (labels[k] <= 100) == (split == "train")]
    rel = [f"images/{images[k]}" for k in keep]
    ids = np.array([labels[k] for k in keep])
    box = None
    if boxes:
        box = np.array([[b[0] + 1, b[1] + 1, b[0] + b[2], b[1] + b[3]] for b in (boxes[k] for k in keep)])
    return rel, ids, box


def _scalar(v) -> float:
    return float(np.asarray(v).ravel()[0])


def _cars_records(path: Path, folder: str) -> list[tuple]:
    """(relative path, class, x1, y1, x2, y2) per annotation of cars_annos.mat or a devkit file."""
    records = []
    for a in _as_list(loadmat(path).get("annotations"), path):
        if "class" not in a:
            raise DataError(f"{path}: annotations have no class field (use cars_test_annos_withlabels.mat)")
        rel = a["relative_im_path"] if "relative_im_path" in a else f"{folder}/{a.get('fname', '')}"
        records.append((rel, int(_scalar(a["class"])),
                        *(_scalar(a[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))))
    return records


def cars_split(root: Path, split: str, annotations: Path | None = None):
    if annotations is not None:
        name = Path(annotations).name
        records = _cars_records(Path(annotations), "cars_test" if "test" in name else "cars_train")
    elif (root / "cars_annos.mat").exists():
        records = _cars_records(root / "cars_annos.mat", "car_ims")
    else:
        devkit = root / "devkit"
        if not (devkit / "cars_train_annos.mat").exists():
            raise DataError(f"{root}: expected cars_annos.mat or devkit/cars_train_annos.mat")
        records = _cars_records(devkit / "cars_train_annos.mat", "cars_train")
        if (devkit / "cars_test_annos_withlabels.mat").exists():
            records += _cars_records(devkit / "cars_test_annos_withlabels.mat", "cars_test")
    keep = [r for r in records if (r[1] <= 98) == (split == "train")]
    return [r[0] for r in keep], np.array([r[1] for r in keep]), np.array([r[2:] for r in keep], dtype=np.float64)


def _as_list(annotations, path) -> list[dict]:
    if isinstance(annotations, dict):
        return [annotations]
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise DataError(f"{path}: expected an 'annotations' struct array")
    return annotations


def sop_split(root: Path, split: str):
    rows = _read_table(_need(root, "Ebay_train.txt" if split == "train" else "Ebay_test.txt"), skip=1)
    return [r[3] for r in rows], np.array([int(r[1]) for r in rows]), None


def inshop_split(root: Path, split: str):
    rows = _read_table(_need(root, "list_eval_partition.txt"), skip=2)
    if split == "train":
        keep = [r for r in rows if r[2] == "train"]
        return [r[0] for r in keep], np.array([r[1] for r in keep]), None
    query = [r for r in rows if r[2] == "query"]
    gallery = [r for r in rows if r[2] == "gallery"]
    keep = query + gallery
    return [r[0] for r in keep], np.array([r[1] for r in keep]), len(query)


MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def market_folder(root: Path, folder: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sorted ``*.jpg`` of one Market folder (MATLAB ``dir`` order) with person id and camera."""
    path = _need(root, folder)
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(".jpg"))
    ids, cams = [], []
    for n in names:
        m = MARKET_NAME.match(n)
        if not m:
            raise DataError(f"{path / n}: not a Market-1501 file name (PPPP_cC...)")
        ids.append(int(m.group(1)))
        cams.append(int(m.group(2)))
    return [f"{folder}/{n}" for n in names], np.array(ids), np.array(cams)


# ---- variables of each output file ----------------------------------------------------------
def build_lists(dataset: str, root, split: str, *, absolute: bool = False, boxes: bool = False,
                annotations=None) -> dict[str, Any]:
    """The variables of one output .mat file (see the module docstring)."""
    root = Path(root)
    if dataset not in SPLITS:
        raise DataError(f"unknown dataset {dataset!r} (one of {', '.join(SPLITS)})")
    if split not in SPLITS[dataset]:
        raise DataError(f"{dataset} has splits {' and '.join(SPLITS[dataset])}, not {split!r}")
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder does not exist")
    if dataset in ("cub", "cars"):
        rel, ids, box = cub_split(root, split) if dataset == "cub" else cars_split(
            root, split, Path(annotations) if annotations else None)
        if boxes and box is None:
            raise DataError(f"{root}: no bounding boxes found for --boxes")
        return {_list_name(split): _cell(_paths(root, rel, absolute), box if boxes else None),
                "class_ids": ids.astype(np.float64).reshape(-1, 1)}
    if boxes:
        raise DataError(f"{dataset} lists have no boxes (--boxes is for cub and cars)")
    if dataset in ("mars", "lpw"):
        build = video_layouts.build_mars if dataset == "mars" else video_layouts.build_lpw
        return build(root, split, absolute=absolute)
    if dataset == "sop":
        rel, ids, _ = sop_split(root, split)
        return {_list_name(split): _paths(root, rel, absolute), "class_ids": relabel(ids)}
    if dataset == "inshop":
        rel, ids, n_query = inshop_split(root, split)
        out = {_list_name(split): _paths(root, rel, absolute), "class_ids": relabel(ids)}
        if split == "eval":
            out["query_num"] = float(n_query)
        return out
    if split == "train":
        rel, ids, _ = market_folder(root, "bounding_box_train")
        return {"ImagePathBoxCell": _paths(root, rel, absolute), "class_ids": relabel(ids)}
    test, test_ids, test_cams = market_folder(root, "bounding_box_test")
    query, query_ids, query_cams = market_folder(root, "query")
    multi: list[list[str]] = [[] for _ in query]
    if (root / "gt_bbox").is_dir():
        gt, gt_ids, gt_cams = market_folder(root, "gt_bbox")
        for i, (pid, cam) in enumerate(zip(query_ids, query_cams)):
            multi[i] = _paths(root, [g for g, gi, gc in zip(gt, gt_ids, gt_cams) if gi == pid and gc == cam], absolute)
    return {
        "testID": test_ids.astype(np.float64).reshape(-1, 1), "testCAM": test_cams.astype(np.float64).reshape(-1, 1),
        "testImagesCell": _paths(root, test, absolute),
        "queryID": query_ids.astype(np.float64).reshape(-1, 1), "queryCAM": query_cams.astype(np.float64).reshape(-1, 1),
        "queryImagesCell": _paths(root, query, absolute), "multiQueryImagesCell": multi,
    }


OSM_DATA_NAMES = {
    ("cars", "train"): "train_data_cell", ("cars", "test"): "test_data_cell",
    ("cub", "train"): "CUB_200_2011_TrainImageDataCell", ("cub", "test"): "CUB_200_2011_TestImageDataCell",
}


def build_osm_data_cell(dataset: str, root, split: str, *, boxes: bool = False, annotations=None) -> dict[str, Any]:
    """OSM+CAA offline-preprocessed data cell (224 x 224 x 3 single, W x H x BGR, mean-subtracted)."""
    from rll_repro.data.loader import read_image_rgb
    from rll_repro.data.transforms import chw_to_osm_cell, osm_offline_transform
    from rll_repro.progress import Progress

    if (dataset, split) not in OSM_DATA_NAMES:
        raise DataError("--osm-data is for cub and cars (train or test)")
    root = Path(root)
    lists = build_lists(dataset, root, split, boxes=boxes, annotations=annotations)
    cell = lists[_list_name(split)]
    rows = [(cell[i, 0], cell[i, 1]) for i in range(cell.shape[0])] if isinstance(cell, np.ndarray) else [(p, None) for p in cell]
    images = []
    with Progress(len(rows), f"preprocess {dataset} {split}") as bar:
        for rel, box in rows:
            images.append(chw_to_osm_cell(osm_offline_transform(read_image_rgb(str(root / rel)), box=box)))
            bar.update()
    return {OSM_DATA_NAMES[(dataset, split)]: images, "class_ids": lists["class_ids"]}


def write_lists(dataset: str, root, out, split: str = "train", *, version: str = "v5", absolute: bool = False,
                boxes: bool = False, osm_data: bool = False, check_images: bool = False,
                annotations=None) -> dict[str, Any]:
    """Build and write one list file; returns the variables written."""
    if osm_data:
        variables = build_osm_data_cell(dataset, root, split, boxes=boxes, annotations=annotations)
    else:
        variables = build_lists(dataset, root, split, absolute=absolute, boxes=boxes, annotations=annotations)
    if check_images and not osm_data:
        from rll_repro.data.lists import check_images_exist

        paths = []
        for name, value in variables.items():
            if isinstance(value, np.ndarray) and value.dtype == object:
                paths += [value[i, 0] for i in range(value.shape[0])]
            elif isinstance(value, list):
                paths += [p for v in value for p in (v if isinstance(v, list) else [v])]
        check_images_exist([p if os.path.isabs(p) else str(Path(root) / p) for p in paths], str(root))
    savemat(out, variables, version=version)
    return variables
