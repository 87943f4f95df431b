"""DDIM sampler: K-step shapes, determinism, exactness on a known-x0 model, guide and callback hooks."""

from __future__ import annotations

import pytest
import torch

from streamfuse.diffusion.sampling import StepOutput, ddim_step, sample_ddim
from streamfuse.diffusion.schedules import alphas_cumprod, ddim_timesteps, linear_betas, x0_to_eps

SCHEDULE = alphas_cumprod(linear_betas())


def _oracle(target: torch.Tensor):
    """An eps model that knows the clean sample: eps implied by x0 = target."""

    def model(x, t, **_):
        return x0_to_eps(x, target, SCHEDULE[t].view(-1, 1, 1, 1))

    return model


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 20])
def test_oracle_model_recovers_x0_in_k_steps(steps):
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 4, 6, 8, generator=g) * 2 - 1
    noise = torch.randn(2, 4, 6, 8, generator=g)
    seen = []
    out = sample_ddim(_oracle(target), noise, ddim_timesteps(steps), SCHEDULE, callback=seen.append)
    assert out.shape == noise.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, target, atol=1e-4, rtol=1e-4)
    assert [s["i"] for s in seen] == list(range(steps)) and set(seen[0]) == {"x", "i", "t", "x0_pred"}


def test_deterministic_given_the_same_noise():
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(1, 2, 5, 5, generator=g)

    def model(x, t, **_):
        return 0.5 * x

    a = sample_ddim(model, noise, ddim_timesteps(4), SCHEDULE, generator=torch.Generator().manual_seed(9))
    b = sample_ddim(model, noise.clone(), ddim_timesteps(4), SCHEDULE)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_golden_numbers_of_a_tiny_run():
    noise = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))

    def model(x, t, **_):
        return 0.9 * x

    out = sample_ddim(model, noise, ddim_timesteps(2), SCHEDULE)
    # pinned (t = 999, 499); a float64 hand-unrolled run of the two steps gives the same values to 1e-7.
    # The third value is x0 clipped to the latent range at the last step.
    golden = torch.tensor([0.78235817, -0.25914750, -1.0, 0.37447926]).view(1, 1, 2, 2)
    torch.testing.assert_close(out, golden, atol=1e-6, rtol=0)


def test_step_output_is_frozen_and_guide_is_applied():
    x = torch.zeros(1, 1, 3, 3)
    eps = torch.zeros_like(x)
    out = ddim_step(eps, x, 999, -1, SCHEDULE, guide=lambda x0, t, cond: x0 + cond["shift"], cond={"shift": 0.25})
    assert isinstance(out, StepOutput)
    torch.testing.assert_close(out.x0_pred, torch.full_like(x, 0.25))
    torch.testing.assert_close(out.x_prev, out.x0_pred)  # the last step lands on x0
    with pytest.raises(AttributeError):
        out.x_prev = x


def test_a_guided_step_takes_its_noise_direction_from_the_corrected_x0():
    # eq. (12) needs eps and x0 to describe the same x_t. After the guide replaces x0, eps must be recomputed from it,
    # or the step mixes the guided x0 with the model's unguided noise and the next latent drifts off the trajectory
    # (small per step, so the end-to-end tests cannot see it).
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 4, generator=g)
    eps = torch.randn(1, 2, 4, 4, generator=g)
    c = torch.full_like(x, 0.3)
    t, t_prev = 499, 249
    out = ddim_step(eps, x, t, t_prev, SCHEDULE, guide=lambda x0, t, cond: c)
    abar, abar_prev = SCHEDULE[t], SCHEDULE[t_prev]
    expected = abar_prev.sqrt() * c + (1 - abar_prev).sqrt() * x0_to_eps(x, c, abar)
    torch.testing.assert_close(out.x0_pred, c)
    torch.testing.assert_close(out.x_prev, expected, atol=1e-6, rtol=1e-6)


def test_sampling_hands_the_guide_each_timestep_and_the_model_its_condition():
    seen = []

    def model(x, t, *, shift):
        seen.append(("model", int(t[0]), shift))
        return 0.5 * x

    def guide(x0, t, cond):
        seen.append(("guide", t, cond["shift"]))
        return x0 * 0.5

    noise = torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(4))
    guided = sample_ddim(model, noise, [999, 499], SCHEDULE, cond={"shift": 7}, guide=guide)
    assert seen == [("model", 999, 7), ("guide", 999, 7), ("model", 499, 7), ("guide", 499, 7)]
    assert not torch.equal(guided, sample_ddim(model, noise, [999, 499], SCHEDULE, cond={"shift": 7}))


def test_the_guide_acts_on_every_step_that_runs_down_to_timestep_0():
    seen = []

    def guide(x0, t, cond):
        seen.append(t)
        return torch.full_like(x0, 0.5)

    noise = torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(7))
    out = sample_ddim(lambda x, t, **_: 0.5 * x, noise, [999, 499, 0], SCHEDULE, guide=guide)
    assert seen == [999, 499, 0]
    torch.testing.assert_close(out, torch.full_like(out, 0.5))  # the step after t = 0 lands on the guided x0


def test_the_callback_gets_each_steps_latent_timestep_and_predicted_x0():
    g = torch.Generator().manual_seed(5)
    target = torch.rand(1, 2, 4, 4, generator=g) * 2 - 1
    seen = []
    out = sample_ddim(_oracle(target), torch.randn(1, 2, 4, 4, generator=g), [999, 499, 0], SCHEDULE,
                      callback=seen.append)
    assert [s["t"] for s in seen] == [999, 499, 0]
    assert seen[-1]["x"] is out
    for s in seen:  # the oracle predicts the target at every step; the latent reaches it only at the end
        torch.testing.assert_close(s["x0_pred"], target, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(seen[0]["x"], target, atol=1e-2)


def test_a_step_to_timestep_0_lands_on_its_noise_level_not_on_x0():
    # t_prev = 0 is a real timestep (abar_0 = 0.9999, as ddim_timesteps(1000) ends); only -1 means "after the last"
    g = torch.Generator().manual_seed(6)
    x, eps = torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 4, 4, generator=g)
    out = ddim_step(eps, x, 10, 0, SCHEDULE)
    expected = SCHEDULE[0].sqrt() * out.x0_pred + (1 - SCHEDULE[0]).sqrt() * eps
    torch.testing.assert_close(out.x_prev, expected)
    assert not torch.allclose(out.x_prev, out.x0_pred, atol=1e-3)
