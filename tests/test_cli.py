"""The rll-repro command itself: help that teaches, exit code 2 with one line on bad input."""
from __future__ import annotations

import subprocess
import sys

import pytest

from rll_repro import cli


def test_help_lists_every_written_verb(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for verb in cli.COMMANDS:
        try:
            cli._load(verb)
        except ModuleNotFoundError:
            continue
        assert verb in out


def test_no_verb_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_console_entry_point_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "rll_repro", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "rll-repro" in result.stdout


def test_user_error_becomes_one_line_and_exit_2(monkeypatch, capsys):
    from rll_repro.errors import FormatError

    def run(args):
        raise FormatError("model.caffemodel: truncated file (expected 120 more bytes)\nsecond line")

    parser_args = type("Args", (), {"_run": staticmethod(run), "debug": False, "verb": "inspect"})
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, a: parser_args})())
    assert cli.main(["inspect", "x"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "rll-repro inspect: error: model.caffemodel: truncated file (expected 120 more bytes)"


def test_a_closed_pipe_is_not_a_traceback():
    """`rll-repro inspect --json X | head -c 10`: the reader leaves early; no traceback on stderr."""
    code = (
        "import sys\n"
        "from rll_repro import cli\n"
        "sys.exit(cli.main(['inspect', '--json', sys.argv[1]]))\n"
    )
    from pathlib import Path

    prototxt = Path(__file__).resolve().parents[1] / "prototxt" / "rll" / "sop" / "train.prototxt"
    reader = subprocess.Popen([sys.executable, "-c", code, str(prototxt)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    reader.stdout.read(10)
    reader.stdout.close()
    err = reader.stderr.read().decode()
    reader.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err
