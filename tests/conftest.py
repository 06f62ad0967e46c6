"""Shared test fixtures: where ../shared is, and how to skip visibly when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(os.environ.get("RLL_REPRO_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the calling test (with the reason) if it does not exist."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the read-only ../shared folder beside the repository)")
    return path


@pytest.fixture
def shared():
    """``shared('oracle', 'rll', ...)`` -> Path, skipping when ../shared is absent."""
    return shared_path


@pytest.fixture(params=["native", "pytorch"])
def pair_kernels(request, monkeypatch):
    """Runs a test on both paths of the pair losses and L2 Normalization: the C passes
    (rll_repro/layers/pair_kernels.c, float32 CPU tensors) and the PyTorch ops every device uses."""
    if request.param == "pytorch":
        monkeypatch.setenv("RLL_REPRO_NATIVE", "0")
    else:
        from rll_repro.layers import _pair_native

        monkeypatch.setenv("RLL_REPRO_NATIVE", "1")
        if _pair_native._kernels() is None:
            pytest.skip(f"pair kernels not built here: {_pair_native.status()}")
    return request.param


@pytest.fixture(params=["native", "masks"])
def count_kernels(request, monkeypatch):
    """Runs a test on both paths of the Recall@K counts: the C counters (rll_repro/eval/count_kernels.c)
    and the word-wise mask counts they stand in for."""
    from rll_repro.eval import counts

    monkeypatch.setenv("RLL_REPRO_NATIVE", "1" if request.param == "native" else "0")
    if request.param == "native" and counts._kernels() is None:
        pytest.skip(f"count kernels not built here: {counts._KERNELS.status()}")
    return request.param
