"""The embedded demo (``rll-repro reproduce demo``): zero-shot retrieval of scattered digits.

Data: scikit-learn's 8x8 digits (shipped inside scikit-learn: no download), each drawn onto a
``CANVAS`` x ``CANVAS`` canvas by one affine map: upscaled x2 and by a random factor in ``SCALE``,
rotated by a random angle in +-``ROTATION`` degrees, centred at a random position where it fits,
bilinear, on a random grey ``BACKGROUND`` with a random ink ``CONTRAST`` (seeded: ``SEED``). Train classes 0-4 (``TRAIN_COPIES`` renderings of every image),
test classes 5-9 (one rendering each): test classes are never seen in training. Raw pixels retrieve
badly here (the same digit at another place shares few pixels), a trained net does not: its
global MAX pool finds the strokes wherever they are.

The images are written as PNG files with an SOP-style listing (``Ebay_train.txt`` /
``Ebay_test.txt``) and turned into the original ``.mat`` lists by our writer
(:func:`rll_repro.data.writers.write_lists`, layout ``sop``), so the run goes through the paper
recipes' code path: list loader, sampler, the OSM offline transform (resize, BGR, mean; the
augmentation is in the rendering), the generated prototxts under ``prototxt/demo/``, the Caffe
solver, the TEST-phase deploy net, Recall@K and NMI, and ``diff`` against the numbers recorded in
``rll_repro/eval/published/demo.json``.

Nets: one small trunk shared by every method (3 x Conv 3x3 - BatchNorm - Scale - ReLU - MAX pool
2/2, global MAX pool, 64-d embedding FC with lr_mult 10), then per method:

- ``RLL``: Reshape -> L2 Normalization -> DistanceWeightedValidPairLossV12 (m 0.4, T_n 10), the RLL
  sampler (C classes x K images, epochs over classes);
- ``OSM+CAA``: the AAAI'19 head: a weighted-softmax classifier on the pooled trunk (ExtractProb,
  Gaussian(0.5, 0.18), L1) whose ground-truth probability gives the class-aware attention
  (Gaussian(1.0, 0.68)) of the OSM loss (DistanceWeightedValidPairLossV5, margin 1.2, sigma 0.8) on
  the L2-normalised embedding; the OSM sampler (C random classes x K images);
- each baseline loss layer (``ContrastiveLoss`` ...) on the L2-normalised embedding with its default
  parameters, the RLL sampler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bninception as bn
from .netspec import NetBuilder, solver
from .settings import (SAMPLER_OSM, SAMPLER_RLL, TRANSFORM_OSM, Deploy, GeneratedFile, Setting)

NAME = "demo"
FOLDER = "prototxt/demo"
TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)
CANVAS = 48            # rendered image side (pixels); the net's input
SCALE = (0.8, 1.25)    # random scale on top of the x2 upscaling (a digit is 13..20 px tall)
ROTATION = 20.0        # degrees, uniform in +-ROTATION
BACKGROUND = (0, 96)   # canvas grey level, uniform
CONTRAST = (0.6, 1.0)  # ink = background + contrast x (255 - background) x digit / 16
TRAIN_COPIES = 3       # renderings of every training digit
SEED = 123
CLASSES_PER_BATCH = 5
IMAGES_PER_CLASS = 12
MAX_ITER = 400
DIM = 64
RECALL_KS = (1, 2, 4, 8)
TRUNK = ((1, 16), (2, 32), (3, 64))  # (conv index, channels)
FEATURE_BLOB = "embedding"
PUBLISHED = "demo/canvas-digits"
DATA_FILES = ("Demo_TrainImagePathBoxCell.mat", "Demo_TestImagePathBoxCell.mat")

RAW = "raw pixels"
RLL = "RLL"
OSM = "OSM+CAA"
BASELINES = ("ContrastiveLoss", "TripletLoss", "LiftedStructureLoss", "BinomialDevianceLoss",
             "MarginLoss", "NCALoss", "MultiSimilarityLoss")


# ------------------------------------------------------------------------------------------ data
def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 8x8 digit (0..16) -> CANVAS x CANVAS uint8: random scale, rotation, position (bilinear),
    background grey level and ink contrast."""
    from scipy.ndimage import affine_transform

    factor = 2.0 * rng.uniform(*SCALE)
    angle = math.radians(rng.uniform(-ROTATION, ROTATION))
    half = 4.0 * factor * (abs(math.cos(angle)) + abs(math.sin(angle)))  # half the rotated box
    lo, hi = half, CANVAS - 1 - half
    centre = rng.uniform(lo, max(hi, lo), size=2)
    c, s = math.cos(angle), math.sin(angle)
    inverse = np.array([[c, s], [-s, c]]) / factor          # output (row, col) -> input offsets
    offset = np.array([3.5, 3.5]) - inverse @ centre
    out = affine_transform(np.asarray(digit, np.float64), inverse, offset=offset,
                           output_shape=(CANVAS, CANVAS), order=1, mode="constant", cval=0.0)
    background = rng.uniform(*BACKGROUND)
    ink = rng.uniform(*CONTRAST) * (255.0 - background) / 16.0
    return np.clip(np.rint(background + out * ink), 0, 255).astype(np.uint8)


@dataclass
class DemoData:
    root: Path
    lists: Path
    train_count: int
    test_count: int


def _listing(rows: list[tuple[int, str]]) -> str:
    """SOP's ``Ebay_*.txt``: header, then ``image_id class_id super_class_id path``."""
    lines = ["image_id class_id super_class_id path"]
    lines += [f"{i + 1} {cls + 1} 1 {path}" for i, (cls, path) in enumerate(rows)]
    return "\n".join(lines) + "\n"


def make_data(root, *, seed: int = SEED, train_copies: int = TRAIN_COPIES,
              per_class: int | None = None) -> DemoData:
    """Render the demo's PNG images and write its two .mat lists under ``root`` (kept when present).

    ``per_class`` keeps only the first images of each class (tests use a tiny set).

    ``root/images/{train,test}/<class>/<n>.png``, ``root/Ebay_{train,test}.txt``, and
    ``root/lists/Demo_{Train,Test}ImagePathBoxCell.mat`` (written last: their presence marks a
    complete folder for this seed and copy count, recorded in ``root/demo_data.txt``)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from rll_repro.data.writers import write_lists
    from rll_repro.fileio import atomic_write, atomic_write_text

    root = Path(root)
    lists = root / "lists"
    stamp = (f"seed {seed} copies {train_copies} per class {per_class} canvas {CANVAS} scale {SCALE} "
             f"rotation {ROTATION} background {BACKGROUND} contrast {CONTRAST}\n")
    digits = load_digits()
    target = np.asarray(digits.target)
    keep = np.ones(len(target), bool)
    if per_class is not None:
        keep = np.zeros(len(target), bool)
        for cls in (*TRAIN_CLASSES, *TEST_CLASSES):
            keep[np.flatnonzero(target == cls)[:per_class]] = True
    n_train = int((keep & np.isin(target, TRAIN_CLASSES)).sum()) * train_copies
    n_test = int((keep & np.isin(target, TEST_CLASSES)).sum())
    marker = root / "demo_data.txt"
    if marker.exists() and marker.read_text() == stamp and all((lists / f).is_file() for f in DATA_FILES):
        return DemoData(root, lists, n_train, n_test)
    rng = np.random.default_rng(seed)
    for split, classes, copies in (("train", TRAIN_CLASSES, train_copies), ("test", TEST_CLASSES, 1)):
        rows = []
        for copy in range(copies):
            for index in np.flatnonzero(keep & np.isin(target, classes)):
                cls = int(target[index])
                rel = f"images/{split}/{cls}/{index:04d}_{copy}.png"
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(path) as handle:
                    Image.fromarray(render(digits.images[index], rng), mode="L").save(handle, format="PNG")
                rows.append((cls, rel))
        atomic_write_text(root / f"Ebay_{split}.txt", _listing(rows))
    lists.mkdir(parents=True, exist_ok=True)
    for split, name in zip(("train", "test"), DATA_FILES):
        write_lists("sop", root, lists / name, split)
    atomic_write_text(marker, stamp)
    return DemoData(root, lists, n_train, n_test)


# ------------------------------------------------------------------------------------------ nets
def trunk(b: NetBuilder, dim: int = DIM) -> str:
    """Conv-BN-Scale-ReLU-MAXpool x 3, global MAX pool (``pool``), embedding FC (``embedding``)."""
    x, size = "data", CANVAS
    for index, channels in TRUNK:
        x = bn.conv_bn(b, f"conv{index}", x, channels, kernel=3, pad=1)
        x = bn.pool(b, f"pool{index}", x, "MAX", 2, 2)
        size //= 2
    bn.pool(b, "pool", x, "MAX", size, 1)
    bn.fc(b, FEATURE_BLOB, "pool", dim, lr_mult=10)
    return FEATURE_BLOB


def _inputs(b: NetBuilder, batch: int, attention: bool = False) -> None:
    b.legacy_input("data", (batch, 3, CANVAS, CANVAS))
    b.legacy_input("label", (batch, 1, 1, 1))
    if attention:
        b.legacy_input("image_attention", (batch, 1, 1, 1))


def _normalised(b: NetBuilder) -> str:
    x = bn.reshape_nc11(b, "embedding/reshape", FEATURE_BLOB)
    return bn.normalization(b, "embedding/L2Norm", x, "L2")


def rll_train_net(batch: int) -> NetBuilder:
    b = NetBuilder("demo_rll")
    _inputs(b, batch)
    trunk(b)
    x = _normalised(b)
    b.add("loss", "DistanceWeightedValidPairLossV12", [x, "label"], ["loss"], loss_weight=[1],
          contrastive_loss_param_v2={"pn_margin": 0.4}, softmax_t_p_param={"scale": 0},
          softmax_t_n_param={"scale": 10}, propagate_down=[True, False])
    return b


def osm_train_net(batch: int, num_classes: int = len(TRAIN_CLASSES)) -> NetBuilder:
    b = NetBuilder("demo_osm_caa")
    _inputs(b, batch, attention=True)
    trunk(b)
    prob = bn._classifier_head(b, "pool", num_classes, "label", "classifier", "prob", "prob_gt",
                               "softmax_loss")
    attention = bn._caa(b, "attention", prob)
    x = _normalised(b)
    bn._osm_loss(b, "loss", x, "label", attention, osm_sigma=0.8)
    return b


def baseline_train_net(loss_type: str, batch: int) -> NetBuilder:
    """The trunk, the L2-normalised embedding and one baseline loss layer (its default parameters)."""
    b = NetBuilder(f"demo_{loss_type}")
    _inputs(b, batch)
    trunk(b)
    x = _normalised(b)
    b.add("loss", loss_type, [x, "label"], ["loss"], loss_weight=[1], propagate_down=[True, False])
    return b


def deploy_net() -> NetBuilder:
    b = NetBuilder("demo_deploy")
    b.legacy_input("data", (1, 3, CANVAS, CANVAS))
    trunk(b)
    return b


def demo_solver(rll: bool, max_iter: int = MAX_ITER) -> object:
    """Multistep SGD (momentum 0.9, x0.2 at 60 % and 85 %); the RLL solver carries the fork's
    annealing targets equal to the layer's values (a no-op, as in the released configs)."""
    extra = dict(pn_margin=0.4, p_temperature=0, n_temperature=10) if rll else {}
    return solver(net="train.prototxt", type="SGD", base_lr=0.01, lr_policy="multistep", gamma=0.2,
                  stepvalue=[int(max_iter * 0.6), int(max_iter * 0.85)], momentum=0.9,
                  weight_decay=0.0005, max_iter=max_iter, random_seed=1, **extra)


# -------------------------------------------------------------------------------------- settings
_DEPLOY = GeneratedFile(f"{FOLDER}/deploy.prototxt", "deploy", None, lambda: deploy_net().net)


def _setting(method: str, folder: str, train_fn, rll: bool, sampler: str) -> Setting:
    batch = CLASSES_PER_BATCH * IMAGES_PER_CLASS
    train = GeneratedFile(f"{FOLDER}/{folder}/train.prototxt", "train", None, lambda: train_fn(batch).net)
    solv = GeneratedFile(f"{FOLDER}/{folder}/solver.prototxt", "solver", None, lambda: demo_solver(rll))
    return Setting(
        name=f"demo:{method}", paper="demo", dataset="digits on a canvas",
        description=f"the embedded demo, {method}: scattered scikit-learn digits, train 0-4 / test 5-9",
        train=train, solver=solv,
        deploys=(Deploy("embedding", (method,), _DEPLOY, 128, (MAX_ITER,), (), FEATURE_BLOB),),
        classes_per_batch=CLASSES_PER_BATCH, images_per_class=IMAGES_PER_CLASS, sampler=sampler,
        train_transform=TRANSFORM_OSM, test_transform=TRANSFORM_OSM, input_size=CANVAS,
        max_iter=MAX_ITER, save_start=MAX_ITER, save_interval=MAX_ITER, eval_protocol="sop",
        recall_ks=RECALL_KS, data_files=DATA_FILES, published=(PUBLISHED,), seed=SEED,
        pretrained_weights="none (trained from the fillers)")


def _baseline_folder(loss_type: str) -> str:
    return "baselines/" + loss_type[:-len("Loss")].lower()


METHODS: dict[str, Setting] = {
    RLL: _setting(RLL, "rll", rll_train_net, True, SAMPLER_RLL),
    OSM: _setting(OSM, "osm_caa", osm_train_net, False, SAMPLER_OSM),
}
METHODS.update({
    name: _setting(name, _baseline_folder(name), (lambda n: lambda batch: baseline_train_net(n, batch))(name),
                   False, SAMPLER_RLL)
    for name in BASELINES})


def generated_files() -> list[GeneratedFile]:
    """Every prototxt of the demo (rendered by tools/gen_prototxt.py into prototxt/demo/)."""
    seen: dict[str, GeneratedFile] = {}
    for setting in METHODS.values():
        for f in setting.files:
            seen.setdefault(f.path, f)
    return list(seen.values())
