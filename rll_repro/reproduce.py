"""Reproduce one paper row: train with the original schedule, evaluate its checkpoints, diff.

``rll-repro reproduce SETTING`` (a :class:`rll_repro.recipes.Setting`) runs, in a run folder:

1. **check** the inputs up front (weights file, the setting's .mat lists, every image present),
   each failure one line;
2. **train** as the original MATLAB loop (rll SPEC §4, osm SPEC §5): the setting's solver and train
   net, ``copy_from`` the ImageNet weights, the setting's sampler and train transform, snapshots
   ``checkpoints1/checkpoint_iter_<N>`` at ``iter >= save_start and iter % save_interval == 0``
   (plus the iterations asked to be evaluated). If the folder already holds a complete snapshot the
   run resumes from the latest one (weights, momentum, lr step, sampler position: bitwise equal to
   an unbroken run), so a killed run is simply restarted;
3. **evaluate** the checkpoints the original test scripts evaluated (rll SPEC §5, osm SPEC §6) with
   every released deploy net: TEST phase, test-time transform, the script's forward batch, the
   protocol's metric; one ``results/<deploy>_iter_<N>.json`` (percent) per checkpoint, skipped when
   present, and the original result file (``Recall_H_d64.txt`` lines
   ``iter: %d, rank1: %.3f, ...`` in fractions, OSM ``Recall.txt`` / ``CUB_Recall.txt``, Market
   ``Record_concat.txt``) rebuilt from them;
4. **diff** the last evaluated checkpoint of each deploy against its published entry
   (:mod:`rll_repro.eval.diff`); over ``tolerance`` points means exit code 1.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rll_repro.errors import DataError
from rll_repro.eval.protocols import LPW_PROBE, PROTOCOLS, RETRIEVAL, VIDEO
from rll_repro.train import LoaderBatchSource

SNAPSHOT_DIR = "checkpoints1"      # the RLL scripts' folder name
SNAPSHOT_NAME = "checkpoint"       # checkpoint_iter_<N>.caffemodel
SUPPORTED_PROTOCOLS = PROTOCOLS
REFERENCE_CROP = 227               # the RLL transforms: resize to 256, crop 227


# ------------------------------------------------------------------------------------ inputs
@dataclass
class Inputs:
    """The checked files of one run."""

    weights: Path | None
    train_list: Path
    test_list: Path
    data_root: str | None
    query_idx: Path | None = None   # MARS query_IDX.mat


def check_inputs(setting, *, lists_dir, data_root=None, weights=None, need_weights: bool = True,
                 check_images: bool = True) -> Inputs:
    """Every file the run needs, checked before any work (one-line DataError otherwise)."""
    if setting.eval_protocol not in SUPPORTED_PROTOCOLS:
        raise DataError(f"setting {setting.name}: the {setting.eval_protocol} protocol is not wired into "
                        f"reproduce; supported: {', '.join(SUPPORTED_PROTOCOLS)}")
    if need_weights and not weights:
        raise DataError(f"setting {setting.name} needs --weights ({setting.pretrained_weights})")
    if weights and not Path(weights).is_file():
        raise DataError(f"--weights {weights}: file not found ({setting.pretrained_weights}, the ImageNet "
                        "BN-Inception model, is user-supplied)")
    if not lists_dir:
        raise DataError(f"setting {setting.name} needs --lists DIR holding {', '.join(setting.data_files)}")
    lists = Path(lists_dir)
    if not lists.is_dir():
        raise DataError(f"--lists {lists}: not a folder (it must hold {', '.join(setting.data_files)})")
    missing = [name for name in setting.data_files if not (lists / name).is_file()]
    if missing:
        raise DataError(f"--lists {lists}: missing {', '.join(missing)} (setting {setting.name} needs "
                        f"{', '.join(setting.data_files)}; make them with rll-repro make-lists)")
    if data_root is not None and not Path(data_root).is_dir():
        raise DataError(f"--data-root {data_root}: not a folder")
    inputs = Inputs(Path(weights) if weights else None, lists / setting.data_files[0],
                    lists / setting.data_files[1], str(data_root) if data_root is not None else None,
                    lists / setting.data_files[2] if len(setting.data_files) > 2 else None)
    if check_images:
        try:
            train_list(setting, inputs).check_images()
            if setting.eval_protocol in RETRIEVAL:
                test_list(setting, inputs).check_images()
            elif setting.eval_protocol in VIDEO:
                from rll_repro.data.lists import check_images_exist

                tr = tracklets(inputs.test_list, inputs.data_root, "test")
                check_images_exist([p for f in tr.frames for p in f], str(inputs.test_list))
            else:
                from rll_repro.data.lists import check_images_exist

                ev = market_evaluation(inputs)
                check_images_exist([*ev.query_paths, *ev.test_paths,
                                    *(p for m in ev.multi_query_paths for p in m)], str(inputs.test_list))
        except DataError as exc:
            if "missing" not in str(exc):
                raise
            raise DataError(f"{exc} (check --data-root{' ' + str(data_root) if data_root else ''})") from None
    return inputs


@functools.lru_cache(maxsize=8)
def _load_list(path: str, data_root: str | None):
    from rll_repro.data import loader

    return loader.resolve_source(path, data_root=data_root)


@functools.lru_cache(maxsize=4)
def _load_tracklets(path: str, data_root: str | None, split: str):
    from rll_repro.data import lists

    return lists.load_tracklets(path, split, data_root=data_root)


def tracklets(path, data_root, split: str):
    """MARS/LPW tracklet list (frames per tracklet, labels, cameras)."""
    return _load_tracklets(str(path), data_root, split)


def train_list(setting, inputs: Inputs):
    """The training images as an ImageList (video settings: every frame, tracklet by tracklet, with
    the fed label: MARS its stored label, LPW label - 1, osm SPEC §9)."""
    if setting.eval_protocol in VIDEO:
        tr = tracklets(inputs.train_list, inputs.data_root, "train")
        return tr.frame_list(feed_stored_labels=setting.eval_protocol == "mars")
    return _load_list(str(inputs.train_list), inputs.data_root)


def test_list(setting, inputs: Inputs):
    return _load_list(str(inputs.test_list), inputs.data_root)


def market_evaluation(inputs: Inputs):
    from rll_repro.data import lists

    return lists.load_market_evaluation(str(inputs.test_list), data_root=inputs.data_root)


# -------------------------------------------------------------------------------- transforms
def _outer_size(crop: int) -> int:
    """The resize before the crop: 256 for the released 227 crop, scaled alike for other crops."""
    return 256 if crop == REFERENCE_CROP else int(round(crop * 256 / REFERENCE_CROP))


def train_transform(setting):
    """The setting's training preprocessing at its ``input_size``."""
    from rll_repro.data import transforms

    t = getattr(transforms, setting.train_transform)
    if isinstance(t, type):
        return t(size=_outer_size(setting.input_size), crop=setting.input_size)
    return functools.partial(t, size=setting.input_size)  # osm_offline_transform: resize only


def test_transform(setting):
    """The setting's test-time preprocessing (centre crop / plain resize) at its ``input_size``."""
    from rll_repro.data import transforms

    t = getattr(transforms, setting.test_transform)
    if setting.test_transform == "osm_offline_transform":
        return functools.partial(t, size=setting.input_size)
    return functools.partial(t, size=_outer_size(setting.input_size), crop=setting.input_size)


# ---------------------------------------------------------------------------------- training
class SettingBatchSource(LoaderBatchSource):
    """The setting's sampler + train transform over its list, shaped as the train net's inputs
    (labels ``N`` or ``N x 1 x 1 x 1``; OSM's ``image_attention`` input all ones, as train.m)."""

    def __init__(self, setting, image_list, net, *, seed: int | None = None, workers: int = 0,
                 frames_per_tracklet=None):
        from rll_repro.data import loader, samplers

        sampler_cls = getattr(samplers, setting.sampler)
        seed = setting.seed if seed is None else seed
        self.frames = None
        if setting.sampler == "TrackletBatchSampler":  # endless samplers: --max-iter may pass the setting's
            if frames_per_tracklet is None:
                raise DataError(f"setting {setting.name}: the tracklet sampler needs the tracklets' frame counts")
            counts = np.asarray(frames_per_tracklet)
            first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            labels = image_list.class_ids[first]  # one class id per tracklet
            sampler = sampler_cls(labels, counts, ids_per_batch=setting.classes_per_batch,
                                  tracklets_per_id=setting.tracklets_per_class,
                                  frames=setting.frames_per_tracklet, seed=seed, num_iterations=None)
            self.frames = int(setting.frames_per_tracklet)
        else:
            sampler = sampler_cls(image_list.class_ids, setting.classes_per_batch, setting.images_per_class,
                                  seed=seed, num_iterations=None)
        super().__init__(loader.make_train_loader(image_list, sampler, train_transform(setting),
                                                  num_workers=workers))
        self.shapes = {name: tuple(net.blobs[name].shape) for name in net.inputs}
        if "data" not in self.shapes or "label" not in self.shapes:
            raise DataError(f"{setting.train.path}: the train net needs inputs 'data' and 'label' "
                            f"(has {', '.join(net.inputs)})")
        batch = self.shapes["data"][0]
        if batch != setting.batch_size:
            raise DataError(f"{setting.train.path}: input batch {batch} != {setting.classes_per_batch} "
                            f"classes x {setting.images_per_class} images of setting {setting.name}")

    def batch(self, iteration: int) -> dict[str, np.ndarray]:
        out = super().batch(iteration)
        labels = out["label"]
        out["label"] = labels.reshape(self.shapes["label"])
        if out["data"].shape[1:] != self.shapes["data"][1:]:
            raise DataError(f"train images are {out['data'].shape[1:]} but the net takes {self.shapes['data'][1:]}")
        if "tracklet_label" in self.shapes and self.frames:  # one label per tracklet (its first frame's)
            per = labels.reshape(-1, self.frames)[:, 0]
            out["tracklet_label"] = per.reshape(self.shapes["tracklet_label"])
        for name, shape in self.shapes.items():  # image_attention, tracklet_attention: ones (train.m)
            if name not in out:
                out[name] = np.ones(shape, np.float32)
        return out


def batch_source(setting, inputs: Inputs, net, *, seed=None, workers: int = 0) -> SettingBatchSource:
    """The setting's training batches over ``inputs.train_list`` for ``net`` (used by ``train`` too)."""
    counts = None
    if setting.eval_protocol in VIDEO:
        counts = [len(f) for f in tracklets(inputs.train_list, inputs.data_root, "train").frames]
    return SettingBatchSource(setting, train_list(setting, inputs), net, seed=seed, workers=workers,
                              frames_per_tracklet=counts)


def snapshot_prefix(out) -> Path:
    return Path(out) / SNAPSHOT_DIR / SNAPSHOT_NAME


def model_path(out, iteration: int) -> Path:
    return Path(f"{snapshot_prefix(out)}_iter_{iteration}.caffemodel")


def train(setting, inputs: Inputs, out, *, max_iter: int | None = None, extra_saves=(), seed=None,
          workers: int = 0, echo: bool = False, progress: bool | None = None) -> dict:
    """Train (or resume) to ``max_iter``; returns ``{"iter", "resumed_from", "snapshots"}`` (of the
    whole run), ``log`` (this start's log file), ``environment`` (this start's thread count, torch,
    BLAS: :func:`rll_repro.train.run_environment`) and ``segments`` (each start of the run: first and
    end iteration, log, environment). history.json and curves.png hold the whole run."""
    from rll_repro import recipes
    from rll_repro.solver import get_solver
    from rll_repro.train import Schedule, latest_snapshot, run_session

    out = Path(out)
    prefix = snapshot_prefix(out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    solver = get_solver(str(recipes.path(setting.solver.path)))
    source = batch_source(setting, inputs, solver.net, seed=seed, workers=workers)
    solver.state_hooks["batch_source"] = (source.state_dict, source.load_state_dict)
    target = int(max_iter if max_iter is not None else setting.max_iter)
    schedule = Schedule(max_iter=target, output_interval=20, save_start=setting.save_start,
                        save_interval=setting.save_interval, snapshot_prefix=str(prefix),
                        extra_saves=frozenset(int(i) for i in extra_saves))
    latest = latest_snapshot(prefix)
    history, run_log = run_session(solver, source, schedule, out, resume=latest,
                                   weights=inputs.weights if latest is None else None,
                                   echo=echo, progress=progress, title=setting.name)
    return {"iter": solver.iter, "resumed_from": str(latest) if latest else None, "snapshots": history.snapshots,
            "log": run_log.name if run_log else None, "environment": history.segments[-1]["environment"],
            "segments": history.segments}


# -------------------------------------------------------------------------------- evaluation
def default_deploys(setting) -> list:
    """The deploy nets the released test scripts run (generated extras left out)."""
    return [d for d in setting.deploys if d.file.used_by_release]


def eval_iterations(setting, deploy, final_iter: int, *, checkpoints=None, eval_every=None) -> list[int]:
    """Checkpoints to evaluate: explicit, every N, or the original script's list (those reached);
    a run stopped before any of them evaluates its last iteration."""
    if checkpoints:
        its = sorted({int(c) for c in checkpoints if 0 < int(c) <= final_iter})
    elif eval_every:
        its = list(range(int(eval_every), final_iter + 1, int(eval_every)))
    else:
        its = [c for c in deploy.checkpoints if c <= final_iter]
    return its or ([final_iter] if final_iter > 0 else [])


def result_file_name(setting, deploy) -> str:
    """The original result file of a deploy (rll SPEC §5, §8.2; osm SPEC §6, §10.1)."""
    if setting.eval_protocol == "mars":
        return "without_minus1_AVG.txt"
    if setting.eval_protocol == "lpw":
        return "LPW_TEST_AF.txt"
    if setting.paper == "osm_caa":
        return "CUB_Recall.txt" if setting.eval_protocol == "cub" else "Recall.txt"
    stem = Path(deploy.file.path).stem
    stem = stem[len("test_"):] if stem.startswith("test_") else stem
    return f"Record_{stem}.txt" if setting.eval_protocol == "market" else f"Recall_{stem}.txt"


def results_path(out, deploy, iteration: int) -> Path:
    return Path(out) / "results" / f"{deploy.name}_iter_{iteration}.json"


def evaluate_checkpoint(setting, deploy, model, inputs: Inputs, *, batch_size: int | None = None,
                        workers: int = 0) -> dict:
    """Metrics (percent) of one checkpoint through one deploy net under the setting's protocol."""
    from rll_repro import recipes
    from rll_repro.eval.protocols import evaluate_protocol
    from rll_repro.net import Net

    net = Net(str(recipes.path(deploy.file.path)), weights=str(model), phase="test")
    protocol = setting.eval_protocol
    if protocol in RETRIEVAL:
        test = test_list(setting, inputs)
    elif protocol in VIDEO:
        test = tracklets(inputs.test_list, inputs.data_root, "test")
    else:
        test = market_evaluation(inputs)
    query_idx = None
    if protocol == "mars":
        from rll_repro.data.lists import load_query_idx

        query_idx = load_query_idx(inputs.query_idx)
    out = evaluate_protocol(net, protocol, test, transform=test_transform(setting), blobs=[deploy.feature_blob],
                            batch_size=int(batch_size or deploy.batch_size), workers=workers,
                            recall_ks=setting.recall_ks, query_idx=query_idx, n_probe=LPW_PROBE,
                            desc=f"{deploy.name} ")
    result, meta = out.metrics, out.meta
    result = {k: float(v) for k, v in result.items()}
    result["_meta"] = {"setting": setting.name, "deploy": deploy.name, "net": deploy.file.path,
                       "model": str(model), "protocol": protocol, "units": "percent", **meta}
    return result


def _fraction(v: float, digits: int) -> str:
    return f"{v / 100:.{digits}f}"


def result_lines(setting, iteration: int, result: dict) -> str:
    """One checkpoint's record in the original result-file format (fractions)."""
    if setting.eval_protocol == "market":
        names = (("single query", "single_query", "    "),
                 ("multiple queries with avg pooling", "multi_query_avg", "     "),
                 ("multiple queries with max pooling", "multi_query_max", "     "),
                 ("multiple queries with max pooling + re-ranking", "multi_query_max_rerank", "     "))
        lines = [f"iter: {iteration}, "]
        for text, key, indent in names:
            if f"{key}/mAP" in result:
                lines.append(f"{indent}{text}: mAP = {_fraction(result[key + '/mAP'], 6)}, "
                             f"r1 precision = {_fraction(result[key + '/R@1'], 6)}")
        return "\n".join(lines) + "\n"
    if setting.eval_protocol == "lpw":  # LPW_TEST_AF.txt
        pairs = [f"rank{k}:{_fraction(result[f'R@{k}'], 6)}" for k in setting.recall_ks if f"R@{k}" in result]
        return f"split_index:1,iter:{iteration}, " + ",".join(pairs) + "\n"
    digits = 6 if setting.eval_protocol == "mars" else 3
    pairs = [f"rank{k}: {_fraction(result[f'R@{k}'], digits)}" for k in setting.recall_ks if f"R@{k}" in result]
    if setting.eval_protocol == "mars" and "mAP" in result:  # without_minus1_AVG.txt
        pairs.append(f"mAP: {_fraction(result['mAP'], 6)}")
    return ", ".join([f"iter: {iteration}", *pairs]) + "\n"


def write_result_file(setting, deploy, out) -> Path:
    """Rebuild the original result file of ``deploy`` from its results JSONs (iteration order)."""
    from rll_repro.fileio import atomic_write_text

    found = []
    for path in (Path(out) / "results").glob(f"{deploy.name}_iter_*.json"):
        stem = path.stem[len(deploy.name) + len("_iter_"):]
        if stem.isdigit():
            found.append((int(stem), json.loads(path.read_text())))
    target = Path(out) / result_file_name(setting, deploy)
    atomic_write_text(target, "".join(result_lines(setting, it, res) for it, res in sorted(found, key=lambda x: x[0])))
    return target


@dataclass
class DiffOutcome:
    deploy: str
    iteration: int
    reference: str
    table: str
    over: int
    compared: int


@dataclass
class Outcome:
    train: dict
    evaluated: dict = field(default_factory=dict)   # deploy name -> [iterations]
    result_files: list = field(default_factory=list)
    diffs: list = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(d.over for d in self.diffs) else 0


def published_key(deploy, iteration: int) -> str | None:
    """The deploy's published entry of ``iteration`` (keys ending ``_iter26000``, ``iter6000``,
    ``repo snapshot iter 7000 [raw images]``), else its first (the paper's or final number)."""
    import re

    if not deploy.published:
        return None
    for key in deploy.published:
        m = re.search(r"iter\s*(\d+)[^/]*$", key.rsplit("/", 1)[-1])
        if m and int(m.group(1)) == iteration:
            return key
    return deploy.published[0]


def diff_results(deploy, iteration: int, results: dict, tolerance: float, reference: str | None = None) -> DiffOutcome | None:
    from rll_repro.eval import diff

    key = reference or published_key(deploy, iteration)
    if key is None:
        return None
    ref, source = diff.resolve_reference(key)
    ours = diff.flatten_numbers(results)
    rows = diff.compare(ours, ref, source)
    over = diff.exceeded(rows, tolerance)
    table = diff.format_table(rows, tolerance)
    return DiffOutcome(deploy.name, iteration, key, table, len(over), sum(r.delta is not None for r in rows))


def reproduce(setting, inputs: Inputs, out, *, max_iter=None, eval_every=None, checkpoints=None,
              deploys=None, test_batch=None, tolerance: float = 0.5, against: str | None = None,
              seed=None, workers: int = 0, echo: bool = False, progress: bool | None = None,
              report=print) -> Outcome:
    """Train (resuming), evaluate the checkpoints, write the result files, diff. See the module doc."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [setting.deploy(d) for d in deploys] if deploys else default_deploys(setting)
    target = int(max_iter if max_iter is not None else setting.max_iter)
    wanted = {d.name: eval_iterations(setting, d, target, checkpoints=checkpoints, eval_every=eval_every)
              for d in chosen}
    saves = {it for its in wanted.values() for it in its}
    trained = train(setting, inputs, out, max_iter=target, extra_saves=saves, seed=seed, workers=workers,
                    echo=echo, progress=progress)
    outcome = Outcome(trained)
    from rll_repro.fileio import atomic_write_text

    for deploy in chosen:
        done = []
        for it in wanted[deploy.name]:
            path = results_path(out, deploy, it)
            if not path.exists():
                model = model_path(out, it)
                if not model.exists():
                    raise DataError(f"{model}: checkpoint to evaluate is missing (delete {out} or pick "
                                    "--checkpoints among the saved ones)")
                result = evaluate_checkpoint(setting, deploy, model, inputs, batch_size=test_batch, workers=workers)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps(result, indent=1) + "\n")
                report(f"{deploy.name} iter {it}: " + "  ".join(
                    f"{k} {v:.2f}" for k, v in result.items() if not k.startswith("_")))
            done.append(it)
        outcome.evaluated[deploy.name] = done
        if done:
            outcome.result_files.append(str(write_result_file(setting, deploy, out)))
            last = json.loads(results_path(out, deploy, done[-1]).read_text())
            ref = against if (against and deploy is chosen[0]) else None
            d = diff_results(deploy, done[-1], last, tolerance, ref)
            if d is not None:
                outcome.diffs.append(d)
    summary = {"setting": setting.name, "train": trained, "evaluated": outcome.evaluated,
               "result_files": outcome.result_files, "tolerance": tolerance,
               "diffs": [{"deploy": d.deploy, "iter": d.iteration, "reference": d.reference,
                          "over": d.over, "compared": d.compared} for d in outcome.diffs],
               "exit_code": outcome.exit_code}
    atomic_write_text(out / "reproduce.json", json.dumps(summary, indent=1) + "\n")
    return outcome


def format_diffs(outcome: Outcome, tolerance: float) -> str:
    lines = []
    for d in outcome.diffs:
        lines.append(f"== {d.deploy} at iteration {d.iteration} vs {d.reference}")
        lines.append(d.table)
        lines.append(f"{d.over} of {d.compared} metrics differ by more than {tolerance:g} points" if d.over
                     else f"all {d.compared} compared metrics within {tolerance:g} points")
    if not outcome.diffs:
        lines.append("no published numbers for the evaluated deploys: nothing to diff")
    return "\n".join(lines)
