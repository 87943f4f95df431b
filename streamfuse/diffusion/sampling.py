"""DDIM sampling (eta = 0) as a pure function with the shared sampler signature.

Notation (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021):

    x        <-> x_t            current latent
    abar     <-> alpha_t        cumulative product of (1 - beta) at t (DDIM writes alpha for DDPM's alpha-bar)
    abar_prev<-> alpha_{t-1}    at the next (smaller) timestep; 1 after the last step
    eps      <-> eps_theta(x_t) model output
    x0_pred  <-> f_theta(x_t)   "predicted x0", eq. (9)/(12)

The sampler keeps no state and draws no randomness (eta = 0 is deterministic; ``generator`` is accepted for the
shared signature and ignored: the caller passes the starting noise ``x``). It contains no host synchronisation,
so a fixed-K loop can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from streamfuse.diffusion.schedules import eps_to_x0, x0_to_eps

__all__ = ["Guide", "StepOutput", "ddim_step", "sample_ddim"]

Guide = Callable[[torch.Tensor, int, dict], torch.Tensor]


@dataclass(frozen=True)
class StepOutput:
    """Result of one DDIM step: the latent at the next timestep and the (guided) predicted x0."""

    x_prev: torch.Tensor
    x0_pred: torch.Tensor


def ddim_step(eps: torch.Tensor, x: torch.Tensor, t: int, t_prev: int, schedule: torch.Tensor, *,
              guide: Guide | None = None, cond: dict | None = None) -> StepOutput:
    """One deterministic DDIM update (eta = 0), with an optional correction of x0 by a guide.

    Args:
        eps: model output at ``x``, (B, C, h, w).
        x: x_t, (B, C, h, w).
        t: current timestep.
        t_prev: next timestep, or -1 after the last step.
        schedule: ``alphas_cumprod`` (T,).
        guide: ``(x0_pred, t, cond) -> x0`` correction (physics guidance), or None.
        cond: passed to the guide.
    """
    # 1. abar_t and abar_{t-1}; the step after the last one lands on abar = 1 (x_prev = x0)
    abar = schedule[t]
    abar_prev = schedule[t_prev] if t_prev >= 0 else torch.ones((), dtype=schedule.dtype, device=schedule.device)
    # 2. predicted x0, eq. (12), clamped to the latent range [-1, 1]
    x0 = eps_to_x0(x, eps, abar).clamp(-1.0, 1.0)
    # 3. physics guidance corrects x0; eps is recomputed from the corrected x0 so the update stays consistent
    if guide is not None:
        x0 = guide(x0, t, cond or {})
        eps = x0_to_eps(x, x0, abar)
    # 4. eq. (12) with sigma_t = 0: x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps
    x_prev = abar_prev.sqrt() * x0 + (1.0 - abar_prev).sqrt() * eps
    return StepOutput(x_prev=x_prev, x0_pred=x0)


def sample_ddim(model: Callable[..., torch.Tensor], x: torch.Tensor, timesteps: Sequence[int], schedule: torch.Tensor,
                *, cond: dict | None = None, guide: Guide | None = None, callback: Callable[[dict], None] | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``x`` = x_T through ``timesteps`` (descending), returning x0.

    Args:
        model: ``(x, t (B,) long, **cond) -> eps``.
        x: starting noise x_T, (B, C, h, w); the caller owns its randomness (fixed per stream for video).
        timesteps: K descending ints, e.g. :func:`~streamfuse.diffusion.schedules.ddim_timesteps`.
        schedule: ``alphas_cumprod`` (T,) on ``x``'s device.
        cond: keyword arguments of ``model``, also handed to the guide.
        guide: ``(x0_pred, t, cond) -> x0`` correction applied at every step.
        callback: called after each step with ``{"x", "i", "t", "x0_pred"}``.
        generator: unused by eta = 0 (kept for the shared signature); passing one is not an error.

    Returns:
        The final x0, (B, C, h, w).
    """
    del generator  # deterministic sampler
    cond = cond or {}
    ts = list(timesteps)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = ddim_step(model(x, tt, **cond), x, t, t_prev, schedule, guide=guide, cond=cond)
        x = out.x_prev
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": out.x0_pred})
    return x
