"""Numpy/OpenCV image operators on ``(H, W)`` float arrays, in the convention of :mod:`streamfuse.imageops`.

Each gives the same numbers as its torch counterpart in :mod:`streamfuse.imageops.tensors` (to float rounding), so
the hand-rule baseline computes exactly the training target. Outputs keep the input's float dtype.
"""

from __future__ import annotations

import cv2
import numpy as np

from streamfuse.imageops import SOBEL_SCALE, SOBEL_X, gaussian_radius

__all__ = ["box_filter", "gaussian_blur", "sobel"]

_SOBEL_X = np.array(SOBEL_X) * SOBEL_SCALE


def sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed Sobel components ``(gx, gy)``."""
    kx = _SOBEL_X.astype(x.dtype)
    return (cv2.filter2D(x, -1, kx, borderType=cv2.BORDER_REPLICATE),
            cv2.filter2D(x, -1, np.ascontiguousarray(kx.T), borderType=cv2.BORDER_REPLICATE))


def box_filter(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over ``size x size`` windows (odd ``size``), same size as ``x``."""
    return cv2.blur(x, (size, size), borderType=cv2.BORDER_REPLICATE)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` px (0: a copy of ``x``)."""
    r = gaussian_radius(sigma)
    if r == 0:
        return x.copy()
    border = cv2.BORDER_REFLECT_101 if min(x.shape) > r else cv2.BORDER_REPLICATE
    return cv2.GaussianBlur(x, (2 * r + 1, 2 * r + 1), sigma, borderType=border)
