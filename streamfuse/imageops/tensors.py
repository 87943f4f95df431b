"""Torch image operators on ``(B, C, H, W)``, per channel, in the convention of :mod:`streamfuse.imageops`.

The 3x3 kernels are copied to each device once and cached, so no host-to-device copy happens inside a captured CUDA
graph; all operators are plain convolutions and work under ``torch.inference_mode()`` and autograd alike.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from streamfuse.imageops import LAPLACIAN, SOBEL_SCALE, SOBEL_X, gaussian_radius

__all__ = ["box_filter", "gaussian_blur", "gradient_magnitude", "laplacian", "sobel", "sobel_adjoint"]


@functools.lru_cache(maxsize=32)
def _kernel(name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The named 3x3 kernel on a device, copied there once."""
    with torch.inference_mode(False):  # a normal tensor even if first asked for in inference: training reuses it
        sobel_x = torch.tensor(SOBEL_X, dtype=dtype) * SOBEL_SCALE
        k = {"lap": torch.tensor(LAPLACIAN, dtype=dtype), "sobel_x": sobel_x, "sobel_y": sobel_x.t()}[name]
        return k.to(device).contiguous()


def _filter(x: torch.Tensor, name: str, *, adjoint: bool = False) -> torch.Tensor:
    """Depthwise 3x3 correlation with replicate border; ``adjoint``: its transpose (flipped kernel, zero border)."""
    c = x.shape[1]
    w = _kernel(name, x.device, x.dtype).expand(c, 1, 3, 3)
    if adjoint:  # exact adjoint of the zero-bordered filter, equal to the replicate-bordered one's inside
        return F.conv2d(x, w.flip(-1, -2), padding=1, groups=c)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w, groups=c)


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed Sobel components ``(gx, gy)``, each (B, C, H, W)."""
    return _filter(x, "sobel_x"), _filter(x, "sobel_y")


def sobel_adjoint(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """The transpose of :func:`sobel` applied to ``(gx, gy)``: ``Sx^T gx + Sy^T gy`` (B, C, H, W)."""
    return _filter(gx, "sobel_x", adjoint=True) + _filter(gy, "sobel_y", adjoint=True)


def gradient_magnitude(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``sqrt(gx^2 + gy^2 + eps)`` of :func:`sobel`; ``eps`` keeps it differentiable on flat regions."""
    gx, gy = sobel(x)
    return (gx.square() + gy.square() + eps).sqrt()


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian."""
    return _filter(x, "lap")


def box_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over ``size x size`` windows (odd ``size``), same size as ``x``."""
    r = size // 2
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), size, stride=1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``sigma`` px."""
    r = gaussian_radius(sigma)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device).square() / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
