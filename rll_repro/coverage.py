"""Which published number each recipe reproduces: the table of ``rll-repro reproduce --coverage``.

(Beside :mod:`rll_repro.reproduce`, whose diff rule -- ``published_key`` -- decides when a command
needs ``--against``.)

Every entry of :func:`rll_repro.eval.published.keys` (the RLL, OSM+CAA and baseline files) gets one
:class:`Line`: the command that reproduces it and that command's standing (``as released``,
``released in an older commit``, ``reconstructed``), or ``no recipe`` and why. It is computed from
the registry, so a recipe registered later (e.g. the baseline recipes) shows up by itself:

- a deploy's ``published`` keys (the command adds ``--deploys``, ``--checkpoints`` and
  ``--against`` where the plain run would diff another row);
- a repository row of another iteration of a listed one (``... iter 10000 (last) ...`` beside
  ``... iter 7000 ...``) when that iteration is among the deploy's checkpoints;
- the ablation tables through :func:`rll_repro.recipes.ablations.paper_rows`;
- a group (``ablation_alpha (m=0.4,T=10)``, ``iter6000`` with its sub-tables) follows its rows;
- anything else must match a :data:`NO_RECIPE` rule giving the reason, or :func:`table` raises
  (``tests/test_recipes_coverage.py`` fails), so a new published entry cannot go unaccounted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from rll_repro.recipes.settings import PROVENANCES

NO_RECIPE = "no recipe"
STATUSES = (*PROVENANCES, NO_RECIPE)
DOC = "docs/coverage.md"
"""Where the table is committed (written by ``tools/gen_prototxt.py``; the README links it)."""

NO_RECIPE_RULES: tuple[tuple[str, str], ...] = (
    (r"^osm_caa/MARS/OSM\+CAA (\(Ours\) \+ Re-ranking|repo iter \d+ \+ re-ranking)$",
     "re-ranking: the repository records no re-ranking parameters and the mars protocol computes "
     "none (osm_caa SPEC §10)"),
    (r"^osm_caa/MARS/OSM\+CAA repo iter \d+ cross-camera average$",
     "with_minus1_AVG.txt's camera-pair confusion-matrix average is not computed by the mars "
     "protocol"),
    (r"^osm_caa/[^/]+/(?!OSM\+CAA)[^/]+$",
     "another method's number quoted in the OSM+CAA paper's table: no code or config of it in "
     "either repository"),
    (r"^baselines/[^/]+/[^/]+$",
     "a baseline method's number from a third-party README table: no config of it in either "
     "repository (a baseline-* recipe lists it when one reproduces it)"),
)
"""(key pattern, reason) for published entries no recipe reproduces."""


@dataclass(frozen=True)
class Line:
    key: str
    command: str          # "reproduce SETTING [options]", "" for no recipe / a group
    status: str           # one of STATUSES, or "group" for a group of rows
    note: str             # why (no recipe), what (group), or where the config comes from


def _iteration(text: str) -> int | None:
    m = re.search(r"iter\s*(\d+)", text)
    return int(m.group(1)) if m else None


def _family(key: str) -> str:
    """A key with its iteration (and a remark right after it) taken out: repository rows of one run
    differ only there (``... snapshot iter 7000 [raw]`` / ``... snapshot iter 10000 (last) [raw]``)."""
    return re.sub(r"\s+", " ", re.sub(r"iter\s*\d+(\s*\([^)]*\))?", "", key)).strip()


def _command(setting, deploy, key: str, iteration: int | None) -> str:
    from rll_repro.reproduce import default_deploys, published_key

    parts = [f"reproduce {setting.name}"]
    defaults = [d.name for d in default_deploys(setting)]
    final = iteration or (deploy.checkpoints[-1] if deploy.checkpoints else setting.max_iter)
    if iteration is not None and iteration != deploy.checkpoints[-1]:
        parts.append(f"--checkpoints {iteration}")
    if defaults != [deploy.name] and (defaults[:1] != [deploy.name] or published_key(deploy, final) != key):
        parts.append(f"--deploys {deploy.name}")
    if published_key(deploy, final) != key:
        parts.append(f"--against '{key}'")
    return " ".join(parts)


def _origin_note(setting, deploy) -> str:
    extra = "" if deploy.file.used_by_release else "; a deploy the released test script does not run"
    return f"{setting.name}: {setting.description}{extra}"


def _candidates(keys: list[str]) -> dict[str, list[Line]]:
    """Every recipe line for each key, best standing first."""
    from rll_repro import recipes
    from rll_repro.eval import published
    from rll_repro.recipes import ablations

    out: dict[str, list[Line]] = {}
    siblings: dict[str, list[Line]] = {}   # other-iteration rows: used only where nothing lists the key
    rank = {s: i for i, s in enumerate(PROVENANCES)}
    for setting in recipes.all_settings():
        for deploy in setting.deploys:
            for key in deploy.published:
                it = _iteration(key.rsplit("/", 1)[-1]) or _iteration(published.get(key)["source"])
                if it is not None and it not in deploy.checkpoints:
                    it = None
                out.setdefault(key, []).append(Line(key, _command(setting, deploy, key, it),
                                                    setting.release_status, _origin_note(setting, deploy)))
            families = {_family(k) for k in deploy.published if _iteration(k.rsplit("/", 1)[-1])}
            for key in keys:
                it = _iteration(key.rsplit("/", 1)[-1])
                if it in deploy.checkpoints and key not in deploy.published and _family(key) in families:
                    siblings.setdefault(key, []).append(Line(
                        key, _command(setting, deploy, key, it), setting.release_status,
                        _origin_note(setting, deploy) + f"; checkpoint {it}"))
    base = recipes.get(ablations.PAPER_BASE)
    for key, (command, status) in ablations.paper_rows().items():
        out.setdefault(key, []).append(Line(
            key, command, status, f"{ablations.PAPER_BASE} (the paper's SOP config, "
            f"{base.release_status}) with one knob changed (rll_repro/recipes/ablations.py)"))
    for key, lines in siblings.items():
        out.setdefault(key, lines)
    for lines in out.values():
        lines.sort(key=lambda line: rank[line.status])
    return out


def _reason(key: str) -> str | None:
    for pattern, reason in NO_RECIPE_RULES:
        if re.search(pattern, key):
            return reason
    return None


def table() -> list[Line]:
    """One line per published key of the papers' and baselines' files (``published.SOURCES``, not
    the numbers this repository records itself), in :func:`rll_repro.eval.published.keys` order."""
    from rll_repro.errors import RLLReproError
    from rll_repro.eval import published

    keys = [k for k in published.keys() if k.split("/", 1)[0] in published.SOURCES]
    found = _candidates(keys)
    lines: list[Line] = []
    for key in keys:
        if key in found:
            lines.append(found[key][0])
            continue
        parent = next((k for k in found if key.startswith(k + "/")), None)
        if parent is not None:
            best = found[parent][0]
            lines.append(Line(key, best.command, best.status, f"part of {parent}"))
            continue
        children = [k for k in keys if k.startswith(key + "/")]
        if children:
            lines.append(Line(key, "", "group", f"the {len(children)} rows below"))
            continue
        reason = _reason(key)
        if reason is None:
            raise RLLReproError(f"published entry {key!r} has no recipe and no reason in "
                                "rll_repro/coverage.py NO_RECIPE_RULES: add one of them")
        lines.append(Line(key, "", NO_RECIPE, reason))
    return lines


def summary(lines: list[Line]) -> str:
    counts = {s: sum(line.status == s for line in lines) for s in (*STATUSES, "group")}
    rows = sum(line.status != "group" for line in lines)
    return f"{rows} published entries: " + ", ".join(f"{n} {s}" for s, n in counts.items() if s != "group" and n)


def markdown(lines: list[Line] | None = None) -> str:
    """The committed docs/coverage.md."""
    lines = table() if lines is None else lines
    out = ["# Which published numbers can be reproduced, and how", "",
           "GENERATED by `tools/gen_prototxt.py` from `rll_repro/coverage.py` (do not edit; "
           "`rll-repro reproduce --coverage` prints the same table). One row per entry of "
           "`rll-repro diff --list`. Standing of the command: **as released** (the configuration "
           "files of the commit the original README points to), **released in an older commit** "
           "(files found only in an earlier commit of the original repository), **reconstructed** "
           "(no configuration file exists: rebuilt from the sources, every choice named in the "
           "recipe's notes; the ablations are a released config with one field changed), "
           "**no recipe** (and why). Every command also needs `--data-root`, `--lists`, "
           "`--weights` (see `rll-repro reproduce --help`).", "",
           summary(lines) + ".", "",
           "| published entry | command (`rll-repro ...`) | standing | note |", "|---|---|---|---|"]
    for line in lines:
        command = f"`{line.command}`" if line.command else ""
        note = line.note.replace("|", "\\|")
        out.append(f"| `{line.key}` | {command} | {line.status} | {note} |")
    return "\n".join(out) + "\n"


def text(lines: list[Line] | None = None) -> str:
    """A plain table for the terminal."""
    lines = table() if lines is None else lines
    width = max(len(line.key) for line in lines)
    rows = [f"{'published entry':<{width}}  {'standing':<27}  command / why"]
    for line in lines:
        rows.append(f"{line.key:<{width}}  {line.status:<27}  {line.command or line.note}")
    rows.append(summary(lines))
    return "\n".join(rows)
