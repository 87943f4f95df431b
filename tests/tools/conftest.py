"""Fixtures of the tools/ tests (``tool``, which loads a script as a module, is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


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
