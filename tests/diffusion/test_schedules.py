"""Schedules: known values, monotonicity, timestep spacing, eps <-> x0 round trip."""

from __future__ import annotations

import itertools

import pytest
import torch

from streamfuse.diffusion.schedules import alphas_cumprod, ddim_timesteps, eps_to_x0, linear_betas, x0_to_eps


def test_linear_betas_and_alphas_cumprod_known_values():
    betas = linear_betas(1000, 1e-4, 0.02)
    assert betas.dtype == torch.float32 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    abar = alphas_cumprod(betas)
    assert abar[0].item() == pytest.approx(0.9999)
    assert abar[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # diffusers DDPM linear schedule
    assert torch.all(abar[1:] < abar[:-1])


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 20])
def test_ddim_timesteps_trailing(steps):
    ts = ddim_timesteps(steps)
    assert len(ts) == steps and ts[0] == 999 and all(a > b for a, b in itertools.pairwise(ts)) and ts[-1] >= 0


def test_ddim_timesteps_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps=0"):
        ddim_timesteps(0)


def test_eps_x0_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    abar = alphas_cumprod(linear_betas())[500]
    x = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    torch.testing.assert_close(eps_to_x0(x, eps, abar), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x0_to_eps(x, x0, abar), eps, atol=1e-5, rtol=1e-5)


def test_ddim_timesteps_round_a_stride_that_does_not_divide_the_schedule():
    # truncating 1000/3 gave 665 for the middle step where the trailing spacing (diffusers' "trailing") has 666: the
    # steps a student was distilled at were then not the ones it sampled at
    assert ddim_timesteps(3) == [999, 666, 332]
    assert ddim_timesteps(6) == [999, 832, 666, 499, 332, 166]


def test_ddim_timesteps_can_run_every_training_timestep():
    assert ddim_timesteps(1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match=r"steps=1001 is out of range; allowed: 1\.\.1000"):
        ddim_timesteps(1001)
