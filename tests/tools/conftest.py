"""The tools/ scripts are not a package: load one as a module for in-process tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HCLFuse weights of an untrained net (default architecture, seeded): the fuser's plumbing without the shipped
    file, so tools can be tested while the shipped weights change."""
    torch = pytest.importorskip("torch")
    from streamfuse.model import HCLFuseNet, ModelConfig, save_weights

    path = tmp_path_factory.mktemp("weights") / "random.pt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_weights(path, HCLFuseNet(ModelConfig()))
    return path
