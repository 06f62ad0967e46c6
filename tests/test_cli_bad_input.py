"""Every verb on bad input: exit code 2 and exactly one stderr line ``rll-repro VERB: error: ...`` that
names the offending file (or setting) and what is wrong -- never a traceback.

The bad files are built in a temporary folder: a missing file, an empty file, a file of the wrong kind
(PNG, .mat where a caffemodel is expected), a truncated caffemodel, a prototxt with an unknown layer
type, a caffemodel whose blob shapes do not match the prototxt, an .npz missing a net input, a .mat
missing the expected variable, NaN features. Most cases call ``rll_repro.cli.main`` in-process; two
run the real console entry point.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from rll_repro import cli

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
"""
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(30)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of good and bad files; names say what each one is."""
    from rll_repro.net import Net

    d = tmp_path_factory.mktemp("bad_input")
    (d / "net.prototxt").write_text(NET)
    (d / "other.prototxt").write_text(NET.replace("num_output: 5", "num_output: 7"))
    (d / "unknown.prototxt").write_text(NET + 'layer { name: "w" type: "Wibble" bottom: "fc" top: "w" }\n')
    Net(str(d / "net.prototxt"), phase="test").save(str(d / "good.caffemodel"))
    Net(str(d / "other.prototxt"), phase="test").save(str(d / "mismatch.caffemodel"))
    good = (d / "good.caffemodel").read_bytes()
    (d / "truncated.caffemodel").write_bytes(good[: len(good) // 2])
    for name in ("empty.caffemodel", "empty.prototxt", "empty.npz", "empty.npy", "empty.mat"):
        (d / name).write_bytes(b"")
    for name in ("image.png", "png.caffemodel", "png.prototxt"):
        (d / name).write_bytes(PNG)
    savemat(d / "foo.mat", {"foo": np.zeros(3)})
    (d / "mat.caffemodel").write_bytes((d / "foo.mat").read_bytes())
    np.savez(d / "inputs_missing_data.npz", other=np.zeros((2, 3, 4, 4), np.float32))
    np.savez(d / "inputs.npz", data=np.zeros((2, 3, 4, 4), np.float32))
    features = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    np.save(d / "labels.npy", np.repeat(np.arange(4), 2))
    np.save(d / "labels_short.npy", np.arange(5))
    np.save(d / "features.npy", features)
    features[1, 2] = np.nan
    np.save(d / "features_nan.npy", features)
    for name, net in (("solver", "net"), ("solver_unknown", "unknown"), ("solver_no_net", "absent")):
        (d / f"{name}.prototxt").write_text(f'net: "{d}/{net}.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n')
    (d / "empty_root").mkdir()
    return d


def _forward(net, weights=None, inputs="inputs.npz"):
    argv = [net, "--inputs", inputs, "--out", "out.npz"]
    return argv + (["--weights", weights] if weights else [])


def _eval(net="net.prototxt", weights="good.caffemodel", lst="foo.mat"):
    return [net, weights, "--list", lst, "--protocol", "sop", "--out", "out.json"]


def _eval_features(features, labels="labels.npy"):
    return [features, labels, "--protocol", "sop", "--out", "out.json"]


# (verb, case, argv with bare file names resolved in the `bad` folder, the file the message must
# name, a fragment saying what is wrong)
CASES = [
    ("inspect", "missing", ["absent.caffemodel"], "absent.caffemodel", "No such file"),
    ("inspect", "empty", ["empty.caffemodel"], "empty.caffemodel", "empty file"),
    ("inspect", "png", ["png.caffemodel"], "png.caffemodel", "PNG image"),
    ("inspect", "mat", ["mat.caffemodel"], "mat.caffemodel", "MATLAB .mat file"),
    ("inspect", "truncated", ["truncated.caffemodel"], "truncated.caffemodel", "truncated"),
    ("inspect", "unknown layer", ["--shapes", "unknown.prototxt"], "unknown.prototxt", "unknown layer type 'Wibble'"),
    ("convert", "missing", ["absent.caffemodel", "out.npz"], "absent.caffemodel", "No such file"),
    ("convert", "empty", ["empty.caffemodel", "out.npz"], "empty.caffemodel", "empty file"),
    ("convert", "png", ["png.caffemodel", "out.npz"], "png.caffemodel", "PNG image"),
    ("convert", "mat", ["mat.caffemodel", "out.npz"], "mat.caffemodel", "MATLAB .mat file"),
    ("convert", "truncated", ["truncated.caffemodel", "out.npz"], "truncated.caffemodel", "truncated"),
    ("convert", "empty npz", ["empty.npz", "out.caffemodel", "--net", "net.prototxt"], "empty.npz", "empty file"),
    ("convert", "png as npz", ["image.png", "out.pt"], "image.png", "cannot convert from '.png'"),
    ("convert", "npz of inputs, not weights", ["inputs.npz", "out.pt"], "inputs.npz", "not '<layer name>/<blob index>'"),
    ("convert", "unused --net", ["good.caffemodel", "out.npz", "--net", "unknown.prototxt"], "unknown.prototxt",
     "--net is only used"),
    ("forward", "missing net", _forward("absent.prototxt"), "absent.prototxt", "No such file"),
    ("forward", "empty net", _forward("empty.prototxt"), "empty.prototxt", "empty file"),
    ("forward", "png net", _forward("png.prototxt"), "png.prototxt", "PNG image"),
    ("forward", "unknown layer", _forward("unknown.prototxt"), "unknown.prototxt", "unknown layer type 'Wibble'"),
    ("forward", "missing weights", _forward("net.prototxt", "absent.caffemodel"), "absent.caffemodel", "No such file"),
    ("forward", "mat weights", _forward("net.prototxt", "mat.caffemodel"), "mat.caffemodel", "MATLAB .mat file"),
    ("forward", "truncated weights", _forward("net.prototxt", "truncated.caffemodel"), "truncated.caffemodel", "truncated"),
    ("forward", "shape mismatch", _forward("net.prototxt", "mismatch.caffemodel"), "mismatch.caffemodel",
     "layer 'fc' blob 0: source shape (7, 8) does not match the net's (5, 8)"),
    ("forward", "npz missing an input", _forward("net.prototxt", inputs="inputs_missing_data.npz"),
     "inputs_missing_data.npz", "no array for input blob(s) data"),
    ("forward", "empty npz", _forward("net.prototxt", inputs="empty.npz"), "empty.npz", "empty file"),
    ("forward", "png as npz", _forward("net.prototxt", inputs="image.png"), "image.png", "not a zip archive"),
    ("train", "missing solver", ["--solver", "absent.prototxt"], "absent.prototxt", "No such file"),
    ("train", "empty solver", ["--solver", "empty.prototxt"], "empty.prototxt", "empty file"),
    ("train", "png solver", ["--solver", "png.prototxt"], "png.prototxt", "PNG image"),
    ("train", "net as solver", ["--solver", "net.prototxt"], "net.prototxt", "not a solver prototxt"),
    ("train", "solver's net missing", ["--solver", "solver_no_net.prototxt"], "absent.prototxt", "No such file"),
    ("train", "unknown layer", ["--solver", "solver_unknown.prototxt"], "unknown.prototxt", "unknown layer type 'Wibble'"),
    ("train", "truncated weights", ["--solver", "solver.prototxt", "--data=digits", "--weights", "truncated.caffemodel"],
     "truncated.caffemodel", "truncated"),
    ("train", "shape mismatch", ["--solver", "solver.prototxt", "--data=digits", "--weights", "mismatch.caffemodel", "--out", "run"],
     "mismatch.caffemodel", "does not match the net's (5, 8)"),
    ("train", "a solver of no known setting without --data", ["--solver", "solver.prototxt", "--out", "run"],
     "solver.prototxt", "not the solver of a known setting"),
    ("train", "digits batches with a list", ["--solver", "solver.prototxt", "--data=digits", "--list", "foo.mat"],
     "--list", "takes no --list"),
    ("train", "batches feed a blob the net lacks", ["--solver", "solver.prototxt", "--data=digits", "--out", "run"],
     "net.prototxt", "feed blob 'label'"),
    ("eval", "missing net", _eval(net="absent.prototxt"), "absent.prototxt", "No such file"),
    ("eval", "unknown layer", _eval(net="unknown.prototxt"), "unknown.prototxt", "unknown layer type 'Wibble'"),
    ("eval", "png weights", _eval(weights="png.caffemodel"), "png.caffemodel", "PNG image"),
    ("eval", "truncated weights", _eval(weights="truncated.caffemodel"), "truncated.caffemodel", "truncated"),
    ("eval", "shape mismatch", _eval(weights="mismatch.caffemodel"), "mismatch.caffemodel", "does not match"),
    ("eval", ".mat missing the list variable", _eval(), "foo.mat", "no image list variable"),
    ("eval", "empty .mat", _eval(lst="empty.mat"), "empty.mat", "not a MATLAB .mat file"),
    ("eval-features", "missing", _eval_features("absent.npy"), "absent.npy", "No such file"),
    ("eval-features", "png", _eval_features("image.png"), "image.png", "expected a .npy, .npz or .h5 file"),
    ("eval-features", "NaN features", _eval_features("features_nan.npy"), "features", "non-finite"),
    ("eval-features", "label count", _eval_features("features.npy", "labels_short.npy"), "labels_short.npy",
     "5 labels for 8 feature rows"),
    ("eval-features", "empty", _eval_features("empty.npy"), "empty.npy", "empty file"),
    ("diff", "missing", ["absent.json", "--against", "rll/SOP/paper/RLL-H"], "absent.json", "No such file"),
    ("diff", "empty", ["empty.prototxt", "--against", "rll/SOP/paper/RLL-H"], "empty.prototxt", "not a JSON results file"),
    ("diff", "png", ["image.png", "--against", "rll/SOP/paper/RLL-H"], "image.png", "not a JSON results file"),
    ("reproduce", "unknown setting", ["no-such-setting"], "no-such-setting", "unknown setting"),
    ("reproduce", "digits with truncated weights", ["digits", "--weights", "truncated.caffemodel", "--out", "rep"],
     "truncated.caffemodel", "truncated"),
    ("reproduce", "missing lists folder", ["rll-sop", "--weights", "good.caffemodel", "--lists", "absent", "--out", "rep"],
     "absent", "not a folder"),
    ("make-lists", "missing root", ["sop", "absent", "out.mat"], "absent", "dataset folder does not exist"),
    ("make-lists", "empty root", ["sop", "empty_root", "out.mat"], "empty_root", "expected Ebay_train.txt"),
    ("make-lists", "file as root", ["sop", "image.png", "out.mat"], "image.png", "dataset folder does not exist"),
    ("make-lists", "png annotations", ["cars", "empty_root", "out.mat", "--annotations", "image.png"], "image.png",
     "not a MATLAB .mat file"),
    ("make-lists", ".mat missing the annotations", ["cars", "empty_root", "out.mat", "--annotations", "foo.mat"],
     "foo.mat", "expected an 'annotations' struct array"),
]


def _resolve(argv, folder: Path) -> list[str]:
    """Bare names that are not options, verbs' choices or keys become paths in `folder`."""
    keep = {"sop", "cars", "rll-sop", "digits", "no-such-setting", "rll/SOP/paper/RLL-H"}
    out, previous = [], None
    for arg in argv:
        is_value_of_choice = previous in ("--protocol",)
        out.append(arg if arg.startswith("-") or arg in keep or is_value_of_choice or arg.isdigit()
                   else str(folder / arg))
        previous = arg
    return out


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    return lines[0]


def _case_id(case) -> str:
    values = case.values if hasattr(case, "values") else case
    return f"{values[0]}: {values[1]}"


@pytest.mark.parametrize("verb, case, argv, names, what", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_line_naming_the_file_and_exit_2(bad, monkeypatch, capfd, verb, case, argv, names, what):
    monkeypatch.chdir(bad)
    code = cli.main([verb, *_resolve(argv, bad)])
    captured = capfd.readouterr()
    line = _error_line("\n".join(line for line in captured.err.splitlines() if not line.startswith("I1")))
    assert code == 2
    assert line.startswith(f"rll-repro {verb}: error: ")
    assert names in line and what in line, line
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("verb, argv, names", [
    ("inspect", ["truncated.caffemodel"], "truncated.caffemodel"),
    ("forward", _forward("net.prototxt", inputs="inputs_missing_data.npz"), "inputs_missing_data.npz"),
])
def test_console_entry_point_exits_2_with_one_line(bad, verb, argv, names):
    result = subprocess.run([sys.executable, "-m", "rll_repro", verb, *_resolve(argv, bad)],
                            capture_output=True, text=True, cwd=bad)
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert line.startswith(f"rll-repro {verb}: error: ") and names in line
