"""Data-parallel training over gloo (CPU): K processes reproduce the one-process run.

Each scenario runs the solver on a BatchNorm net with an RLL head (the digits net) or with the
OSM+CAA head (softmax, ExtractProb, Gaussian, L1 weights, WeightedSoftmaxWithLoss, V5 pair loss)
for 5 SGD steps, on the same global batches, in one process (the reference, in this test process)
and in W = 2 or 3 processes (spawned), with even and uneven slices (B = 30 over 3 ranks is 10/10/10,
B = 29 over 3 ranks is 9/10/10).

Tolerance: weights within 2e-5 of the largest weight of their blob after 5 steps, and the loss of
every step within 1e-5 relative. The ranks sum different partial products (BatchNorm's statistics in
float64 sums of per-rank parts, each parameter gradient as the sum of the ranks' partial J_r^T g_r
where one process does one product), so the first step agrees to a few float32 ulps (measured in
the first run below ~3e-7 relative); the chaotic RLL dynamics (a 1e-7 change moves the loss by
~3e-4 relative by step 50 in Caffe itself) amplify that only mildly over 5 steps. BatchNorm's three
blobs must be identical (bitwise) on every rank: they are computed from the all-reduced sums.
"""
from __future__ import annotations

import datetime
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "prototxt/digits"
TIMEOUT_S = 240
STEPS = 5

OSM_NET = """
name: "osm_bn_head"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 12 dim: 2 dim: 4 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }
layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "sc" top: "sc" }
layer { name: "fc_logits" type: "InnerProduct" bottom: "sc" top: "logits"
        inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "fc_feat" type: "InnerProduct" bottom: "sc" top: "fc_feat"
        inner_product_param { num_output: 8 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "rs" type: "Reshape" bottom: "fc_feat" top: "feat" reshape_param { shape { dim: 0 dim: 0 dim: 1 dim: 1 } } }
layer { name: "prob" type: "Softmax" bottom: "logits" top: "prob" }
layer { name: "p_gt" type: "ExtractProb" bottom: "prob" bottom: "label" top: "p_gt" propagate_down: 0 propagate_down: 0 }
layer { name: "g_w" type: "Gaussian" bottom: "p_gt" top: "g_w" gaussian_param { sigma: 0.18 mean: 0.5 } propagate_down: 0 }
layer { name: "l1" type: "Normalization" bottom: "g_w" top: "w" normalization_param { norm: L1 } }
layer { name: "cls_loss" type: "WeightedSoftmaxWithLoss" bottom: "logits" bottom: "label" bottom: "w" top: "cls_loss"
        loss_weight: 1 propagate_down: 1 propagate_down: 0 propagate_down: 0 }
layer { name: "l2" type: "Normalization" bottom: "feat" top: "emb" normalization_param { norm: L2 } }
layer { name: "att" type: "Gaussian" bottom: "p_gt" top: "att" gaussian_param { sigma: 0.68 mean: 1 } propagate_down: 0 }
layer { name: "osm" type: "DistanceWeightedValidPairLossV5" bottom: "emb" bottom: "label" bottom: "att" top: "osm"
        loss_weight: 1 contrastive_loss_param { margin: 1.2 } gaussian_param { sigma: 0.8 mean: 0 }
        propagate_down: 1 propagate_down: 0 propagate_down: 0 }
"""


def solver_param(head: str, tmp: str):
    from rll_repro.caffe import caffe_pb2
    from rll_repro.caffe import io as caffe_io

    if head == "rll":
        param = caffe_io.read_solver_prototxt(str(DIGITS / "solver.prototxt"))
        param.net = str(DIGITS / "train.prototxt")
    else:
        from google.protobuf import text_format

        param = caffe_pb2.SolverParameter(type="SGD", base_lr=0.05, lr_policy="fixed", momentum=0.9,
                                          weight_decay=0.0005)
        param.net_param.CopyFrom(text_format.Parse(OSM_NET, caffe_pb2.NetParameter()))
    param.ClearField("test_iter")
    param.display, param.snapshot, param.random_seed = 0, 0, 7
    param.snapshot_prefix = str(Path(tmp) / f"{head}")
    return param


def global_batch(head: str, batch: int, it: int) -> dict:
    """The one-process batch of iteration ``it``: C classes x K samples, shuffled, seeded by it."""
    rng = np.random.default_rng([11, it])
    classes = 6 if head == "osm" else 5
    labels = rng.permutation(np.arange(batch) % classes).astype(np.float32)
    shape = (batch, 1, 8, 8) if head == "rll" else (batch, 2, 4, 4)
    data = rng.standard_normal(shape).astype(np.float32) + labels.reshape(-1, 1, 1, 1) * 0.3
    return {"data": data, "label": labels}


def train(head: str, batch: int, tmp: str, steps=STEPS, start_from=None, snapshot_at=None) -> dict:
    """Run the solver (in whatever process group exists); returns the weights, BN blobs, losses."""
    import rll_repro

    Path(tmp).mkdir(parents=True, exist_ok=True)
    solver = rll_repro.get_solver(solver_param(head, tmp), device="cpu")
    if start_from is not None:
        solver.restore(start_from)
    losses = []
    snapshot = None
    while solver.iter < steps:
        inputs = global_batch(head, batch, solver.iter)
        solver.step(1, batches=lambda _it: inputs)
        losses.append(solver.last_loss)
        if snapshot_at is not None and solver.iter == snapshot_at:
            snapshot = solver.snapshot()[1]
    weights = {name: p.detach().numpy().copy() for name, p in zip(solver.net.learnable_param_names,
                                                                    solver.net.learnable_params)}
    return {"weights": weights, "losses": losses, "snapshot": snapshot}


def _worker(rank, world, init_file, out_dir, scenarios):
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
        for sc in scenarios:
            folder = Path(out_dir) / sc["name"]
            result = train(sc["head"], sc["batch"], str(folder), start_from=sc.get("start_from"),
                           snapshot_at=sc.get("snapshot_at"))
            np.savez(folder / f"rank{rank}.npz", losses=np.array(result["losses"]),
                     snapshot=np.array(result["snapshot"] or ""),
                     **{f"w/{k}": v for k, v in result["weights"].items()})
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - surfaced by the parent
        (Path(out_dir) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


def run_parallel(world, out: Path, scenarios) -> dict[str, list[dict]]:
    """One spawn of ``world`` processes running every scenario; {name: [rank results]}."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        mp.start_processes(_worker, args=(world, str(out / "init"), str(out), scenarios),
                           nprocs=world, join=True, start_method="spawn")
    except Exception as exc:  # noqa: BLE001
        errors = "".join(p.read_text() for p in out.glob("*.error"))
        raise AssertionError(f"parallel run failed: {exc}\n{errors}") from None
    results = {}
    for sc in scenarios:
        results[sc["name"]] = []
        for r in range(world):
            z = np.load(out / sc["name"] / f"rank{r}.npz")
            results[sc["name"]].append({"losses": z["losses"], "snapshot": str(z["snapshot"]),
                                        "weights": {k[2:]: z[k] for k in z.files if k.startswith("w/")}})
    return results


def assert_close_weights(got, want, what):
    for name, w in want.items():
        scale = max(float(np.abs(w).max()), 1e-3)
        np.testing.assert_allclose(got[name], w, rtol=0, atol=2e-5 * scale, err_msg=f"{what} {name}")


def assert_same_run(one, ranks):
    for r, res in enumerate(ranks):
        np.testing.assert_allclose(res["losses"], one["losses"], rtol=1e-5, err_msg=f"rank {r} losses")
        assert_close_weights(res["weights"], one["weights"], f"rank {r}")
    for name in one["weights"]:  # every rank holds the same weights, BatchNorm blobs included
        for res in ranks[1:]:
            np.testing.assert_array_equal(res["weights"][name], ranks[0]["weights"][name], err_msg=name)


CASES = {"rll-2-even": ("rll", 2, 30), "osm-2-even": ("osm", 2, 12),
         "rll-3-uneven": ("rll", 3, 29), "osm-3-uneven": ("osm", 3, 13)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process references, then one spawn of 2 and one of 3 processes for every scenario."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("parallel")
    try:
        refs = {name: train(head, batch, str(tmp / "one" / name)) for name, (head, _, batch) in CASES.items()}
        first = train("rll", 30, str(tmp / "one" / "first"), steps=2, snapshot_at=2)  # a 1-process snapshot
        two = [{"name": n, "head": h, "batch": b} for n, (h, w, b) in CASES.items() if w == 2]
        two += [{"name": "resume-1-on-2", "head": "rll", "batch": 30, "start_from": first["snapshot"]},
                {"name": "snapshot-on-2", "head": "rll", "batch": 30, "snapshot_at": 2}]
        three = [{"name": n, "head": h, "batch": b} for n, (h, w, b) in CASES.items() if w == 3]
        par = run_parallel(2, tmp / "w2", two)
        par.update(run_parallel(3, tmp / "w3", three))
        back = train("rll", 30, str(tmp / "one" / "back"), start_from=par["snapshot-on-2"][0]["snapshot"])
    finally:
        torch.set_num_threads(old)
    return {"refs": refs, "par": par, "back": back}


@pytest.mark.parametrize("case", list(CASES))
def test_k_processes_reproduce_the_one_process_run(case, runs):
    assert_same_run(runs["refs"][case], runs["par"][case])


def test_snapshot_of_one_process_resumes_on_two_and_back(runs):
    one = runs["refs"]["rll-2-even"]
    for r, res in enumerate(runs["par"]["resume-1-on-2"]):
        assert_close_weights(res["weights"], one["weights"], f"resumed on 2, rank {r}")
    written = runs["par"]["snapshot-on-2"][0]["snapshot"]
    assert written and Path(written).exists()  # written by rank 0 only, readable by one process
    assert_close_weights(runs["back"]["weights"], one["weights"], "2-process snapshot resumed on 1")


if __name__ == "__main__":  # pragma: no cover - manual runs
    sys.exit(pytest.main([__file__, "-q"]))
