"""Noise schedules and timestep spacings as pure functions (computed in float64, returned as float32 tensors).

Notation (DDPM/DDIM): ``beta_t`` noise added at step t, ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``
(``alphas_cumprod``), ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.
"""

from __future__ import annotations

import torch

__all__ = ["alphas_cumprod", "ddim_timesteps", "eps_to_x0", "linear_betas", "x0_to_eps"]


def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas (T,) from ``beta_start`` to ``beta_end`` (DDPM, Ho et al. 2020)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64).float()


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)`` (T,), accumulated in float64.

    Examples:
        >>> abar = alphas_cumprod(linear_betas())
        >>> round(float(abar[0]), 6), abar.shape
        (0.9999, torch.Size([1000]))
    """
    return torch.cumprod(1.0 - betas.double(), dim=0).float()


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """K descending timesteps with "trailing" spacing, so the first step always starts from pure noise (t = T - 1).

    Examples:
        >>> ddim_timesteps(4)
        [999, 749, 499, 249]
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps={steps} is out of range; allowed: 1..{num_train_timesteps}")
    stride = num_train_timesteps / steps
    return [round(num_train_timesteps - i * stride) - 1 for i in range(steps)]


def eps_to_x0(x: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDIM eq. 12, "predicted x0")."""
    return (x - (1.0 - abar).sqrt() * eps) / abar.sqrt()


def x0_to_eps(x: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``, the eps implied by a (corrected) x0."""
    return (x - abar.sqrt() * x0) / (1.0 - abar).sqrt()
