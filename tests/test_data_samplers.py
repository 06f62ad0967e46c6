"""The original mini-batch samplers: batch layout, epoch/class-subset rule, repeat rule, resuming."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rll_repro.data.samplers import (
    OSMBatchSampler, RLLBatchSampler, TrackletBatchSampler, images_of_class, randperm,
)
from rll_repro.errors import DataError


def class_ids_with_sizes(sizes):
    """Shuffled file order so 'rows of class c in file order' is not trivially contiguous."""
    ids = np.concatenate([np.full(n, c + 1) for c, n in enumerate(sizes)])
    return np.random.default_rng(0).permutation(ids)


def test_repeat_rule_for_classes_with_fewer_than_k_images():
    """n < K: mod(randperm(K), n) + 1. K=3, n=2: values {mod(1,2), mod(2,2), mod(3,2)} + 1 = {2,1,2},
    i.e. the second image twice and the first once, in random order."""
    for seed in range(20):
        picks = images_of_class(np.random.default_rng(seed), 2, 3)
        assert sorted(picks.tolist()) == [0, 1, 1]
    for seed in range(20):  # n = 1: always the only image
        assert images_of_class(np.random.default_rng(seed), 1, 3).tolist() == [0, 0, 0]
    # K = 7, n = 3 (OSM): mod(1..7, 3) = 1 2 0 1 2 0 1 -> image 2 (0-based 1) three times
    counts = Counter(images_of_class(np.random.default_rng(1), 3, 7).tolist())
    assert counts == {1: 3, 2: 2, 0: 2}


def test_classes_with_k_or_more_images_get_k_distinct():
    for seed in range(10):
        picks = images_of_class(np.random.default_rng(seed), 10, 3)
        assert len(set(picks.tolist())) == 3 and picks.max() < 10


def test_randperm_is_one_based_distinct():
    p = randperm(np.random.default_rng(0), 10, 4)
    assert len(set(p.tolist())) == 4 and p.min() >= 1 and p.max() <= 10


def test_rll_batch_layout_is_c_classes_times_k_slots():
    ids = class_ids_with_sizes([5, 2, 4, 1, 6, 3, 3])
    s = RLLBatchSampler(ids, classes_per_batch=3, images_per_class=3, seed=1)
    for t in range(6):
        idx = s.batch_indices(t)
        assert idx.shape == (9,)
        labels = ids[idx].reshape(3, 3)
        assert (labels == labels[:, :1]).all()  # K consecutive slots per class
        assert len(set(labels[:, 0].tolist())) == 3  # C distinct classes
        assert labels[:, 0].tolist() == s.batch_classes(t).tolist()


def test_rll_epoch_uses_a_random_subset_of_floor_classes():
    """7 classes, C = 3: valid_num = 6, 2 iterations per epoch, each epoch 6 distinct classes and one
    class sits out; a fresh subset is drawn every epoch."""
    ids = class_ids_with_sizes([3] * 7)
    s = RLLBatchSampler(ids, classes_per_batch=3, images_per_class=3, seed=5)
    assert s.valid_num == 6 and s.iterations_per_epoch == 2
    left_out = []
    for epoch in range(12):
        classes = np.concatenate([s.batch_classes(2 * epoch), s.batch_classes(2 * epoch + 1)])
        assert len(set(classes.tolist())) == 6
        left_out.append(set(range(1, 8)) - set(classes.tolist()))
    assert len({min(x) for x in left_out}) > 1  # the skipped class changes between epochs


def test_rll_paper_epoch_sizes():
    """SOP 11318 classes, C 50 -> 11300 used, 226 it/epoch; In-shop 3997, C 22 -> 181; Market 751, C 60 -> 12."""
    for n, c, ipe in [(11318, 50, 226), (3997, 22, 181), (751, 60, 12)]:
        s = RLLBatchSampler(np.arange(1, n + 1), classes_per_batch=c, images_per_class=3)
        assert s.iterations_per_epoch == ipe and s.batch_size == 3 * c


def test_rll_images_are_drawn_within_the_class_rows():
    ids = class_ids_with_sizes([4, 2, 5])
    s = RLLBatchSampler(ids, classes_per_batch=3, images_per_class=3, seed=2)
    for t in range(5):
        for block in s.batch_indices(t).reshape(3, 3):
            c = ids[block[0]]
            rows = np.flatnonzero(ids == c)
            assert set(block.tolist()) <= set(rows.tolist())
            if len(rows) >= 3:
                assert len(set(block.tolist())) == 3


def test_same_seed_same_batches_and_other_seed_differs():
    ids = class_ids_with_sizes([3] * 20)
    a = RLLBatchSampler(ids, 4, 3, seed=123)
    b = RLLBatchSampler(ids, 4, 3, seed=123)
    c = RLLBatchSampler(ids, 4, 3, seed=124)
    assert all(np.array_equal(a.batch_indices(t), b.batch_indices(t)) for t in range(12))
    assert any(not np.array_equal(a.batch_indices(t), c.batch_indices(t)) for t in range(12))


@pytest.mark.parametrize("cls", ["rll", "osm"])
def test_resuming_from_state_dict_continues_the_same_stream(cls):
    ids = class_ids_with_sizes([4] * 30)
    make = (lambda **kw: RLLBatchSampler(ids, 5, 3, **kw)) if cls == "rll" else (lambda **kw: OSMBatchSampler(ids, 8, 7, **kw))
    full = [b for b in make(seed=9, num_iterations=40)]
    first = make(seed=9, num_iterations=40)
    it = iter(first)
    for _ in range(17):
        next(it)
    first.iteration = 17  # what the training loader records as consumed
    resumed = make(seed=0, num_iterations=40)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(rest) == 23 and rest == full[17:]
    assert len(resumed) == 23


def test_samples_carry_iteration_and_slot_for_augmentation():
    s = RLLBatchSampler(class_ids_with_sizes([3] * 6), 2, 3, seed=1)
    batch = s.batch(7)
    assert [x.slot for x in batch] == list(range(6)) and {x.iteration for x in batch} == {7}


def test_osm_draws_eight_distinct_classes_every_iteration_without_epochs():
    ids = class_ids_with_sizes([5] * 12 + [9])
    s = OSMBatchSampler(ids, seed=3)
    seen = Counter()
    for t in range(50):
        labels = ids[s.batch_indices(t)].reshape(8, 7)
        assert (labels == labels[:, :1]).all() and len(set(labels[:, 0].tolist())) == 8
        seen.update(labels[:, 0].tolist())
    assert len(seen) == 13  # every class appears, no subset rule


def test_too_few_classes_is_a_data_error():
    with pytest.raises(DataError, match="cannot fill batches"):
        RLLBatchSampler(np.array([1, 1, 2]), classes_per_batch=3)


def test_tracklet_sampler_layout():
    labels = np.array([1, 1, 2, 3, 3, 4])
    frames = [4, 12, 3, 9, 1, 20]
    s = TrackletBatchSampler(labels, frames, seed=0)
    idx = s.batch_indices(0)
    assert idx.shape == (54,)
    table = s.frame_table()
    tracklets = table[idx].reshape(6, 9)
    assert (tracklets == tracklets[:, :1]).all()
    ids = labels[tracklets[:, 0]]
    assert ids[:3].tolist() == ids[3:].tolist() and len(set(ids[:3].tolist())) == 3
