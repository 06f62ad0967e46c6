"""rll_repro.distributed: the losses over the global batch of 2 processes (gloo, CPU).

One spawn of 2 processes (module fixture) runs every scenario; each rank holds a slice of a global
batch and also computes, in the same process, the single-process reference on the whole batch.

Tolerances: the loss value and the embedding gradients are compared **bit for bit** (float32 and
float64): the gathered batch is the same tensor, in the same order, as the reference batch, the
loss runs the same operations on it in the same process (one thread), and the slice / concatenation
and the scale by W = 2 in backward are exact. The DDP parameter gradients are held to 1e-12
(float64) / 1e-6 (float32) of the largest component: DDP sums the two ranks' partial products
J_0^T g_0 + J_1^T g_1 while the reference does one product over the whole batch, a different
summation order (measured: <= 3e-16 in float64, <= 1.7e-7 in float32, i.e. 1-2 ulp).
"""
from __future__ import annotations

import copy
import datetime
import os
import sys
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rll_repro.distributed import DistributedLoss, gather_with_grad
from rll_repro.errors import DataError
from rll_repro.losses import OSMCAALoss, RankedListLoss

WORLD = 2
TIMEOUT_S = 120  # generous: the machine is shared; a normal run takes a few seconds
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def global_batch(n: int, dtype, seed: int = 0, dim: int = 6):
    """Embeddings, labels (4 classes, so positive pairs straddle the ranks) and attention scores."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.arange(n) % 4
    att = torch.rand(n, generator=g, dtype=torch.float64).to(dtype) + 0.1
    return x, labels, att


LOSSES = {
    "rll_v12": lambda: RankedListLoss(pn_margin=0.4, t_n=10.0),
    "rll_cvpr19": lambda: RankedListLoss(pn_margin=0.4, t_n=10.0, negative_threshold=1.4, variant="cvpr19"),
    "rll_paper": lambda: RankedListLoss(mode="paper"),
    "osm_caa": lambda: OSMCAALoss(margin=1.2, sigma=0.8),
    "osm_paper": lambda: OSMCAALoss(mode="paper"),
}
SPLITS = {"even": (8, 8), "uneven": (3, 13), "empty_rank": (0, 16)}


def _slice(rank, sizes):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _loss_case(rank, loss_name, dtype, sizes, grad_scale):
    x, labels, att = global_batch(sum(sizes), dtype)
    extra = (att,) if loss_name.startswith("osm") else ()
    ref_x = x.clone().requires_grad_()
    ref = LOSSES[loss_name]()(ref_x, labels, *extra)
    ref.backward()
    rows = _slice(rank, sizes)
    local_x = x[rows].clone().requires_grad_()
    value = DistributedLoss(LOSSES[loss_name](), grad_scale=grad_scale)(local_x, labels[rows], *(e[rows] for e in extra))
    value.backward()
    return {"value": value.detach(), "ref_value": ref.detach(), "grad": local_x.grad, "ref_grad": ref_x.grad[rows]}


def _ddp_case(rank, loss_name, dtype, sizes):
    torch.manual_seed(1)
    model = torch.nn.Linear(10, 6).to(dtype)
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    inputs = torch.randn(sum(sizes), 10, generator=g, dtype=torch.float64).to(dtype)
    _, labels, att = global_batch(sum(sizes), dtype)
    extra = (att,) if loss_name.startswith("osm") else ()
    LOSSES[loss_name]()(reference(inputs), labels, *extra).backward()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    rows = _slice(rank, sizes)
    DistributedLoss(LOSSES[loss_name]())(ddp(inputs[rows]), labels[rows], *(e[rows] for e in extra)).backward()
    return {name: (p.grad.clone(), dict(reference.named_parameters())[name].grad)
            for name, p in model.named_parameters()}


def _error_case(rank, what):
    x, labels, _ = global_batch(8, torch.float64)
    if what == "features" and rank == 1:
        x = torch.cat([x, x], 1)
    if what == "labels" and rank == 1:
        labels = labels[:-1]
    if what == "dtype" and rank == 1:
        x = x.float()
    try:
        DistributedLoss(RankedListLoss())(x[:4] if rank == 0 else x[4:], labels[:4] if rank == 0 else labels[4:])
    except DataError as e:
        return str(e)
    return None


def _worker(rank, init_file, out_dir):
    """Runs every scenario on this rank. An exception propagates (start_processes then stops the
    other rank at once instead of leaving it waiting in a collective until the gloo timeout)."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks talk over loopback only
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
    except Exception:  # noqa: BLE001 - the environment cannot run gloo: the fixture skips with this
        torch.save({"init_failed": traceback.format_exc(limit=1)}, os.path.join(out_dir, f"rank{rank}.pt"))
        return
    results = {}
    for dname, dtype in DTYPES.items():
        for loss_name in LOSSES:
            for split, sizes in SPLITS.items():
                for scale in (1.0, "world_size"):
                    results[("loss", loss_name, dname, split, scale)] = _loss_case(rank, loss_name, dtype, sizes, scale)
        for loss_name in ("rll_v12", "osm_caa", "rll_paper"):
            results[("ddp", loss_name, dname)] = _ddp_case(rank, loss_name, dtype, (8, 8))
        results[("ddp", "rll_v12", dname, "uneven")] = _ddp_case(rank, "rll_v12", dtype, (5, 11))
    for what in ("features", "labels", "dtype"):
        results[("error", what)] = _error_case(rank, what)
    t = torch.arange(rank * 3.0, rank * 3.0 + 2 + rank, dtype=torch.float64).requires_grad_()
    gathered = gather_with_grad(t)
    (gathered * torch.arange(1.0, gathered.numel() + 1, dtype=torch.float64)).sum().backward()
    results["gather"] = (gathered.detach(), t.grad)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """{rank: results} of one 2-process gloo run over every scenario."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    out = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"the 2 gloo processes did not finish within {TIMEOUT_S} s")
    results = {r: torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)}
    for res in results.values():
        if "init_failed" in res:
            pytest.skip(f"cannot start a gloo process group here: {res['init_failed'].strip().splitlines()[-1]}")
    return results


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


LOSS_CASES = [(loss, dname, split) for dname in DTYPES for loss in LOSSES for split in SPLITS]


@pytest.mark.parametrize("loss_name, dtype, split", LOSS_CASES)
def test_gathered_loss_value_is_the_single_process_value_on_the_global_batch(ranks, loss_name, dtype, split):
    for r in range(WORLD):
        case = ranks[r][("loss", loss_name, dtype, split, 1.0)]
        assert torch.equal(case["value"], case["ref_value"]), (r, case["value"], case["ref_value"])


@pytest.mark.parametrize("loss_name, dtype, split", LOSS_CASES)
def test_grad_scale_one_gives_each_rank_its_rows_of_the_single_process_gradient(ranks, loss_name, dtype, split):
    """Caffe mode: Caffe's exact (non-autograd) gradient; paper mode: autograd of the global loss."""
    for r in range(WORLD):
        case = ranks[r][("loss", loss_name, dtype, split, 1.0)]
        assert case["grad"].shape == case["ref_grad"].shape
        assert torch.equal(case["grad"], case["ref_grad"]), (r, case["grad"] - case["ref_grad"])


@pytest.mark.parametrize("loss_name, dtype, split", LOSS_CASES)
def test_default_grad_scale_multiplies_the_embedding_gradient_by_the_world_size(ranks, loss_name, dtype, split):
    """W * g_r, so that DDP's average over the ranks gives the single-process parameter gradient."""
    for r in range(WORLD):
        case = ranks[r][("loss", loss_name, dtype, split, "world_size")]
        assert torch.equal(case["value"], case["ref_value"])  # the value is not scaled (PML's is)
        assert torch.equal(case["grad"], WORLD * case["ref_grad"])


@pytest.mark.parametrize("key", [("rll_v12", d) for d in DTYPES] + [("osm_caa", d) for d in DTYPES]
                         + [("rll_paper", d) for d in DTYPES] + [("rll_v12", d, "uneven") for d in DTYPES])
def test_ddp_parameter_gradients_equal_the_single_process_gradients_on_the_global_batch(ranks, key):
    tol = 1e-12 if key[1] == "float64" else 1e-6
    for r in range(WORLD):
        for name, (grad, ref) in ranks[r][("ddp",) + key].items():
            assert rel(grad, ref) <= tol, (r, name, rel(grad, ref))


@pytest.mark.parametrize("what, message", [("features", "rank 1 has embeddings of 12 features, rank 0 of 6"),
                                           ("labels", "rank 1: labels has 3 values for 4 embeddings"),
                                           ("dtype", "embedding dtypes differ across ranks")])
def test_inconsistent_ranks_raise_the_same_data_error_on_every_rank(ranks, what, message):
    """No rank is left waiting in a collective: the check follows one all_gather of the shapes."""
    errors = [ranks[r][("error", what)] for r in range(WORLD)]
    assert errors[0] is not None and errors[0] == errors[1]
    assert message in errors[0]


def test_gather_with_grad_concatenates_in_rank_order_and_backpropagates_the_local_slice(ranks):
    """Rank 0 holds [0, 1], rank 1 holds [3, 4, 5] (uneven); loss = sum_i (i + 1) gathered_i."""
    full = torch.tensor([0.0, 1.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    for r, expected_grad in ((0, [1.0, 2.0]), (1, [3.0, 4.0, 5.0])):
        gathered, grad = ranks[r]["gather"]
        assert torch.equal(gathered, full)
        assert torch.equal(grad, torch.tensor(expected_grad, dtype=torch.float64))


def test_without_a_process_group_the_wrapper_is_the_plain_loss():
    assert not dist.is_initialized()
    x, labels, att = global_batch(10, torch.float64)
    for loss, extra in ((RankedListLoss(), ()), (OSMCAALoss(), (att,))):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        va, vb = loss(a, labels, *extra), DistributedLoss(loss)(b, labels, *extra)
        va.backward()
        vb.backward()
        assert torch.equal(va, vb) and torch.equal(a.grad, b.grad)
    assert gather_with_grad(x) is x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_losses_run_on_cuda_with_labels_left_on_the_cpu(loss_name):
    """Float64 on the GPU vs the CPU: 1e-10 of the largest component (other libm and reduction
    order; exp(T_n t) amplifies ulps by at most ~10)."""
    x, labels, att = global_batch(16, torch.float64)
    extra = (att,) if loss_name.startswith("osm") else ()
    cpu_x, gpu_x = x.clone().requires_grad_(), x.cuda().requires_grad_()
    cpu = LOSSES[loss_name]()(cpu_x, labels, *extra)
    gpu = DistributedLoss(LOSSES[loss_name]())(gpu_x, labels, *extra)
    cpu.backward()
    gpu.backward()
    assert gpu.device.type == "cuda"
    assert abs(float(gpu) - float(cpu)) <= 1e-10 * abs(float(cpu))
    assert rel(gpu_x.grad.cpu(), cpu_x.grad) <= 1e-10
