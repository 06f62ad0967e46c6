"""What a new user meets first: --version, help examples that run as written, eval-features without
--out, the set-up script's pip noise, and what a non-editable install must carry."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rll_repro import cli

REPO = Path(__file__).resolve().parents[1]


def test_version_is_the_distribution_version(capsys):
    import rll_repro

    assert rll_repro.__version__ == importlib.metadata.version("rll_repro")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"rll-repro {rll_repro.__version__}"


def example_commands(text: str) -> list[str]:
    """The ``rll-repro ...`` example lines of a help text, continuations joined, trailing notes (after
    two or more spaces, not an option) cut off."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and not line.startswith("rll-repro "):
            continue
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        out.append(re.split(r"\s{2,}(?![\s-])", line)[0])
    return out


def help_texts() -> list[tuple[str, str]]:
    texts = [("rll-repro", cli.EPILOG)]
    for verb in cli.COMMANDS:
        module = cli._load(verb)
        texts.append((verb, getattr(module, "DESCRIPTION", "")))
    return texts


def test_every_help_example_is_valid_shell_and_parses(monkeypatch):
    # e.g. the top-level help's  --against rll/SOP/paper/RLL-(L,M,H)  is a bash syntax error unquoted
    bash = shutil.which("bash")
    parser = cli.build_parser()
    seen = 0
    for where, text in help_texts():
        for command in example_commands(text):
            seen += 1
            if bash:
                check = subprocess.run([bash, "-n", "-c", command], capture_output=True, text=True)
                assert check.returncode == 0, f"{where} example is not valid shell: {command}\n{check.stderr}"
            try:
                parser.parse_args(shlex.split(command)[1:])
            except SystemExit as exc:  # argparse: a usage error in the example itself
                pytest.fail(f"{where} example does not parse ({exc.code}): {command}")
    assert seen >= 20


def test_eval_features_prints_the_metrics_without_out(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 5)
    feats = rng.normal(size=(20, 8)).astype(np.float32) + 3 * np.eye(8, dtype=np.float32)[labels]
    np.save(tmp_path / "f.npy", feats)
    np.save(tmp_path / "l.npy", labels)
    before = set(os.listdir(tmp_path))
    assert cli.main(["eval-features", str(tmp_path / "f.npy"), str(tmp_path / "l.npy"), "--protocol", "cub"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"R@1 \d+\.\d\d  R@2 ", out) and set(os.listdir(tmp_path)) == before  # nothing written
    assert cli.main(["eval-features", str(tmp_path / "f.npy"), str(tmp_path / "l.npy"), "--protocol", "cub",
                     "--out", str(tmp_path / "r.json")]) == 0
    assert "R@1" in json.loads((tmp_path / "r.json").read_text())


def fake_venv(tmp_path: Path, status: int) -> Path:
    """A venv whose python stands in for pip: the 'Location ... is ignored' noise, a real warning, an
    error, then ``status``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\n"
                      "echo \"WARNING: Location '/no/such/wheels' is ignored: it is either a non-existing path "
                      "or lacks a specific scheme.\" >&2\n"
                      "echo 'WARNING: a warning that matters' >&2\n"
                      "echo 'ERROR: Could not find a version that satisfies the requirement torch' >&2\n"
                      f"exit {status}\n")
    python.chmod(0o755)
    return venv


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha1sum") is None, reason="needs bash and sha1sum")
@pytest.mark.parametrize("status", [0, 1])
def test_dev_setup_drops_only_pips_ignored_location_lines(tmp_path, status):
    venv = fake_venv(tmp_path, status)
    run = subprocess.run(["bash", str(REPO / "tools" / "dev.sh"), "setup"], capture_output=True, text=True,
                         env={**os.environ, "RLL_REPRO_VENV": str(venv)}, cwd=tmp_path, timeout=60)
    assert "is ignored" not in run.stderr
    assert "WARNING: a warning that matters" in run.stderr and "ERROR: Could not find a version" in run.stderr
    assert run.returncode == status  # pip's status, not grep's
    assert any(venv.glob(".rll_repro-installed-*")) == (status == 0)


def test_the_digits_demo_files_are_package_data():
    # A wheel (non-editable) install has no repository around it: what `reproduce digits` reads must
    # be inside the package, declared by pyproject's package-data, and found from the package itself.
    import tomllib

    from rll_repro import recipes
    from rll_repro.recipes import digits

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
    package = Path(recipes.__file__).resolve().parents[1]
    for kind in ("train", "solver", "deploy"):
        path = digits.prototxt(kind)
        packaged = package / "prototxt" / "digits" / f"{kind}.prototxt"
        assert packaged.is_file() and packaged.read_bytes() == path.read_bytes()
        assert any(packaged.match(p) for p in patterns)
    assert recipes.path("prototxt/digits/solver.prototxt").read_bytes() == digits.prototxt("solver").read_bytes()


@pytest.mark.slow
def test_a_wheel_install_runs_reproduce_digits(tmp_path):
    """Build the wheel, install it (no deps) into a venv that sees this venv's site-packages, and run
    the demo from an unrelated folder with the repository out of sys.path."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    site = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                         capture_output=True, text=True, check=True).stdout.strip()) / "parent.pth").write_text(site + "\n")
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--force-reinstall",
                              "-q", *map(str, wheels.glob("*.whl"))], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import rll_repro; print(rll_repro.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout
    assert str(REPO) not in where
    run = subprocess.run([str(venv / "bin" / "rll-repro"), "reproduce", "digits", "--max-iter", "5",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "results.json").is_file()


def test_reproduce_digits_max_iter_0_snapshots_iteration_0_and_negative_is_refused(tmp_path, capsys):
    # Caffe's Solve with max_iter 0 trains nothing and snapshots iteration 0 (snapshot_after_train).
    out = tmp_path / "d0"
    assert cli.main(["reproduce", "digits", "--max-iter", "0", "--out", str(out)]) == 0
    assert (out / "digits_iter_0.caffemodel").is_file() and (out / "digits_iter_0.caffemodel.solverstate").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["_meta"]["iterations"] == 0 and 0 <= saved["R@1"] <= 100
    assert cli.main(["reproduce", "digits", "--max-iter", "-5", "--out", str(tmp_path / "neg")]) == 2
    assert "--max-iter must be >= 0, got -5" in capsys.readouterr().err
    assert not (tmp_path / "neg" / "results.json").exists()


def test_digits_results_json_is_what_diff_reads(tmp_path, capsys):
    out = tmp_path / "d"
    assert cli.main(["reproduce", "digits", "--max-iter", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    # another run's results.json: Recall@1,2,4,8 compared, the metadata (seconds, loss, ...) not
    assert cli.main(["diff", str(out / "results.json"), str(out / "results.json"), "--tolerance", "0"]) == 0
    table = capsys.readouterr().out
    assert "R@1" in table and "R@8" in table and "seconds" not in table and "all 4 compared metrics" in table


def test_reproduce_help_gives_the_digits_demo_its_real_duration():
    # measured: 7.7 s of CPU time for the 300 iterations, 4-9 s wall on an idle 2-core machine
    from rll_repro.commands import reproduce

    digits_paragraph = reproduce.DESCRIPTION.split("`rll-repro reproduce digits`", 1)[1].split("\n\n", 1)[0]
    assert "minute" not in digits_paragraph and "8 s of CPU time" in digits_paragraph
