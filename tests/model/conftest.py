"""Shared fixtures of the model tests: a tiny architecture and seeded image pairs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from streamfuse.model.net import ModelConfig


@pytest.fixture
def tiny() -> ModelConfig:
    """A tiny HCLFuseNet architecture (latent 2 channels): fast enough for every test."""
    return ModelConfig(widths=(4, 8), latent_channels=2, denoiser_width=4)


@pytest.fixture
def pair() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``pair(h=32, w=48, seed=0)`` -> seeded (IR, visible) images (1, 1, h, w) in 0..1."""

    def make(h: int = 32, w: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(1, 1, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)

    return make
