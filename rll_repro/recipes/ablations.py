"""The paper's SOP ablations as knobs on a RLL setting: ``rll-repro reproduce SETTING --set KNOB=VALUE``.

:data:`KNOBS` is the one place that says which fields each knob changes (train prototxt, solver
prototxt, setting) and which published table it reproduces (rll SPEC §8.1, slides 19-20):

=========  =====================================================  ==================  =============
knob       train net (every RLL loss layer, unless noted)         solver (V12 only)   table
=========  =====================================================  ==================  =============
alpha      ``contrastive_loss_param_v2.negative_threshold``       negative_threshold  3 (m .4, T 10)
m          ``contrastive_loss_param_v2.pn_margin``                pn_margin           4 (α 1.2, T 10)
T          ``softmax_t_n_param.scale``                            n_temperature       5 (m .4, α 1.2)
batch      ``input_dim[0]``, ``input_dim[4]`` (data, label); C, K  --                  7 (K = 3)
level      nothing: which deploy is evaluated (L, M, H, (L,M,H))  --                  6
=========  =====================================================  ==================  =============

The solver fields are the fork's annealing targets (SPEC §3.2): a V12 net's last RLL layer is moved
toward them every step, so a knob that changed only the layer would be annealed back; the
CVPR-era proto has no such fields, so CVPR-era solvers are left as they are.

What the Caffe gradient really uses (SPEC §0.2, §1.3, §1.5):

- the released V12 layer hard-codes its weighting boundaries to ``1 - m/2`` (positives) and
  ``1 + m/2`` (negatives): **alpha changes nothing in its gradient** (only the reported loss value),
  so ``--set alpha=`` on a V12 setting is an error; and ``m`` moves both boundaries, so α moves with
  it (α = 1 + m/2) instead of staying 1.2 as in Table 4: a warning says so;
- the CVPR-era layer (``rll-sop-cvpr``, the paper's own SOP config: batch 180, 512-d) uses
  ``alpha - m`` and ``alpha``: every knob there is the paper's ablation.

``level`` trains the (L,M,H) net unchanged and evaluates one head, as the published Table 6 does
(its H and (L,M,H) rows equal the RLL-H and RLL-(L,M,H) rows of the main table).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from . import edits
from .edits import RecipeError, V12_TYPE
from .settings import PROVENANCE_RECONSTRUCTED, GeneratedFile, Setting

LOSS = "layer[RLL loss]"
"""Stands for every RLL loss layer of the train net in the field paths below."""
TABLES = "rll/SOP/paper"
"""The published ablation tables (rll_repro.eval.published keys)."""


@dataclass(frozen=True)
class Knob:
    name: str
    meaning: str
    layer_field: str | None          # dotted field of every RLL loss layer
    solver_field: str | None         # the SolverParameter annealing target (V12 solvers only)
    net_fields: tuple[str, ...]      # other train-net field paths
    setting_fields: tuple[str, ...]  # Setting attributes
    table: str                       # published group under TABLES

    @property
    def train_paths(self) -> tuple[str, ...]:
        """Field paths (``field_diff`` form, loss layers as ``LOSS``) this knob may change."""
        own = (f"{LOSS}.{self.layer_field}",) if self.layer_field else ()
        return own + self.net_fields

    @property
    def solver_paths(self) -> tuple[str, ...]:
        return (self.solver_field,) if self.solver_field else ()


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("alpha", "alpha, the negative boundary (paper Table 3)",
         "contrastive_loss_param_v2.negative_threshold", "negative_threshold", (), (),
         "ablation_alpha (m=0.4,T=10)"),
    Knob("m", "m, the margin between the positive and negative boundaries (Table 4)",
         "contrastive_loss_param_v2.pn_margin", "pn_margin", (), (),
         "ablation_m (alpha=1.2,T=10)"),
    Knob("T", "T_n, the negative weighting temperature (Table 5)",
         "softmax_t_n_param.scale", "n_temperature", (), (),
         "ablation_T (m=0.4,alpha=1.2)"),
    Knob("batch", "the batch as C classes x K images, e.g. 40x3 (Table 7)",
         None, None, ("input_dim[0]", "input_dim[4]"), ("classes_per_batch", "images_per_class"),
         "ablation_batch_size"),
    Knob("level", "the embedding evaluated: L, M, H or (L,M,H) (Table 6); training unchanged",
         None, None, (), ("deploys",), "ablation_embedding_level"),
)}
PAPER_VALUES = {"alpha": 1.2, "m": 0.4, "T": 10.0}
"""The values each table holds fixed (slides: m 0.4, α 1.2, T 10)."""
LEVEL_DEPLOYS = {"L": "L", "M": "M", "H": "H", "(L,M,H)": "concat"}
PAPER_BASE = "rll-sop-cvpr"
"""The setting the paper's ablations start from (CVPR-era SOP config, batch 180 = 60 x 3)."""


@dataclass(frozen=True)
class Assignment:
    knob: Knob
    value: object                    # float, (C, K) or a level name
    text: str                        # canonical "knob=value" (the published row's spelling)

    @property
    def label(self) -> str:
        """Short ``knob=value`` for run names (``batch=40x3``)."""
        if self.knob.name == "batch":
            return f"batch={self.value[0]}x{self.value[1]}"
        return self.text


@dataclass(frozen=True)
class Ablation:
    """A base setting with knobs applied: the derived setting, its warnings and its published row."""

    setting: Setting
    base: Setting
    assignments: tuple[Assignment, ...]
    warnings: tuple[str, ...]
    row: str | None                  # the published key the diff uses, None when none matches
    run_folder: Path                 # the run's folder; the derived prototxts go in its prototxt/


# ------------------------------------------------------------------------------------ parsing
def _number(knob: Knob, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RecipeError(f"--set {knob.name}={text}: expected a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise RecipeError(f"--set {knob.name}={text}: expected a finite number")
    if knob.name in ("m", "T") and value < 0:
        raise RecipeError(f"--set {knob.name}={text}: must be >= 0")
    if knob.name == "alpha" and value <= 0:
        raise RecipeError(f"--set alpha={text}: must be > 0")
    return value


def parse(item: str, base: Setting) -> Assignment:
    """``"alpha=1.4"`` -> Assignment; ``batch`` takes ``CxK`` or a multiple of the base's K."""
    name, sep, text = item.partition("=")
    name, text = name.strip(), text.strip()
    if not sep or not text:
        raise RecipeError(f"--set {item!r}: expected KNOB=VALUE with KNOB one of {', '.join(KNOBS)}")
    if name not in KNOBS:
        raise RecipeError(f"--set {item!r}: unknown knob {name!r}; knobs: {', '.join(KNOBS)}")
    knob = KNOBS[name]
    if name == "batch":
        m = re.fullmatch(r"(\d+)\s*[xX*]\s*(\d+)|(\d+)", text)
        if not m:
            raise RecipeError(f"--set batch={text}: expected C x K (e.g. 40x3) or a batch size")
        if m.group(3):
            total, k = int(m.group(3)), base.images_per_class
            if total % k:
                raise RecipeError(f"--set batch={text}: not a multiple of K = {k} images per class "
                                  f"(give C x K, e.g. {max(total // k, 2)}x{k})")
            c = total // k
        else:
            c, k = int(m.group(1)), int(m.group(2))
        if c < 2 or k < 2:
            raise RecipeError(f"--set batch={text}: needs C >= 2 classes and K >= 2 images per class "
                              "(the ranked lists need positives and negatives)")
        return Assignment(knob, (c, k), f"batch={c * k}={c}x{k}")
    if name == "level":
        level = {"LMH": "(L,M,H)", "L,M,H": "(L,M,H)", "concat": "(L,M,H)"}.get(text, text)
        if level not in LEVEL_DEPLOYS:
            raise RecipeError(f"--set level={text}: expected one of {', '.join(LEVEL_DEPLOYS)}")
        return Assignment(knob, level, f"level={level}")
    value = _number(knob, text)
    return Assignment(knob, value, f"{name}={value:g}")


# ------------------------------------------------------------------------------- the gradient
def _base_values(net) -> dict[str, float]:
    """The base's alpha / m / T as the Caffe layer reads them (the first RLL loss layer)."""
    layer = edits.rll_losses(net)[0]
    c = layer.contrastive_loss_param_v2
    alpha = c.negative_threshold if (layer.type == V12_TYPE or c.HasField("negative_threshold")) else 1.4
    return {"alpha": alpha, "m": c.pn_margin, "T": layer.softmax_t_n_param.scale}


def gradient_effect(setting: Setting, a: Assignment, loss_type: str) -> str | None:
    """A warning when the knob does not do in this layer what the paper's table varies; a
    RecipeError when it changes nothing in the Caffe gradient (rll SPEC §0.2, §1.3, §1.5)."""
    if loss_type != V12_TYPE:
        return None
    if a.knob.name == "alpha":
        raise RecipeError(
            f"--set {a.text}: {setting.name} uses the released V12 layer, whose gradient ignores "
            "alpha (contrastive_loss_param_v2.negative_threshold): its weighting boundaries are "
            "hard-coded to 1 -/+ pn_margin/2 (rll SPEC §0.2, §1.3); alpha would change only the "
            f"reported loss value. The paper's alpha ablation runs on the CVPR-era layer: "
            f"rll-repro reproduce {PAPER_BASE} --set {a.text}")
    if a.knob.name == "m":
        m = float(a.value)
        return (f"--set {a.text} on the V12 layer of {setting.name} moves both weighting "
                f"boundaries (positives 1 - m/2 = {1 - m / 2:g}, negatives 1 + m/2 = {1 + m / 2:g}), "
                f"so alpha becomes {1 + m / 2:g} rather than Table 4's fixed 1.2 (rll SPEC §1.3); "
                f"the paper's ablation is rll-repro reproduce {PAPER_BASE} --set {a.text}")
    return None


# ------------------------------------------------------------------------------ the published row
def published_row(base: Setting, assignments, base_net=None) -> str | None:
    """The ablation-table key a run reproduces: one knob set on a SOP base whose other values are
    the tables' fixed ones (alpha 1.2, m 0.4, T 10, K = 3), and a value the table has."""
    from rll_repro.eval import published

    if base.dataset != "SOP" or len(assignments) != 1:
        return None
    a = assignments[0]
    net = base.train.build() if base_net is None else base_net
    values = _base_values(net)
    if edits.loss_type(net) == V12_TYPE:
        values["alpha"] = 1 + values["m"] / 2   # what the V12 gradient actually uses
    for name, fixed in PAPER_VALUES.items():
        if name != a.knob.name and abs(values[name] - fixed) > 1e-6:
            return None
    if base.images_per_class != 3 and a.knob.name != "batch":
        return None
    for key in published.keys(f"{TABLES}/{a.knob.table}/"):
        if _row_value(a.knob, key.rsplit("/", 1)[1]) == a.value:
            return key
    return None


def _row_value(knob: Knob, row: str):
    """The knob value a table row names: ``alpha=1.0`` -> 1.0, ``120=40x3`` -> (40, 3), ``H``."""
    if knob.name == "level":
        return row
    text = row.partition("=")[2]
    if knob.name == "batch":
        c, _, k = text.partition("x")
        return (int(c), int(k)) if c.isdigit() and k.isdigit() else None
    try:
        return float(text)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------- derive
def _edit_train(net, assignments) -> None:
    for a in assignments:
        if a.knob.layer_field:
            edits.set_loss_field(net, a.knob.layer_field, float(a.value))
        elif a.knob.name == "batch":
            c, k = a.value
            edits.set_batch(net, c * k)


def _edit_solver(solver, assignments, loss_type: str) -> None:
    if loss_type != V12_TYPE:
        return  # the CVPR-era proto had no annealing targets (SPEC §3.1)
    for a in assignments:
        if a.knob.solver_field:
            edits.set_field(solver, a.knob.solver_field, float(a.value))


def derive(base: Setting, items, run_folder=None) -> Ablation:
    """``base`` with the ``--set`` items applied; the derived train/solver prototxts are to be
    written (:func:`write`) in ``<run_folder>/prototxt`` (default run folder ``runs/<name>``).
    Raises RecipeError for a knob the setting cannot take."""
    if base.paper != "rll":
        raise RecipeError(f"--set: {base.name} is not a Ranked List Loss setting (the knobs act on "
                          "the RLL loss layers; RLL settings: rll-sop-cvpr, rll-sop, rll-cub, ...)")
    assignments = tuple(parse(item, base) for item in items)
    names = [a.knob.name for a in assignments]
    if len(set(names)) != len(names):
        raise RecipeError(f"--set: a knob is given twice ({', '.join(names)})")
    base_net = base.train.build()
    loss_type = edits.loss_type(base_net, base.train.path)
    warnings = [w for a in assignments if (w := gradient_effect(base, a, loss_type))]
    row = published_row(base, assignments, base_net)
    if row and base.name != PAPER_BASE:
        warnings.append(f"the published row {row} was measured on the paper's config "
                        f"({PAPER_BASE}: batch 180, 512-d, CVPR-era layer), not on {base.name}'s")
    name = f"{base.name}+{'+'.join(a.label for a in assignments)}"
    run_folder = Path(run_folder) if run_folder else Path("runs") / name
    folder = (run_folder / "prototxt").resolve()
    trains = [a for a in assignments if a.knob.name != "level"]
    changes = dict(name=name,
                   description=f"{base.description}; ablation {', '.join(a.text for a in assignments)}",
                   published=(row,) if row else ())
    if trains:
        train = GeneratedFile(str(folder / "train.prototxt"), "train", base.train.original,
                              lambda: _derived(base.train.build, lambda n: _edit_train(n, trains)),
                              used_by_release=False)
        solver = GeneratedFile(str(folder / "solver.prototxt"), "solver", base.solver.original,
                               lambda: _derived(base.solver.build,
                                                lambda s: _edit_solver(s, trains, loss_type)),
                               used_by_release=False)
        changes.update(train=train, solver=solver, provenance=PROVENANCE_RECONSTRUCTED)
    for a in assignments:
        if a.knob.name == "batch":
            changes.update(classes_per_batch=a.value[0], images_per_class=a.value[1])
    level = next((a.value for a in assignments if a.knob.name == "level"), None)
    deploys = []
    for d in base.deploys:
        if level is not None and d.name != LEVEL_DEPLOYS[level]:
            continue
        if level is None and d.name != "concat":
            deploys.append(dataclasses.replace(d, published=()))
            continue
        deploys.append(dataclasses.replace(d, file=dataclasses.replace(d.file, used_by_release=True),
                                           published=(row,) if row else ()))
    if level is not None and not deploys:
        raise RecipeError(f"--set level={level}: {base.name} has no deploy {LEVEL_DEPLOYS[level]!r}")
    changes["deploys"] = tuple(deploys)
    return Ablation(dataclasses.replace(base, **changes), base, assignments, tuple(warnings), row,
                    run_folder)


def _derived(build, edit):
    msg = edits.copy(build())
    edit(msg)
    return msg


def header(ablation: Ablation, f: GeneratedFile) -> list[str]:
    sets = " ".join(f"--set {a.text}" for a in ablation.assignments)
    return [f"GENERATED by rll-repro reproduce {ablation.base.name} {sets} -- do not edit.",
            f"{ablation.base.name}'s {f.kind} ({ablation.base.train.path if f.kind == 'train' else ablation.base.solver.path})"
            " with the knobs' fields changed (rll_repro/recipes/ablations.py KNOBS)."]


def write(ablation: Ablation) -> list[Path]:
    """Render the derived train/solver prototxts into their folder (atomic writes)."""
    from rll_repro.fileio import atomic_write_text

    from .netspec import render

    out = []
    s = ablation.setting
    if s.train is ablation.base.train:
        return out
    for f in (s.train, s.solver):
        path = Path(f.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, render(f.build(), header(ablation, f)))
        out.append(path)
    return out


# --------------------------------------------------------------------------- coverage helper
def paper_rows() -> dict[str, tuple[str, str]]:
    """Each ablation-table key -> (command, release status) that reproduces it from PAPER_BASE
    (the rows a released config already is are left to that setting's deploys)."""
    from rll_repro import recipes
    from rll_repro.eval import published

    base = recipes.get(PAPER_BASE)
    base_net = base.train.build()
    out: dict[str, tuple[str, str]] = {}
    for knob in KNOBS.values():
        for key in published.keys(f"{TABLES}/{knob.table}/"):
            text = key.rsplit("/", 1)[1]   # alpha=1.4, 120=40x3, (L,M,H)
            item = f"{knob.name}={text if knob.name == 'level' else text.partition('=')[2]}"
            a = parse(item, base)
            if published_row(base, (a,), base_net) != key:
                continue
            quoted = f"'{item}'" if "(" in item else item
            out[key] = (f"reproduce {PAPER_BASE} --set {quoted}", PROVENANCE_RECONSTRUCTED)
    return out
