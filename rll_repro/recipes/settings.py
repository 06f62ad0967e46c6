"""The paper settings as plain data: which prototxts, batch composition, schedule, evaluation.

One :class:`Setting` per configuration the original repositories release (rll SPEC §4, §5, §7;
osm_caa SPEC §5, §6, §8, §9). ``rll-repro reproduce SETTING`` drives train -> eval -> diff from it.
Every net and solver is *generated* by :mod:`rll_repro.recipes.bninception` (the originals are
third-party files and are never copied); ``tools/gen_prototxt.py`` writes them under ``prototxt/``
and the tests prove each one equal to its original as a protobuf message.

Names used across modules (strings, so this file imports nothing heavy):

- ``sampler``: class names in :mod:`rll_repro.data.samplers` (``RLLBatchSampler``: RLL
  ``get_train_minibatch_ori_aug_v05``/``_v04``, C classes x K images, fresh class permutation per
  epoch; ``OSMBatchSampler``: OSM ``get_train_minibatch``, C random classes x K images every
  iteration; ``TrackletBatchSampler``: MARS/LPW identities x tracklets x frames).
- ``train_transform``/``test_transform``: names of the preprocessing callables in
  :mod:`rll_repro.data.transforms` (see the ``TRANSFORM_*`` constants below).
- ``eval_protocol``: the ``--protocol`` names of ``rll-repro eval`` (sop, inshop, market, cars, cub,
  mars, lpw).
- published keys: ``<paper>/<dataset>/<entry>[/<sub-entry>]`` paths into the published-number
  registry (``rll_repro.eval.published``; the json files of ../shared/reference/*/published.json).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

RLL_REPOSITORY = "XinshaoAmosWang/Ranked-List-Loss-for-DML"
RLL_COMMIT = "fac7bb98a6d785a1f6e2544d06bd9efe55077079"
OSM_REPOSITORY = "XinshaoAmosWang/OSM_CAA_WeightedContrastiveLoss"
OSM_COMMIT = "d9f516ce432b38dfb5755d40926c49bedf22483d"

# Where a setting's configuration comes from (``reproduce --list`` / ``--coverage`` print it).
PROVENANCE_RELEASED = "as released"                  # the files of the commit the README points to
PROVENANCE_OLDER_COMMIT = "released in an older commit"  # files found only in an earlier commit
PROVENANCE_RECONSTRUCTED = "reconstructed"           # no config file exists: rebuilt from the sources
PROVENANCES = (PROVENANCE_RELEASED, PROVENANCE_OLDER_COMMIT, PROVENANCE_RECONSTRUCTED)

PRETRAINED_WEIGHTS = "googlenet_bn.caffemodel"
"""BN-Inception ImageNet weights (``pretrain_model/googlenet_bn.caffemodel`` in both repositories).
Users supply it; nothing is downloaded. Loaded with ``copy_from`` (by layer name)."""

# Preprocessing variants (rll SPEC §4.3, osm_caa SPEC §5, §9): attribute names in
# rll_repro.data.transforms, so ``getattr(transforms, setting.train_transform)`` is the transform.
TRANSFORM_RLL_TRAIN = "RLLTrainTransform"        # resize 256x256, random aspect/scale crop, flip, ->227
TRANSFORM_RLL_TEST = "rll_test_transform"        # resize 256x256, centre crop 227
TRANSFORM_MARKET_TRAIN = "MarketTrainTransform"  # bbox crop+15, long side 256, pad 255, flip, crop 227
TRANSFORM_MARKET_TEST = "market_test_transform"  # same framing, centre crop 227
TRANSFORM_OSM = "osm_offline_transform"          # resize 224x224, BGR, mean; no augmentation
# (CARS196/CUB apply it offline into the .mat cells; MARS/LPW apply it to every frame on the fly.)

# Mini-batch samplers: class names in rll_repro.data.samplers.
SAMPLER_RLL = "RLLBatchSampler"          # C classes x K images, epochs over random class subsets
SAMPLER_OSM = "OSMBatchSampler"          # C random classes x K images, fresh draw every iteration
SAMPLER_OSM_VIDEO = "TrackletBatchSampler"  # identities x tracklets x frames (MARS/LPW)


@dataclass(frozen=True)
class Original:
    """A file of an original repository, named by its path inside the repository at ``commit``."""

    repository: str
    commit: str
    path: str

    @property
    def paper(self) -> str:
        return "rll" if self.repository == RLL_REPOSITORY else "osm_caa"

    @property
    def shared_path(self) -> str:
        """Where the read-only copy lives under ../shared (tests read it there, in place)."""
        return f"reference/{self.paper}/original/{self.path}"


@dataclass(frozen=True)
class GeneratedFile:
    """A prototxt under ``prototxt/`` generated from the recipes, and the original it reproduces."""

    path: str                    # relative to the repository root
    kind: str                    # "train" | "solver" | "deploy"
    original: Original
    build: Callable = field(compare=False, repr=False)  # () -> NetParameter | SolverParameter
    used_by_release: bool = True  # False: an extra the released scripts do not run
    note: str = ""               # header lines replacing "equal ...; proven by ..." when that differs


@dataclass(frozen=True)
class Deploy:
    """A test/deploy net and how the original test script used it."""

    name: str                    # e.g. "H", "concat", "LH"; the original file's suffix
    heads: tuple[str, ...]       # embeddings concatenated into the feature, in order
    file: GeneratedFile
    batch_size: int              # forward batch of the original test script
    checkpoints: tuple[int, ...]  # snapshot iterations the original evaluated with this net
    published: tuple[str, ...] = ()
    feature_blob: str = "pool5/7x7_s1"


@dataclass(frozen=True)
class Setting:
    """Everything ``rll-repro reproduce`` needs to rerun one released configuration."""

    name: str
    paper: str                   # "rll" | "osm_caa"
    dataset: str
    description: str
    train: GeneratedFile
    solver: GeneratedFile
    deploys: tuple[Deploy, ...]
    classes_per_batch: int       # C
    images_per_class: int        # K; batch = C x K (asserted equal to the train net's input)
    sampler: str
    train_transform: str
    test_transform: str
    input_size: int              # crop fed to the net (train and test)
    max_iter: int                # the MATLAB loop's train_maxiter
    save_start: int
    save_interval: int
    eval_protocol: str
    recall_ks: tuple[int, ...]
    data_files: tuple[str, ...]  # the .mat lists the original scripts load (users make them)
    published: tuple[str, ...]   # headline published-number keys for this setting
    seed: int = 123              # MATLAB rng(123) and caffe.set_random_seed(123)
    pretrained_weights: str = PRETRAINED_WEIGHTS
    tracklets_per_class: int | None = None   # video settings: K = tracklets x frames
    frames_per_tracklet: int | None = None
    notes: str = ""
    provenance: str = ""         # one of PROVENANCES; "" = derived (see :attr:`release_status`)

    @property
    def release_status(self) -> str:
        """``provenance`` if set, else "as released" for a file of the released commits and
        "reconstructed" for a setting without an original file (demo, baselines)."""
        if self.provenance:
            return self.provenance
        original = getattr(self.train, "original", None)
        if original is None or self.paper not in ("rll", "osm_caa"):
            return PROVENANCE_RECONSTRUCTED
        if original.commit in (RLL_COMMIT, OSM_COMMIT):
            return PROVENANCE_RELEASED
        return PROVENANCE_OLDER_COMMIT

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class

    @property
    def snapshot_iters(self) -> tuple[int, ...]:
        """Iterations at which the original loop saves a snapshot (iter >= start, iter % interval == 0)."""
        first = -(-self.save_start // self.save_interval) * self.save_interval
        return tuple(range(first, self.max_iter + 1, self.save_interval))

    def deploy(self, name: str) -> Deploy:
        for d in self.deploys:
            if d.name == name:
                return d
        raise KeyError(f"setting {self.name} has no deploy {name!r}; "
                       f"it has {', '.join(d.name for d in self.deploys)}")

    def as_dict(self) -> dict:
        """Plain JSON-ready data (file builders left out), e.g. for ``reproduce --list --json``."""
        def strip(obj):
            if isinstance(obj, dict):
                return {k: strip(v) for k, v in obj.items() if k != "build"}
            if isinstance(obj, (list, tuple)):
                return [strip(v) for v in obj]
            return obj

        out = strip(asdict(self))
        out.update(batch_size=self.batch_size, snapshot_iters=list(self.snapshot_iters),
                   release_status=self.release_status)
        return out

    def describe(self) -> str:
        """A few human-readable lines: what ``rll-repro reproduce`` will run for this setting."""
        batch = f"{self.classes_per_batch} x {self.images_per_class}"
        if self.tracklets_per_class:
            batch += f" ({self.tracklets_per_class} tracklets x {self.frames_per_tracklet} frames)"
        lines = [f"{self.name}: {self.description}",
                 f"  train   {self.train.path}  (batch {batch} = {self.batch_size}, "
                 f"{self.sampler}, {self.train_transform})",
                 f"  solver  {self.solver.path}  (max_iter {self.max_iter}, snapshots every "
                 f"{self.save_interval} from {self.save_start}, seed {self.seed})",
                 f"  weights {self.pretrained_weights} (user-supplied ImageNet BN-Inception)",
                 f"  data    {', '.join(self.data_files)} (the original .mat lists)",
                 f"  eval    --protocol {self.eval_protocol}, Recall@{self.recall_ks}"]
        for d in self.deploys:
            ck = d.checkpoints
            span = f"{ck[0]}" if len(ck) == 1 else f"{ck[0]}..{ck[-1]} ({len(ck)} checkpoints)"
            lines.append(f"  deploy  {d.name:<9} {d.file.path}  heads {','.join(d.heads)}; "
                         f"iters {span}")
        lines += [f"  published {key}" for key in self.published]
        return "\n".join(lines)

    @property
    def files(self) -> tuple[GeneratedFile, ...]:
        """Every generated file of this setting (train, solver, deploys), without duplicates."""
        seen, out = set(), []
        for f in (self.train, self.solver, *(d.file for d in self.deploys)):
            if f.path not in seen:
                seen.add(f.path)
                out.append(f)
        return tuple(out)


REGISTRY: dict[str, Setting] = {}


def register(setting: Setting) -> Setting:
    """Add ``setting`` to the registry (engineer F's ``recipes/digits.py`` registers ``digits``)."""
    REGISTRY[setting.name] = setting
    return setting
