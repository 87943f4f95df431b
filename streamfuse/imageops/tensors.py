"""Torch image operators on ``(B, C, H, W)``, per channel, in the convention of :mod:`streamfuse.imageops`.

The 3x3 operators are sums of shifted slices with the kernels' weights as plain numbers, so no host-to-device copy
happens inside a captured CUDA graph; all operators work under ``torch.inference_mode()`` and autograd alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamfuse.imageops import LAPLACIAN, SOBEL_SCALE, SOBEL_X, gaussian_radius

__all__ = ["box_filter", "gaussian_blur", "gradient_magnitude", "laplacian", "sobel", "sobel_adjoint", "upsample"]


def _taps(kernel: tuple[tuple[float, ...], ...], scale: float = 1.0) -> tuple[tuple[int, int, float], ...]:
    """The non-zero entries ``(row, column, weight)`` of a 3x3 kernel."""
    return tuple((i, j, w * scale) for i, row in enumerate(kernel) for j, w in enumerate(row) if w != 0.0)


_SOBEL_X = _taps(SOBEL_X, SOBEL_SCALE)
_TAPS = {"lap": _taps(LAPLACIAN), "sobel_x": _SOBEL_X, "sobel_y": tuple((j, i, w) for i, j, w in _SOBEL_X)}


def _filter(x: torch.Tensor, name: str, *, adjoint: bool = False) -> torch.Tensor:
    """Per-channel 3x3 correlation with replicate border; ``adjoint``: its transpose (flipped kernel, zero border).

    A sum of shifted slices, one multiply-add per non-zero tap: on a CPU an order of magnitude faster than a depthwise
    convolution at full resolution (0.13 vs 1.7 ms for 640x480), and the weights are plain numbers, so nothing is
    copied to the device."""
    taps = tuple((2 - i, 2 - j, w) for i, j, w in _TAPS[name]) if adjoint else _TAPS[name]
    xp = F.pad(x, (1, 1, 1, 1)) if adjoint else F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    i, j, wt = taps[0]
    out = xp[..., i:i + h, j:j + w] * wt
    for i, j, wt in taps[1:]:
        out.add_(xp[..., i:i + h, j:j + w], alpha=wt)  # in place: autograd keeps no operand of these adds
    return out


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
    """Separable Gaussian blur of ``sigma`` px (0: a copy of ``x``)."""
    r = gaussian_radius(sigma)
    if r == 0:
        return x.clone()
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device).square() / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _upsample_adjoint_1d(g: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    """The transpose of bilinear upsampling by ``factor`` (``align_corners=False``) along ``dim`` (-1 or -2) of
    ``g``: output phase ``r`` of source pixel ``i`` sits at ``i + f_r``, ``f_r = (r + 0.5) / factor - 0.5``, so it
    weighs ``1 - |f_r|`` on ``i`` and ``|f_r|`` on the neighbour on ``f_r``'s side, borders clamped as the upsampling
    clamps them. One matrix product gathers the three weighted sums per source pixel."""
    f = (torch.arange(factor, dtype=g.dtype, device=g.device) + 0.5) / factor - 0.5
    weights = torch.stack([1.0 - f.abs(), (-f).clamp(min=0.0), f.clamp(min=0.0)])  # on i, on i - 1, on i + 1
    if dim == -1:
        main, lo, hi = (g.unflatten(-1, (-1, factor)) @ weights.T).unbind(-1)  # each (..., n)
    else:
        main, lo, hi = (weights @ g.unflatten(-2, (-1, factor))).unbind(-2)  # each (..., n, W)
    n = main.shape[dim]
    out = main.clone()
    out.narrow(dim, 0, n - 1).add_(lo.narrow(dim, 1, n - 1))
    out.narrow(dim, 1, n - 1).add_(hi.narrow(dim, 0, n - 1))
    out.narrow(dim, 0, 1).add_(lo.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).add_(hi.narrow(dim, n - 1, 1))
    return out


class _Upsample(torch.autograd.Function):
    """Bilinear upsampling whose backward is :func:`_upsample_adjoint_1d` along each axis, which on a CPU beats
    ``upsample_bilinear2d_backward`` (the decoder's x8 base at 640x480: 3.2 -> 0.7 ms forward and backward); the
    decoded-image guide and training run it at full size."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: int) -> torch.Tensor:
        ctx.factor = factor
        return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _upsample_adjoint_1d(_upsample_adjoint_1d(g, ctx.factor, -2), ctx.factor, -1), None


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling (B, C, h, w) -> (B, C, factor h, factor w), ``align_corners=False`` (as
    ``F.interpolate``), with a fast exact backward."""
    return _Upsample.apply(x, factor)
