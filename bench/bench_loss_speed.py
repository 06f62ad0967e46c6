"""Forward+backward time of the two Caffe-exact losses against pytorch-metric-learning, side by side:
RankedListLoss vs pml's RankedListLoss, OSMCAALoss vs pml's ContrastiveLoss (OSM's pair term).

    .venv/bin/python bench/bench_loss_speed.py [--sizes 180,512,1024,2048] [--threads 1,2] [--repeats 7]
    .venv/bin/python bench/bench_loss_speed.py --profile 2048   # where the time goes (one thread)
    .venv/bin/python bench/bench_loss_speed.py --retain-memory  # glibc keeps freed blocks, as in a CPU solver
    .venv/bin/python bench/bench_loss_speed.py --pytorch-ops    # ours without the C pair passes (RLL_REPRO_NATIVE=0)

D = 512, C x 3 batches (labels = arange(N) // 3), random embeddings; every loss normalises its input
(ours: the forks' L2 Normalization with its own backward; pml: LpDistance's normalisation). pml's
RankedListLoss uses the paper's settings (margin 0.4, T_n 10, T_p 0), its ContrastiveLoss OSM's
margin (pos 0, neg 1.2). The four runs of a size are interleaved and each figure is the **median**
of ``--repeats`` rounds: the machine is shared, so single runs are noisy; the medians of two
separate invocations are the honest comparison. ratio = pml / ours (> 1: ours is faster).
pytorch-metric-learning is a bench-only optional dependency (``pip install pytorch-metric-learning
--no-deps`` into .venv); without it the pml columns are skipped.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rll_repro.losses import OSMCAALoss, RankedListLoss  # noqa: E402

DIM = 512


def load_pml():
    try:
        from pytorch_metric_learning.losses import ContrastiveLoss, RankedListLoss as PMLRankedListLoss
    except Exception:  # not installed or incompatible: the columns are skipped
        return None, None
    with warnings.catch_warnings():  # pml warns that Tn = 10 "may overflow"; the paper uses it
        warnings.simplefilter("ignore")
        return PMLRankedListLoss(margin=0.4, Tn=10.0, Tp=0.0), ContrastiveLoss(pos_margin=0.0, neg_margin=1.2)


def batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    y = torch.arange(n) // 3
    s = torch.rand(n, generator=g) * 0.5 + 0.25  # CAA scores (a Gaussian pdf's range in the nets)
    return x, y, s


def fwd_bwd(loss_fn, x, *rest):
    def run():
        xi = x.clone().requires_grad_()
        loss_fn(xi, *rest).backward()
    return run


def medians(fns, repeats):
    """Median wall time and median CPU time (s, all threads of the process) of each function over
    ``repeats`` interleaved rounds (after one warm-up)."""
    for fn in fns:
        fn()
    wall, cpu = [[] for _ in fns], [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return [statistics.median(t) for t in wall], [statistics.median(t) for t in cpu]


def table(sizes, threads, repeats):
    pml_rll, pml_con = load_pml()
    ours_rll, ours_osm = RankedListLoss(), OSMCAALoss()
    from rll_repro.layers import _pair_native

    print(f"torch {torch.__version__}, D = {DIM}, median of {repeats} interleaved rounds, "
          f"pml {'available' if pml_rll is not None else 'not importable (columns skipped)'}")
    print(f"ours: C pair passes {_pair_native.status()}")
    header = (f"{'thr':>3} {'N':>5} | {'RLL ms':>8} {'pml RLL':>8} {'ratio':>6} {'cpu ratio':>9} | "
              f"{'OSM ms':>8} {'pml Con':>8} {'ratio':>6} {'cpu ratio':>9}")
    print(header)
    print("-" * len(header))
    nan = float("nan")
    for nthreads in threads:
        torch.set_num_threads(nthreads)
        for n in sizes:
            x, y, s = batch(n)
            fns = [fwd_bwd(ours_rll, x, y), fwd_bwd(ours_osm, x, y, s)]
            if pml_rll is not None:
                fns += [fwd_bwd(pml_rll, x, y), fwd_bwd(pml_con, x, y)]
            wall, cpu = medians(fns, repeats if n <= 1024 else max(3, repeats - 2))
            t, c = wall + [nan, nan], cpu + [nan, nan]
            print(f"{nthreads:>3} {n:>5} | {t[0] * 1e3:8.1f} {t[2] * 1e3:8.1f} {t[2] / t[0]:6.2f} {c[2] / c[0]:9.2f} | "
                  f"{t[1] * 1e3:8.1f} {t[3] * 1e3:8.1f} {t[3] / t[1]:6.2f} {c[3] / c[1]:9.2f}", flush=True)
    print("ms: median wall time of one forward+backward; ratio = pml / ours (> 1: ours is faster); "
          "cpu ratio: the same from the process's CPU time (less sensitive to other processes on a shared machine).")


CATEGORIES = (  # (label, aten op names): the profile's rows, in this order
    ("float64 GEMMs: Gram blocks (addmm) and gradient product (addmm_)", ("aten::addmm", "aten::addmm_", "aten::mm")),
    ("dtype conversions f32 <-> f64 (copy_)", ("aten::copy_", "aten::_to_copy", "aten::to")),
    ("float64 sums (row/column sums, set sums)", ("aten::sum",)),
    ("masks and selections (where, masked_fill_, eq/lt/le/gt, minimum)",
     ("aten::where", "aten::masked_fill_", "aten::eq", "aten::lt", "aten::le", "aten::gt", "aten::minimum")),
    ("pow / exp / sqrt / reciprocal", ("aten::pow", "aten::exp", "aten::exp_", "aten::sqrt", "aten::reciprocal_")),
    ("arithmetic (add/sub/mul/div, clamp, square)",
     ("aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div", "aten::div_",
      "aten::clamp_min", "aten::clamp_min_", "aten::square_", "aten::neg", "aten::neg_", "aten::pow_")),
    ("near-pair recomputation (nonzero_static, gather, index_put_/index_add_)",
     ("aten::nonzero_static", "aten::index", "aten::index_put_", "aten::index_add_", "aten::_index_put_impl_")),
)


def profile(n, rounds=3):
    """Self CPU time per category of aten ops, one thread, forward+backward of both losses."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    torch.set_num_threads(1)
    x, y, s = batch(n)
    for name, fn in (("RankedListLoss", fwd_bwd(RankedListLoss(), x, y)), ("OSMCAALoss", fwd_bwd(OSMCAALoss(), x, y, s))):
        fn()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(rounds):
                fn()
        by_op = defaultdict(float)
        for e in prof.key_averages():
            by_op[e.key] += e.self_cpu_time_total / 1e3 / rounds
        total = sum(by_op.values())
        print(f"\n{name}, N = {n}, D = {DIM}, 1 thread: {total:.1f} ms self time per forward+backward")
        print(f"{'where the time goes':<78} {'ms':>7} {'share':>6}")
        seen = set()
        for label, ops in CATEGORIES:
            ms = sum(by_op[o] for o in ops if o not in seen)
            seen.update(ops)
            print(f"{label:<78} {ms:7.1f} {ms / total:6.1%}")
        rest = total - sum(by_op[o] for o in seen)
        print(f"{'other (Python, autograd, normalisation, allocation)':<78} {rest:7.1f} {rest / total:6.1%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="180,512,1024,2048")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", type=int, metavar="N", help="print the per-category profile at this N instead")
    ap.add_argument("--retain-memory", action="store_true",
                    help="keep freed host memory for reuse (rll_repro.host_memory, what the CLI and a CPU solver set) "
                         "for both losses; default: the allocator as a library user has it")
    ap.add_argument("--pytorch-ops", action="store_true",
                    help="run ours on its PyTorch path only (what a GPU runs), without the C pair passes")
    args = ap.parse_args()
    if args.pytorch_ops:
        os.environ["RLL_REPRO_NATIVE"] = "0"
    if args.retain_memory:
        from rll_repro.host_memory import retain_freed_memory

        print(f"freed host memory kept for reuse: {retain_freed_memory()}")
    if args.profile:
        profile(args.profile)
        return
    table([int(v) for v in args.sizes.split(",")], [int(v) for v in args.threads.split(",")], args.repeats)


if __name__ == "__main__":
    main()
