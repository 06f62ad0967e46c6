"""Resume is bitwise: N steps in one process == k steps, snapshot, a NEW process restores, N-k steps.

The net is the digits net with a Dropout layer added, so the torch RNG state (stored in the
snapshot's side file with the sampler state and the RLL layer's lagging value) matters.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from rll_repro.caffe import io as caffe_io
from rll_repro.caffe.weights import weights_from_net
from rll_repro.recipes import digits

REPO = Path(__file__).resolve().parents[1]


def _dropout_solver(tmp_path: Path) -> Path:
    net = digits.prototxt("train").read_text().replace(
        'layer {\n  name: "fc"',
        'layer { name: "drop" type: "Dropout" bottom: "pool2" top: "pool2" dropout_param { dropout_ratio: 0.3 } }\n'
        'layer {\n  name: "fc"', 1)
    assert '"Dropout"' in net
    (tmp_path / "train.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(digits.prototxt("solver").read_text())
    return tmp_path / "solver.prototxt"


def _train(solver, out, *extra):
    cmd = [sys.executable, "-m", "rll_repro", "train", "--solver", str(solver), "--data", "digits",
           "--out", str(out), "--threads", "1", "--quiet", *extra]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _train_here(solver_path, out, max_iter):
    import torch

    import rll_repro
    from rll_repro.train import Schedule, run_training

    torch.set_num_threads(1)
    solver = rll_repro.get_solver(str(solver_path))
    run_training(solver, digits.batch_source(), Schedule(max_iter=max_iter, output_interval=0,
                                                         snapshot_prefix=str(out / "digits")), progress=False)


def test_resume_in_a_new_process_is_bitwise_identical(tmp_path):
    solver = _dropout_solver(tmp_path)
    _train_here(solver, tmp_path / "whole", 12)
    _train_here(solver, tmp_path / "split", 5)
    state = tmp_path / "split" / "digits_iter_5.caffemodel.solverstate"
    _train(solver, tmp_path / "split", "--max-iter", "12", "--snapshot", str(state))  # a new process
    whole = weights_from_net(caffe_io.read_caffemodel(tmp_path / "whole" / "digits_iter_12.caffemodel"))
    split = weights_from_net(caffe_io.read_caffemodel(tmp_path / "split" / "digits_iter_12.caffemodel"))
    assert whole.keys() == split.keys()
    for layer in whole:
        for a, b in zip(whole[layer], split[layer]):
            np.testing.assert_array_equal(a, b, err_msg=layer)
    h_whole = caffe_io.read_solverstate(tmp_path / "whole" / "digits_iter_12.caffemodel.solverstate").history
    h_split = caffe_io.read_solverstate(tmp_path / "split" / "digits_iter_12.caffemodel.solverstate").history
    assert len(h_whole) == len(h_split)
    for a, b in zip(h_whole, h_split):
        assert a.data == b.data
    assert "Resuming from" in (tmp_path / "split" / "train.log").read_text()


def test_resume_without_the_side_file_is_caffes_resume_and_differs_with_dropout(tmp_path):
    """Control: Caffe's files alone restore weights and history but not the RNG, so with Dropout the
    continuation differs -- the side file is what makes the check above pass."""
    import torch

    import rll_repro

    torch.set_num_threads(1)
    solver_path = _dropout_solver(tmp_path)
    whole = rll_repro.get_solver(str(solver_path))
    whole.step(8, batches=digits.batch_source().batch)
    split = rll_repro.get_solver(str(solver_path))
    split.step(5, batches=digits.batch_source().batch)
    _, state = split.snapshot(tmp_path / "s")
    Path(state + ".rllstate").unlink()
    resumed = rll_repro.get_solver(str(solver_path))
    resumed.restore(state)
    resumed.step(3, batches=digits.batch_source().batch)
    assert not np.array_equal(whole.net.params["fc"][0].data, resumed.net.params["fc"][0].data)


def test_loader_batch_source_yields_the_iterations_batch_in_any_order():
    """The paper-setting source (data module's DataLoader pipeline) gives batch t whether reached by
    iterating or by jumping there after a restore."""
    from rll_repro.data import loader, samplers
    from rll_repro.train import LoaderBatchSource

    rng = np.random.default_rng(0)
    images = rng.normal(size=(40, 3, 4, 4)).astype(np.float32)
    ids = np.repeat(np.arange(1, 11), 4)

    def source():
        sampler = samplers.RLLBatchSampler(ids, 3, 2, seed=5, num_iterations=50)
        return LoaderBatchSource(loader.make_train_loader((images, ids), sampler, None))

    walked = source()
    batches = [walked.batch(t) for t in range(6)]
    jumped = source()
    jumped.load_state_dict({"seed": 5, "iteration": 4})
    b4 = jumped.batch(4)
    np.testing.assert_array_equal(b4["data"], batches[4]["data"])
    np.testing.assert_array_equal(b4["label"], batches[4]["label"])
    assert walked.state_dict()["iteration"] == 6
