"""Image operators of the method, in one convention, for torch tensors and for numpy arrays.

The convention, written once here and used by the training losses, the physics guides, the hand rule and the
metrics that are not published definitions:

- Sobel: correlation with ``SOBEL_X`` (x: right minus left) and its transpose (y: down minus up), scaled by
  ``SOBEL_SCALE`` = 1/8, so a unit ramp has gradient 1; replicate border.
- Laplacian: the 5-point stencil ``LAPLACIAN``; replicate border.
- Box filter: mean over a ``size x size`` window (odd size), same output size; replicate border.
- Gaussian blur: radius :func:`gaussian_radius` (``max(1, int(3 sigma + 0.5))``), normalised taps; reflect-101 border
  (replicate where the image is not larger than the radius, where reflection is undefined). Sigma 0 is the identity
  (the limit of the blur, as OpenCV's one-tap kernel); a negative or non-finite sigma raises ``ValueError``.

:mod:`streamfuse.imageops.tensors` holds the torch versions on ``(B, C, H, W)``, :mod:`streamfuse.imageops.arrays`
the numpy/OpenCV versions on ``(H, W)``; they are two modules so that the numpy side never loads torch (the config
and the baselines run without it). The published metrics (Qabf, Nabf, AG, SF, VIF) keep their own operators and
borders in :mod:`streamfuse.metrics`: their definitions fix them.
"""

from __future__ import annotations

import math

__all__ = ["LAPLACIAN", "SOBEL_SCALE", "SOBEL_X", "gaussian_radius"]

SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_SCALE = 1.0 / 8.0
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def gaussian_radius(sigma: float) -> int:
    """Half-width (px) of the Gaussian kernel of ``sigma`` px: ``max(1, int(3 sigma + 0.5))``; 0 (no blur) at 0."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"Gaussian blur: sigma must be a finite number of pixels >= 0, got {sigma}")
    return max(1, int(3 * sigma + 0.5)) if sigma > 0 else 0
