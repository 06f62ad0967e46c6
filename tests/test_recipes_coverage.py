"""``reproduce --coverage`` / docs/coverage.md: one line for every published entry, and each line's
command really is a run that diffs that entry (parsed by the CLI's own parser, resolved through
reproduce's published_key), or a stated reason why no recipe exists."""
from __future__ import annotations

import argparse
import shlex

import pytest

from rll_repro import cli, coverage, recipes
from rll_repro.commands import reproduce as reproduce_cmd
from rll_repro.errors import RLLReproError
from rll_repro.eval import published
from rll_repro.recipes import ablations
from rll_repro.reproduce import eval_iterations, published_key
from conftest import REPO

LINES = coverage.table()
PUBLISHED = [k for k in published.keys() if k.split("/", 1)[0] in published.SOURCES]


def test_every_published_entry_has_exactly_one_line_in_order():
    assert [line.key for line in LINES] == PUBLISHED
    assert {k.split("/", 1)[0] for k in PUBLISHED} == {"rll", "osm_caa", "baselines"}


def test_lines_have_a_standing_and_a_command_or_a_reason():
    for line in LINES:
        assert line.status in (*coverage.STATUSES, "group"), line
        assert line.note, line
        if line.status in (coverage.NO_RECIPE, "group"):
            assert not line.command, line
        else:
            assert line.command.startswith("reproduce "), line


def test_an_entry_without_recipe_or_reason_fails(monkeypatch):
    keys = published.keys

    monkeypatch.setattr(published, "keys",
                        lambda prefix="": keys(prefix) + ([] if prefix else ["rll/NewSet/paper/RLL-X"]))
    with pytest.raises(RLLReproError, match="rll/NewSet/paper/RLL-X.*NO_RECIPE_RULES"):
        coverage.table()


def _parse(command: str):
    parser = argparse.ArgumentParser()
    reproduce_cmd.add_arguments(parser)
    return parser.parse_args(shlex.split(command)[1:])


@pytest.mark.parametrize("line", [l for l in LINES if l.command], ids=lambda l: l.key)
def test_each_command_runs_a_setting_whose_diff_is_that_entry(line):
    """What reproduce would diff: the first chosen deploy's published_key at its last evaluated
    checkpoint (or --against), for the setting after its --set knobs."""
    args = _parse(line.command)
    setting = recipes.get(args.setting)
    if args.set:
        setting = ablations.derive(setting, args.set).setting
    chosen = [setting.deploy(d) for d in args.deploys.split(",")] if args.deploys else [
        d for d in setting.deploys if d.file.used_by_release]
    first = chosen[0]
    checkpoints = [int(c) for c in args.checkpoints.split(",")] if args.checkpoints else None
    its = eval_iterations(setting, first, setting.max_iter, checkpoints=checkpoints)
    assert its, line
    reference = args.against or published_key(first, its[-1])
    key = line.key if line.status != "group" else None
    target = key if not line.note.startswith("part of ") else line.note[len("part of "):]
    assert reference == target, line
    published.get(reference)  # resolves


def test_ablation_rows_point_at_the_cvpr_base_or_a_released_variant():
    rows = {l.key: l for l in LINES if "/ablation_" in l.key and l.key.count("/") == 4}
    assert len(rows) == 3 + 5 + 5 + 4 + 5
    assert rows["rll/SOP/paper/ablation_alpha (m=0.4,T=10)/alpha=1.0"].command == "reproduce rll-sop-cvpr-m10"
    assert rows["rll/SOP/paper/ablation_alpha (m=0.4,T=10)/alpha=1.4"].command == (
        "reproduce rll-sop-cvpr --set alpha=1.4")
    assert rows["rll/SOP/paper/ablation_alpha (m=0.4,T=10)/alpha=1.4"].status == "reconstructed"
    assert rows["rll/SOP/paper/ablation_embedding_level/L"].status == "released in an older commit"
    assert all(l.command.startswith(("reproduce rll-sop-cvpr", "reproduce rll-sop-cvpr-m10")) for l in rows.values())


def test_paper_rows_of_cub_and_cars_have_recipes():
    by_key = {l.key: l for l in LINES}
    assert by_key["rll/CUB-200-2011/paper/RLL-(L,M,H)"].command == "reproduce rll-cub"
    assert by_key["rll/CUB-200-2011/paper/RLL-H"].command == "reproduce rll-cub --deploys H"
    assert by_key["rll/Cars196/paper/RLL-(L,M,H)"].status == "reconstructed"


def test_committed_table_is_current():
    """docs/coverage.md is generated (tools/gen_prototxt.py): a new published entry or recipe
    without regenerating it fails here."""
    doc = REPO / coverage.DOC
    assert doc.is_file(), f"{coverage.DOC} missing: run .venv/bin/python tools/gen_prototxt.py"
    assert doc.read_text(encoding="utf-8") == coverage.markdown(LINES), (
        f"{coverage.DOC} is stale: run .venv/bin/python tools/gen_prototxt.py")


def test_readme_links_the_table():
    assert "](docs/coverage.md)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_cli_prints_the_table(capsys):
    assert cli.main(["reproduce", "--coverage"]) == 0
    out = capsys.readouterr().out
    assert "rll/SOP/paper/ablation_T (m=0.4,alpha=1.2)/T=5" in out and "reproduce rll-sop-cvpr --set T=5" in out
    assert out.strip().splitlines()[-1] == coverage.summary(LINES)
