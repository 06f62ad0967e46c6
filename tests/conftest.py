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
