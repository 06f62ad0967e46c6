"""DataLoader pipelines: training batches from samplers, resuming, test order, decoding errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rll_repro.data import loader, transforms
from rll_repro.data.samplers import OSMBatchSampler, RLLBatchSampler
from rll_repro.errors import DataError
from rll_repro.matfile import savemat


def write_jpegs(folder, n, size=(40, 30), grey_every=0):
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs (still the pinned decoder)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import encode_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        channels = 1 if grey_every and i % grey_every == 0 else 3
        img = torch.from_numpy(rng.integers(0, 256, (channels, *size)).astype(np.uint8))
        path = folder / f"{i:03d}.jpg"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            path.write_bytes(encode_jpeg(img, quality=90).numpy().tobytes())
        paths.append(path.name)
    return paths


@pytest.fixture
def small_list(tmp_path):
    paths = write_jpegs(tmp_path / "imgs", 12, grey_every=5)
    ids = np.repeat(np.arange(1, 5), 3).astype(np.float64).reshape(-1, 1)
    savemat(tmp_path / "train.mat", {"TrainImagePathBoxCell": paths, "class_ids": ids})
    return tmp_path / "train.mat", tmp_path / "imgs", ids.ravel()


def test_train_batches_are_nchw_float32_with_class_id_minus_one(small_list):
    mat, root, ids = small_list
    sampler = RLLBatchSampler(ids, classes_per_batch=2, images_per_class=3, seed=1, num_iterations=3)
    train = loader.make_train_loader(mat, sampler, transforms.RLLTrainTransform(), data_root=root)
    batches = list(train)
    assert len(batches) == 3 and train.iteration == 3
    data, labels = batches[0]
    assert data.shape == (6, 3, 227, 227) and data.dtype == torch.float32 and labels.dtype == torch.float32
    expect = ids[sampler.batch_indices(0)] - 1
    assert labels.tolist() == expect.tolist()


def test_workers_do_not_change_the_batches(small_list):
    """Augmentation randomness is keyed by (seed, iteration, slot), not by worker state."""
    mat, root, ids = small_list
    make = lambda: RLLBatchSampler(ids, 2, 3, seed=4, num_iterations=2)  # noqa: E731
    serial = list(loader.make_train_loader(mat, make(), transforms.RLLTrainTransform(), data_root=root))
    parallel = list(loader.make_train_loader(mat, make(), transforms.RLLTrainTransform(), data_root=root,
                                             num_workers=2))
    for (a, la), (b, lb) in zip(serial, parallel):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_resume_from_state_dict_reproduces_the_uninterrupted_run(small_list):
    mat, root, ids = small_list
    full = list(loader.make_train_loader(mat, RLLBatchSampler(ids, 2, 3, seed=7, num_iterations=5),
                                         transforms.RLLTrainTransform(), data_root=root))
    first = loader.make_train_loader(mat, RLLBatchSampler(ids, 2, 3, seed=7, num_iterations=5),
                                     transforms.RLLTrainTransform(), data_root=root)
    for k, _ in enumerate(first):
        if k == 1:
            break
    state = first.state_dict()
    assert state == {"seed": 7, "iteration": 2}
    resumed = loader.make_train_loader(mat, RLLBatchSampler(ids, 2, 3, seed=0, num_iterations=5),
                                       transforms.RLLTrainTransform(), data_root=root)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 3
    for (a, la), (b, lb) in zip(rest, full[2:]):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_test_loader_keeps_list_order_and_remainder(small_list):
    mat, root, ids = small_list
    test = loader.make_test_loader(mat, transforms.rll_test_transform, batch_size=5, data_root=root)
    batches = list(test)
    assert [len(b[2]) for b in batches] == [5, 5, 2]
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(12))
    assert torch.cat([b[1] for b in batches]).tolist() == (ids - 1).tolist()


def test_in_memory_arrays_source(tmp_path):
    """Preprocessed N x 3 x H x W arrays (OSM data cells, digits) need no transform."""
    images = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    ids = np.repeat(np.arange(1, 9), 2)
    sampler = OSMBatchSampler(ids, classes_per_batch=4, images_per_class=2, seed=0, num_iterations=2)
    data, labels = next(iter(loader.make_train_loader((images, ids), sampler, None)))
    idx = sampler.batch_indices(0)
    assert torch.equal(data, torch.from_numpy(images[idx])) and labels.tolist() == (ids[idx] - 1).tolist()


def test_grey_jpeg_decodes_to_three_equal_channels(tmp_path):
    paths = write_jpegs(tmp_path, 1, grey_every=1)
    img = loader.read_image_rgb(str(tmp_path / paths[0]))
    assert img.shape == (40, 30, 3) and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], img[..., 2])


def test_corrupt_and_missing_images_are_data_errors(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="bad.jpg: cannot decode image"):
        loader.read_image_rgb(str(tmp_path / "bad.jpg"))
    with pytest.raises(DataError, match="missing"):
        loader.read_image_rgb(str(tmp_path / "gone.jpg"))


def test_dict_source_and_length_mismatch():
    with pytest.raises(DataError, match="2 paths but 3 labels"):
        loader.resolve_source({"paths": ["a", "b"], "labels": [0, 1, 2]})
    lst = loader.resolve_source({"paths": ["a", "b"], "labels": [0, 4]})
    assert lst.class_ids.tolist() == [1, 5]


def test_osm_data_cells_are_fed_unchanged(tmp_path):
    """OSM+CAA cells are already preprocessed offline: W x H x BGR -> CHW, the transform is skipped."""
    cells = [np.random.default_rng(i).normal(size=(6, 5, 3)).astype(np.float32) for i in range(4)]
    savemat(tmp_path / "c.mat", {"train_data_cell": cells, "class_ids": np.array([[1.0], [1.0], [2.0], [2.0]])})
    sampler = OSMBatchSampler(np.array([1, 1, 2, 2]), classes_per_batch=2, images_per_class=2, seed=0, num_iterations=1)
    data, _ = next(iter(loader.make_train_loader(tmp_path / "c.mat", sampler, transforms.osm_offline_transform)))
    idx = sampler.batch_indices(0)
    assert data.shape == (4, 3, 5, 6) and torch.equal(data[0], torch.from_numpy(cells[idx[0]].transpose(2, 1, 0).copy()))
