"""The GPU check: the oracle on cuda in the exact mode, the SOP train net's speed, digits cuda vs cpu.

Run on a machine with a GPU (under 8 minutes on one H200-class GPU):

    python tools/copy_oracle.py .gpu_oracle          # here, beside ../shared: the cases that fit
    RLL_REPRO_SHARED=.gpu_oracle python bench/gpu_check.py --device cuda

(the device machine gets the checkout, not ../shared: ``.gpu_oracle`` is git-ignored and travels
with ``carry``; the 57 MB ``net_sop_train`` case stays behind). Prints three tables:

1. every oracle layer case (both forks): max relative error against the Caffe recording on the
   device in the exact mode, held to the CPU tests' tolerance (1e-5), and in the --fast mode (TF32)
   for information; then the oracle test files (solver trajectories, RLL/OSM losses, digits replay)
   run by pytest with the device as the default device, each holding the tolerance it states;
2. the SOP train net at batch 150, forward+backward images/s: rll_repro.Net exact, rll_repro.Net
   ``--fast`` (TF32, cudnn.benchmark, channels_last), and the plain PyTorch module of the same net
   (rll_repro.export's generated source) on the same GPU, exact and fast;
3. ``reproduce digits`` (300 SGD steps) on the device against the CPU: Recall@1,2,4,8.

``--device cpu`` runs the same script on a CPU (slowly; the speed table uses a smaller batch) to
check the script itself.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def oracle_table(device: str) -> list[tuple[str, float, float]]:
    """(case, max relative error, tolerance) for every recorded case found under RLL_REPRO_SHARED."""
    from rll_repro.device import set_default_device

    set_default_device(device)  # the test helpers build their nets with the default device
    import test_net_oracle_layers as layers  # noqa: E402 - reads RLL_REPRO_SHARED through conftest

    rows = []
    for case_id, case in sorted(layers.CASES.items()):
        z = np.load(case / "case.npz")
        try:
            if any(k.startswith("iter") for k in z.files):
                net = layers._build(case)
                errors = {}
                for it in sorted({k.split("/")[0] for k in z.files}):
                    errors.update(layers.compare_pass(net, z, it + "/"))
            else:
                errors = layers.run_case(case)
        except Exception as exc:  # noqa: BLE001 - a table row, not a crash
            rows.append((f"layers/{case_id} ({type(exc).__name__}: {exc})"[:100], float("nan"), layers.TOL))
            continue
        rows.append((f"layers/{case_id}", max(errors.values()) if errors else float("nan"), layers.TOL))
    return rows


#: oracle tests of tests/ that build their nets with the default device (so on cuda here) and hold
#: the CPU tolerances they state; the SOP deploy/train cases need the 57 MB net_sop_train weights
ORACLE_TESTS = ["tests/test_solver_oracle.py", "tests/test_loss_rll_oracle.py", "tests/test_loss_osm_oracle.py",
                "tests/test_loss_layers.py", "tests/test_train_digits.py"]


def pytest_rows(device: str) -> list[tuple[str, str]]:
    """(test file, pytest's summary) of the oracle tests run with ``device`` as the default device."""
    import subprocess

    env = dict(os.environ, RLL_REPRO_DEFAULT_DEVICE=device)
    rows = []
    for test in ORACLE_TESTS:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                              cwd=REPO, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if " passed" in ln or " failed" in ln or " error" in ln]
        rows.append((test, lines[-1] if lines else f"exit {proc.returncode}: {proc.stdout[-200:]}"))
    return rows


def speed_table(device: str, batch: int, iters: int) -> list[tuple[str, float]]:
    """images/s of forward+backward of the SOP train net, ours (exact, fast) and the plain module."""
    import bench_net

    from rll_repro.device import set_numerics
    from rll_repro.net import Net

    prototxt = REPO / "prototxt/rll/sop/train.prototxt"
    rows = []
    for mode in ("exact", "fast"):
        set_numerics(fast=mode == "fast")
        net = Net(str(prototxt), phase="train", device=device, seed=0)
        if mode == "fast" and net.device.type == "cuda":
            net.set_memory_format(torch.channels_last)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, 227, 227, generator=g).to(device)
        y = (torch.arange(batch) // 3).float().reshape(batch, 1, 1, 1).to(device)
        if mode == "fast" and net.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)

        def ours():
            net.clear_param_diffs()
            net(data=x, label=y)
            net.backward_losses()

        rows.append((f"rll_repro.Net, {mode}", batch / _time(ours, iters, device)))
        plain = bench_net.build_plain(net).to(device)
        if mode == "fast" and net.device.type == "cuda":
            plain = plain.to(memory_format=torch.channels_last)
        labels = y.reshape(-1)

        def run_plain():
            plain.zero_grad(set_to_none=False)
            bench_net.plain_loss(plain(x, labels) if _takes_labels(plain) else plain(x), labels).backward()

        rows.append((f"plain PyTorch module, {mode}", batch / _time(run_plain, iters, device)))
    set_numerics(fast=False)
    return rows


def _takes_labels(module) -> bool:
    import inspect

    return len(inspect.signature(module.forward).parameters) > 1


def _time(fn, iters: int, device: str) -> float:
    fn()  # warm up (cuDNN algorithm choice, allocator)
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def digits_table(device: str, max_iter: int | None) -> list[tuple[str, dict]]:
    from rll_repro.device import set_default_device
    from rll_repro.recipes import digits

    rows = []
    for dev in (device, "cpu") if device != "cpu" else ("cpu",):
        set_default_device(dev)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = digits.run(tmp, max_iter=max_iter)
            seconds = time.perf_counter() - start
        recall = result.get("recall") or {k: v for k, v in result.items() if k.startswith("R@")}
        rows.append((f"{dev} ({seconds:.0f} s)", recall))
    set_default_device(None)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=None, help="SOP train batch (default 150 on cuda, 8 on cpu)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--digits-iter", type=int, default=None, help="digits iterations (default the recipe's 300)")
    parser.add_argument("--skip", default="", help="comma-separated tables to skip: oracle,speed,digits")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"device {args.device}: {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, "
          f"torch {torch.__version__}")
    failed = 0
    if "oracle" not in skip:
        from rll_repro.device import set_numerics

        print("\n1. Caffe oracle on the device: exact mode (held to the CPU tolerance) and --fast (for information)")
        set_numerics(fast=True)
        fast = {name: err for name, err, _ in oracle_table(args.device)}
        set_numerics(fast=False)
        print(f"{'case':<64} {'exact':>10} {'tolerance':>10}  ok {'--fast':>10}")
        for name, err, tol in oracle_table(args.device):
            ok = err <= tol
            failed += not ok
            print(f"{name:<64} {err:10.2e} {tol:10.0e}  {'yes' if ok else 'NO ':3s} {fast.get(name, float('nan')):10.2e}")
        print(f"\n{'oracle test file (default device ' + args.device + ')':<44} pytest")
        for name, summary in pytest_rows(args.device):
            failed += "failed" in summary or "error" in summary
            print(f"{name:<44} {summary}")
    if "speed" not in skip:
        batch = args.batch or (150 if args.device.startswith("cuda") else 8)
        print(f"\n2. SOP train net, batch {batch}, forward+backward")
        rows = speed_table(args.device, batch, args.iters)
        base = dict(rows)["plain PyTorch module, exact"]
        print(f"{'variant':<40} {'images/s':>10} {'vs plain exact':>15}")
        for name, rate in rows:
            print(f"{name:<40} {rate:10.1f} {rate / base:14.2f}x")
    if "digits" not in skip:
        print("\n3. reproduce digits")
        for name, recall in digits_table(args.device, args.digits_iter):
            print(f"{name:<24} " + "  ".join(f"{k} {float(v):6.2f}" for k, v in sorted(recall.items())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
