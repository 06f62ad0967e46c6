"""``rll-repro diff``: the table and the exit codes (0 within tolerance, 1 over, 2 bad input)."""
from __future__ import annotations

import json

import pytest

from rll_repro.cli import main
from rll_repro.eval.diff import compare, exceeded, format_table

KEY = "rll/SOP/paper/RLL-(L,M,H)"  # R@1 79.8, R@10 91.3, R@100 96.3, NMI 90.4


def _results(tmp_path, name="r.json", **metrics):
    path = tmp_path / name
    path.write_text(json.dumps({**metrics, "_meta": {"protocol": "sop"}}))
    return str(path)


def test_within_tolerance_exits_0(tmp_path, capsys):
    path = _results(tmp_path, **{"R@1": 79.3, "R@10": 91.0, "R@100": 96.5})
    assert main(["diff", path, "--against", KEY]) == 0
    out = capsys.readouterr().out
    assert "R@1" in out and "79.30" in out and "79.80" in out and "-0.50" in out and "slide 18" in out


def test_over_tolerance_exits_1(tmp_path, capsys):
    path = _results(tmp_path, **{"R@1": 78.0, "R@10": 91.3})
    assert main(["diff", path, "--against", KEY, "--tolerance", "0.5"]) == 1
    assert "<-- over" in capsys.readouterr().out


def test_tolerance_boundary_is_inclusive(tmp_path):
    path = _results(tmp_path, **{"R@1": 79.3})  # 79.3 - 79.8 is -0.5000000000000028 in binary
    assert main(["diff", path, "--against", KEY, "--tolerance", "0.5"]) == 0


def test_two_results_files(tmp_path):
    a = _results(tmp_path, "a.json", **{"R@1": 70.0, "R@2": 80.0})
    b = _results(tmp_path, "b.json", **{"R@1": 70.05, "R@2": 80.0})
    assert main(["diff", a, b, "--tolerance", "0.1"]) == 0
    assert main(["diff", a, b, "--tolerance", "0.01"]) == 1


def test_result_file_at_iteration(tmp_path):
    txt = tmp_path / "Recall.txt"
    txt.write_text("iter: 1000, rank1: 0.558, rank2: 0.687\n")
    path = _results(tmp_path, **{"R@1": 55.8, "R@2": 68.7})
    assert main(["diff", path, "--against", f"{txt}@1000", "--tolerance", "0"]) == 0


@pytest.mark.parametrize("argv_tail", [
    ["--against", "rll/SOP/paper/NoSuchMethod"],  # unknown key
    ["--against", "rll/SOP/paper/RLL-H", "--metrics", "mAP"],  # nothing in common
    [],  # no reference
])
def test_bad_input_exits_2(tmp_path, argv_tail, capsys):
    path = _results(tmp_path, **{"R@1": 79.0})
    assert main(["diff", path, *argv_tail]) == 2
    assert "rll-repro diff: error:" in capsys.readouterr().err


def test_not_json_exits_2(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    assert main(["diff", str(bad), "--against", KEY]) == 2
    assert "not a JSON results file" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path):
    assert main(["diff", str(tmp_path / "none.json"), "--against", KEY]) == 2


def test_nan_counts_as_over():
    rows = compare({"R@1": float("nan")}, {"R@1": 1.0}, "x")
    assert exceeded(rows, 100.0) == rows


def test_table_lists_metrics_of_either_side():
    rows = compare({"R@1": 1.0, "R@1000": 2.0}, {"R@1": 1.5, "NMI": 3.0}, "src")
    table = format_table(rows, 0.5)
    assert [r.metric for r in rows] == ["R@1", "R@1000", "NMI"]
    assert "+-" not in table and "-0.50" in table


def test_list_published_keys(capsys):
    assert main(["diff", "--list", "osm_caa/LPW"]) == 0
    assert "osm_caa/LPW/OSM+CAA repo iter 55000" in capsys.readouterr().out.splitlines()
