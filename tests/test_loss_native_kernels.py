"""The pair losses' C passes (rll_repro/layers/pair_kernels.c via _pair_native) against their PyTorch
path, which every other device runs, and the build that provides them (rll_repro/native.py).

Tolerances, and why:
- each pass on the same inputs: **bitwise** where the C does the same IEEE float operations in the
  same order (squared distances, near pairs, value terms, L2 Normalization); within **1 ulp** where
  libm's powf stands in for SLEEF's (RLL weights). The C sqrtf is correctly rounded, as Caffe's;
  torch's vectorised float sqrt is not always (1 ulp), which the whole-loss bound below absorbs;
- whole losses: value 1e-6 relative, gradient 1e-6 of the largest component (the oracle tests'
  bound). The two paths add the float64 per-anchor sums in another order, so an S or Z rounded to
  float can move by an ulp; through the cancellation of positive and negative terms that measured
  up to 3e-7 of the largest component on N = 512-1030 batches.
The batches put exact and near duplicates in different block rows and are run both in the sparse
mode (few active pairs: the fused C product) and the dense one (coefficient matrices and a GEMM).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from rll_repro import native
from rll_repro.layers import _pair_native, _pairwise
from rll_repro.layers._pairwise import PairBlocks
from rll_repro.layers.normalization import l2_normalize
from rll_repro.layers.osm_caa import osm_caa_value_and_grad
from rll_repro.layers.rll import RLLParams, _pair_terms, rll_cvpr19_value_and_grad, rll_v12_value_and_grad

TOL = 1e-6
F64 = torch.float64


@pytest.fixture(autouse=True)
def kernels_built(monkeypatch):
    monkeypatch.setenv("RLL_REPRO_NATIVE", "1")
    if _pair_native._kernels() is None:
        pytest.skip(f"pair kernels not built here: {_pair_native.status()}")


def batch(n=600, dim=64, seed=0, classes=3):
    """Unit-norm embeddings (random 64-d: few negatives inside the margins), labels in runs of
    ``classes``, CAA scores; exact duplicates in one diagonal block and across block rows, a near
    duplicate negative pair across block rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    y = torch.arange(n) // classes
    x[5] = x[4]
    x[n - 1], y[n - 1] = x[1], y[1]
    x[n // 2] = torch.nn.functional.normalize(x[2] + 3e-4, dim=0)  # block row 1 when n = 600
    s = torch.rand(n, generator=g) * 0.5 + 0.25
    return x, y, s


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def ulps(a, b):
    """Largest distance in float32 ulps (of b) between two float32 tensors."""
    spacing = torch.from_numpy(np.spacing(np.abs(b.numpy())))
    return float(((a - b).abs() / spacing).max())


def both_paths(monkeypatch, fn):
    out = fn()
    monkeypatch.setenv("RLL_REPRO_NATIVE", "0")
    ref = fn()
    monkeypatch.setenv("RLL_REPRO_NATIVE", "1")
    return out, ref


@pytest.fixture(params=["sparse", "dense"])
def product_mode(request, monkeypatch):
    """Forces the gradient product: over the nonzero coefficients, or the dense GEMM; the calls show
    which one ran."""
    monkeypatch.setattr(_pairwise, "SPARSE_DENSITY", 1e9 if request.param == "sparse" else -1.0)
    calls = {"sparse": 0, "dense": 0}
    sparse, dense = PairBlocks.apply_sparse, PairBlocks.apply

    def counted(kind, method):
        def wrapper(self, *args):
            if self.native:
                calls[kind] += 1
            return method(self, *args)
        return wrapper

    monkeypatch.setattr(PairBlocks, "apply_sparse", counted("sparse", sparse))
    monkeypatch.setattr(PairBlocks, "apply", counted("dense", dense))
    yield request.param
    assert calls[request.param] > 0 and calls["sparse" if request.param == "dense" else "dense"] == 0


LOSSES = {
    "rll_v12": lambda x, y, s: rll_v12_value_and_grad(x, y, RLLParams()),
    "rll_v12_tp_bases": lambda x, y, s: rll_v12_value_and_grad(x, y, RLLParams(1.3, 0.4, 2.0, 2.0, 12.0, 2.71828)),
    "rll_cvpr19": lambda x, y, s: rll_cvpr19_value_and_grad(x, y, RLLParams(negative_threshold=1.4), 0.5),
    "osm": lambda x, y, s: osm_caa_value_and_grad(x, y, s, 1.2, 0.8, 0.0, 2.0),
    "osm_mean": lambda x, y, s: osm_caa_value_and_grad(x, y, s, 1.0, 0.5, 0.3),
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("n", [12, 180, 600])
def test_losses_agree_with_the_pytorch_path(monkeypatch, product_mode, loss, n):
    x, y, s = batch(n) if n > 300 else batch(n, seed=n)
    (v, g), (v0, g0) = both_paths(monkeypatch, lambda: LOSSES[loss](x, y, s))
    assert v.dtype == g.dtype == torch.float32
    assert rel(v, v0) <= TOL
    assert rel(g, g0) <= TOL


def test_exact_duplicates_get_no_gradient_from_their_pair(monkeypatch, product_mode):
    """x[4] == x[5] (same class): the C pass lists the pair (both orders) for recomputation from its
    difference (0: d2 = 0, no term), and the two rows' gradients equal the PyTorch path's (relative to
    their own size, ~5e-6 of the batch's largest: measured 9e-8)."""
    x, y, s = batch()
    blk = PairBlocks(x, native=True).rows[0]
    listed = set(zip(blk.near_i.tolist(), blk.near_j.tolist()))
    assert {(4, 5), (5, 4)} <= listed and float(blk.d2[4, 5]) == float(blk.d2[5, 4]) == 0.0
    (_, g), (_, g0) = both_paths(monkeypatch, lambda: rll_v12_value_and_grad(x, y, RLLParams()))
    assert torch.isfinite(g).all()
    assert rel(g[4:6], g0[4:6]) <= TOL


def test_float_labels_and_nan_embeddings_behave_as_in_pytorch(monkeypatch):
    x, y, s = batch(40, dim=16, seed=3, classes=4)
    yf = y.to(torch.float32) * 0.5 - 3.0  # float labels: compared as floats
    (v, g), (v0, g0) = both_paths(monkeypatch, lambda: rll_v12_value_and_grad(x, yf, RLLParams()))
    assert rel(v, v0) <= TOL and rel(g, g0) <= TOL
    x[3, 2] = float("nan")
    for fn in (lambda: rll_v12_value_and_grad(x, y, RLLParams()), lambda: osm_caa_value_and_grad(x, y, s)):
        (v, g), (v0, g0) = both_paths(monkeypatch, fn)
        assert torch.isnan(v) and torch.isnan(v0)
        assert torch.equal(torch.isnan(g), torch.isnan(g0))


def test_non_contiguous_embeddings_without_normalisation(monkeypatch):
    """A transposed (column-major) batch goes to the C passes as rows: the same loss as PyTorch's."""
    from rll_repro.losses import OSMCAALoss, RankedListLoss

    x, y, s = batch(300)
    xt = x.T.contiguous().T  # same values, column-major
    for loss, extra in ((RankedListLoss(normalize=False), ()), (OSMCAALoss(normalize=False), (s,))):
        def run():
            xi = xt.detach().requires_grad_()
            value = loss(xi, y, *extra)
            value.backward()
            return value.detach(), xi.grad
        (v, g), (v0, g0) = both_paths(monkeypatch, run)
        assert rel(v, v0) <= TOL and rel(g, g0) <= TOL


def test_nan_float_labels_use_the_pytorch_path():
    assert _pair_native.class_ids(torch.tensor([0.0, float("nan"), 1.0])) is None
    ids = _pair_native.class_ids(torch.tensor([2.5, -0.0, 2.5, 0.0]))
    assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]


def torch_block(f, r0, r1, cap):
    """The PyTorch steps of PairBlocks for one block row (d2 and the near-pair indices)."""
    f64 = f.to(F64)
    sq = (f64 * f64).sum(1)
    k = r1 - r0
    g = torch.addmm(sq[r0:r1, None], f64[r0:r1], f64[r0:].T, alpha=-2.0)
    c = g.clone()
    c.add_(sq[None, r0:]).clamp_min_(0.0)
    diag = c[:, :k]
    diag.copy_(torch.minimum(diag, diag.T))
    diag.diagonal().zero_()
    d2 = c.to(torch.float32)
    ns = (sq * _pairwise.NEAR).to(torch.float32)
    near = d2 < ns[r0:r1, None] + ns[None, r0:]
    near[:, :k].diagonal().zero_()
    return g, sq, ns, d2, near.nonzero()[:cap]


@pytest.mark.parametrize("r0,r1", [(0, 256), (256, 512), (512, 600)])
def test_gram_distances_are_bitwise_the_pytorch_steps(r0, r1):
    x, _, _ = batch()
    x[r0 + 7] = x[r0 + 3]  # a near pair inside this diagonal block
    g, sq, ns, d2_ref, near_ref = torch_block(x, r0, r1, 64)
    d2, near = _pair_native.gram_distances(g.clone(), sq[r0:], ns[r0:], 64)
    assert torch.equal(d2, d2_ref)
    assert torch.equal(near, near_ref)
    assert len(near) >= 2  # (3, 7) and (7, 3) at least


def test_near_pairs_are_capped_in_row_major_order():
    x = torch.nn.functional.normalize(torch.ones(20, 8), dim=1)  # every pair a duplicate
    g, sq, ns, _, near_ref = torch_block(x, 0, 20, 5)
    _, near = _pair_native.gram_distances(g.clone(), sq, ns, 5)
    assert torch.equal(near, near_ref) and near.tolist() == [[0, 1], [0, 2], [0, 3], [0, 4], [0, 5]]


def test_rll_weights_within_two_ulps_and_sums_to_float64_rounding():
    """libm's powf and SLEEF's pow are each within an ulp of the exact power (measured: the two differ
    by at most 1 ulp here), so their results are within 2 ulps; the float64 sums differ by order only."""
    x, y, _ = batch(256, seed=4)
    d2 = torch.cdist(x.double(), x.double()).square().float()
    same = y[:, None] == y[None, :]
    p = RLLParams(scale_p=2.0)
    bounds = float(np.float32(0.8)), float(np.float32(1.2))  # float boundaries, as the layer computes them
    d = d2.double().sqrt().float()  # correctly rounded, as C's sqrtf (torch's float sqrt may be 1 ulp off)
    t, w_ref = _pair_terms(d, same, p, *bounds)
    w_ref.fill_diagonal_(0.0)
    sums = [torch.zeros(256, dtype=F64) for _ in range(4)] + [torch.zeros((), dtype=F64)]
    w, nonzeros = _pair_native.rll_weights(d2, y, *bounds, p.scale_p, p.scale_n, p.base_p, p.base_n, None, *sums)
    assert ulps(w, w_ref) <= 2.0
    assert nonzeros == int((w_ref != 0).sum())
    assert torch.allclose(sums[0], w_ref.double().sum(1), rtol=1e-6, atol=0)
    sq = t.clamp_min(0.0).square().fill_diagonal_(0.0)
    assert float(sums[4]) == pytest.approx(float(sq.sum(dtype=F64)), rel=1e-12)


def test_l2_normalization_is_within_an_ulp_of_the_pytorch_path(monkeypatch):
    """The same float products and operations; the float64 norm sums (order) and pow (libm, SLEEF)
    round to the same float but for a sum that falls on a rounding boundary, so the bound is an ulp
    (measured: bitwise equal on these inputs)."""
    g = torch.Generator().manual_seed(1)
    x, gy = torch.randn(33, 1000, generator=g) * 3, torch.randn(33, 1000, generator=g)

    def run():
        xi = x.clone().requires_grad_()
        y = l2_normalize(xi, 1e-12)
        y.backward(gy)
        return y.detach(), xi.grad

    (y, gx), (y0, gx0) = both_paths(monkeypatch, run)
    assert ulps(y, y0) <= 1.0 and ulps(gx, gx0) <= 1.0


def test_a_default_device_does_not_move_the_c_buffers():
    """``torch.device('meta')`` (or a user's set_default_device('cuda')) as the default: the C path's
    buffers are still CPU tensors, and the losses give the same bits."""
    from rll_repro.losses import OSMCAALoss, RankedListLoss

    x, y, s = batch(300)

    def run():
        out = []
        for loss, extra in ((RankedListLoss(), ()), (OSMCAALoss(), (s,))):
            xi = x.clone().requires_grad_()
            value = loss(xi, y, *extra)
            value.backward()
            out.append((value.detach(), xi.grad))
        return out

    expected = run()
    with torch.device("meta"):
        got = run()
    for (v, g), (v0, g0) in zip(got, expected):
        assert v.device.type == g.device.type == "cpu" and torch.equal(v, v0) and torch.equal(g, g0)


def test_meta_fake_float64_and_disabled_inputs_stay_on_pytorch(monkeypatch):
    assert _pair_native.usable(torch.zeros(3, 2))
    assert not _pair_native.usable(torch.zeros(3, 2, dtype=F64))
    assert not _pair_native.usable(torch.zeros(3, 2, device="meta"))
    monkeypatch.setenv("RLL_REPRO_NATIVE", "0")
    assert not _pair_native.usable(torch.zeros(3, 2))
    assert _pair_native.status().startswith("off")


def test_build_falls_back_without_a_compiler_and_rebuilds_a_damaged_cache(tmp_path):
    """In a child (the library is loaded once per process): no compiler -> the PyTorch path with the
    reason in status(); a damaged cached library -> rebuilt in place."""
    script = textwrap.dedent("""
        import os, torch
        from rll_repro import native
        from rll_repro.layers import _pair_native
        from rll_repro.losses import RankedListLoss
        mode = os.environ["MODE"]
        torch.manual_seed(0)
        x, y = torch.randn(30, 8), torch.arange(30) // 3
        value = float(RankedListLoss()(x, y))
        print(mode, _pair_native.status(), value)
    """)
    env = dict(os.environ, RLL_REPRO_CACHE_DIR=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    nothing = subprocess.run([sys.executable, "-c", script], env=dict(env, MODE="none", CC="/nonexistent/cc",
                             PATH="/nonexistent"), capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 0, nothing.stderr
    assert "not available" in nothing.stdout and "compiler" in nothing.stdout
    built = subprocess.run([sys.executable, "-c", script], env=dict(env, MODE="built"), capture_output=True,
                           text=True, timeout=120)
    assert built.returncode == 0 and "built (" in built.stdout, built.stdout + built.stderr
    libraries = list((tmp_path / "cache").glob("pair_kernels-*.so"))
    assert len(libraries) == 1 and not list((tmp_path / "cache").glob(".*.tmp"))
    libraries[0].write_bytes(b"not a shared library")
    again = subprocess.run([sys.executable, "-c", script], env=dict(env, MODE="again"), capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "built (" in again.stdout, again.stdout + again.stderr
    assert libraries[0].read_bytes()[:4] == b"\x7fELF"
    values = [float(line.split()[-1]) for line in (nothing.stdout, built.stdout, again.stdout)]
    assert abs(values[1] - values[0]) <= TOL * abs(values[0]) and values[2] == values[1]


def test_a_cache_folder_others_may_write_is_not_used(tmp_path, monkeypatch):
    """A library is never loaded from (or built into) a folder that other users may write."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(OSError, match="not private"):
        native._private(shared, folder=True)
    native._private(tmp_path / "mine", folder=True)
    assert (tmp_path / "mine").stat().st_mode & 0o077 == 0


def test_the_c_passes_give_the_same_bits_on_any_number_of_threads():
    """Each pass splits its rows into chunks fixed by the block's size and adds the chunks'
    accumulators in chunk order: 1, 2 and 3 OpenMP threads give the same bits (the C passes alone:
    the float64 GEMMs around them are the BLAS's)."""
    x, y, s = batch(600)
    f = x.double()
    sq = (f * f).sum(1)
    g = torch.addmm(sq[:256, None], f[:256], f.T, alpha=-2.0)
    ns = (sq * _pairwise.NEAR).float()
    ids = y.to(torch.int64)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            d2, near = _pair_native.gram_distances(g.clone(), sq, ns, 64)
            sums = [torch.zeros(600, dtype=F64) for _ in range(4)] + [torch.zeros((), dtype=F64)]
            w, nonzeros = _pair_native.rll_weights(d2, ids, 0.8, 1.2, 0.0, 10.0, 2.71828, 2.71828, None, *sums)
            sp = (sums[1] + 1e-8).float()
            sn = (sums[0] - sums[1] + 1e-8).float()
            share = (sp + sn) / (sp.sum() + sn.sum())
            af, rowsum = torch.zeros(600, f.shape[1], dtype=F64), torch.zeros(600, dtype=F64)
            near_terms = _pair_native.rll_sparse_gradient(d2, w, ids, sp, sn, share, 1.0, True, True, f, af, rowsum,
                                                          near)
            raw_sums = torch.zeros(3, dtype=F64)
            raw, _ = _pair_native.osm_terms(d2, ids, s, 1.2, 0.0, 0.8, 0.5, raw_sums)
            outputs.append([d2, near, w, torch.tensor(nonzeros), *sums, af, rowsum, *near_terms, raw, raw_sums,
                            _pair_native.combine_gradient(f, rowsum, af)])
    finally:
        torch.set_num_threads(threads)
    for other in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0], other))
