"""pycaffe-style API and one-line errors of the solver."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import rll_repro
from rll_repro.caffe import caffe_pb2
from rll_repro.caffe import io as caffe_io
from rll_repro.caffe.weights import array_to_blob
from rll_repro.cli import main
from rll_repro.errors import FormatError, RLLReproError
from rll_repro.recipes import digits


def test_pycaffe_names_get_solver_sgdsolver_net_iter_step():
    solver = rll_repro.SGDSolver(str(digits.prototxt("solver")))
    assert type(solver).__name__ == "SGDSolver" and solver.iter == 0
    src = digits.batch_source()
    batch = src.batch(0)
    for name, value in batch.items():  # the MATLAB scripts' way: fill the input blobs, then step(1)
        solver.net.blobs[name].data[...] = value
    solver.step(1)
    assert solver.iter == 1 and np.isfinite(float(solver.net.blobs["loss"].data))
    assert type(rll_repro.get_solver(str(digits.prototxt("solver")))).__name__ == "SGDSolver"


def test_solver_snapshot_field_snapshots_inside_step_like_caffe(tmp_path):
    param = caffe_io.read_solver_prototxt(digits.prototxt("solver"))
    param.net = str(digits.prototxt("train"))
    param.snapshot = 2
    param.snapshot_prefix = str(tmp_path / "snap")
    solver = rll_repro.get_solver(param)
    solver.step(5, batches=digits.batch_source().batch)
    assert sorted(p.name for p in tmp_path.glob("*.solverstate")) == [
        "snap_iter_2.caffemodel.solverstate", "snap_iter_4.caffemodel.solverstate"]


def test_restore_rejects_a_solverstate_of_another_net(tmp_path):
    state = caffe_pb2.SolverState()
    state.iter = 3
    state.history.add().data.extend([0.0] * 5)
    path = tmp_path / "x.solverstate"
    path.write_bytes(state.SerializeToString())
    solver = rll_repro.get_solver(str(digits.prototxt("solver")))
    with pytest.raises(FormatError, match=r"x\.solverstate: solverstate has 1 history blobs, the SGD solver "
                                          r"of this net needs 13$"):
        solver.restore(path)


def test_restore_names_a_missing_learned_net(tmp_path):
    solver = rll_repro.get_solver(str(digits.prototxt("solver")))
    state = caffe_pb2.SolverState()
    state.iter = 2
    state.learned_net = "gone.caffemodel"
    for h in solver.history:
        state.history.add().CopyFrom(array_to_blob(h.numpy()))
    path = tmp_path / "y.solverstate"
    path.write_bytes(state.SerializeToString())
    with pytest.raises(FormatError, match="learned_net 'gone.caffemodel' not found"):
        solver.restore(path)


def test_bad_regularization_type_is_a_one_line_error():
    param = caffe_io.read_solver_prototxt(digits.prototxt("solver"))
    param.net = str(digits.prototxt("train"))
    param.regularization_type = "L3"
    with pytest.raises(RLLReproError, match="unknown regularization_type 'L3'"):
        rll_repro.get_solver(param)


def test_train_cli_missing_solver_is_one_line_exit_2(tmp_path, capsys):
    assert main(["train", "--solver", str(tmp_path / "nope.prototxt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rll-repro train: error:") and "nope.prototxt" in err[0]


def test_reproduce_cli_prints_ours_next_to_caffe(tmp_path, capsys):
    torch.set_num_threads(1)
    assert main(["reproduce", "digits", "--out", str(tmp_path / "d"), "--max-iter", "10"]) == 0
    out = capsys.readouterr().out
    assert "real Caffe" in out and "88.06" in out and "Recall@8" in out
    assert (tmp_path / "d" / "results.json").exists()
