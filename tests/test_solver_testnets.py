"""test_net / test_iter / test_interval (Caffe's Solver::TestAll), fed by a test batch callback."""
from __future__ import annotations

import numpy as np
from google.protobuf import text_format

import rll_repro
from rll_repro.caffe import caffe_pb2
from rll_repro.net import Net
from rll_repro.trainlog import GlogWriter

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 6 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
"""

SOLVER = """
base_lr: 0.5 lr_policy: "fixed" momentum: 0.9 max_iter: 10 random_seed: 3
test_iter: 2 test_interval: 3 test_initialization: false
"""

rng = np.random.default_rng(0)
X = rng.normal(size=(4, 6, 4)).astype(np.float32)
Y = rng.integers(0, 3, size=(4, 6)).astype(np.float32)


def _solver(log=None):
    param = text_format.Parse(SOLVER, caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    solver = rll_repro.get_solver(param)
    solver.log = log
    solver.test_batches = lambda i, k: {"data": X[2 + k], "label": Y[2 + k]}
    return solver, param


def test_generic_net_gives_a_test_phase_net_per_test_iter_entry():
    solver, _ = _solver()
    assert len(solver.test_nets) == 1 and solver.test_nets[0].phase == "test"
    assert "acc" in solver.test_nets[0].outputs and "acc" not in solver.net.outputs


def test_testall_runs_at_the_interval_with_the_train_weights_and_averages(tmp_path):
    with GlogWriter(tmp_path / "log") as log:
        solver, param = _solver(log)
        solver.step(3, batches=lambda it: {"data": X[0], "label": Y[0]})
        assert solver.test_results == []  # test_initialization false: no test at iter 0
        solver.step(1, batches=lambda it: {"data": X[0], "label": Y[0]})  # iter 3: tests first
    got = solver.test_results[0]
    ref = Net(param.net_param, phase="test")
    solver2, _ = _solver()  # the test used the weights after 3 steps (before the 4th update)
    solver2.step(3, batches=lambda it: {"data": X[0], "label": Y[0]})
    for name, blobs in ref.params.items():
        for dst, src in zip(blobs, solver2.net.params[name]):
            dst.data[...] = src.data
    outs = [ref.forward(data=X[2 + k], label=Y[2 + k]) for k in range(2)]
    for name in ("loss", "acc"):
        assert got[name] == np.float64(np.mean([float(o[name]) for o in outs]))
    text = (tmp_path / "log").read_text()
    assert "Iteration 3, Testing net (#0)" in text
    assert "Test net output #0: acc = " in text or "Test net output #1: acc = " in text
    assert " loss = " in text and "(* 1 = " in text


def test_test_nets_nobody_feeds_are_not_tested_nor_logged(tmp_path):
    # The CLI's train names no test source: Caffe's TestAll would average its data layers' outputs;
    # without a feed there is nothing to test, so no 'Test net output #0: loss = 0' lines either.
    with GlogWriter(tmp_path / "log") as log:
        solver, _ = _solver(log)
        solver.test_batches = None
        solver.step(4, batches=lambda it: {"data": X[0], "label": Y[0]})
        assert solver.test_all() == [] and solver.test_results == []
    text = (tmp_path / "log").read_text()
    assert "Test net output" not in text and "Testing net" not in text
