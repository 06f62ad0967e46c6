"""Forward+backward time of the losses: RLL (ours, Gram form) vs a literal per-pair implementation of
the Caffe algorithm vs pytorch-metric-learning's RankedListLoss (if importable); then every baseline
loss of rll_repro.losses vs PML's version of it (``--baselines``: only that table, N = 180 and 1024,
D = 512).

    .venv/bin/python bench/bench_losses.py [--quick] [--loop-budget SECONDS] [--no-memory] [--baselines]

Baselines table: ours with default parameters vs PML's closest setup (its loss plus the miner that
the paper's sampling needs); "same formula" says whether the two compute the same value (see
tests/test_loss_baselines.py), otherwise the cost of the nearest PML formula is shown. A PML run
whose index tensors would exceed ``--pml-max-gb`` is not run (marked "too big").

All runs use one thread (torch.set_num_threads(1)); ours and pml run interleaved, and each time is
the best of several repeats (the machine is shared: the best run is the least disturbed one).
The literal loop (Python over the P = N(N-1)/2 pairs, numpy float32 per pair, as Caffe's .cpp) is
measured where it fits the time budget and extrapolated linearly in P beyond it (marked "~").
"ours" includes the RLL fork's L2 Normalization (forward and backward), as does pml (its
LpDistance normalises by default). pytorch-metric-learning is a bench-only optional dependency
(``pip install pytorch-metric-learning --no-deps``); its ``tqdm`` import is stubbed if tqdm is absent.
Peak extra memory: the running total of torch's CPU allocation events during one
forward+backward (torch.profiler, profile_memory=True); N^2*8B is one (N, N) float64 matrix.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import itertools
import os
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rll_repro import losses as ours_losses  # noqa: E402
from rll_repro.losses import RankedListLoss  # noqa: E402

SIZES_N = (60, 150, 180, 512, 1024)
SIZES_D = (64, 512)


def literal_caffe_v12(feat: np.ndarray, labels: np.ndarray, m=0.4, nt=1.2, tp=0.0, tn=10.0, base=2.71828):
    """DistanceWeightedValidPairLossV12 Backward (SPEC rll §1.3) pair by pair, float32 like the .cpp."""
    f32 = np.float32
    n = len(feat)
    pairs = list(itertools.combinations(range(n), 2))
    pos_b, neg_b = f32(1) - f32(m) / f32(2), f32(1) + f32(m) / f32(2)
    ga, w, same_flags, loss = [], [], [], f32(0)
    for i, j in pairs:
        diff = feat[i] - feat[j]
        d = f32(np.sqrt(f32(np.dot(diff, diff))))
        same = labels[i] == labels[j]
        same_flags.append(same)
        loss += (f32(max(d - f32(f32(nt) - f32(m)), 0)) if same else f32(max(f32(nt) - d, 0))) ** 2
        u = diff * f32(1.0 / (float(d) + 1e-6))
        ga.append(u if same else -u)
        t = f32(d - pos_b) if same else f32(neg_b - d)
        w.append(f32(f32(base) ** f32(f32(tp if same else tn) * t)) if t > 0 else f32(0))
    sp, sn = [f32(1e-8)] * n, [f32(1e-8)] * n
    for (i, j), wp, same in zip(pairs, w, same_flags):
        s = sp if same else sn
        s[i] += wp
        s[j] += wp
    z = f32(1e-8)
    for k in range(n):
        z += sp[k] + sn[k]
    grad = np.zeros_like(feat)
    for (i, j), wp, a, same in zip(pairs, w, ga, same_flags):
        s = sp if same else sn
        grad[i] += f32(0.5 * wp / s[i]) * f32((sp[i] + sn[i]) / z) * a
        grad[j] -= f32(0.5 * wp / s[j]) * f32((sp[j] + sn[j]) / z) * a
    return loss / f32(len(pairs)), grad


def load_pml():
    try:
        import tqdm  # noqa: F401
    except ImportError:
        stub = types.ModuleType("tqdm")
        stub.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
        stub.tqdm = lambda iterable=None, *args, **kwargs: iterable
        sys.modules["tqdm"] = stub
    try:
        from pytorch_metric_learning.losses import RankedListLoss as PMLRankedListLoss
    except Exception:  # not installed or incompatible: the column is skipped
        return None
    with warnings.catch_warnings():  # pml warns that Tn = 10 "may overflow"; the paper uses it
        warnings.simplefilter("ignore")
        return PMLRankedListLoss(margin=0.4, Tn=10.0, Tp=0.0)


def batch(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.arange(n) // 3  # C x 3 batches, as in the papers
    return x, y


def timed(fns, repeats):
    """Best time of each function over ``repeats`` rounds, run interleaved so that load from other
    processes hits all of them alike."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def fwd_bwd(loss_fn, x, y):
    def run():
        xi = x.clone().requires_grad_()
        loss_fn(xi, y).backward()
    return run


def peak_mb(loss_fn, x, y):
    """Peak extra CPU memory (MB) of one forward+backward: the running sum of the allocator's
    allocation/free events recorded by torch.profiler (profile_memory=True), inputs excluded."""
    xi = x.clone().requires_grad_()
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the profiler prints start/stop lines on fd 2
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            loss_fn(xi, y).backward()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N in {60, 180} only")
    ap.add_argument("--loop-budget", type=float, default=20.0, help="seconds allowed per literal-loop run")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--baselines", action="store_true", help="only the baseline-loss table")
    ap.add_argument("--pml-max-gb", type=float, default=2.0, help="skip PML runs whose index tensors exceed this")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.baselines:
        bench_baselines(args.pml_max_gb, (180,) if args.quick else BASELINE_N)
        return
    ours = RankedListLoss()
    pml = load_pml()
    sizes_n = (60, 180) if args.quick else SIZES_N

    # sanity: ours equals the literal loop (normalised input, no Normalization in either)
    x, y = batch(30, 16)
    xn = torch.nn.functional.normalize(x, dim=1)
    v_loop, g_loop = literal_caffe_v12(xn.numpy(), y.numpy())
    xr = xn.clone().requires_grad_()
    v = RankedListLoss(normalize=False)(xr, y)
    v.backward()
    v = v.detach()
    err = float(np.abs(xr.grad.numpy() - g_loop).max() / np.abs(g_loop).max())
    print(f"check vs literal loop (N=30, D=16): value {float(v):.7g} vs {float(v_loop):.7g}, grad max rel err {err:.2e}")
    print(f"torch {torch.__version__}, 1 thread, pml {'available' if pml is not None else 'not importable'}")
    print()
    header = (f"{'N':>5} {'D':>4} | {'ours ms':>9} | {'loop ms':>11} {'x faster':>9} | {'pml ms':>9} "
              f"{'pml/ours':>8} | {'ours MB':>8} {'pml MB':>8} {'N^2*8B MB':>9}")
    print(header)
    print("-" * len(header))
    per_pair = {}
    for d in SIZES_D:
        for n in sizes_n:
            x, y = batch(n, d)
            repeats = 15 if n <= 512 else 7
            fns = [fwd_bwd(ours, x, y)] + ([fwd_bwd(pml, x, y)] if pml is not None else [])
            t_ours, t_pml = (timed(fns, repeats) + [float("nan")])[:2]
            p = n * (n - 1) // 2
            xn_np = torch.nn.functional.normalize(x, dim=1).numpy()
            est = per_pair.get(d, 0.0) * p
            if est <= args.loop_budget:
                runs = []
                while len(runs) < 3 and sum(runs) + est <= args.loop_budget:
                    t0 = time.perf_counter()
                    literal_caffe_v12(xn_np, y.numpy())
                    runs.append(time.perf_counter() - t0)
                    est = runs[-1]
                t_loop = min(runs)
                per_pair[d] = t_loop / p
                loop_txt = f"{t_loop * 1e3:11.0f}"
            else:
                t_loop = est
                loop_txt = f"~{t_loop * 1e3:10.0f}"
            mb_ours = peak_mb(ours, x, y) if not args.no_memory else float("nan")
            mb_pml = peak_mb(pml, x, y) if (pml is not None and not args.no_memory) else float("nan")
            print(f"{n:>5} {d:>4} | {t_ours * 1e3:9.2f} | {loop_txt} {t_loop / t_ours:9.0f} | {t_pml * 1e3:9.2f} "
                  f"{t_pml / t_ours:8.2f} | {mb_ours:8.1f} {mb_pml:8.1f} {n * n * 8 / 2**20:9.1f}", flush=True)
    print("\n~ = extrapolated linearly in P = N(N-1)/2 from the largest measured loop run of that D.")
    print("pml/ours > 1: ours is faster. MB: peak extra memory of one forward+backward (allocator events).")
    print()
    bench_baselines(args.pml_max_gb, (180,) if args.quick else BASELINE_N)


BASELINE_N, BASELINE_D = (180, 1024), 512


def baseline_rows():
    """(label, our loss, PML callable (emb, labels) -> loss or None, same formula?, PML setup, bytes(n)
    of PML's largest index tensors): every baseline with default parameters against PML's closest
    setup, then our option that gives PML's exact formula where the default differs."""
    L = ours_losses
    rows = [(cls.__name__, cls(seed=0) if cls is L.MarginLoss else cls()) for cls in L.BASELINE_LOSSES]
    rows += [("Contrastive(PML form)", L.ContrastiveLoss(squared=False, reduction="avg_nonzero")),
             ("Triplet(mining=all)", L.TripletLoss(mining="all")), ("NCA(objective=log)", L.NCALoss(objective="log"))]
    pml = {}
    if load_pml() is not None:
        from pytorch_metric_learning import losses as pl
        from pytorch_metric_learning import miners as pm

        def with_miner(loss, miner):
            return lambda x, y: loss(x, y, miner(x, y))

        def pairs(n):  # ordered positive and negative pairs of a C x 3 batch, int64 indices
            return n * (n - 1) * 2 * 8

        def triplets(n):  # all (a, p, n) triplets of a C x 3 batch: three int64 indices + distances
            return 2 * n * (n - 3) * 5 * 8

        semihard = pm.TripletMarginMiner(margin=0.05, type_of_triplets="semihard")
        pml = {
            "ContrastiveLoss": (pl.ContrastiveLoss(), False, "ContrastiveLoss()", pairs),
            "TripletLoss": (with_miner(pl.TripletMarginLoss(), semihard), False,
                            "TripletMarginLoss + TripletMarginMiner(semihard)", triplets),
            "LiftedStructureLoss": (pl.LiftedStructureLoss(), True, "LiftedStructureLoss()",
                                    lambda n: 2 * n * n * (n - 3) * 5),  # (pos pairs) x (neg pairs) bool + float
            "MarginLoss": (with_miner(pl.MarginLoss(), pm.DistanceWeightedMiner()), True,
                           "MarginLoss + DistanceWeightedMiner", triplets),
            "NCALoss": (pl.NCALoss(), False, "NCALoss() (-log p_i)", pairs),
            "MultiSimilarityLoss": (with_miner(pl.MultiSimilarityLoss(), pm.MultiSimilarityMiner()), True,
                                    "MultiSimilarityLoss + MultiSimilarityMiner", pairs),
            "Contrastive(PML form)": (pl.ContrastiveLoss(), True, "ContrastiveLoss()", pairs),
            "Triplet(mining=all)": (pl.TripletMarginLoss(), True, "TripletMarginLoss() (all triplets)", triplets),
            "NCA(objective=log)": (pl.NCALoss(), True, "NCALoss()", pairs),
        }
    return [(label, ours, *pml.get(label, (None, None, "-", None))) for label, ours in rows], bool(pml)


def bench_baselines(pml_max_gb: float, sizes_n=BASELINE_N, d: int = BASELINE_D):
    """Table: every baseline loss, ours vs PML, forward+backward, best of several interleaved runs."""
    rows, have_pml = baseline_rows()
    print(f"Baseline losses, forward+backward, D={d}, C x 3 batches, 1 thread, best of the repeats"
          f" (pml {'available' if have_pml else 'not importable'})")
    header = f"{'loss':<22} {'N':>5} | {'ours ms':>9} | {'pml ms':>9} {'pml/ours':>8} | {'same formula':<12} | pml setup"
    print(header)
    print("-" * len(header))
    for label, ours, theirs, same, setup, size in rows:
        for n in sizes_n:
            x, y = batch(n, d)
            too_big = theirs is not None and size(n) > pml_max_gb * 2**30
            fns = [fwd_bwd(ours, x, y)] + ([fwd_bwd(theirs, x, y)] if theirs is not None and not too_big else [])
            times = timed(fns, 10 if n <= 512 else 3) + [float("nan")]
            t_ours, t_pml = times[0], times[1]
            pml_txt = "-" if theirs is None else "too big" if too_big else f"{t_pml * 1e3:9.2f}"
            ratio = f"{t_pml / t_ours:8.2f}" if theirs is not None and not too_big else ""
            same_txt = "-" if same is None else ("yes" if same else "no")
            print(f"{label:<22} {n:>5} | {t_ours * 1e3:9.2f} | {pml_txt:>9} {ratio:>8} | {same_txt:<12} | {setup}",
                  flush=True)
    print("pml/ours > 1: ours is faster. 'too big': PML's index tensors at this N exceed --pml-max-gb.")
    print("'same formula: no': our default differs from PML's on purpose (rll_repro.losses docstrings); the")
    print("rows below the seven defaults time our option that computes PML's formula exactly.")


if __name__ == "__main__":
    main()
