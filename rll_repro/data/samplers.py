"""The original mini-batch samplers as seeded, resumable torch batch samplers.

Each sampler yields one batch per solver iteration: a list of :class:`Sample` (image index,
iteration, slot). A batch is a pure function of ``(seed, iteration)``, so ``state_dict()`` is just
``{"seed", "iteration"}`` and resuming at iteration t reproduces the uninterrupted run exactly,
whatever the number of DataLoader workers. Random numbers come from numpy's documented
``Generator(PCG64)`` seeded with ``SeedSequence([seed, stream, ...])`` (stream 0: per-epoch class
subsets, 1: per-iteration draws, 2: per-sample augmentation, see :func:`sample_rng`). MATLAB's
``randperm`` stream is not reproduced bit for bit (SPEC rll §4.2 says it cannot be); the
*distribution* and the batch layout are the originals':

* :class:`RLLBatchSampler` (``get_train_minibatch_ori_aug_v05`` / ``_v04``): C classes x K images,
  epochs over a random subset of ``floor(n_classes / C) * C`` classes.
* :class:`OSMBatchSampler` (OSM+CAA ``get_train_minibatch.m``): 8 classes x 7 images, a fresh
  independent class draw every iteration (no epochs).
* :class:`TrackletBatchSampler` (MARS/LPW): identities x tracklets x frames.

Per-class image rule (both papers): with n images and K wanted, ``randperm(n, K)`` if n >= K else
``mod(randperm(K), n) + 1`` (repeats) — :func:`images_of_class`.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np
from torch.utils.data import Sampler

from rll_repro.errors import DataError

STREAM_EPOCH, STREAM_ITERATION, STREAM_SAMPLE = 0, 1, 2


class Sample(NamedTuple):
    """One batch slot: ``index`` into the list, and the (iteration, slot) that seed its augmentation."""

    index: int
    iteration: int
    slot: int


def sample_rng(seed: int, iteration: int, slot: int) -> np.random.Generator:
    """The generator a transform uses for one batch slot (MATLAB's ``rand`` calls in preprocessing)."""
    return np.random.default_rng([seed, STREAM_SAMPLE, iteration, slot])


def randperm(rng: np.random.Generator, n: int, k: int | None = None) -> np.ndarray:
    """MATLAB ``randperm(n, k)`` (1-based values, k distinct in random order) from ``rng``."""
    perm = rng.permutation(n) + 1
    return perm if k is None else perm[:k]


def images_of_class(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """0-based picks among a class's n images: ``randperm(n, K)`` if n >= K else ``mod(randperm(K), n) + 1``."""
    if n <= 0:
        raise DataError("a class with no images cannot be sampled")
    if n >= k:
        return randperm(rng, n, k) - 1
    return np.mod(randperm(rng, k), n)  # (mod(p, n) + 1) - 1


def group_by_class(class_ids: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sorted unique ids, the rows of each id in file order)."""
    ids = np.asarray(class_ids).ravel()
    if ids.size == 0:
        raise DataError("the image list is empty")
    order = np.argsort(ids, kind="stable")
    unique, starts = np.unique(ids[order], return_index=True)
    return unique, np.split(order, starts[1:])


class _Base(Sampler):
    def __init__(self, seed: int, num_iterations: int | None, start_iteration: int):
        self.seed, self.num_iterations, self.iteration = int(seed), num_iterations, int(start_iteration)

    def batch(self, iteration: int) -> list[Sample]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[Sample]]:
        t = self.iteration
        while self.num_iterations is None or t < self.num_iterations:
            yield self.batch(t)
            t += 1

    def __len__(self) -> int:
        if self.num_iterations is None:
            raise TypeError("an endless sampler has no length (give num_iterations)")
        return max(self.num_iterations - self.iteration, 0)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.iteration = int(state["seed"]), int(state["iteration"])

    def _slots(self, iteration: int, indices: np.ndarray) -> list[Sample]:
        return [Sample(int(i), iteration, s) for s, i in enumerate(indices)]


class RLLBatchSampler(_Base):
    """RLL: ``classes_per_batch`` (C) classes x ``images_per_class`` (K) images per iteration.

    ``ids = unique(class_ids)``; ``valid_num = floor(n_classes / C) * C``; each epoch draws
    ``select = randperm(n_classes, valid_num)`` and iteration t uses ``select`` entries
    ``(t mod E) * C ...`` with ``E = valid_num / C`` iterations per epoch (the script's
    ``(t+1)*C > epoch*valid_num`` redraw rule), so ``n_classes - valid_num`` classes sit out each
    epoch. Slot ``i*K + k`` holds the k-th pick of the i-th class; its label is ``class_id - 1``.
    SOP C = 50, In-shop 22, Market 60; K = 3.
    """

    def __init__(self, class_ids, classes_per_batch: int, images_per_class: int = 3, seed: int = 123,
                 num_iterations: int | None = None, start_iteration: int = 0):
        super().__init__(seed, num_iterations, start_iteration)
        self.ids, self.members = group_by_class(class_ids)
        self.C, self.K = int(classes_per_batch), int(images_per_class)
        if self.C < 1 or self.K < 1:
            raise DataError("classes_per_batch and images_per_class must be positive")
        if len(self.ids) < self.C:
            raise DataError(f"{len(self.ids)} classes cannot fill batches of {self.C} classes")
        self.valid_num = (len(self.ids) // self.C) * self.C
        self.iterations_per_epoch = self.valid_num // self.C
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    @property
    def batch_size(self) -> int:
        return self.C * self.K

    def epoch_select(self, epoch: int) -> np.ndarray:
        """0-based class positions (into ``ids``) of one epoch: ``randperm(n_classes, valid_num) - 1``."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, STREAM_EPOCH, epoch])
            self._epoch_cache = (epoch, randperm(rng, len(self.ids), self.valid_num) - 1)
        return self._epoch_cache[1]

    def batch_classes(self, iteration: int) -> np.ndarray:
        epoch, pos = divmod(iteration, self.iterations_per_epoch)
        return self.ids[self.epoch_select(epoch)[pos * self.C:(pos + 1) * self.C]]

    def batch_indices(self, iteration: int) -> np.ndarray:
        epoch, pos = divmod(iteration, self.iterations_per_epoch)
        chosen = self.epoch_select(epoch)[pos * self.C:(pos + 1) * self.C]
        rng = np.random.default_rng([self.seed, STREAM_ITERATION, iteration])
        return np.concatenate([
            self.members[c][images_of_class(rng, len(self.members[c]), self.K)] for c in chosen
        ])

    def batch(self, iteration: int) -> list[Sample]:
        return self._slots(iteration, self.batch_indices(iteration))


class OSMBatchSampler(_Base):
    """OSM+CAA: ``randperm(n_classes, 8)`` classes, 7 images each, independently every iteration."""

    def __init__(self, class_ids, classes_per_batch: int = 8, images_per_class: int = 7, seed: int = 123,
                 num_iterations: int | None = None, start_iteration: int = 0):
        super().__init__(seed, num_iterations, start_iteration)
        self.ids, self.members = group_by_class(class_ids)
        self.C, self.K = int(classes_per_batch), int(images_per_class)
        if len(self.ids) < self.C:
            raise DataError(f"{len(self.ids)} classes cannot fill batches of {self.C} classes")

    @property
    def batch_size(self) -> int:
        return self.C * self.K

    def batch_indices(self, iteration: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, STREAM_ITERATION, iteration])
        chosen = randperm(rng, len(self.ids), self.C) - 1
        return np.concatenate([
            self.members[c][images_of_class(rng, len(self.members[c]), self.K)] for c in chosen
        ])

    def batch(self, iteration: int) -> list[Sample]:
        return self._slots(iteration, self.batch_indices(iteration))


class TrackletBatchSampler(_Base):
    """MARS/LPW: ``ids_per_batch`` identities, the list duplicated (``[a b c a b c]``, one tracklet
    drawn per slot), ``frames_per_tracklet`` frames each with the mod-repeat rule (batch 3x2x9 = 54).

    Yields :class:`Sample` whose ``index`` is a flat frame index (see :meth:`frame_table`). The
    exact slot order of the duplicated identity list is not recorded in the SPEC; this is our reading.
    """

    def __init__(self, tracklet_labels, frames_per_tracklet: Sequence[int], ids_per_batch: int = 3,
                 tracklets_per_id: int = 2, frames: int = 9, seed: int = 123,
                 num_iterations: int | None = None, start_iteration: int = 0):
        super().__init__(seed, num_iterations, start_iteration)
        self.ids, self.members = group_by_class(tracklet_labels)
        self.counts = np.asarray(frames_per_tracklet, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.P, self.T, self.F = int(ids_per_batch), int(tracklets_per_id), int(frames)

    @property
    def batch_size(self) -> int:
        return self.P * self.T * self.F

    def frame_table(self) -> np.ndarray:
        """Flat frame index -> tracklet index."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def batch_tracklets(self, iteration: int, rng: np.random.Generator) -> np.ndarray:
        chosen = randperm(rng, len(self.ids), self.P) - 1
        slots = np.tile(chosen, self.T)
        return np.array([self.members[c][rng.integers(len(self.members[c]))] for c in slots])

    def batch_indices(self, iteration: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, STREAM_ITERATION, iteration])
        tracklets = self.batch_tracklets(iteration, rng)
        return np.concatenate([
            self.offsets[t] + images_of_class(rng, int(self.counts[t]), self.F) for t in tracklets
        ])

    def batch(self, iteration: int) -> list[Sample]:
        return self._slots(iteration, self.batch_indices(iteration))
