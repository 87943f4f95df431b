"""Small eps-prediction UNet on the HCLFuse latent, conditioned by channel concatenation with the posterior mean.

Two resolutions (the latent's H/8 and H/16), sinusoidal time embedding added as a per-channel bias. The sampler and
the SmoothL1 noise loss see an ordinary eps-prediction model, but inside, the network output ``F`` is preconditioned
as in EDM (Karras et al. 2022, Table 1) around the posterior mean ``mu``, with ``y = x_t / sqrt(abar)``,
``sigma = sqrt((1 - abar) / abar)``:

    x0  = mu + c_skip (y - mu) + c_out F
    c_skip = s_d^2 / (sigma^2 + s_d^2),  c_out = sigma s_d / sqrt(sigma^2 + s_d^2)
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)

so neither end of the schedule amplifies the network's error: a raw eps output would be divided by ``sqrt(abar)``
(0.006 at t = T) to get x0 in few-step DDIM from pure noise, and a raw x0 output by ``sqrt(1 - abar)`` (0.01 at
t = 0) to get eps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Denoiser", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) of integer timesteps, as in DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Denoiser(nn.Module):
    """``(x_t (B, C, h, w), t (B,), cond (B, C, h, w)) -> eps (B, C, h, w)``.

    Args:
        latent_channels: C.
        width: channels at the latent resolution; ``2 * width`` at half of it.
        alphas_cumprod: ``(T,)`` schedule, stored as a buffer for the preconditioning.
        emb_dim: size of the sinusoidal time embedding.
        sigma_data: EDM's data spread ``s_d`` (of the latent around ``mu``).
    """

    def __init__(self, latent_channels: int, width: int, alphas_cumprod: torch.Tensor, *, emb_dim: int = 32,
                 sigma_data: float = 0.25):
        super().__init__()
        c, w = latent_channels, width
        self.emb_dim = emb_dim
        self.sigma_data = sigma_data  # spread of the latent around the posterior mean assumed by the preconditioning
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.time = nn.Sequential(nn.Linear(emb_dim, 2 * w), nn.SiLU(), nn.Linear(2 * w, 3 * w))
        self.inp = nn.Conv2d(2 * c, w, 3, padding=1)
        self.conv1 = nn.Conv2d(w, w, 3, padding=1)
        self.down = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.up = nn.Conv2d(2 * w, 4 * w, 1)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1)
        self.out = nn.Conv2d(w, c, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        sigma2 = (1.0 - abar) / abar
        sd2 = self.sigma_data**2
        r = x / abar.sqrt() - cond  # y - mu, (B, C, h, w)
        w = self.conv1.in_channels
        e1, e2 = self.time(timestep_embedding(t, self.emb_dim)).split([w, 2 * w], dim=1)
        h = self.inp(torch.cat([r * (sigma2 + sd2).rsqrt(), cond], dim=1))  # c_in (y - mu)
        h = self.act(h + e1[:, :, None, None])  # (B, w, h, w)
        h1 = self.act(self.conv1(h))
        m = self.act(self.mid(self.act(self.down(h1))) + e2[:, :, None, None])  # (B, 2w, h/2, w/2)
        u = F.pixel_shuffle(self.up(m), 2)[..., : h1.shape[-2], : h1.shape[-1]]  # (B, w, h, w)
        f = self.out(self.act(self.conv2(h1 + u)))
        x0 = cond + sd2 / (sigma2 + sd2) * r + (sigma2 * sd2 / (sigma2 + sd2)).sqrt() * f
        return (x - abar.sqrt() * x0) / (1.0 - abar).sqrt()
