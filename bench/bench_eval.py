"""Benchmark: SOP-sized retrieval evaluation vs one bare float32 matrix product of the same size.

    .venv/bin/python bench/bench_eval.py [--n 60502] [--dim 512] [--threads 2] [--repeats 3] [--topk]

Figures (best of --repeats, seconds):
  bare matmul   X @ X.T for all 60,502 x 60,502 entries, block by block into one reused buffer
                (2048-row blocks, as the evaluation uses; the same FLOPs as one full product without
                its 14.6 GB result); --small-blocks adds the same with 512-row blocks
  bare full     one torch.mm(X, X.T) with its full result (only with --full: needs ~15 GB)
  Recall@K      the whole SOP evaluation (normalise, blocked matmul, stable first-hit ranks,
                Recall@1,10,100,1000): rll_repro.eval.metrics.recall_at_k
  kNN top-1000  rll_repro.eval.knn.knn with k=1000 (only with --topk; informative)
All steps run in one subprocess, interleaved round by round so that each sees the same machine
load; the median per-round ratio step/matmul is the robust figure on a shared machine. Peak memory:
the process's peak RSS (resource.getrusage) after the first run of each step, steps ordered by
footprint, and its growth over the process after setup (torch + the 124 MB feature matrix).
The machine is shared: run it a few times and read the ratio, not the absolute seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STEP = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads({threads})
rng = np.random.default_rng(0)
n, d = {n}, {dim}
labels = np.repeat(np.arange((n + 4) // 5), 5)[:n]          # SOP-like: ~5 images per class
centers = rng.standard_normal(((n + 4) // 5, d), dtype=np.float32)
X = centers[labels] + 2.15 * rng.standard_normal((n, d), dtype=np.float32)  # Recall@1 ~ 80 %, like SOP
X /= np.sqrt((X * X).sum(1, keepdims=True))
from rll_repro.eval.metrics import recall_at_k
from rll_repro.eval.knn import knn

def matmul(rows):
    Xt = torch.from_numpy(X); buf = torch.empty(rows, n)
    for s in range(0, n, rows):
        e = min(s + rows, n); torch.mm(Xt[s:e], Xt.T, out=buf[:e - s])

steps = {{"matmul": lambda: matmul(2048), "matmul512": lambda: matmul(512), "recall": lambda: recall_at_k(X, labels, (1, 10, 100, 1000)),
         "topk": lambda: knn(X, 1000, normalized=True),
         "full": lambda: torch.mm(torch.from_numpy(X), torch.from_numpy(X).T)}}
order = {order}
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {{"base_mb": rss(), "peak_mb": {{}}, "times": {{k: [] for k in order}}}}
for r in range({repeats}):
    for name in order:                      # interleaved, so every step sees the same load
        t0 = time.perf_counter(); steps[name](); out["times"][name].append(time.perf_counter() - t0)
        if r == 0:
            out["peak_mb"][name] = rss()        # running maximum: steps are ordered by footprint
print(json.dumps(out))
"""


def run_steps(order: list[str], args) -> dict:
    code = STEP.format(threads=args.threads, n=args.n, dim=args.dim, order=order, repeats=args.repeats)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise SystemExit(f"benchmark failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60502)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--topk", action="store_true", help="also time kNN top-1000")
    p.add_argument("--small-blocks", action="store_true", help="also time the bare matmul in 512-row blocks")
    p.add_argument("--full", action="store_true", help="also time one full product (needs ~15 GB)")
    args = p.parse_args()
    order = ["matmul", "recall"] + (["matmul512"] if args.small_blocks else []) + (["topk"] if args.topk else []) + (["full"] if args.full else [])
    labels = {"matmul": "bare matmul 2048-row blks", "matmul512": "bare matmul 512-row blks", "full": "bare matmul (full result)",
              "recall": "Recall@1,10,100,1000", "topk": "kNN top-1000"}
    t0 = time.time()
    load_before = os.getloadavg()[0]
    res = run_steps(order, args)
    base = res["times"]["matmul"]
    print(f"SOP-sized evaluation: {args.n} x {args.dim} float32, {args.threads} threads, {args.repeats} "
          f"interleaved rounds (load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after)")
    print(f"{'step':<26}{'best s':>8}{'all rounds s':>22}{'best/best':>10}{'median ratio':>13}"
          f"{'peak RSS MB':>12}{'growth MB':>10}")
    for name in order:
        times = res["times"][name]
        ratios = sorted(t / b for t, b in zip(times, base))
        runs = ",".join(f"{t:.1f}" for t in times)
        print(f"{labels[name]:<26}{min(times):>8.2f}{runs:>22}{min(times) / min(base):>10.2f}"
              f"{ratios[len(ratios) // 2]:>13.2f}{res['peak_mb'][name]:>12.0f}"
              f"{res['peak_mb'][name] - res['base_mb']:>10.0f}")
    print(f"(total {time.time() - t0:.0f} s; targets: Recall@K <= 1.30 x bare matmul, peak RSS < 2048 MB; "
          "ratio per round = step / the bare matmul of the same round)")


if __name__ == "__main__":
    main()
