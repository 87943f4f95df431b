"""Latent denoiser: shapes (odd latent sizes too), time conditioning, finiteness at both ends of the schedule."""

from __future__ import annotations

import pytest
import torch

from streamfuse.diffusion.schedules import alphas_cumprod, linear_betas
from streamfuse.model.denoiser import Denoiser, timestep_embedding

ABAR = alphas_cumprod(linear_betas())


@pytest.mark.parametrize("size", [(6, 8), (5, 7), (1, 1)])
def test_shapes_and_finite_at_both_ends(size):
    net = Denoiser(4, 8, ABAR)
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 4, *size, generator=g), torch.rand(2, 4, *size, generator=g)
    for t in (0, 999):
        eps = net(x, torch.full((2,), t), cond)
        assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_time_changes_the_output():
    net = Denoiser(2, 8, ABAR)
    x, cond = torch.randn(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)
    assert not torch.allclose(net(x, torch.tensor([10]), cond), net(x, torch.tensor([900]), cond))


def test_zero_network_output_predicts_posterior_mean_at_high_noise():
    """With F = 0 the implied x0 at t = T-1 is almost exactly the condition (c_skip -> 0)."""
    net = Denoiser(2, 8, ABAR)
    torch.nn.init.zeros_(net.out.weight)
    torch.nn.init.zeros_(net.out.bias)
    cond = torch.rand(1, 2, 4, 4) * 2 - 1
    x = torch.randn(1, 2, 4, 4)
    t = torch.tensor([999])
    abar = ABAR[999]
    x0 = (x - (1 - abar).sqrt() * net(x, t, cond)) / abar.sqrt()
    torch.testing.assert_close(x0, cond, atol=2e-2, rtol=0)


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 500]), 16)
    assert e.shape == (2, 16)
    torch.testing.assert_close(e[0, :8], torch.ones(8))
