"""`rll-repro forward` writes what Caffe holds after Forward/Backward; `inspect --shapes` prints blob shapes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
from rll_repro import cli

CASE = FIXTURES / "layers" / "osm_caa__softmax_loss_accuracy"


def test_forward_backward_writes_blobs_diffs_params_and_losses_like_caffe(tmp_path):
    z = np.load(CASE / "case.npz")
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **{"input/x": z["input/x"], "label": z["input/label"]})
    out = tmp_path / "out.npz"
    code = cli.main(["forward", str(CASE / "net.prototxt"), "--weights", str(CASE / "weights.caffemodel"),
                     "--inputs", str(inputs), "--phase", "train", "--backward", "--out", str(out)])
    assert code == 0
    got = np.load(out)
    for key in ("blob/logits", "blob/loss", "diff/logits", "param/fc/0", "paramdiff/fc/0", "paramdiff/fc/1"):
        ref = z[key]
        # 1e-5 relative to the array's largest value: float32 sums in another order (see test_net_oracle_layers)
        assert np.abs(got[key] - ref).max() <= 1e-5 * np.abs(ref).max(), key
    # loss/ holds the loss tops and the scalar net outputs (the Accuracy), as in the oracle files
    assert set(k for k in got.files if k.startswith("loss/")) == {"loss/loss", "loss/acc"}
    np.testing.assert_allclose(got["loss/acc"], z["loss/acc"])
    np.testing.assert_allclose(got["loss/loss"], z["loss/loss"], rtol=1e-6)
    np.testing.assert_array_equal(got["diff/loss"], 2.0)  # loss_weight 2 is the loss top's diff


def test_forward_without_an_input_array_is_a_one_line_error(tmp_path, capsys):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.zeros((6, 4), np.float32))
    code = cli.main(["forward", str(CASE / "net.prototxt"), "--inputs", str(inputs), "--out", str(tmp_path / "o.npz")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "label" in err and "\n" not in err


def test_inspect_shapes_prints_every_blob_shape_after_an_input_reshape(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text(
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9\n'
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }\n'
        'layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n'
    )
    assert cli.main(["inspect", str(net), "--shapes", "--input-shape", "data=5,3,13,13"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1] for line in out.split("blob shapes:")[1].strip().splitlines()[1:]}
    assert lines == {"data": "5x3x13x13", "c": "5x4x6x6", "p": "5x4x3x3"}


@pytest.mark.parametrize("case", sorted(p.name for p in (FIXTURES / "layers").iterdir() if p.is_dir()))
def test_forward_on_a_recorded_case_file_reproduces_every_recorded_array(case, tmp_path):
    """The case.npz itself is a valid --inputs file (input/* and topdiff/* are read, the rest ignored)."""
    folder = FIXTURES / "layers" / case
    z = np.load(folder / "case.npz")
    phase = "test" if "TEST" in (folder / "README.txt").read_text() else "train"
    args = ["forward", str(folder / "net.prototxt"), "--weights", str(folder / "weights.caffemodel"),
            "--inputs", str(folder / "case.npz"), "--phase", phase, "--out", str(tmp_path / "o.npz")]
    if any(k.startswith("diff/") for k in z.files):
        args.append("--backward")
    if case.startswith("osm_caa"):
        args += ["--dialect", "osm"]
    assert cli.main(args) == 0
    got = np.load(tmp_path / "o.npz")
    compared = 0
    for key in z.files:
        if key.split("/")[0] in ("blob", "diff", "param", "paramdiff", "loss", "loss_fwd", "bnblobs_after_fwd") \
                and "_split_" not in key:
            ref = z[key].astype(np.float64)
            scale = max(float(np.abs(ref).max()), 1e-30)
            assert float(np.abs(got[key].reshape(ref.shape) - ref).max()) <= 1e-5 * scale, key
            compared += 1
    assert compared >= 4


def test_forward_warns_when_a_nan_input_makes_the_loss_nan(tmp_path, capsys):
    """Issue 11.6c: a NaN input used to exit 0 with a NaN loss and no word about it."""
    import numpy as np

    from rll_repro.cli import main

    root = Path(__file__).resolve().parents[1] / "prototxt/digits"
    data = np.zeros((30, 1, 8, 8), np.float32)
    data[3, 0, 2, 2] = np.nan
    np.savez(tmp_path / "in.npz", data=data, label=(np.arange(30) % 5).astype(np.float32))
    assert main(["forward", str(root / "train.prototxt"), "--inputs", str(tmp_path / "in.npz"),
                 "--out", str(tmp_path / "out.npz")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or Inf" in err[0] and "input data (1 values)" in err[0]
