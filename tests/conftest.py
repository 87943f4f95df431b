"""Shared fixtures: the real-data folder (skipped with a reason when absent), seeded generators and the tools/
scripts loaded as modules (they are not a package)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from helpers_data import DATA, REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; tests that need it skip when it is absent."""
    if not (DATA / "README.md").exists():
        pytest.skip(f"real data not found at {DATA} (set STREAMFUSE_DATA)")
    return DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tool() -> Callable[[str], ModuleType]:
    """``tool("evaluate")`` -> the module of tools/evaluate.py, loaded once per session."""

    def load(name: str) -> ModuleType:
        key = f"{name}_tool"
        if key not in sys.modules:
            spec = importlib.util.spec_from_file_location(key, REPO / "tools" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # dataclasses look their module up while the file executes
            spec.loader.exec_module(module)
        return sys.modules[key]

    return load
