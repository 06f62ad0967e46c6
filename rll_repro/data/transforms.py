"""The original MATLAB preprocessing, as numpy ops producing Caffe's CHW float32 BGR mean-subtracted input.

Every transform takes an RGB ``uint8`` (or float) image ``H x W x 3`` (or ``H x W`` grey, which is
replicated to 3 channels as the scripts do) and a ``numpy.random.Generator`` standing in for
MATLAB's global ``rand`` stream, and returns ``3 x rows x cols`` float32 (BGR order, means
B 104, G 117, R 123 subtracted, no std scaling; rows are image rows, i.e. what Caffe sees after the
scripts' W/H transpose). ``rng.random()`` is MATLAB's ``rand``; the draw order of each transform is
the order of its MATLAB script (named in each docstring). Bit-exact MATLAB random numbers are not
attempted (SPEC rll §4.2).

* :class:`RLLTrainTransform` — SOP/In-shop training (``process_ori_image_aug_v04_21042020``):
  resize 256x256, random size (``r`` then ``s``), flip with p 0.5 (the ``flip_prob`` argument is
  ignored), random crop whose last valid offset is never used, resize to 227x227.
* :func:`rll_test_transform` — RLL test: resize 256x256, center crop 0-based rows/cols 14..240.
* :class:`MarketTrainTransform` / :func:`market_test_transform` — ``process_ori_image_aug_v03``.
* :func:`osm_offline_transform` — OSM+CAA offline 224 pipeline (``process_image.m`` /
  ``process_box_image_v2.m``), optional 1-based inclusive bbox crop.
"""
from __future__ import annotations

import math

import numpy as np

from rll_repro.data.resize import imresize
from rll_repro.errors import DataError

MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
"""Per-channel means subtracted after RGB -> BGR (B 104, G 117, R 123)."""

RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)
"""MATLAB ``rgb2gray`` coefficients (rounded result for uint8 input)."""


def as_rgb(image: np.ndarray) -> np.ndarray:
    """HxW grey -> HxWx3 by replication (the scripts' ``cat(3, I, I, I)``); HxWx3 passes through."""
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    raise DataError(f"expected an HxW or HxWx3 image, got shape {image.shape}")


def to_caffe(image_rgb: np.ndarray) -> np.ndarray:
    """RGB HxWx3 float -> BGR, minus MEAN_BGR, -> 3xHxW float32 (Caffe's CHW)."""
    bgr = np.asarray(image_rgb, dtype=np.float32)[:, :, ::-1] - MEAN_BGR
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


def random_size_params(rng: np.random.Generator, size: int = 256, scale=(0.5, 1.0),
                       ratio=(3 / 4, 4 / 3)) -> tuple[int, int]:
    """Crop height/width of ``process_ori_image_aug_v04_21042020`` (draws r, then s)."""
    r = ratio[0] + (ratio[1] - ratio[0]) * rng.random()
    s = scale[0] + (scale[1] - scale[0]) * rng.random()
    h, w = math.floor(size * s * r), math.floor(size * s)
    if h >= size:
        h, w = size - 1, math.floor((size - 1) / r)
    if w >= size:
        w, h = size - 1, math.floor((size - 1) * r)
    return h, w


def random_crop_offset(rng: np.random.Generator, length: int, crop: int) -> int:
    """0-based start of ``img_random_crop``: 1-based ``ceil(rand * (length - crop))``.

    So offsets run over 0 .. length - crop - 1 and the last valid one (length - crop) is never
    used (SPEC rll §0.9). ``rand`` = 0 exactly (probability 2^-53) would make MATLAB index 0; we
    use offset 0 then. When length == crop the only offset is 0.
    """
    return max(math.ceil(rng.random() * (length - crop)), 1) - 1


def center_offset(length: int, crop: int) -> int:
    """0-based start of the test center crop: 1-based ``ceil(0.5 * (length - crop))`` (256/227 -> 14)."""
    return max(math.ceil(0.5 * (length - crop)), 1) - 1


class RLLTrainTransform:
    """SOP / In-shop training augmentation (``process_ori_image_aug_v04_21042020``, istrain = true).

    Draw order (MATLAB ``rand``): r, s, flip, top, left. ``flip_prob`` is accepted and ignored
    (the script hard-codes 0.5).
    """

    def __init__(self, size: int = 256, crop: int = 227, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                 flip_prob: float = 0.5):
        self.size, self.crop, self.scale, self.ratio = size, crop, tuple(scale), tuple(ratio)
        self.flip_prob = flip_prob  # ignored on purpose: the original ignores it too

    def params(self, rng: np.random.Generator) -> dict:
        h, w = random_size_params(rng, self.size, self.scale, self.ratio)
        flip = rng.random() < 0.5
        top = random_crop_offset(rng, self.size, h)
        left = random_crop_offset(rng, self.size, w)
        return {"h": h, "w": w, "flip": bool(flip), "top": top, "left": left}

    def apply(self, image: np.ndarray, params: dict) -> np.ndarray:
        img = imresize(as_rgb(image), (self.size, self.size))
        if params["flip"]:
            img = img[:, ::-1]
        t, l = params["top"], params["left"]
        img = img[t:t + params["h"], l:l + params["w"]]
        return to_caffe(imresize(img, (self.crop, self.crop)))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.params(rng))


def rll_test_transform(image: np.ndarray, rng=None, size: int = 256, crop: int = 227) -> np.ndarray:
    """RLL test: resize to 256x256, center crop 227 (0-based rows/cols 14..240), BGR, means."""
    img = imresize(as_rgb(image), (size, size))
    o = center_offset(size, crop)
    return to_caffe(img[o:o + crop, o:o + crop])


def market_foreground_box(image_rgb: np.ndarray, padding: int = 15) -> tuple[int, int, int, int]:
    """0-based inclusive (top, bottom, left, right) of grey pixels < 250, expanded by ``padding``, clipped."""
    img = np.asarray(image_rgb)
    if img.dtype == np.uint8:
        grey = np.rint(img[..., 0] * RGB2GRAY[0] + img[..., 1] * RGB2GRAY[1] + img[..., 2] * RGB2GRAY[2])
    else:
        grey = img[..., 0] * RGB2GRAY[0] + img[..., 1] * RGB2GRAY[1] + img[..., 2] * RGB2GRAY[2]
    rows = np.flatnonzero((grey < 250).any(axis=1))
    cols = np.flatnonzero((grey < 250).any(axis=0))
    H, W = grey.shape
    if rows.size == 0:
        return 0, H - 1, 0, W - 1
    return (max(rows[0] - padding, 0), min(rows[-1] + padding, H - 1),
            max(cols[0] - padding, 0), min(cols[-1] + padding, W - 1))


def market_square(image: np.ndarray, size: int = 256, padding: int = 15) -> np.ndarray:
    """Market steps before the random part: foreground crop, long side to ``size``, pad with 255 to square.

    The short side is ``ceil(scale * n)`` (MATLAB ``imresize(I, [256 NaN])``); padding puts
    ``floor(half)`` before and the rest after.
    """
    img = as_rgb(image)
    t, b, l, r = market_foreground_box(img, padding)
    img = img[t:b + 1, l:r + 1]
    H, W = img.shape[:2]
    img = imresize(img, (size, None) if H >= W else (None, size))
    H, W = img.shape[:2]
    out = np.full((size, size, 3), 255.0, dtype=np.float32)
    top, left = (size - H) // 2, (size - W) // 2
    out[top:top + H, left:left + W] = img[:size, :size]
    return out


class MarketTrainTransform:
    """Market-1501 training (``process_ori_image_aug_v03``): draw order flip, top, left; crop 227 of 256."""

    def __init__(self, size: int = 256, crop: int = 227, padding: int = 15):
        self.size, self.crop, self.padding = size, crop, padding

    def params(self, rng: np.random.Generator) -> dict:
        flip = rng.random() < 0.5
        top = random_crop_offset(rng, self.size, self.crop)
        left = random_crop_offset(rng, self.size, self.crop)
        return {"flip": bool(flip), "top": top, "left": left}

    def apply(self, image: np.ndarray, params: dict) -> np.ndarray:
        img = market_square(image, self.size, self.padding)
        if params["flip"]:
            img = img[:, ::-1]
        t, l = params["top"], params["left"]
        return to_caffe(img[t:t + self.crop, l:l + self.crop])

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.params(rng))


def market_test_transform(image: np.ndarray, rng=None, size: int = 256, crop: int = 227) -> np.ndarray:
    """Market test: the same square image, center crop 227 (0-based 14..240)."""
    img = market_square(image, size)
    o = center_offset(size, crop)
    return to_caffe(img[o:o + crop, o:o + crop])


def osm_offline_transform(image: np.ndarray, rng=None, box=None, size: int = 224) -> np.ndarray:
    """OSM+CAA offline pipeline: optional bbox crop (1-based inclusive x1 y1 x2 y2), resize 224x224, BGR, means.

    Matches ``process_image.m`` / ``process_box_image_v2.m``: no random part, aspect ratio not kept,
    output not clamped.
    """
    img = as_rgb(image)
    if box is not None:
        x1, y1, x2, y2 = (int(round(float(v))) for v in np.asarray(box).ravel()[:4])
        H, W = img.shape[:2]
        x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, W), min(y2, H)
        if x2 < x1 or y2 < y1:
            raise DataError(f"bounding box {list(np.asarray(box).ravel())} is empty for an image of {W}x{H}")
        img = img[y1 - 1:y2, x1 - 1:x2]
    return to_caffe(imresize(img, (size, size)))


def osm_cell_to_chw(cell_image: np.ndarray) -> np.ndarray:
    """An original OSM data-cell entry (MATLAB W x H x BGR, mean-subtracted single) -> 3 x H x W float32."""
    arr = np.asarray(cell_image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"OSM data cell entries must be W x H x 3, got shape {arr.shape}")
    return np.ascontiguousarray(arr.transpose(2, 1, 0))


def chw_to_osm_cell(chw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`osm_cell_to_chw` (what the MATLAB scripts stored)."""
    return np.ascontiguousarray(np.asarray(chw, dtype=np.float32).transpose(2, 1, 0))
