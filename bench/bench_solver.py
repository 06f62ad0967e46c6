"""Solver overhead per step vs the forward/backward of a BN-Inception step.

Overhead = everything ``Solver.step(1)`` does besides ``net.forward_backward()``: clearing the
diffs, the non-finite check, the lr policy, Normalize/Regularize/ComputeUpdateValue for every
learnable param, the update, the RLL annealing. Measured on the SOP train net (BN-Inception + three
RLL heads, ~500 learnable blobs) with a small batch, since 2 CPU cores cannot run the original 150
(the overhead does not depend on the batch; the forward/backward grows with it, so the ratio at
batch 150 is ~25x smaller than the one printed). Also a 'digits' row (the demo's tiny net), where
the overhead ratio is naturally large.

    .venv/bin/python bench/bench_solver.py [--batch 6 24] [--steps 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import rll_repro  # noqa: E402
from rll_repro.caffe import io as caffe_io  # noqa: E402


def _timed_solver(solver):
    """Wrap net.forward_backward to accumulate its time separately from the step's."""
    fb_time = [0.0]
    orig = solver.net.forward_backward

    def timed():
        t = time.perf_counter()
        loss = orig()
        fb_time[0] += time.perf_counter() - t
        return loss

    solver.net.forward_backward = timed
    return fb_time


def measure(solver, batch_fn, steps: int) -> tuple[float, float, float]:
    """Median over ``steps`` single steps of (step time, forward/backward time, the difference)."""
    solver.step(1, batches=batch_fn)  # warm-up
    fb = _timed_solver(solver)
    rows = []
    for _ in range(steps):
        fb[0] = 0.0
        t = time.perf_counter()
        solver.step(1, batches=batch_fn)
        total = time.perf_counter() - t
        rows.append((total, fb[0], total - fb[0]))
    return tuple(float(np.median([r[i] for r in rows])) for i in range(3))


def sop_solver(batch: int):
    solver_path = REPO / "prototxt" / "rll" / "sop" / "solver.prototxt"
    sp = caffe_io.read_solver_prototxt(solver_path)
    net = caffe_io.read_net_prototxt(solver_path.parent / sp.net)
    for layer in net.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    sp.ClearField("net")
    sp.net_param.CopyFrom(net)
    return rll_repro.get_solver(sp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[6, 24], help="SOP net batch(es), multiples of 3 (default 6 24)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []

    per_sample = []
    for batch in args.batch:
        solver = sop_solver(batch)
        n_params = sum(p.numel() for p in solver.learnable_params)
        rng = np.random.default_rng(0)
        data = rng.normal(0, 50, (batch, 3, 227, 227)).astype(np.float32)
        label = np.repeat(np.arange(batch // 3), 3).astype(np.float32).reshape(tuple(solver.net.blobs["label"].shape))

        def sop_batch(_it, data=data, label=label):
            return {"data": data, "label": label}

        total, fb, over = measure(solver, sop_batch, args.steps)
        rows.append((f"BN-Inception SOP net, batch {batch}", len(solver.learnable_params), n_params, total, fb, over))
        per_sample.append((fb / batch, over))
        del solver

    from rll_repro.recipes import digits

    dsolver = rll_repro.get_solver(str(digits.prototxt("solver")))
    src = digits.batch_source()
    total, fb, over = measure(dsolver, src.batch, 50)
    rows.append(("digits demo net, batch 30", len(dsolver.learnable_params),
                 sum(p.numel() for p in dsolver.learnable_params), total, fb, over))

    print(f"torch threads: {args.threads} (timings on a shared machine are noisy)")
    print(f"{'net':<34}{'blobs':>6}{'params':>11}{'step ms':>10}{'fwd/bwd ms':>12}{'solver ms':>11}{'overhead':>10}")
    for name, nb, npar, total, fb, over in rows:
        print(f"{name:<34}{nb:>6}{npar:>11,}{total * 1e3:>10.1f}{fb * 1e3:>12.1f}{over * 1e3:>11.2f}"
              f"{100 * over / fb:>9.2f}%")
    fb1, over = per_sample[-1]
    print(f"estimate at the paper's batch 150 (fwd/bwd scales with the batch, the solver does not): "
          f"{100 * over / (fb1 * 150):.2f}%")
    print("target: solver overhead <= 5% of a BN-Inception forward/backward step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
