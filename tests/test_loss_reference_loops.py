"""The vectorised loss Functions against slow, obviously-correct per-pair loops that follow the
SPEC's steps literally (pytorch-metric-learning's habit), in float32 and float64.

Tolerances: float64 agrees to 1e-12 relative (only summation order differs). Float32 agrees to
1e-6 of the largest gradient component (the loop accumulates pair by pair in float32, the port sums
exactly and rounds once; a few ulp of the largest term is the honest bound for small components
that cancel) and to 1e-6 relative for the value.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rll_repro.layers.osm_caa import osm_caa_value_and_grad
from rll_repro.layers.rll import RLLParams, rll_cvpr19_value_and_grad, rll_v12_value_and_grad


def loop_rll(feat, labels, p: RLLParams, era="v12", lam=1.0):
    """DistanceWeightedValidPairLossV12 Backward (SPEC rll §1.3) or its CVPR-era form (§1.5), pair by pair."""
    dt = feat.dtype.type
    n = len(feat)
    pairs = list(itertools.combinations(range(n), 2))
    m = np.float32(p.pn_margin)
    if era == "v12":
        pos_b, neg_b = dt(np.float32(1) - m / np.float32(2)), dt(np.float32(1) + m / np.float32(2))
    else:
        pos_b, neg_b = dt(np.float32(p.negative_threshold) - m), dt(np.float32(p.negative_threshold))
    ga, gb, w, dist, loss = [], [], [], [], dt(0)
    for i, j in pairs:
        diff = feat[i] - feat[j]
        d = dt(np.sqrt(dt(np.dot(diff, diff))))
        dist.append(d)
        same = labels[i] == labels[j]
        if same:
            loss += dt(max(d - dt(np.float32(p.negative_threshold) - m), 0)) ** 2
        else:
            loss += dt(max(dt(p.negative_threshold) - d, 0)) ** 2
        if era == "v12":
            u = diff * dt(1.0 / (float(d) + 1e-6))
        else:
            violating = (d - pos_b > 0) if same else (neg_b - d > 0)
            u = diff if violating else diff * 0
        sign = 1 if same else -1
        ga.append(sign * dt(lam) * u)
        gb.append(-sign * dt(lam) * u)
        t = dt(d - pos_b) if same else dt(neg_b - d)
        T, base = (p.scale_p, p.base_p) if same else (p.scale_n, p.base_n)
        w.append(dt(dt(base) ** dt(dt(T) * t)) if t > 0 else dt(0))
    sp = [dt(np.float32(1e-8))] * n
    sn = [dt(np.float32(1e-8))] * n
    for (i, j), wp in zip(pairs, w):
        s = sp if labels[i] == labels[j] else sn
        s[i] += wp
        s[j] += wp
    z = dt(np.float32(1e-8))
    for k in range(n):
        z += sp[k]
        z += sn[k]
    grad = np.zeros_like(feat)
    for (i, j), wp, a, b in zip(pairs, w, ga, gb):
        s = sp if labels[i] == labels[j] else sn
        ci = dt(0.5 * wp / s[i]) * dt((sp[i] + sn[i]) / z)
        cj = dt(0.5 * wp / s[j]) * dt((sp[j] + sn[j]) / z)
        grad[i] += ci * a
        grad[j] += cj * b
    return dt(loss / dt(len(pairs))), grad


def loop_osm(feat, labels, scores, margin, sigma, mean, lam=1.0):
    """DistanceWeightedValidPairLossV5 (SPEC osm §2.1), pair by pair."""
    dt = feat.dtype.type
    n = len(feat)
    pairs = list(itertools.combinations(range(n), 2))
    P = len(pairs)
    alpha = dt(lam / P)
    loss = dt(0)
    ga, raw = [], []
    for i, j in pairs:
        diff = feat[i] - feat[j]
        d2 = dt(np.dot(diff, diff))
        d = dt(np.sqrt(d2))
        if labels[i] == labels[j]:
            loss += d2
            ga.append(alpha * diff)
            pdf = dt(1 / np.sqrt(2 * np.pi * sigma * sigma)) * dt(np.exp(-0.5 * ((d - mean) / sigma) ** 2))
            raw.append(pdf * dt(min(scores[i], scores[j])))
        else:
            md = dt(margin - d)
            loss += dt(max(md, 0)) ** 2
            beta = -alpha * md / dt(d + dt(np.float32(1e-4)))
            ga.append(beta * diff if md > 0 else diff * 0)
            raw.append(dt(max(md, 0)) * dt(min(scores[i], scores[j])))
    s_pos = dt(sum(r for (i, j), r in zip(pairs, raw) if labels[i] == labels[j])) + dt(1e-12)
    s_neg = dt(sum(r for (i, j), r in zip(pairs, raw) if labels[i] != labels[j])) + dt(1e-12)
    grad = np.zeros_like(feat)
    for (i, j), r, a in zip(pairs, raw, ga):
        w = dt(0.5 * r / (s_pos if labels[i] == labels[j] else s_neg))
        grad[i] += w * a
        grad[j] -= w * a
    return dt(loss / dt(P) / dt(2)), grad


def batch(seed, n=12, d=6, classes=3, dtype=np.float32, unit=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(dtype), rng.integers(0, classes, n).astype(np.float32)


PARAMS = [RLLParams(), RLLParams(pn_margin=0.6, scale_p=1, base_p=2, scale_n=8, base_n=3),
          RLLParams(negative_threshold=1.4, pn_margin=0.2, scale_p=2, scale_n=5)]


def close(ours, ref, dtype):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = max(np.abs(ref).max(), 1e-300)
    return np.abs(ours - ref).max() / scale <= (1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_rll_v12_equals_per_pair_loop(dtype, params, seed):
    x, y = batch(seed, dtype=dtype)
    v_ref, g_ref = loop_rll(x, y, params)
    v, g = rll_v12_value_and_grad(torch.from_numpy(x), torch.from_numpy(y), params)
    assert g.dtype == torch.from_numpy(x).dtype
    assert close(v, v_ref, dtype) and close(g, g_ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rll_cvpr19_equals_per_pair_loop(dtype):
    x, y = batch(3, dtype=dtype)
    params = RLLParams(negative_threshold=1.2, pn_margin=0.4, scale_n=10)
    v_ref, g_ref = loop_rll(x, y, params, era="cvpr19")
    v, g = rll_cvpr19_value_and_grad(torch.from_numpy(x), torch.from_numpy(y), params)
    assert close(v, v_ref, dtype) and close(g, g_ref, dtype)


def test_rll_top_diff_scales_the_gradient_not_the_value():
    x, y = batch(4)
    v_ref, g_ref = loop_rll(x, y, RLLParams(), lam=2.5)
    v, g = rll_v12_value_and_grad(torch.from_numpy(x), torch.from_numpy(y), RLLParams(), top_diff=2.5)
    assert close(v, v_ref, np.float32) and close(g, g_ref, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("margin,sigma,mean", [(1.2, 0.8, 0.0), (1.0, 0.5, 0.1)])
def test_osm_caa_v5_equals_per_pair_loop(dtype, margin, sigma, mean):
    x, y = batch(5, n=14, d=16, classes=4, dtype=dtype)
    x = np.abs(x)  # post-ReLU embeddings, as in the released nets
    s = np.random.default_rng(6).uniform(0.2, 0.6, len(x)).astype(dtype)
    v_ref, g_ref = loop_osm(x, y, s, dtype(np.float32(margin)), dtype(np.float32(sigma)), dtype(np.float32(mean)))
    v, g = osm_caa_value_and_grad(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(s), margin, sigma, mean)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert abs(float(v) - v_ref) <= tol * abs(v_ref)
    assert close(g, g_ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_near_duplicate_pairs_use_the_exact_difference(dtype):
    """Pairs whose Gram-form distance is within rounding error of 0 are recomputed from f_i - f_j:
    exact duplicates get d = 0 (no contribution) and near duplicates their true tiny distance,
    which the unit direction (f_i - f_j)/(d + 1e-6) amplifies."""
    x, y = batch(7, n=10, d=8, dtype=dtype)
    x[3] = x[1]
    x[5] = x[2] + dtype(3e-6)
    y[3], y[5] = y[1], y[2] + 1
    v_ref, g_ref = loop_rll(x, y, RLLParams())
    v, g = rll_v12_value_and_grad(torch.from_numpy(x), torch.from_numpy(y), RLLParams())
    assert close(v, v_ref, dtype) and close(g, g_ref, dtype)
