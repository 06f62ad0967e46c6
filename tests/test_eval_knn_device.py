"""Recall@K on a torch device equals the host path's MATLAB ranks (stable ties, self last), and runs
on the meta device (so on a GPU it reads nothing back until the ranks are asked for)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rll_repro.eval import knn, knn_device


def _tied(n=97, d=6, classes=9, seed=0):
    """Integer-valued features (exact float32 dot products, many exact ties) and labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    x[x.sum(1) == 0, 0] = 1.0
    return x, rng.integers(0, classes, size=n)


@pytest.mark.parametrize("block_rows", [7, 2048])
def test_self_retrieval_ranks_equal_the_host_path_with_ties(block_rows):
    x, y = _tied()
    ref = knn.first_hit_ranks(x, y, normalized=True, symmetric=False)
    ours = knn_device.first_hit_ranks(torch.from_numpy(x), torch.from_numpy(y), normalized=True,
                                      block_rows=block_rows)
    np.testing.assert_array_equal(ours.numpy(), ref)


def test_query_gallery_ranks_equal_the_host_path():
    x, y = _tied(seed=1)
    q, g = x[:30], x[30:]
    ref = knn.first_hit_ranks(q, y[:30], g, y[30:], normalized=True)
    ours = knn_device.first_hit_ranks(torch.from_numpy(q), torch.from_numpy(y[:30]), torch.from_numpy(g),
                                      torch.from_numpy(y[30:]), normalized=True, block_rows=8)
    np.testing.assert_array_equal(ours.numpy(), ref)


def test_recall_matches_the_host_metric_on_normalised_features():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((120, 16)).astype(np.float32)
    y = rng.integers(0, 12, size=120)
    from rll_repro.eval.metrics import recall_at_k

    ref = recall_at_k(x, y, [1, 2, 4, 8])
    ours = knn_device.recall_at_k(torch.from_numpy(x), torch.from_numpy(y), [1, 2, 4, 8])
    assert {k: float(v) for k, v in ours.items()} == pytest.approx(ref)


def test_recall_runs_on_meta():
    x = torch.empty(50, 8, device="meta")
    y = torch.empty(50, dtype=torch.int64, device="meta")
    out = knn_device.recall_at_k(x, y, [1, 4], block_rows=16)
    assert all(v.device.type == "meta" for v in out.values())


def test_eval_features_accepts_device_and_on_the_cpu_keeps_the_host_numbers(tmp_path, capsys):
    """(the device path itself is checked against the host ranks above; a CPU device keeps the host path)"""
    from rll_repro.cli import main

    rng = np.random.default_rng(4)
    np.save(tmp_path / "f.npy", rng.standard_normal((60, 8)).astype(np.float32))
    np.save(tmp_path / "l.npy", rng.integers(0, 6, size=60))
    args = ["eval-features", str(tmp_path / "f.npy"), str(tmp_path / "l.npy"), "--protocol", "cub"]
    assert main(args) == 0
    host = capsys.readouterr().out
    assert main(args + ["--device", "cpu"]) == 0 and capsys.readouterr().out == host
