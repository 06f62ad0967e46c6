"""DataLoader pipelines: training batches from a sampler, test batches in list order.

API (used by the training driver and by evaluation)::

    from rll_repro.data import loader, samplers, transforms
    lst = loader.resolve_source("SOP_TrainImagePathBoxCell.mat", data_root="/data/SOP")
    sampler = samplers.RLLBatchSampler(lst.class_ids, classes_per_batch=50, images_per_class=3,
                                       seed=123, num_iterations=30000)
    train = loader.make_train_loader(lst, sampler, transforms.RLLTrainTransform(), num_workers=2)
    for data, labels in train:          # data: N x 3 x 227 x 227 float32 (BGR, mean-subtracted)
        ...                             # labels: N float32 = class_id - 1
    state = train.state_dict()          # {"seed", "iteration"}: batches consumed so far
    train.load_state_dict(state)        # the next iteration yields exactly what an unbroken run would

    test = loader.make_test_loader(lst, transforms.rll_test_transform, batch_size=32)
    for data, labels, indices in test:  # list order; the last batch may be smaller
        ...

``source`` may be a .mat path (read with :func:`rll_repro.data.lists.load_image_list`), an
:class:`~rll_repro.data.lists.ImageList`, a dict ``{"paths": [...], "labels"|"class_ids": [...]}``,
or in-memory ``(images, class_ids)`` with images ``N x 3 x H x W`` already preprocessed (the digits
demo; ``transform=None`` then). OSM+CAA data cells (``train_data_cell`` ...) hold images the original
offline pipeline already preprocessed: their W x H x BGR entries become CHW and any ``transform`` is
skipped for them, as the original training fed them unchanged. Images are decoded with ``torchvision.io``
(RGB; grey replicated), JPEG decoding differs from MATLAB's libjpeg in the last bits.
Transforms receive the per-slot generator of :func:`rll_repro.data.samplers.sample_rng`, so a batch
is the same for any ``num_workers``.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rll_repro.data.lists import DATA_CELL_VARIABLES, ImageList, load_image_list
from rll_repro.data.samplers import Sample, sample_rng
from rll_repro.data.transforms import osm_cell_to_chw
from rll_repro.errors import DataError


def read_image_rgb(path: str) -> np.ndarray:
    """H x W x 3 uint8 RGB (grey replicated, as the scripts' ``cat(3, I, I, I)``) via torchvision.io."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image

    try:
        with open(path, "rb") as handle:
            raw = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tensor = decode_image(raw, mode=ImageReadMode.RGB)
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None
    except RuntimeError as exc:
        raise DataError(f"{path}: cannot decode image: {str(exc).splitlines()[0]}") from None
    return tensor.permute(1, 2, 0).numpy()


def resolve_source(source, data_root=None, strip_prefix: str | None = None) -> ImageList:
    """Any accepted ``source`` (see the module docstring) -> ImageList."""
    if isinstance(source, ImageList):
        return source.remap(data_root, strip_prefix) if data_root is not None else source
    if isinstance(source, (str, os.PathLike)):
        return load_image_list(source, data_root=data_root, strip_prefix=strip_prefix)
    if isinstance(source, dict):
        paths = list(source["paths"])
        if "class_ids" in source:
            ids = np.asarray(source["class_ids"]).ravel().astype(np.int64)
        elif "labels" in source:
            ids = np.asarray(source["labels"]).ravel().astype(np.int64) + 1
        else:
            raise DataError("a dict source needs 'paths' and 'class_ids' (1-based) or 'labels' (0-based)")
        if len(ids) != len(paths):
            raise DataError(f"{len(paths)} paths but {len(ids)} labels")
        boxes = np.asarray(source["boxes"], dtype=np.float64) if source.get("boxes") is not None else None
        lst = ImageList(paths=paths, class_ids=ids, boxes=boxes, source="<dict>")
        return lst.remap(data_root, strip_prefix) if data_root is not None else lst
    if isinstance(source, (tuple, list)) and len(source) == 2:
        images, ids = source
        ids = np.asarray(ids).ravel().astype(np.int64)
        if len(images) != len(ids):
            raise DataError(f"{len(images)} images but {len(ids)} class ids")
        return ImageList(paths=None, images=images, class_ids=ids, source="<arrays>")
    raise DataError(f"unsupported data source of type {type(source).__name__}")


class ListDataset(Dataset):
    """Items are ``(chw float32 tensor, label float)``; keys are ints or :class:`Sample`."""

    def __init__(self, image_list: ImageList, transform: Callable | None, seed: int = 0,
                 use_boxes: bool = False):
        self.list, self.transform, self.seed, self.use_boxes = image_list, transform, int(seed), use_boxes
        self.labels = image_list.labels
        if image_list.variable in DATA_CELL_VARIABLES:
            self.transform = None  # OSM data cells are the original offline pipeline's output

    def __len__(self) -> int:
        return len(self.list)

    def load(self, index: int) -> Any:
        if self.list.paths is not None:
            return read_image_rgb(self.list.paths[index])
        image = self.list.images[index]
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.shape[0] != 3:
            return osm_cell_to_chw(image)  # an original OSM data-cell entry (W x H x BGR)
        return np.asarray(image, dtype=np.float32)

    def __getitem__(self, key):
        if isinstance(key, Sample):
            index, rng = key.index, sample_rng(self.seed, key.iteration, key.slot)
        else:
            index = int(key)
            rng = np.random.default_rng([self.seed, 3, index])  # test-time transforms draw nothing
        image = self.load(index)
        if self.transform is not None:
            if self.use_boxes and self.list.boxes is not None:
                image = self.transform(image, rng, box=self.list.boxes[index])
            else:
                image = self.transform(image, rng)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), float(self.labels[index]), index


def collate(items):
    """-> (data N x C x H x W float32, labels N float32, indices N int64)."""
    data = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[1] for it in items], dtype=torch.float32)
    indices = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return data, labels, indices


def _worker_init(_):
    torch.set_num_threads(1)


def _pin_default() -> bool:
    """Pinned batches (so the solver's copy to the GPU is asynchronous) when the nets run on CUDA."""
    from rll_repro.device import resolve_device

    return resolve_device(None).type == "cuda"


class TrainLoader:
    """Iterates ``(data, labels)`` batches of a batch sampler and counts what was consumed."""

    def __init__(self, dataset: ListDataset, sampler, num_workers: int = 0, prefetch_factor: int = 2,
                 pin_memory: bool | None = None):
        self.dataset, self.sampler = dataset, sampler
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.pin_memory = _pin_default() if pin_memory is None else bool(pin_memory)

    def _loader(self) -> DataLoader:
        kw = dict(prefetch_factor=self.prefetch_factor, persistent_workers=False,
                  worker_init_fn=_worker_init) if self.num_workers > 0 else {}
        return DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=self.num_workers,
                          collate_fn=collate, pin_memory=self.pin_memory, **kw)

    def __iter__(self):
        for data, labels, _ in self._loader():
            self.sampler.iteration += 1
            yield data, labels

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def iteration(self) -> int:
        return self.sampler.iteration

    def state_dict(self) -> dict:
        """``{"seed", "iteration"}``: iteration = batches consumed (the next one to yield)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self.dataset.seed = self.sampler.seed


def make_train_loader(source, sampler, transform: Callable | None, *, data_root=None,
                      strip_prefix: str | None = None, num_workers: int = 0, prefetch_factor: int = 2,
                      use_boxes: bool = False, check_images: bool = False) -> TrainLoader:
    """Training batches ``(data N x 3 x H x W float32, labels N float32)`` in the sampler's order."""
    image_list = resolve_source(source, data_root, strip_prefix)
    if check_images:
        image_list.check_images()
    members = getattr(sampler, "members", None)
    if members and getattr(sampler, "counts", None) is None and max(int(m.max()) for m in members) >= len(image_list):
        raise DataError(f"{image_list.source}: the sampler was built for a longer list than {len(image_list)} images")
    dataset = ListDataset(image_list, transform, seed=sampler.seed, use_boxes=use_boxes)
    return TrainLoader(dataset, sampler, num_workers=num_workers, prefetch_factor=prefetch_factor)


def make_test_loader(source, transform: Callable | None, *, batch_size: int = 32, data_root=None,
                     strip_prefix: str | None = None, num_workers: int = 0, use_boxes: bool = False,
                     check_images: bool = False, rows=None) -> DataLoader:
    """Test batches ``(data, labels, indices)`` in list order; the remainder batch comes last.
    ``rows``: only these list positions (in this order), e.g. one process's share of the list."""
    image_list = resolve_source(source, data_root, strip_prefix)
    if check_images:
        image_list.check_images()
    dataset = ListDataset(image_list, transform, use_boxes=use_boxes)
    if rows is not None:
        from torch.utils.data import Subset

        dataset = Subset(dataset, [int(r) for r in rows])
    kw = dict(worker_init_fn=_worker_init) if num_workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate, pin_memory=_pin_default(), **kw)
