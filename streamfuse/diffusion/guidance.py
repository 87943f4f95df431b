"""HCLFuse physics guidance: direct corrections of the predicted x0, composable as an ordered list.

Each guide maps ``(x0_pred, t, cond) -> x0`` and acts on the first ``channels`` latent channels, the image-like ones
(the VBE trains them to equal ``2 * avgpool8(F) - 1``). The sources come in ``cond`` from :func:`guide_inputs`,
downsampled to the latent size and mapped to the latent's range [-1, 1], so guides and latent share one range.
The weight of each guide decays with the timestep, ``lambda_i(t) = lambda_i0 * exp(-gamma * t / T)``, so it acts
mostly near the end of sampling. No gradients are needed: the sampler may run under ``torch.inference_mode()``.

Operators (method.md, from the reference code):

- heat: ``x + lambda * laplacian(x)`` (5-point stencil, replicate padding), one explicit heat-equation step;
- structure: ``x + lambda * (G_max - G_x) * M_stru`` with ``G = sqrt(gx^2 + gy^2 + 1e-6)`` (Sobel),
  ``G_max = max(G(IR), G(VIS))``, ``M_stru = [G_max > 1.5 mean(G_max)]``;
- consistency: ``(1 - lambda) x + lambda (0.6 IR M_heat + 0.4 VIS M_vis)``, ``M_heat = [avgpool3(IR) > mean(IR)]``,
  ``M_vis = [|laplacian(VIS)| > mean |laplacian(VIS)|]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ComposedGuide", "PhysicsGuide", "default_guides", "guide_inputs", "laplacian", "sobel_magnitude"]

_LAP = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


@functools.lru_cache(maxsize=32)
def _kernel(name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The named 3x3 kernel on a device, copied there once (no host-to-device copy inside a captured graph)."""
    k = {"lap": _LAP, "sobel_x": _SOBEL_X, "sobel_y": _SOBEL_X.t()}[name]
    return k.to(device, dtype).contiguous()


def _filter(x: torch.Tensor, name: str) -> torch.Tensor:
    """Depthwise 3x3 filter with replicate padding, (B, C, h, w) -> (B, C, h, w)."""
    c = x.shape[1]
    w = _kernel(name, x.device, x.dtype).expand(c, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w, groups=c)


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian with replicate padding."""
    return _filter(x, "lap")


def sobel_magnitude(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``sqrt(gx^2 + gy^2 + eps)``; ``eps`` inside the root keeps gradients finite on flat regions."""
    return (_filter(x, "sobel_x").square() + _filter(x, "sobel_y").square() + eps).sqrt()


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(1, 2, 3), keepdim=True)  # per image, stays on the device (no .item())


def guide_inputs(ir01: torch.Tensor, vis01: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """What the guides read, at the latent size: ``g_max``, ``m_stru`` (0/1) and ``consistency`` (in [-1, 1]).

    Args:
        ir01: aligned IR' (B, 1, H, W) in 0..1.
        vis01: visible Y (B, 1, H, W) in 0..1.
        size: latent (h, w).
    """
    ir = F.interpolate(ir01, size=size, mode="bilinear", align_corners=False, antialias=False) * 2.0 - 1.0
    vis = F.interpolate(vis01, size=size, mode="bilinear", align_corners=False, antialias=False) * 2.0 - 1.0
    g_max = torch.maximum(sobel_magnitude(ir), sobel_magnitude(vis))
    m_stru = (g_max > 1.5 * _mean(g_max)).to(ir.dtype)
    m_heat = (F.avg_pool2d(F.pad(ir, (1, 1, 1, 1), mode="replicate"), 3, stride=1) > _mean(ir)).to(ir.dtype)
    lap_vis = laplacian(vis).abs()
    m_vis = (lap_vis > _mean(lap_vis)).to(ir.dtype)
    return {"g_max": g_max, "m_stru": m_stru, "consistency": 0.6 * ir * m_heat + 0.4 * vis * m_vis}


@dataclass(frozen=True)
class PhysicsGuide:
    """One physics operator with weight ``lambda0 * exp(-gamma * t / T)``.

    Args:
        kind: ``heat``, ``structure`` or ``consistency``.
        lambda0: weight at t = 0.
        gamma: decay rate over the schedule.
        num_train_timesteps: T.
        channels: latent channels the guide acts on (the image-like ones).
    """

    kind: str
    lambda0: float
    gamma: float = 5.0
    num_train_timesteps: int = 1000
    channels: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("heat", "structure", "consistency"):
            raise ValueError(f"unknown guide kind {self.kind!r}; allowed: heat, structure, consistency")

    def weight(self, t: int) -> float:
        """``lambda_i(t)``."""
        return self.lambda0 * math.exp(-self.gamma * t / self.num_train_timesteps)

    def __call__(self, x0: torch.Tensor, t: int, cond: dict) -> torch.Tensor:
        lam = self.weight(t)
        if lam == 0.0:
            return x0
        x, rest = x0[:, : self.channels], x0[:, self.channels:]
        if self.kind == "heat":
            x = x + lam * laplacian(x)
        elif self.kind == "structure":
            x = x + lam * (cond["g_max"] - sobel_magnitude(x)) * cond["m_stru"]
        else:
            x = (1.0 - lam) * x + lam * cond["consistency"]
        return torch.cat([x, rest], dim=1)


@dataclass(frozen=True)
class ComposedGuide:
    """Apply guides in order (heat, then structure, then consistency)."""

    guides: tuple[PhysicsGuide, ...]

    def __call__(self, x0: torch.Tensor, t: int, cond: dict) -> torch.Tensor:
        for g in self.guides:
            x0 = g(x0, t, cond)
        return x0


def default_guides(scale: float = 1.0, gamma: float = 5.0, channels: int = 1,
                   lambdas: Sequence[float] = (0.05, 0.15, 0.1)) -> ComposedGuide:
    """The method's guides with lambda_heat0 = 0.05, lambda_stru0 = 0.15, lambda_con0 = 0.1 (times ``scale``)."""
    kinds = ("heat", "structure", "consistency")
    return ComposedGuide(tuple(PhysicsGuide(k, scale * lam, gamma, channels=channels)
                               for k, lam in zip(kinds, lambdas, strict=True)))
