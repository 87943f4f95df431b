"""HCLFuse training losses: VBE (KL + image-like latent), fusion, and noise (eps) terms.

The fusion target keeps the brighter low-pass of the two sources (IR' and VIS, both 0..1) and, on top of it, the
detail of whichever source has more local gradient energy there, amplified by ``detail_gain``:

    base   = max(G_s * IR', G_s * VIS)                      G_s: Gaussian blur, sigma ``base_sigma`` px
    w      = E_ir^2 / (E_ir^2 + E_vis^2)                    E: Gaussian-blurred squared Sobel magnitude
    target = base + detail_gain * (w (IR' - G_s IR') + (1 - w) (VIS - G_s VIS))

The loss pulls the fused image and its Sobel gradients (signed components) toward the target, and keeps the
method's terms (MSE to both sources and to the larger source gradient magnitude, with ``+eps`` inside the square
root so flat regions have finite gradients). The noise loss is SmoothL1 between the predicted eps and the eps that
was actually added to the latent (the reference's "epsilon fix").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from streamfuse.config import check
from streamfuse.model.vbe import kl_standard_normal

__all__ = ["LossConfig", "fusion_target", "gaussian_blur", "hclfuse_losses", "sobel"]

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


@dataclass(frozen=True)
class LossConfig:
    """Weights of the training losses and the fusion target's parameters.

    Args:
        noise: weight of SmoothL1(eps_pred, eps).
        kl: weight of KL(q(z | x) || N(0, 1)).
        latent_image: weight of MSE between the image-like latent channels and ``2 avgpool8(target) - 1``.
        intensity: weight of L1(F, target).
        gradient: weight of L1 between the Sobel components of F and of the target.
        method_mse: weight of the method's ``MSE(F, IR') + MSE(F, VIS) + MSE(|grad F|, max |grad|)``.
        detail_gain: amplification of the selected detail in the target.
        base_sigma: blur (px) that separates base and detail.
        energy_sigma: blur (px) of the squared gradient magnitude that selects the detail source.
    """

    noise: float = 1.0
    kl: float = 1e-3
    latent_image: float = 1.0
    intensity: float = 10.0
    gradient: float = 40.0
    method_mse: float = 0.5
    detail_gain: float = 1.2
    base_sigma: float = 8.0
    energy_sigma: float = 3.0

    def __post_init__(self) -> None:
        for key in ("noise", "kl", "latent_image", "intensity", "gradient", "method_mse"):
            check(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        check(self.detail_gain > 0, "detail_gain", self.detail_gain, "> 0")
        check(self.base_sigma > 0 and self.energy_sigma > 0, "base_sigma", self.base_sigma, "> 0")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding (radius 3 sigma)."""
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device).square() / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Signed Sobel components (B, 2C, H, W) (x then y, kernels / 8), replicate padding."""
    c = x.shape[1]
    k = torch.stack([_SOBEL_X, _SOBEL_X.t()]).to(x.device, x.dtype).unsqueeze(1).repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)


def _magnitude(g: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    gx, gy = g[:, 0::2], g[:, 1::2]
    return (gx.square() + gy.square() + eps).sqrt()


def fusion_target(ir01: torch.Tensor, vis01: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """The fusion target (B, 1, H, W) from IR' and VIS (B, 1, H, W) in 0..1 (see the module docstring)."""
    x = torch.cat([ir01, vis01], dim=1)
    low = gaussian_blur(x, cfg.base_sigma)
    g = sobel(x)
    energy = gaussian_blur(g[:, 0::2].square() + g[:, 1::2].square(), cfg.energy_sigma) + 1e-8  # (B, 2, H, W)
    w = energy.square() / energy.square().sum(dim=1, keepdim=True)
    detail = ((x - low) * w).sum(dim=1, keepdim=True)
    return low.amax(dim=1, keepdim=True) + cfg.detail_gain * detail


def hclfuse_losses(out: dict[str, torch.Tensor], ir01: torch.Tensor, vis01: torch.Tensor, eps: torch.Tensor,
                   cfg: LossConfig, image_channels: int, *,
                   ir_raw: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All loss terms and their weighted sum ``total``.

    Args:
        out: :meth:`HCLFuseNet.train_outputs` (``mu``, ``logvar``, ``eps_pred``, ``fused``).
        ir01, vis01: the net's inputs (B, 1, H, W) in 0..1 (``ir01`` is the OT-aligned IR').
        eps: the noise that was added to the latent (B, C, h, w).
        cfg: weights.
        image_channels: how many latent channels are image-like.
        ir_raw: the IR before alignment; when given, the fusion target is built from it (the viewer and the
            metrics compare the fused image with the raw IR, whose contrast the alignment reduces), while the
            method's MSE term still uses IR'.
    """
    with torch.no_grad():
        target = fusion_target(ir01 if ir_raw is None else ir_raw, vis01, cfg)
        g_target = sobel(target)
        g_src = sobel(torch.cat([ir01, vis01], dim=1))
        g_max = torch.maximum(_magnitude(g_src[:, 0:2]), _magnitude(g_src[:, 2:4]))
        latent_target = F.adaptive_avg_pool2d(target, out["mu"].shape[-2:]).clamp(0, 1) * 2.0 - 1.0
    fused = out["fused"]
    g_fused = sobel(fused)
    terms = {
        "noise": F.smooth_l1_loss(out["eps_pred"], eps),
        "kl": kl_standard_normal(out["mu"], out["logvar"]),
        "latent_image": F.mse_loss(out["mu"][:, :image_channels], latent_target.expand(-1, image_channels, -1, -1)),
        "intensity": F.l1_loss(fused, target),
        "gradient": F.l1_loss(g_fused, g_target),
        "method_mse": F.mse_loss(fused, ir01) + F.mse_loss(fused, vis01) + F.mse_loss(_magnitude(g_fused), g_max),
    }
    terms["total"] = sum(getattr(cfg, k) * v for k, v in terms.items())
    return terms
