"""The original preprocessing: random-size crop rules, center crops, BGR means, Market and OSM pipelines."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rll_repro.data import imresize
from rll_repro.data.transforms import (
    MEAN_BGR, MarketTrainTransform, RLLTrainTransform, center_offset, market_foreground_box, market_square,
    market_test_transform, osm_offline_transform, random_crop_offset, random_size_params, rll_test_transform,
    to_caffe,
)


class Rand:
    """A stand-in for MATLAB's rand stream returning the given numbers in order."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def image(h=40, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def test_random_size_draws_ratio_then_scale_and_floors():
    # r = 3/4 + (4/3 - 3/4) * 0.25, s = 0.5 + 0.5 * 0.5
    r, s = 0.75 + (4 / 3 - 0.75) * 0.25, 0.75
    assert random_size_params(Rand(0.25, 0.5)) == (math.floor(256 * s * r), math.floor(256 * s))


def test_random_size_caps_at_255():
    # r = 3/4 + 7/12 * 0.5 = 1.0417, s = 1: h = 266 >= 256 -> h = 255, w = floor(255 / r)
    r = 0.75 + (4 / 3 - 0.75) * 0.5
    assert random_size_params(Rand(0.5, 1.0)) == (255, math.floor(255 / r))
    # r < 1, s = 1: w = 256 >= 256 -> w = 255, h = floor(255 * r)
    r = 0.75 + (4 / 3 - 0.75) * 0.1
    assert random_size_params(Rand(0.1, 1.0)) == (math.floor(255 * r), 255)


def test_random_crop_never_uses_the_last_valid_offset():
    """1-based ceil(U * (256 - h)): 0-based offsets 0 .. 256 - h - 1."""
    assert random_crop_offset(Rand(0.9999999), 256, 200) == 55
    assert random_crop_offset(Rand(1e-9), 256, 200) == 0
    offsets = {random_crop_offset(np.random.default_rng(k), 256, 250) for k in range(300)}
    assert offsets == {0, 1, 2, 3, 4, 5}  # 6 = 256 - 250 never


def test_center_crop_is_0_based_14_to_240():
    assert center_offset(256, 227) == 14
    img = np.arange(256 * 256 * 3, dtype=np.float64).reshape(256, 256, 3)
    out = rll_test_transform(img)
    assert out.shape == (3, 227, 227)
    assert out[0, 0, 0] == np.float32(img[14, 14, 2] - 104) and out[2, -1, -1] == np.float32(img[240, 240, 0] - 123)


def test_rgb_to_bgr_and_means_in_chw():
    img = np.zeros((2, 3, 3), dtype=np.float32)
    img[..., 0], img[..., 1], img[..., 2] = 200, 100, 50  # R G B
    out = to_caffe(img)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    assert out[:, 0, 0].tolist() == [50 - 104, 100 - 117, 200 - 123]
    assert MEAN_BGR.tolist() == [104, 117, 123]


def test_rll_train_draw_order_and_composition():
    """rand order r, s, flip, top, left; flip the 256 image, then crop, then resize to 227."""
    img = image(300, 200)
    t = RLLTrainTransform()
    p = t.params(Rand(0.25, 0.5, 0.3, 0.5, 0.5))
    h, w = random_size_params(Rand(0.25, 0.5))
    assert (p["h"], p["w"], p["flip"]) == (h, w, True)
    assert p["top"] == math.ceil(0.5 * (256 - h)) - 1 and p["left"] == math.ceil(0.5 * (256 - w)) - 1
    out = t.apply(img, p)
    big = imresize(img, (256, 256))[:, ::-1]
    manual = to_caffe(imresize(big[p["top"]:p["top"] + h, p["left"]:p["left"] + w], (227, 227)))
    assert out.shape == (3, 227, 227) and np.array_equal(out, manual)


def test_flip_prob_argument_is_ignored():
    """The script hard-codes 0.5: flip_prob=0 still flips when rand < 0.5."""
    assert RLLTrainTransform(flip_prob=0.0).params(Rand(0.5, 0.5, 0.49, 0.5, 0.5))["flip"] is True
    assert RLLTrainTransform(flip_prob=1.0).params(Rand(0.5, 0.5, 0.51, 0.5, 0.5))["flip"] is False


def test_grey_images_are_replicated_to_three_channels():
    grey = np.random.default_rng(1).integers(0, 256, (50, 60)).astype(np.uint8)
    out = rll_test_transform(grey)
    # float32 (x - 104) + 104 may differ from x in the last bit: 1e-4 at values up to ~255
    assert np.allclose(out[0] + 104, out[1] + 117, atol=1e-4, rtol=0)
    assert np.allclose(out[1] + 117, out[2] + 123, atol=1e-4, rtol=0)


def test_output_is_not_clamped():
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[:, 32:] = 255
    out = rll_test_transform(img)
    assert (out[0] + 104).max() > 255


def test_market_foreground_box_expands_by_15_and_clips():
    img = np.full((128, 64, 3), 255, dtype=np.uint8)
    img[40:60, 20:30] = 10
    assert market_foreground_box(img) == (25, 74, 5, 44)
    img[0, 0] = 0
    assert market_foreground_box(img)[0] == 0 and market_foreground_box(img)[2] == 0


def test_market_square_keeps_aspect_and_pads_with_255():
    img = np.full((128, 64, 3), 30, dtype=np.uint8)  # all foreground: no crop
    sq = market_square(img)
    assert sq.shape == (256, 256, 3)
    # long side 256 -> short side ceil(2 * 64) = 128; pad floor(128 / 2) = 64 before
    assert (sq[:, :64] == 255).all() and (sq[:, 192:] == 255).all() and np.allclose(sq[:, 64:192], 30, atol=1e-3)
    odd = market_square(np.full((100, 33, 3), 30, dtype=np.uint8))
    width = math.ceil(256 / 100 * 33)  # 85, pad 171 -> 85 before, 86 after
    assert (odd[:, :85] == 255).all() and (odd[:, 85 + width:] == 255).all() and np.allclose(odd[:, 85], 30, atol=1e-3)


def test_market_train_and_test():
    img = image(128, 64)
    t = MarketTrainTransform()
    p = t.params(Rand(0.7, 0.5, 0.5))
    assert p == {"flip": False, "top": math.ceil(0.5 * 29) - 1, "left": math.ceil(0.5 * 29) - 1}
    out = t.apply(img, p)
    assert out.shape == (3, 227, 227)
    assert np.array_equal(out, market_test_transform(img))  # offset 14 both ways


def test_osm_offline_224_with_one_based_inclusive_box():
    img = image(50, 40)
    out = osm_offline_transform(img, box=[3, 5, 20, 30])  # x1 y1 x2 y2
    manual = to_caffe(imresize(img[4:30, 2:20], (224, 224)))
    assert out.shape == (3, 224, 224) and np.array_equal(out, manual)
    assert np.array_equal(osm_offline_transform(img), to_caffe(imresize(img, (224, 224))))


def test_empty_box_is_a_data_error():
    from rll_repro.errors import DataError

    with pytest.raises(DataError, match="empty"):
        osm_offline_transform(image(20, 20), box=[30, 30, 40, 40])
