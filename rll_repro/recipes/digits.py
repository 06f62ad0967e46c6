"""The shipped end-to-end demo: RLL on scikit-learn's 8x8 digits (no download).

Zero-shot split as the recorded real-Caffe run (../shared/oracle/rll/train_run_digits): train on
classes 0-4, test on 5-9 (all 896 images). Batch 30 = 5 classes x 6 images from the RLL sampler
(``RLLBatchSampler``, C = 5, K = 6). Pixels (0..16) are fed as ``16 x - 128`` (an 8-bit range minus
128), the recorded run's input: in training BatchNorm makes any ``a (x - 8)`` equivalent (its first
loss, 0.44745, is reproduced to 5e-6), but the TEST-phase global statistics pin the scale: with
this input our deploy net reproduces Caffe's test embedding to 7e-7 and its Recall exactly. Nets and solver:
``prototxt/digits/`` (Conv-BN-Scale-ReLU x 2, 32-d FC x10 lr, L2 normalisation, RLL V12 loss;
multistep SGD 0.01, x0.2 at 150 and 240, momentum 0.9, 300 iterations). After training the TEST-phase
deploy net embeds the test classes and Recall@1,2,4,8 is computed on the L2-normalised embedding.

Our fillers and sampler are not Caffe's (MATLAB's / Caffe's random streams are not reproduced), and
training is chaotic, so the reference numbers below are matched statistically, not digit for digit:
with sampler seeds 123, 1, 2, 3, 4 we measured Recall@1 86.4, 89.7, 90.3, 90.7, 89.4 (Caffe: 88.06)
and Recall@8 97.1-98.7 (Caffe: 98.77).
The exactness of the port is checked instead by replaying the recorded run's initial weights and
batches (tests/test_train_digits.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rll_repro.recipes import path as recipe_path

NAME = "digits"
PROTOTXT_DIR = recipe_path("prototxt/digits")  # the checkout's, or the installed package's copy
TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)
CLASSES_PER_BATCH = 5
IMAGES_PER_CLASS = 6
RECALL_KS = (1, 2, 4, 8)
SEED = 123  # the sampler's seed (the MATLAB scripts' rng(123)); the fillers use the solver's random_seed

#: What the real RLL Caffe fork got on this demo (CPU, float32, 300 iterations, same nets/solver,
#: Caffe's own xavier init with random_seed 1 and its own batches).
REFERENCE = {
    "source": "../shared/oracle/rll/train_run_digits/README.txt and run.npz (recall): "
              "a complete 300-step run of the real RLL Caffe fork on scikit-learn's digits",
    "recall": {"R@1": 88.06, "R@2": 93.75, "R@4": 97.66, "R@8": 98.77},
    "recall_raw_pixels": {"R@1": 98.66, "R@2": 99.55, "R@4": 99.78, "R@8": 99.89},
    "loss_first": 0.44745,
    "loss_last": 0.00004,
}


def prototxt(kind: str) -> Path:
    """``train``, ``solver`` or ``deploy`` prototxt of the demo."""
    path = PROTOTXT_DIR / f"{kind}.prototxt"
    if not path.exists():
        from rll_repro.errors import DataError

        raise DataError(f"{path}: missing; the digits prototxts ship in prototxt/digits (the repository's, "
                        "or rll_repro/prototxt/digits in an installed package: reinstall it)")
    return path


def preprocess(images: np.ndarray) -> np.ndarray:
    """N x 8 x 8 pixel values 0..16 -> N x 1 x 8 x 8 float32 ``16 x - 128``."""
    x = np.asarray(images, dtype=np.float32)
    return (x * np.float32(16) - np.float32(128)).astype(np.float32)[:, None]


@dataclass
class DigitsData:
    images: np.ndarray   # N x 1 x 8 x 8 float32, preprocessed
    target: np.ndarray   # N int64 class ids
    train_index: np.ndarray
    test_index: np.ndarray


def load() -> DigitsData:
    """scikit-learn's digits (shipped inside scikit-learn), split by class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    target = np.asarray(digits.target, dtype=np.int64)
    return DigitsData(preprocess(digits.images), target,
                      np.flatnonzero(np.isin(target, TRAIN_CLASSES)), np.flatnonzero(np.isin(target, TEST_CLASSES)))


class DigitsBatchSource:
    """RLL sampler over the training classes; batch indices are into the whole data set."""

    def __init__(self, data: DigitsData, seed: int = SEED):
        from rll_repro.data.samplers import RLLBatchSampler

        self.data = data
        self.sampler = RLLBatchSampler(data.target[data.train_index], CLASSES_PER_BATCH, IMAGES_PER_CLASS, seed=seed)

    def indices(self, iteration: int) -> np.ndarray:
        return self.data.train_index[self.sampler.batch_indices(iteration)]

    def batch(self, iteration: int) -> dict[str, np.ndarray]:
        idx = self.indices(iteration)
        self.sampler.iteration = iteration + 1
        return {"data": self.data.images[idx], "label": self.data.target[idx].astype(np.float32)}

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def batch_source(seed: int = SEED) -> DigitsBatchSource:
    """The demo's training batches (``rll-repro train --data digits`` uses this)."""
    return DigitsBatchSource(load(), seed)


def embed(weights, images: np.ndarray, blob: str = "fc") -> np.ndarray:
    """TEST-phase embedding (BatchNorm with its global statistics) of ``images`` with the deploy net."""
    from rll_repro.net import Net

    net = Net(str(prototxt("deploy")), weights=weights, phase="test")
    out = net.forward(data=np.ascontiguousarray(images, dtype=np.float32), blobs=[blob])
    return np.asarray(out[blob], dtype=np.float32).reshape(images.shape[0], -1)


def recall(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Recall@1,2,4,8 (%) all-vs-all, self excluded, on L2-normalised features (engineer D's metric)."""
    from rll_repro.eval.metrics import recall_at_k

    return {k: float(v) for k, v in recall_at_k(features, labels, RECALL_KS).items()}


def run(out_dir, *, max_iter: int | None = None, seed: int = SEED, echo_log: bool = False,
        progress: bool | None = None, weights: str | None = None) -> dict:
    """Train, embed the test classes, evaluate; write the run folder. Returns the results (results.json
    holds them in the layout ``rll-repro diff`` reads, :func:`results_file`).

    ``weights``: a caffemodel to start from (copy_from by layer name, as `caffe train --weights`);
    default: the prototxt's fillers. ``max_iter`` 0 trains nothing and, as Caffe's Solve with
    snapshot_after_train, snapshots iteration 0 (the initial weights), which is then evaluated."""
    import torch

    from rll_repro.solver import get_solver
    from rll_repro.train import Schedule, run_session

    if max_iter is not None and int(max_iter) < 0:
        from rll_repro.errors import DataError

        raise DataError(f"--max-iter must be >= 0, got {max_iter}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = load()
    source = DigitsBatchSource(data, seed)
    solver = get_solver(str(prototxt("solver")))
    iters = int(max_iter if max_iter is not None else solver.param.max_iter)
    schedule = Schedule(max_iter=iters, output_interval=20, save_start=None, save_interval=None,
                        snapshot_prefix=str(out / "digits"), snapshot_at_end=True)
    history, _ = run_session(solver, source, schedule, out, weights=weights or None, echo=echo_log,
                             progress=progress, title="RLL on digits")
    model = out / f"digits_iter_{solver.iter}.caffemodel"
    if not model.exists():  # nothing trained (max_iter 0): Caffe's Solve still snapshots at the end
        history.snapshots.append(solver.snapshot(str(out / "digits"))[1])
        history.save_json(out / "history.json")
    from rll_repro.fileio import atomic_save_npy

    test_images = data.images[data.test_index]
    with torch.no_grad():
        features = embed(str(model), test_images)
    atomic_save_npy(out / "test_features.npy", features)  # never left half-written on a full disk
    ours = recall(features, data.target[data.test_index])
    pixels = (test_images.reshape(len(test_images), -1) + np.float32(128)) / np.float32(16)
    raw = recall(pixels, data.target[data.test_index])
    results = {
        "setting": NAME,
        "iterations": solver.iter,
        "recall": ours,
        "recall_raw_pixels": raw,
        "loss_first": history.losses[0] if history.losses else None,
        "loss_last": history.losses[-1] if history.losses else None,
        "reference": REFERENCE,
        "model": model.name,
        "seconds": round(time.monotonic() - started, 2),
        "environment": history.segments[-1]["environment"],  # thread count etc.: the weights depend on it
    }
    from rll_repro.fileio import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(results_file(results), indent=2) + "\n")
    return results


def results_file(results: dict) -> dict:
    """results.json: our Recall@K at the top level (percent, what ``rll-repro diff`` compares: against
    another run's results.json), everything else under ``_meta`` (which diff ignores)."""
    meta = {"units": "percent", **{k: v for k, v in results.items() if k != "recall"}}
    return {**results["recall"], "_meta": meta}


def report(results: dict) -> str:
    """The demo's summary table: ours next to real Caffe's."""
    ref = REFERENCE["recall"]
    lines = [f"{'':14}{'ours':>10}{'real Caffe':>12}"]
    for k in ref:
        lines.append(f"{'Recall' + k[1:]:14}{results['recall'][k]:>10.2f}{ref[k]:>12.2f}")
    first, last = results["loss_first"], results["loss_last"]  # None when nothing was trained
    lines.append(f"{'loss first':14}{'-' if first is None else f'{first:.4f}':>10}{REFERENCE['loss_first']:>12.4f}")
    lines.append(f"{'loss last':14}{'-' if last is None else f'{last:.2g}':>10}{REFERENCE['loss_last']:>12.2g}")
    lines.append("(real Caffe: " + REFERENCE["source"].split(" and ")[0] + "; different random init and "
                 "batches, so agreement is statistical)")
    return "\n".join(lines)
