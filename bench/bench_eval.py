"""Benchmark: SOP-sized retrieval evaluation vs one bare float32 matrix product of the same size.

    .venv/bin/python bench/bench_eval.py [--n 60502] [--dim 512] [--threads 2] [--repeats 3] [--plain] [--inshop] [--topk]

Figures (best of --repeats, seconds):
  bare matmul   X @ X.T for all 60,502 x 60,502 entries, block by block into one reused buffer
                (2048-row blocks, as the evaluation uses; the same FLOPs as one full product without
                its 14.6 GB result); --small-blocks adds the same with 512-row blocks
  bare full     one torch.mm(X, X.T) with its full result (only with --full: needs ~15 GB)
  Recall@K      the whole SOP evaluation (normalise, symmetric first-hit ranks: each tile of X·Xᵀ
                once, for its rows and its columns, on worker threads; Recall@1,10,100,1000):
                eval.metrics.recall_at_k
  plain         the same ranks without the symmetry (every row's similarities; only with --plain)
  In-shop       a 14,218 x 12,612 query x gallery Recall@1..50 against its own bare Q·Gᵀ in
                2048-row blocks (only with --inshop)
  kNN top-1000  rll_repro.eval.knn.knn with k=1000 (only with --topk; informative)
All steps run in one subprocess, interleaved round by round so that each sees the same machine
load; the median per-round ratio step/matmul is the robust figure on a shared machine, and the
median ratio of CPU times (process_time, all threads) the one least disturbed by other processes
when the machine is oversubscribed. Peak memory:
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
from rll_repro.eval.metrics import recall_at_k, recall_query_gallery
from rll_repro.eval.knn import first_hit_ranks, knn
nq, ng, nc = 14218, 12612, 3985                              # In-shop: query x gallery, 3,985 items
c_in = rng.standard_normal((nc, d), dtype=np.float32)
ql, gl = rng.integers(0, nc, nq), rng.integers(0, nc, ng)
Q = c_in[ql] + 2.15 * rng.standard_normal((nq, d), dtype=np.float32)
G = c_in[gl] + 2.15 * rng.standard_normal((ng, d), dtype=np.float32)
Q /= np.sqrt((Q * Q).sum(1, keepdims=True)); G /= np.sqrt((G * G).sum(1, keepdims=True))

def matmul(rows, A=X, B=X):
    At, Bt = torch.from_numpy(A), torch.from_numpy(B); buf = torch.empty(rows, len(B))
    for s in range(0, len(A), rows):
        e = min(s + rows, len(A)); torch.mm(At[s:e], Bt.T, out=buf[:e - s])

steps = {{"matmul": lambda: matmul(2048), "matmul512": lambda: matmul(512), "recall": lambda: recall_at_k(X, labels, (1, 10, 100, 1000)),
         "plain": lambda: first_hit_ranks(X, labels, normalized=True, symmetric=False),
         "inshop_matmul": lambda: matmul(2048, Q, G), "inshop": lambda: recall_query_gallery(Q, ql, G, gl, (1, 10, 20, 30, 40, 50)),
         "topk": lambda: knn(X, 1000, normalized=True),
         "full": lambda: torch.mm(torch.from_numpy(X), torch.from_numpy(X).T)}}
order = {order}
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {{"base_mb": rss(), "peak_mb": {{}}, "times": {{k: [] for k in order}}, "cpu": {{k: [] for k in order}}}}
for r in range({repeats}):
    for name in order:                      # interleaved, so every step sees the same load
        c0, t0 = time.process_time(), time.perf_counter(); steps[name]()
        out["times"][name].append(time.perf_counter() - t0); out["cpu"][name].append(time.process_time() - c0)
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
    p.add_argument("--plain", action="store_true", help="also time the plain (non-symmetric) first-hit ranks")
    p.add_argument("--inshop", action="store_true", help="also time In-shop (14,218 x 12,612 query x gallery)")
    p.add_argument("--small-blocks", action="store_true", help="also time the bare matmul in 512-row blocks")
    p.add_argument("--full", action="store_true", help="also time one full product (needs ~15 GB)")
    args = p.parse_args()
    order = (["recall", "matmul"] + (["plain"] if args.plain else []) + (["matmul512"] if args.small_blocks else [])
             + (["inshop_matmul", "inshop"] if args.inshop else []) + (["topk"] if args.topk else [])
             + (["full"] if args.full else []))
    labels = {"matmul": "bare matmul 2048-row blks", "matmul512": "bare matmul 512-row blks", "full": "bare matmul (full result)",
              "recall": "Recall@1,10,100,1000", "plain": "first-hit ranks, plain", "topk": "kNN top-1000",
              "inshop_matmul": "In-shop bare Q x G matmul", "inshop": "In-shop Recall@1..50"}
    base_of = {"inshop": "inshop_matmul", "inshop_matmul": "inshop_matmul"}
    t0 = time.time()
    load_before = os.getloadavg()[0]
    res = run_steps(order, args)
    print(f"SOP-sized evaluation: {args.n} x {args.dim} float32, {args.threads} threads, {args.repeats} "
          f"interleaved rounds (load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after)")
    print(f"{'step':<26}{'best s':>8}{'all rounds s':>22}{'best/best':>10}{'median ratio':>13}"
          f"{'cpu ratio':>10}{'peak RSS MB':>12}{'growth MB':>10}")
    for name in order:
        times = res["times"][name]
        base = res["times"][base_of.get(name, "matmul")]
        ratios = sorted(t / b for t, b in zip(times, base))
        cpu = sorted(c / b for c, b in zip(res["cpu"][name], res["cpu"][base_of.get(name, "matmul")]))
        runs = ",".join(f"{t:.1f}" for t in times)
        print(f"{labels[name]:<26}{min(times):>8.2f}{runs:>22}{min(times) / min(base):>10.2f}"
              f"{ratios[len(ratios) // 2]:>13.2f}{cpu[len(cpu) // 2]:>10.2f}{res['peak_mb'][name]:>12.0f}"
              f"{res['peak_mb'][name] - res['base_mb']:>10.0f}")
    print(f"(total {time.time() - t0:.0f} s; targets: self-retrieval Recall@K <= 0.70 x its bare matmul, In-shop "
          "<= 1.10 x its own (Q x G), peak RSS <= 1 GB at 60,502; ratio per round = step / the bare matmul of the "
          "same round, In-shop rows against the In-shop matmul)")


if __name__ == "__main__":
    main()
