"""Shared fixtures: the real-data folder (skipped with a reason when absent) and seeded generators."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STREAMFUSE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; tests that need it skip when it is absent."""
    if not (DATA / "README.md").exists():
        pytest.skip(f"real data not found at {DATA} (set STREAMFUSE_DATA)")
    return DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
