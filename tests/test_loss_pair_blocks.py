"""The pair losses' staircase of row blocks (rll_repro.layers._pairwise.PairBlocks) on batches large
enough for several block rows, against dense full-matrix float64 formulas of the same Caffe rules
(SPEC rll §1.3, osm §2.1), and their device-genericity (meta tensors, fake tensors: no host reads).

Tolerance: 1e-12 relative (float64; the block path and the dense reference differ only in
summation order). The batches put exact and near duplicates in different block rows, so the
recomputation of near pairs and the row/column halves of the gradient product are both exercised.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from rll_repro.layers._pairwise import row_blocks
from rll_repro.layers.base import DIALECTS, BuildContext
from rll_repro.layers.osm_caa import osm_caa_loss, osm_caa_value_and_grad
from rll_repro.layers.rll import (DistanceWeightedValidPairLossV12, RLLParams, rll_cvpr19_value_and_grad,
                                  rll_v12, rll_v12_value_and_grad)

F64 = torch.float64
N = 600  # three block rows (of 256, 256 and 88)


def batch(seed=0, n=N, dim=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=F64), dim=1) * 0.7
    y = torch.randint(0, n // 4, (n,), generator=g).to(F64)
    x[n - 1], y[n - 1] = x[1], y[1]  # exact duplicate, first and last block row
    x[300], y[300] = x[2] + 3e-7, y[2] + 1  # near duplicate negative pair across block rows
    x[5] = x[4]  # duplicate inside the first diagonal block
    return x, y


def dense_distances(x):
    diff = x[:, None, :] - x[None, :, :]
    d = (diff * diff).sum(-1).sqrt()
    return diff, d


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def dense_rll(x, y, p: RLLParams, era="v12", lam=1.0):
    n = len(x)
    diff, d = dense_distances(x)
    same = y[:, None] == y[None, :]
    off = ~torch.eye(n, dtype=torch.bool)
    m = np.float32(p.pn_margin)
    if era == "v12":
        pb, nb = float(np.float32(1) - m / np.float32(2)), float(np.float32(1) + m / np.float32(2))
    else:
        pb, nb = float(np.float32(p.negative_threshold) - m), p.negative_threshold
    t = torch.where(same, d - pb, nb - d)
    w = torch.where(same, torch.tensor(p.base_p, dtype=F64) ** (p.scale_p * t),
                    torch.tensor(p.base_n, dtype=F64) ** (p.scale_n * t))
    w = torch.where((t > 0) & off, w, 0.0)
    eps = float(np.float32(1e-8))
    sp = eps + (w * same).sum(1)
    sn = eps + (w * ~same).sum(1)
    z = eps + (sp + sn).sum()
    k = 0.5 * w / torch.where(same, sp[:, None], sn[:, None]) * ((sp + sn) / z)[:, None]
    k = torch.where(same, k, -k) * lam
    direction = diff / (d + 1e-6)[..., None] if era == "v12" else diff
    grad = (k[..., None] * direction).sum(1)
    thr = float(np.float32(p.negative_threshold) - m)
    hinge = torch.where(same, d - thr, p.negative_threshold - d).clamp_min(0.0)
    value = (hinge ** 2 * off).sum() / (n * (n - 1))
    return value, grad


def dense_osm(x, y, s, margin, sigma, mean, lam=1.0):
    n = len(x)
    diff, d = dense_distances(x)
    same = y[:, None] == y[None, :]
    off = ~torch.eye(n, dtype=torch.bool)
    pairs = n * (n - 1) // 2
    margin, sigma, mean = (float(np.float32(v)) for v in (margin, sigma, mean))
    md = margin - d
    hinge = md.clamp_min(0.0)
    value = (torch.where(same, d * d, hinge * hinge) * off).sum() / 2 / pairs / 2
    pdf = torch.exp(-0.5 * ((d - mean) / sigma) ** 2) / np.sqrt(2 * np.pi * sigma * sigma)
    c = torch.minimum(s[:, None], s[None, :])
    raw = torch.where(same, pdf, hinge) * c * off
    s_pos = (raw * same).sum() / 2 + 1e-12
    s_neg = (raw * ~same).sum() / 2 + 1e-12
    alpha = lam / pairs
    coef = torch.where(same, torch.tensor(alpha, dtype=F64), -alpha * md / (d + float(np.float32(1e-4))) * (md > 0))
    a = 0.5 * raw / torch.where(same, s_pos, s_neg) * coef
    return value, (a[..., None] * diff).sum(1)


def test_batch_spans_several_block_rows():
    assert len(row_blocks(N)) == 3


@pytest.mark.parametrize("era,params,lam", [
    ("v12", RLLParams(), 1.0),
    ("v12", RLLParams(pn_margin=0.6, scale_p=1, base_p=2, scale_n=8, base_n=3), 2.5),
    ("cvpr19", RLLParams(negative_threshold=1.4), 0.5),
])
def test_rll_blocks_equal_dense_formulas(era, params, lam):
    x, y = batch()
    fn = rll_v12_value_and_grad if era == "v12" else rll_cvpr19_value_and_grad
    v, g = fn(x, y, params, torch.tensor(lam, dtype=F64))
    v_ref, g_ref = dense_rll(x, y, params, era, lam)
    assert abs(float(v) - float(v_ref)) <= 1e-12 * float(v_ref)
    assert rel(g, g_ref) <= 1e-12


def test_osm_blocks_equal_dense_formulas():
    x, y = batch(1)
    x = x.abs()
    s = torch.rand(N, generator=torch.Generator().manual_seed(2), dtype=F64) * 0.4 + 0.2
    v, g = osm_caa_value_and_grad(x, y, s, 1.2, 0.8, 0.1, top_diff=3.0)
    v_ref, g_ref = dense_osm(x, y, s, 1.2, 0.8, 0.1, lam=3.0)
    assert abs(float(v) - float(v_ref)) <= 1e-12 * float(v_ref)
    assert rel(g, g_ref) <= 1e-12


def test_duplicates_across_block_rows_contribute_nothing():
    """Rows 1 and N-1 are equal (same label too): their own pair has d = 0 exactly (zero direction, no
    NaN) and every other pair is the same for both, so both get the same gradient (up to summation
    order: one is computed in the first block row, the other in the last)."""
    x, y = batch()
    _, g = rll_v12_value_and_grad(x, y, RLLParams())
    assert torch.isfinite(g).all()
    assert rel(g[N - 1], g[1]) <= 1e-12


def test_losses_run_on_meta_and_fake_tensors_without_host_reads():
    """Shapes only: any .item() / bool(tensor) in the forward or backward would raise here."""
    x = torch.empty(N, 8, device="meta")
    y = torch.empty(N, device="meta")
    v, g = rll_v12_value_and_grad(x, y, RLLParams(), torch.ones((), device="meta"))
    assert v.shape == () and g.shape == x.shape and g.device.type == "meta"
    v, g = osm_caa_value_and_grad(x, y, torch.empty(N, device="meta"), top_diff=torch.ones((), device="meta"))
    assert g.shape == x.shape and g.device.type == "meta"
    with FakeTensorMode():
        x = torch.randn(300, 8, requires_grad=True)  # two block rows
        y = torch.randn(300)
        rll_v12(x, y).backward()
        osm_caa_loss(x, y, torch.rand(300)).backward()
        assert x.grad.shape == (300, 8)


def test_rll_layer_top_value_is_a_buffer_that_follows_the_layer():
    from rll_repro.caffe import caffe_pb2
    param = caffe_pb2.LayerParameter(name="loss", type="DistanceWeightedValidPairLossV12", bottom=["f", "l"], top=["loss"])
    layer = DistanceWeightedValidPairLossV12(param, [(4, 3), (4,)], BuildContext(dialect=DIALECTS["rll"]))
    assert "top_value" in dict(layer.named_buffers())
    assert "top_value" not in layer.state_dict()  # not a weight
    layer.to(F64)
    assert layer.top_value.dtype == F64
    layer.to("meta")
    assert layer.top_value.device.type == "meta"
