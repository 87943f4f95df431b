"""Diffusion utilities: schedules (pure functions), the DDIM sampler and the physics guides."""

from streamfuse.diffusion.guidance import ComposedGuide, PhysicsGuide, default_guides, guide_inputs
from streamfuse.diffusion.sampling import StepOutput, ddim_step, sample_ddim
from streamfuse.diffusion.schedules import alphas_cumprod, ddim_timesteps, eps_to_x0, linear_betas, x0_to_eps

__all__ = ["ComposedGuide", "PhysicsGuide", "StepOutput", "alphas_cumprod", "ddim_step", "ddim_timesteps",
           "default_guides", "eps_to_x0", "guide_inputs", "linear_betas", "sample_ddim", "x0_to_eps"]
