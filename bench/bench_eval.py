"""Benchmark: SOP-sized retrieval evaluation vs one bare float32 matrix product of the same size.

    .venv/bin/python bench/bench_eval.py [--n 60502] [--dim 512] [--threads 2] [--repeats 3] [--topk]

Figures (best of --repeats, seconds):
  bare matmul   X @ X.T for all 60,502 x 60,502 entries, block by block into one reused buffer
                (the same FLOPs as one full product, without its 14.6 GB result)
  bare full     one torch.mm(X, X.T) with its full result (only with --full: needs ~15 GB)
  Recall@K      the whole SOP evaluation (normalise, blocked matmul, stable first-hit ranks,
                Recall@1,10,100,1000): rll_repro.eval.metrics.recall_at_k
  kNN top-1000  rll_repro.eval.knn.knn with k=1000 (only with --topk; informative)
Peak memory: the process's peak RSS growth during each step (a fresh subprocess per step, read
with resource.getrusage), so the figures do not include each other.
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
X = centers[labels] + 1.5 * rng.standard_normal((n, d), dtype=np.float32)
X /= np.sqrt((X * X).sum(1, keepdims=True))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
step = "{step}"
times = []
for _ in range({repeats}):
    t0 = time.perf_counter()
    if step == "matmul":
        Xt = torch.from_numpy(X); buf = torch.empty(2048, n)
        for s in range(0, n, 2048):
            e = min(s + 2048, n); torch.mm(Xt[s:e], Xt.T, out=buf[:e - s])
    elif step == "full":
        Xt = torch.from_numpy(X); S = torch.mm(Xt, Xt.T); del S
    elif step == "recall":
        from rll_repro.eval.metrics import recall_at_k
        r = recall_at_k(X, labels, (1, 10, 100, 1000))
    elif step == "topk":
        from rll_repro.eval.knn import knn
        v, i = knn(X, 1000, normalized=True)
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"times": times, "peak_mb": peak / 1024, "base_mb": base / 1024}}))
"""


def run_step(step: str, args) -> dict:
    code = STEP.format(threads=args.threads, n=args.n, dim=args.dim, step=step, repeats=args.repeats)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise SystemExit(f"step {step} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60502)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--topk", action="store_true", help="also time kNN top-1000")
    p.add_argument("--full", action="store_true", help="also time one full product (needs ~15 GB)")
    args = p.parse_args()
    steps = ["matmul", "recall"] + (["topk"] if args.topk else []) + (["full"] if args.full else [])
    labels = {"matmul": "bare matmul (blocked)", "full": "bare matmul (full result)",
              "recall": "Recall@1,10,100,1000", "topk": "kNN top-1000"}
    results = {}
    t0 = time.time()
    for step in steps:
        results[step] = run_step(step, args)
    base = min(results["matmul"]["times"])
    print(f"SOP-sized evaluation: {args.n} x {args.dim} float32, {args.threads} threads, "
          f"best of {args.repeats} (load average {os.getloadavg()[0]:.2f})")
    print(f"{'step':<28}{'best s':>9}{'all runs s':>24}{'x matmul':>10}{'peak RSS MB':>13}{'growth MB':>11}")
    for step in steps:
        r = results[step]
        best = min(r["times"])
        runs = ",".join(f"{t:.1f}" for t in r["times"])
        print(f"{labels[step]:<28}{best:>9.2f}{runs:>24}{best / base:>10.2f}{r['peak_mb']:>13.0f}"
              f"{r['peak_mb'] - r['base_mb']:>11.0f}")
    print(f"(total {time.time() - t0:.0f} s; target: Recall@K <= 1.30 x matmul, peak < 2048 MB)")


if __name__ == "__main__":
    main()
