"""PostConfig, the temporal denoiser and the colour restore: fused Y (+ the visible chroma) -> the published image.

Fusers work on luma only (BT.601 Y, as OpenCV's ``BGR2YCrCb`` channel 0). This stage puts the visible
camera's chroma back: per pixel it computes the visible Cb/Cr, pairs them with the clipped fused Y, converts
back to BGR and writes uint8, in one numba ``parallel`` pass. Before that, on video, an optional motion-adaptive
recursive filter (:class:`TemporalDenoiser`) averages the fused Y over time where it barely changes (sensor noise)
and follows it at once where it changes (motion, cuts). Each kernel has a pure-numpy reference
(``*_numpy``) that the tests use as the oracle; ``NUMBA_DISABLE_JIT=1`` runs the kernels as plain Python.

The kernels are compiled for their one signature when this module is imported; ``cache=True`` stores the
machine code under ``__pycache__`` so later imports only load it.

>>> vis = np.full((2, 3, 3), (40, 90, 200), np.uint8)  # BGR
>>> out = restore_colour(vis_luma(vis).astype(np.float32), vis)
>>> out[0, 0].tolist()
[40, 90, 200]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numba import njit, prange

from streamfuse.config import check

__all__ = ["PostConfig", "TemporalDenoiser", "vis_luma", "restore_colour", "restore_colour_numpy", "denoise_numpy"]

# BT.601 (the weights OpenCV uses for BGR2YCrCb and BGR2GRAY). Chroma is kept centred on 0: the +128 offset
# of the 8-bit YCrCb encoding cancels between the forward and inverse transforms, so it never appears.
KR, KG, KB = 0.299, 0.587, 0.114
CB_SCALE = 0.5 / (1.0 - KB)  # Cb = (B - Y) * CB_SCALE
CR_SCALE = 0.5 / (1.0 - KR)  # Cr = (R - Y) * CR_SCALE
B_CB = 2.0 * (1.0 - KB)  # B = Y + B_CB * Cb
R_CR = 2.0 * (1.0 - KR)  # R = Y + R_CR * Cr
G_CB = -B_CB * KB / KG  # G = Y + G_CB * Cb + G_CR * Cr
G_CR = -R_CR * KR / KG


@dataclass(frozen=True)
class PostConfig:
    """The postprocess stage.

    Args:
        encoding: published image: ``bgr8`` (fused Y with the visible colour) or ``mono8`` (fused Y only).
        denoise: strength of the temporal filter, 0 (off) to 0.95: the weight kept of the previous output where the
            frame does not change.
        denoise_threshold: grey levels of 5x5-averaged frame-to-frame change at which a pixel counts as moving (its
            weight on the past has fallen to ``denoise / e``); set it to about 3x the sensor's temporal noise.
    """

    encoding: Literal["bgr8", "mono8"] = "bgr8"
    denoise: float = 0.0
    denoise_threshold: float = 12.0

    def __post_init__(self) -> None:
        check(0.0 <= self.denoise <= 0.95, "denoise", self.denoise, "0 (off) .. 0.95")
        check(self.denoise_threshold > 0, "denoise_threshold", self.denoise_threshold, "> 0 grey levels")


class TemporalDenoiser:
    """Motion-adaptive recursive filter on the fused Y of one stream (numba).

    ``out_t = y_t + k (out_{t-1} - y_t)`` with ``k = denoise * exp(-(d / denoise_threshold)^2)``, ``d`` the 5x5 mean of
    ``|y_t - out_{t-1}|`` (replicated border). Flat noise is averaged over about ``1 / (1 - denoise)`` frames, while a
    moving edge or a scene cut (large ``d``) passes through unfiltered, so there is no added latency and no trail
    above the threshold. A static input stays exactly static. The first frame, and a frame of a new size, pass
    unchanged.
    """

    def __init__(self, cfg: PostConfig):
        self.strength = np.float32(cfg.denoise)
        self.inv_t2 = np.float32(1.0 / cfg.denoise_threshold**2)
        self._prev: np.ndarray | None = None

    def __call__(self, fused_y: np.ndarray) -> np.ndarray:
        """Filter one ``(H, W)`` fused Y (float on 0..255); returns float32 (the input itself when off).

        The returned array is also the filter's state for the next frame: read it, do not write into it.
        """
        y = np.ascontiguousarray(fused_y, dtype=np.float32)
        if self.strength == 0:
            return y
        if self._prev is None or self._prev.shape != y.shape:
            self._prev = y.copy()
            return y
        out = np.empty_like(y)
        _denoise_kernel(y, self._prev, out, self.strength, self.inv_t2)
        self._prev = out
        return out


def denoise_numpy(frames: list[np.ndarray], cfg: PostConfig) -> list[np.ndarray]:
    """Pure-numpy reference of :class:`TemporalDenoiser` over a sequence of one stream (the tests' oracle)."""
    out, prev = [], None
    for y in frames:
        y = y.astype(np.float64)
        if prev is not None and cfg.denoise > 0:
            d = cv2.blur(np.abs(y - prev), (5, 5), borderType=cv2.BORDER_REPLICATE)
            y = y + cfg.denoise * np.exp(-(d / cfg.denoise_threshold) ** 2) * (prev - y)
        out.append(y.astype(np.float32))
        prev = y
    return out


def vis_luma(vis: np.ndarray) -> np.ndarray:
    """BT.601 luma of the visible image: ``(H, W, 3)`` BGR or ``(H, W)`` grey uint8 -> ``(H, W)`` uint8."""
    _check_vis(vis, vis.shape[:2])
    # YCrCb channel 0, not BGR2GRAY: OpenCV's two fixed-point paths differ by 1 level on ~0.3% of pixels.
    return vis if vis.ndim == 2 else cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb)[..., 0].copy()


def restore_colour(fused_y: np.ndarray, vis: np.ndarray, cfg: PostConfig = PostConfig()) -> np.ndarray:
    """Fused luma + visible chroma -> the image to publish (numba).

    Args:
        fused_y: ``(H, W)`` fused Y on 0..255 (any float dtype; values outside are clipped, NaN becomes 0).
        vis: ``(H, W, 3)`` uint8 BGR, or ``(H, W)`` uint8 grey (then the output is grey in all three channels).
        cfg: ``encoding`` ``bgr8`` -> ``(H, W, 3)`` uint8 BGR; ``mono8`` -> ``(H, W)`` uint8.

    Returns:
        A new C-contiguous uint8 array, rounded half up.
    """
    y = _check_fused(fused_y, vis)
    if cfg.encoding == "mono8" or vis.ndim == 2:
        grey = np.empty(y.shape, np.uint8)
        _luma_kernel(y, grey)
        return grey if cfg.encoding == "mono8" else cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    out = np.empty(vis.shape, np.uint8)
    _colour_kernel(y, np.ascontiguousarray(vis), out)
    return out


def restore_colour_numpy(fused_y: np.ndarray, vis: np.ndarray, cfg: PostConfig = PostConfig()) -> np.ndarray:
    """Pure-numpy reference of :func:`restore_colour` (same arguments, same result within 1 grey level)."""
    y = np.clip(np.nan_to_num(_check_fused(fused_y, vis).astype(np.float64), nan=0.0), 0.0, 255.0)
    if cfg.encoding == "mono8":
        return _round_u8(y)
    if vis.ndim == 2:
        return _round_u8(np.repeat(y[..., None], 3, axis=2))
    b, g, r = (vis[..., c].astype(np.float64) for c in range(3))
    y_vis = KR * r + KG * g + KB * b
    cb, cr = (b - y_vis) * CB_SCALE, (r - y_vis) * CR_SCALE
    return _round_u8(np.stack([y + B_CB * cb, y + G_CB * cb + G_CR * cr, y + R_CR * cr], axis=2))


def _round_u8(x: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)


def _check_vis(vis: np.ndarray, hw: tuple[int, ...]) -> None:
    if vis.dtype != np.uint8 or vis.shape[:2] != hw or vis.ndim not in (2, 3) or vis.shape[2:] not in ((), (3,)):
        raise ValueError(f"visible image must be (H, W, 3) BGR or (H, W) grey uint8 of size {hw}, "
                         f"got {vis.shape} {vis.dtype}")


def _check_fused(fused_y: np.ndarray, vis: np.ndarray) -> np.ndarray:
    if fused_y.ndim != 2:
        raise ValueError(f"fused Y must be (H, W), got shape {fused_y.shape}")
    _check_vis(vis, fused_y.shape)
    return np.ascontiguousarray(fused_y, dtype=np.float32)


# float32 copies for the kernels: float64 literals would promote every pixel's arithmetic to float64.
_F = np.float32
_KR, _KG, _KB, _CB, _CR = _F(KR), _F(KG), _F(KB), _F(CB_SCALE), _F(CR_SCALE)
_B_CB, _G_CB, _G_CR, _R_CR = _F(B_CB), _F(G_CB), _F(G_CR), _F(R_CR)
_ZERO, _MAX, _HALF = _F(0.0), _F(255.0), _F(0.5)


@njit(inline="always")
def _clip(v: np.float32) -> np.float32:
    # `v >= 0` is False for NaN, so NaN maps to 0 instead of an undefined uint8 cast.
    return min(v, _MAX) if v >= _ZERO else _ZERO


@njit(inline="always")
def _to_u8(v: np.float32) -> np.uint8:
    return np.uint8(_clip(v) + _HALF)  # truncating a value >= 0.5 rounds half up


@njit("void(float32[:, ::1], uint8[:, :, ::1], uint8[:, :, ::1])", parallel=True, cache=True)
def _colour_kernel(fused_y, vis, out):  # noqa: ANN001 (numba signature above)
    h, w = fused_y.shape
    for i in prange(h):
        for j in range(w):
            b, g, r = _F(vis[i, j, 0]), _F(vis[i, j, 1]), _F(vis[i, j, 2])
            y_vis = _KR * r + _KG * g + _KB * b
            cb = (b - y_vis) * _CB
            cr = (r - y_vis) * _CR
            y = _clip(fused_y[i, j])
            out[i, j, 0] = _to_u8(y + _B_CB * cb)
            out[i, j, 1] = _to_u8(y + _G_CB * cb + _G_CR * cr)
            out[i, j, 2] = _to_u8(y + _R_CR * cr)


@njit("void(float32[:, ::1], uint8[:, ::1])", parallel=True, cache=True)
def _luma_kernel(fused_y, out):  # noqa: ANN001 (numba signature above)
    h, w = fused_y.shape
    for i in prange(h):
        for j in range(w):
            out[i, j] = _to_u8(fused_y[i, j])


@njit("void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32, float32)", parallel=True, cache=True)
def _denoise_kernel(y, prev, out, strength, inv_t2):  # noqa: ANN001 (numba signature above)
    h, w = y.shape
    rows = np.empty((h, w), np.float32)  # 5-wide horizontal sums of |y - prev|, border replicated
    for i in prange(h):
        a = np.empty(w, np.float32)
        for j in range(w):
            a[j] = abs(y[i, j] - prev[i, j])
        acc = _ZERO
        for dj in range(-2, 3):
            acc += a[min(max(dj, 0), w - 1)]
        rows[i, 0] = acc
        for j in range(1, w):  # slide the window: one clamped index in, one out
            acc += a[min(j + 2, w - 1)] - a[max(j - 3, 0)]
            rows[i, j] = acc
    for i in prange(h):
        for j in range(w):
            acc = _ZERO
            for di in range(-2, 3):
                acc += rows[min(max(i + di, 0), h - 1), j]
            d = acc / _F(25.0)
            k = strength * np.exp(-d * d * inv_t2)
            out[i, j] = y[i, j] + k * (prev[i, j] - y[i, j])
