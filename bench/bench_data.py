"""Data pipeline throughput on one core: JPEG decode, MATLAB imresize, RLL train/test transforms, loader.

Run: ``.venv/bin/python bench/bench_data.py [--images 200]``. Makes 256-px JPEG sources in a temp
folder (256 x 256 and 256 x 341, i.e. short side 256), then times each stage single-threaded
(``torch.set_num_threads(1)``, ``num_workers=0``) and prints images/s. Target: >= 100 images/s per
core through decode + resize + crop for 256-px sources. Then the train loader at 0..N DataLoader
workers (``--workers N``, default the machine's cores), pinned batches on, as a GPU run loads them:
the rate a GPU step can be fed at.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rll_repro.data import imresize, loader, transforms  # noqa: E402
from rll_repro.data.samplers import RLLBatchSampler  # noqa: E402


def make_jpegs(folder: Path, n: int, size: tuple[int, int]) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import encode_jpeg
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:size[0], 0:size[1]]
        paths = []
        for i in range(n):
            base = np.stack([np.sin(xx / (7 + i % 5)) * 60, np.cos(yy / (9 + i % 3)) * 60, (xx + yy) % 90], 0)
            img = np.clip(base + 120 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            path = folder / f"{size[0]}x{size[1]}_{i:04d}.jpg"
            path.write_bytes(encode_jpeg(torch.from_numpy(img), quality=90).numpy().tobytes())
            paths.append(str(path))
    return paths


def rate(fn, items) -> float:
    fn(items[0])  # warm caches (weight matrices)
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="largest worker count (default: cores)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [(256, 256), (256, 341)]:
            paths = make_jpegs(Path(tmp), args.images, size)
            decoded = [loader.read_image_rgb(p) for p in paths[:50]]
            rng = np.random.default_rng(0)
            train = transforms.RLLTrainTransform()
            label = f"{size[0]}x{size[1]}"
            rows.append((label, "decode (torchvision.io)", rate(loader.read_image_rgb, paths)))
            rows.append((label, "imresize -> 256x256", rate(lambda im: imresize(im, (256, 256)), decoded)))
            rows.append((label, "RLL train transform", rate(lambda im: train(im, rng), decoded)))
            rows.append((label, "decode + RLL train", rate(lambda p: train(loader.read_image_rgb(p), rng), paths)))
            rows.append((label, "decode + RLL test", rate(lambda p: transforms.rll_test_transform(loader.read_image_rgb(p)), paths)))
            ids = np.arange(len(paths)) // 4 + 1
            sampler = RLLBatchSampler(ids, classes_per_batch=10, images_per_class=3, seed=1,
                                      num_iterations=max(args.images // 30, 2))
            train_loader = loader.make_train_loader({"paths": paths, "class_ids": ids}, sampler, train)
            start = time.perf_counter()
            count = sum(int(data.shape[0]) for data, _ in train_loader)
            rows.append((label, "train loader (batches of 30)", count / (time.perf_counter() - start)))
            if size == (256, 341):
                workers_rows = worker_sweep(paths, ids, train, args)
    print(f"{'source':<9} {'stage':<30} {'images/s (1 thread)':>20}")
    for source, stage, value in rows:
        print(f"{source:<9} {stage:<30} {value:>20.1f}")
    print()
    print(f"{'DataLoader workers':<20} {'images/s (pinned)':>18}")
    for workers, value in workers_rows:
        print(f"{workers:<20} {value:>18.1f}")


def worker_sweep(paths, ids, train, args):
    """Train-loader images/s at 0, 1, 2, ... workers (batches of 30, pinned memory)."""
    import os

    most = args.workers if args.workers is not None else (os.cpu_count() or 1)
    out = []
    for workers in sorted({0, 1, *range(2, most + 1, 2), most}):
        sampler = RLLBatchSampler(ids, classes_per_batch=10, images_per_class=3, seed=1,
                                  num_iterations=max(args.images // 30, 2))
        train_loader = loader.make_train_loader({"paths": paths, "class_ids": ids}, sampler, train,
                                                num_workers=workers)
        train_loader.pin_memory = torch.cuda.is_available()
        start = time.perf_counter()
        count = sum(int(data.shape[0]) for data, _ in train_loader)
        out.append((workers, count / (time.perf_counter() - start)))
    return out


if __name__ == "__main__":
    main()
