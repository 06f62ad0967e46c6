"""The original .mat image lists (RLL and OSM+CAA), read from MATLAB v5 and v7.3 alike.

``load_image_list(path)`` finds the list variable by its original name and returns an
:class:`ImageList` (paths, optional boxes, ``class_ids`` as in the file, 1-based). Known variables
(SPEC rll §6, SPEC osm §7):

=====================================  =================================================
file                                   variables
=====================================  =================================================
SOP_Train/TestImagePathBoxCell.mat     ``TrainImagePathBoxCell`` / ``TestImagePathBoxCell``, ``class_ids``
InshopClothes_TrainImagePathBoxCell    ``TrainImagePathBoxCell``, ``class_ids``
InshopClothes_EvaImagePathBoxCell      ``TestImagePathBoxCell`` (or ``EvaImagePathBoxCell``: the original
                                       converter's ``save`` names that one, the test script loads the
                                       other; both accepted), ``class_ids``; [query; gallery]
Market1501TrainImagePathBoxCell.mat    ``ImagePathBoxCell``, ``class_ids``
RLL CUB ``CUB_200_2011_*PathBoxCell``  ``CUB_200_2011_TrainImagePathBoxCell`` / ``..._TestImagePathBoxCell``
Market1501_evaluation.mat              ``testID testCAM testImagesCell queryID queryCAM queryImagesCell
                                       multiQueryImagesCell`` -> :func:`load_market_evaluation`
OSM CARS ``train/test_data_cell.mat``  ``train_data_cell`` / ``test_data_cell`` (preprocessed images)
OSM CUB ``CUB_200_2011_*ImageDataCell`` ``CUB_200_2011_TrainImageDataCell`` / ``..._TestImageDataCell``
MARS/LPW tracklets                     ``train_tracklets train_labels`` / ``test_tracklets test_labels
                                       test_cameras`` -> :func:`load_tracklets`
=====================================  =================================================

Cells may be ``N x 1`` (paths) or ``N x 2`` (path, 1x4 box ``[x1 y1 x2 y2]``). Paths are remapped
with ``data_root`` (relative paths are joined to it; absolute paths have their leading directories
replaced, found automatically from the first path, or given as ``strip_prefix``) so the original
authors' symlink trick is never needed. Errors are one line: :class:`~rll_repro.errors.FormatError`
for a file that is not a .mat, :class:`~rll_repro.errors.DataError` for a missing variable (listing
those present), a wrong type or shape, lengths that disagree, missing images (counted, first few named).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Sequence

import numpy as np

from rll_repro.errors import DataError
from rll_repro.matfile import loadmat

PATH_LIST_VARIABLES = (
    "TrainImagePathBoxCell", "TestImagePathBoxCell", "EvaImagePathBoxCell", "ImagePathBoxCell",
    # RLL CUB_V01 (commit ff2a4de4c): train_multiGPUs.m / test_concat.m load these names
    "CUB_200_2011_TrainImagePathBoxCell", "CUB_200_2011_TestImagePathBoxCell",
)
DATA_CELL_VARIABLES = (
    "train_data_cell", "test_data_cell", "CUB_200_2011_TrainImageDataCell", "CUB_200_2011_TestImageDataCell",
)
INSHOP_N_QUERY = 14218
"""In-shop query count of the standard split (the eval list is [14218 query; 12612 gallery])."""


@dataclasses.dataclass
class ImageList:
    """An image list: ``paths`` (or in-memory ``images``), ``class_ids`` (int64, 1-based as stored).

    ``labels`` are the Caffe labels the scripts feed (``class_id - 1``, float32). ``boxes`` is
    ``N x 4`` float64 ``[x1 y1 x2 y2]`` for ``N x 2`` cells, else None. ``n_query`` splits an
    In-shop eval list into query (first ``n_query``) and gallery.
    """

    paths: list[str] | None
    class_ids: np.ndarray
    boxes: np.ndarray | None = None
    images: list[np.ndarray] | None = None
    source: str = ""
    variable: str = ""
    n_query: int | None = None

    def __len__(self) -> int:
        return len(self.class_ids)

    @property
    def labels(self) -> np.ndarray:
        return (self.class_ids - 1).astype(np.float32)

    def query_gallery(self) -> tuple["ImageList", "ImageList"]:
        """(query, gallery) of an In-shop eval list."""
        if self.n_query is None:
            raise DataError(f"{self.source}: {self.variable} has no query/gallery split (n_query unknown)")
        q, g = slice(0, self.n_query), slice(self.n_query, None)
        return self.subset(q), self.subset(g)

    def subset(self, index) -> "ImageList":
        idx = np.arange(len(self))[index]
        return dataclasses.replace(
            self,
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            images=[self.images[i] for i in idx] if self.images is not None else None,
            class_ids=self.class_ids[idx],
            boxes=self.boxes[idx] if self.boxes is not None else None,
            n_query=None,
        )

    def remap(self, data_root: str | os.PathLike | None = None, strip_prefix: str | None = None) -> "ImageList":
        """Paths under ``data_root`` (see :func:`remap_paths`)."""
        if self.paths is None or data_root is None:
            return self
        return dataclasses.replace(self, paths=remap_paths(self.paths, data_root, strip_prefix, self.source))

    def check_images(self, show: int = 5) -> "ImageList":
        """Raise DataError if any path does not exist (count + the first ``show`` missing)."""
        if self.paths is not None:
            check_images_exist(self.paths, self.source or self.variable, show)
        return self


def _parts(path: str) -> tuple[str, ...]:
    if "\\" in path and "/" not in path:
        return PureWindowsPath(path).parts
    return PurePosixPath(path).parts


def remap_paths(paths: Sequence[str], data_root, strip_prefix: str | None = None, source: str = "") -> list[str]:
    """Put ``paths`` under ``data_root``.

    Relative paths are joined to ``data_root``. Absolute paths (the originals hold the authors'
    absolute paths, e.g. ``/home/.../Stanford_Online_Products/bicycle_final/x.JPG``) lose
    ``strip_prefix`` if given; otherwise the number of leading components to drop is found from the
    first path as the fewest for which ``data_root/rest`` exists, and applied to all paths.
    """
    root = Path(data_root)
    if not paths:
        return []
    if strip_prefix is not None:
        prefix = strip_prefix.rstrip("/\\")
        out = []
        for p in paths:
            if not p.startswith(prefix):
                raise DataError(f"{source}: path {p!r} does not start with --strip-prefix {strip_prefix!r}")
            out.append(str(root / p[len(prefix):].lstrip("/\\")))
        return out
    if not _is_absolute(paths[0]):
        return [str(root / p) for p in paths]
    parts = _parts(paths[0])
    drop = None
    for k in range(1, len(parts)):
        if root.joinpath(*parts[k:]).exists():
            drop = k
            break
    if drop is None:
        raise DataError(
            f"{source}: cannot place {paths[0]!r} under data root {str(root)!r}: no trailing part of it "
            f"exists there (give --strip-prefix)"
        )
    return [str(root.joinpath(*_parts(p)[drop:])) for p in paths]


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or (len(path) > 2 and path[1] == ":" and path[2] in "/\\")


def check_images_exist(paths: Sequence[str], source: str = "", show: int = 5) -> None:
    """DataError naming how many of ``paths`` are missing and the first ``show`` of them."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        head = ", ".join(missing[:show]) + (", ..." if len(missing) > show else "")
        raise DataError(f"{source}: {len(missing)} of {len(paths)} images are missing: {head}")


# --------------------------------------------------------------------------------------------
def _read(path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    return loadmat(path)


def _pick(data: dict, path, wanted: Sequence[str], what: str) -> str:
    for name in wanted:
        if name in data:
            return name
    present = ", ".join(sorted(data)) or "none"
    raise DataError(f"{path}: no {what} variable ({' or '.join(wanted)}); variables present: {present}")


def _class_ids(data, path, n: int, name: str = "class_ids") -> np.ndarray:
    if name not in data:
        present = ", ".join(sorted(data)) or "none"
        raise DataError(f"{path}: missing variable {name!r}; variables present: {present}")
    ids = data[name]
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "biuf":
        raise DataError(f"{path}: {name} must be a numeric N x 1 array, got {type(ids).__name__}")
    if ids.ndim != 2 or min(ids.shape) != 1 and ids.size:
        raise DataError(f"{path}: {name} must be N x 1 or 1 x N, got {' x '.join(map(str, ids.shape))}")
    ids = ids.ravel()
    if ids.size != n:
        raise DataError(f"{path}: {name} has {ids.size} entries but the image list has {n}")
    if ids.dtype.kind == "f" and not np.all(np.isfinite(ids) & (ids == np.round(ids))):
        raise DataError(f"{path}: {name} must hold whole numbers")
    return ids.astype(np.int64)


def _path_rows(cells, path, name) -> tuple[list[str], np.ndarray | None]:
    """N x 1 (paths) or N x 2 (path, box) cells -> (paths, boxes or None)."""
    if not isinstance(cells, list):
        raise DataError(f"{path}: {name} must be a cell array of image paths, got {type(cells).__name__}")
    if not cells:
        return [], None
    if all(isinstance(c, str) for c in cells):
        return list(cells), None
    if all(isinstance(c, list) for c in cells):
        widths = {len(c) for c in cells}
        if widths == {1} and all(isinstance(c[0], str) for c in cells):
            return [c[0] for c in cells], None
        if widths == {2}:
            paths, boxes = [], np.zeros((len(cells), 4), dtype=np.float64)
            for i, (p, box) in enumerate(cells):
                if not isinstance(p, str):
                    raise DataError(f"{path}: {name}{{{i + 1},1}} must be a path string, got {type(p).__name__}")
                b = np.asarray(box, dtype=np.float64).ravel() if isinstance(box, np.ndarray) else None
                if b is None or b.size != 4:
                    raise DataError(f"{path}: {name}{{{i + 1},2}} must be a 1x4 box [x1 y1 x2 y2]")
                paths.append(p)
                boxes[i] = b
            return paths, boxes
        raise DataError(f"{path}: {name} must be N x 1 or N x 2 (path, box), got rows of {sorted(widths)} columns")
    bad = next(i for i, c in enumerate(cells) if not isinstance(c, str))
    raise DataError(f"{path}: {name}{{{bad + 1}}} is a {type(cells[bad]).__name__}, expected a path string")


def _query_num(value, path, n_items: int) -> int:
    """``query_num`` (In-shop: the first query_num rows are queries): one whole number in 0..n_items."""
    arr = np.asarray(value) if isinstance(value, np.ndarray) else None
    if arr is None or arr.size != 1 or arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: query_num must be one number, got {_describe(value)}")
    number = arr.ravel()[0]
    if not np.isfinite(number) or number != int(number) or not 0 <= number <= n_items:
        raise DataError(f"{path}: query_num = {number} is not a whole number between 0 and {n_items} (the list's length)")
    return int(number)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def load_image_list(path, variable: str | Sequence[str] | None = None, *, data_root=None,
                    strip_prefix: str | None = None, check: bool = False) -> ImageList:
    """Read an original list (paths or OSM data cells) + ``class_ids``; see the module docstring."""
    data = _read(path)
    wanted = [variable] if isinstance(variable, str) else list(variable or PATH_LIST_VARIABLES + DATA_CELL_VARIABLES)
    name = _pick(data, path, wanted, "image list")
    cells = data[name]
    if name in DATA_CELL_VARIABLES or (isinstance(cells, list) and cells and isinstance(cells[0], np.ndarray)):
        if not isinstance(cells, list) or not all(isinstance(c, np.ndarray) and c.ndim == 3 for c in cells):
            raise DataError(f"{path}: {name} must be a cell of W x H x 3 images")
        ids = _class_ids(data, path, len(cells))
        return ImageList(paths=None, images=cells, class_ids=ids, source=str(path), variable=name)
    paths, boxes = _path_rows(cells, path, name)
    ids = _class_ids(data, path, len(paths))
    n_query = None
    if "query_num" in data:
        n_query = _query_num(data["query_num"], path, len(paths))
    elif name in ("EvaImagePathBoxCell", "TestImagePathBoxCell") and len(paths) == INSHOP_N_QUERY + 12612:
        n_query = INSHOP_N_QUERY
    out = ImageList(paths=paths, class_ids=ids, boxes=boxes, source=str(path), variable=name, n_query=n_query)
    out = out.remap(data_root, strip_prefix)
    return out.check_images() if check else out


def load_sop_train(path, **kw) -> ImageList:
    return load_image_list(path, "TrainImagePathBoxCell", **kw)


def load_sop_test(path, **kw) -> ImageList:
    return load_image_list(path, "TestImagePathBoxCell", **kw)


def load_inshop_train(path, **kw) -> ImageList:
    return load_image_list(path, "TrainImagePathBoxCell", **kw)


def load_inshop_eval(path, **kw) -> ImageList:
    """[query; gallery] list; accepts ``TestImagePathBoxCell`` and the converter's ``EvaImagePathBoxCell``."""
    return load_image_list(path, ["TestImagePathBoxCell", "EvaImagePathBoxCell"], **kw)


def load_market_train(path, **kw) -> ImageList:
    return load_image_list(path, "ImagePathBoxCell", **kw)


def load_osm_data_cell(path, **kw) -> ImageList:
    """OSM CARS/CUB preprocessed data cells (``images`` hold MATLAB W x H x BGR single arrays)."""
    return load_image_list(path, list(DATA_CELL_VARIABLES) + list(PATH_LIST_VARIABLES), **kw)


@dataclasses.dataclass
class MarketEvaluation:
    """``Market1501_evaluation.mat``: gallery (test) and query ids/cameras/paths, multi-query cells."""

    test_paths: list[str]
    test_ids: np.ndarray
    test_cams: np.ndarray
    query_paths: list[str]
    query_ids: np.ndarray
    query_cams: np.ndarray
    multi_query_paths: list[list[str]]
    source: str = ""


MARKET_EVAL_VARIABLES = ("testID", "testCAM", "testImagesCell", "queryID", "queryCAM", "queryImagesCell",
                         "multiQueryImagesCell")


def _vector(data, path, name, n) -> np.ndarray:
    return _class_ids(data, path, n, name)


def load_market_evaluation(path, *, data_root=None, strip_prefix=None, check: bool = False) -> MarketEvaluation:
    data = _read(path)
    missing = [v for v in MARKET_EVAL_VARIABLES if v not in data]
    if missing:
        present = ", ".join(sorted(data)) or "none"
        raise DataError(f"{path}: missing variable(s) {', '.join(missing)}; variables present: {present}")
    test_paths, _ = _path_rows(data["testImagesCell"], path, "testImagesCell")
    query_paths, _ = _path_rows(data["queryImagesCell"], path, "queryImagesCell")
    multi = data["multiQueryImagesCell"]
    if not isinstance(multi, list) or len(multi) != len(query_paths):
        raise DataError(f"{path}: multiQueryImagesCell must be a cell with one cell per query ({len(query_paths)})")
    multi_paths = [_path_rows(m if isinstance(m, list) else [m], path, "multiQueryImagesCell")[0] for m in multi]
    out = MarketEvaluation(
        test_paths=test_paths, test_ids=_vector(data, path, "testID", len(test_paths)),
        test_cams=_vector(data, path, "testCAM", len(test_paths)), query_paths=query_paths,
        query_ids=_vector(data, path, "queryID", len(query_paths)),
        query_cams=_vector(data, path, "queryCAM", len(query_paths)), multi_query_paths=multi_paths,
        source=str(path),
    )
    if data_root is not None:
        out.test_paths = remap_paths(out.test_paths, data_root, strip_prefix, str(path))
        out.query_paths = remap_paths(out.query_paths, data_root, strip_prefix, str(path))
        out.multi_query_paths = [remap_paths(m, data_root, strip_prefix, str(path)) for m in out.multi_query_paths]
    if check:
        check_images_exist(out.test_paths + out.query_paths + [p for m in out.multi_query_paths for p in m], str(path))
    return out


@dataclasses.dataclass
class Tracklets:
    """MARS/LPW tracklet lists: ``frames[i]`` = frame paths of tracklet i; labels; cameras (test only)."""

    frames: list[list[str]]
    labels: np.ndarray
    cameras: np.ndarray | None = None
    source: str = ""

    def frame_list(self, feed_stored_labels: bool) -> ImageList:
        """All frames as one ImageList, in tracklet order (the flat frame index of
        :class:`~rll_repro.data.samplers.TrackletBatchSampler`). MARS feeds its stored labels as they
        are (``feed_stored_labels=True``), LPW feeds ``label - 1`` (False); ``ImageList.labels`` then
        gives the fed value."""
        counts = [len(f) for f in self.frames]
        ids = np.repeat(self.labels, counts) + (1 if feed_stored_labels else 0)
        return ImageList(paths=[p for f in self.frames for p in f], class_ids=ids.astype(np.int64),
                         source=self.source, variable="tracklets")


def load_tracklets(path, split: str | None = None, *, data_root=None, strip_prefix=None) -> Tracklets:
    """``train_data_r.mat`` (``train_tracklets``, ``train_labels``) or ``test_data_r.mat`` (+ ``test_cameras``)."""
    data = _read(path)
    if split is None:
        split = "train" if "train_tracklets" in data else "test"
    name = _pick(data, path, [f"{split}_tracklets"], "tracklet")
    cells = data[name]
    if not isinstance(cells, list):
        raise DataError(f"{path}: {name} must be a cell of frame-path cells")
    frames = []
    for i, t in enumerate(cells):
        t = [t] if isinstance(t, str) else t
        if not isinstance(t, list) or not all(isinstance(p, str) for p in t):
            raise DataError(f"{path}: {name}{{{i + 1}}} must be a cell of frame paths")
        frames.append(remap_paths(t, data_root, strip_prefix, str(path)) if data_root is not None else list(t))
    labels = _class_ids(data, path, len(frames), f"{split}_labels")
    cams = _class_ids(data, path, len(frames), f"{split}_cameras") if f"{split}_cameras" in data else None
    return Tracklets(frames=frames, labels=labels, cameras=cams, source=str(path))


def load_query_idx(path) -> np.ndarray:
    """MARS ``query_IDX.mat`` -> 0-based int64 query tracklet indices."""
    data = _read(path)
    name = _pick(data, path, ["query_IDX"], "query index")
    arr = data[name]
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: query_IDX must be numeric")
    return arr.ravel().astype(np.int64) - 1
