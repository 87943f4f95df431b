"""PostConfig, the temporal denoiser and the colour restore: fused Y (+ the visible chroma) -> the published image.

Fusers work on luma only (BT.601 Y, as OpenCV's ``BGR2YCrCb`` channel 0). This stage puts the visible
camera's chroma back: per pixel it computes the visible Cb/Cr, pairs them with the clipped fused Y, converts
back to BGR and writes uint8, in one numba ``parallel`` pass. Before that, on video, an optional motion-adaptive
recursive filter (:class:`TemporalDenoiser`) averages the fused Y over time where it barely changes (sensor noise)
and follows it at once where it changes (motion, cuts). The kernels are in :mod:`streamfuse.post_kernels`, loaded on
first use (a :class:`TemporalDenoiser` loads them when it is made, before any frame); each has a pure-numpy reference
here (``*_numpy``) that the tests use as the oracle.

>>> vis = np.full((2, 3, 3), (40, 90, 200), np.uint8)  # BGR
>>> out = restore_colour(vis_luma(vis).astype(np.float32), vis)
>>> out[0, 0].tolist()
[40, 90, 200]
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import cv2
import numpy as np

from streamfuse.checks import check
from streamfuse.imageops.arrays import box_filter

__all__ = ["PostConfig", "TemporalDenoiser", "vis_luma", "restore_colour", "output_shape", "restore_colour_numpy",
           "denoise_numpy"]


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
        check(0.01 <= self.denoise_threshold <= 255, "denoise_threshold", self.denoise_threshold,
              "0.01 .. 255 grey levels")


class TemporalDenoiser:
    """Motion-adaptive recursive filter on the fused Y of one stream (numba).

    ``out_t = y_t + k (out_{t-1} - y_t)`` with ``k = denoise * exp(-(d / denoise_threshold)^2)``, ``d`` the 5x5 mean of
    ``|y_t - out_{t-1}|`` (replicated border). Flat noise is averaged over about ``1 / (1 - denoise)`` frames, while a
    moving edge or a scene cut (large ``d``) passes through unfiltered, so there is no added latency and no trail
    above the threshold. A static input stays exactly static. The first frame, and a frame of a new size, pass
    unchanged; so does a frame with a NaN or infinite pixel, and the filter starts again after it (its window sums
    would carry the NaN along the row, and the state would keep it for good). Such frames are counted in
    ``nonfinite``, with the filter off too, so that a fuser's fault shows in the run's stats.
    """

    def __init__(self, cfg: PostConfig):
        self._kernels = _kernels()  # loaded now, not on the first frame (also restore_colour's)
        self.strength = np.float32(cfg.denoise)
        self.inv_t2 = np.float32(1.0 / cfg.denoise_threshold**2)
        self._prev: np.ndarray | None = None
        self.nonfinite = 0  # frames with a NaN or infinite pixel so far

    def __call__(self, fused_y: np.ndarray) -> np.ndarray:
        """Filter one ``(H, W)`` fused Y (float on 0..255); returns float32 (the input itself when off).

        The returned array is also the filter's state for the next frame: read it, do not write into it.
        """
        y = np.ascontiguousarray(fused_y, dtype=np.float32)
        if not np.isfinite(y).all():  # 40-70 us at 640x480
            self.nonfinite += 1
            self._prev = None  # passed as it is: its finite pixels are the fuser's best; colour maps NaN to 0
            return y
        if self.strength == 0:
            return y
        if self._prev is None or self._prev.shape != y.shape:
            self._prev = y.copy()
            return y
        out = np.empty_like(y)
        self._kernels.denoise_kernel(y, self._prev, out, self.strength, self.inv_t2)
        self._prev = out
        return out


def denoise_numpy(frames: list[np.ndarray], cfg: PostConfig) -> list[np.ndarray]:
    """Pure-numpy reference of :class:`TemporalDenoiser` over a sequence of one stream (the tests' oracle)."""
    out, prev = [], None
    for y in frames:
        y = y.astype(np.float64)
        if prev is not None and cfg.denoise > 0:
            d = box_filter(np.abs(y - prev), 5)
            y = y + cfg.denoise * np.exp(-(d / cfg.denoise_threshold) ** 2) * (prev - y)
        out.append(y.astype(np.float32))
        prev = y
    return out


def vis_luma(vis: np.ndarray) -> np.ndarray:
    """BT.601 luma of the visible image: ``(H, W, 3)`` BGR or ``(H, W)`` grey uint8 -> ``(H, W)`` uint8."""
    _check_vis(vis, vis.shape[:2])
    # YCrCb channel 0, not BGR2GRAY: OpenCV's two fixed-point paths differ by 1 level on ~0.3% of pixels.
    return vis if vis.ndim == 2 else cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb)[..., 0].copy()


def restore_colour(fused_y: np.ndarray, vis: np.ndarray, cfg: PostConfig = PostConfig(),
                   out: np.ndarray | None = None) -> np.ndarray:
    """Fused luma + visible chroma -> the image to publish (numba).

    Args:
        fused_y: ``(H, W)`` fused Y on 0..255 (any float dtype; values outside are clipped, NaN becomes 0).
        vis: ``(H, W, 3)`` uint8 BGR, or ``(H, W)`` uint8 grey (then the output is grey in all three channels).
        cfg: ``encoding`` ``bgr8`` -> ``(H, W, 3)`` uint8 BGR; ``mono8`` -> ``(H, W)`` uint8.
        out: a C-contiguous uint8 array of :func:`output_shape` to write into (e.g. a publisher's loaned
            shared-memory slot, so the frame is built where consumers read it); a new one when None.

    Returns:
        ``out`` (or a new C-contiguous uint8 array), rounded half up.
    """
    y = _check_fused(fused_y, vis)
    shape = output_shape(vis, cfg)
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"restore_colour: out must be C-contiguous uint8 {shape}, got {out.dtype} {out.shape}")
    if cfg.encoding == "mono8":
        _kernels().luma_kernel(y, out)
    elif vis.ndim == 2:
        grey = np.empty(y.shape, np.uint8)
        _kernels().luma_kernel(y, grey)
        cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR, dst=out)
    else:
        _kernels().colour_kernel(y, np.ascontiguousarray(vis), out)
    return out


def output_shape(vis: np.ndarray, cfg: PostConfig = PostConfig()) -> tuple[int, ...]:
    """The shape of :func:`restore_colour`'s image for a visible frame ``vis``: ``(H, W)`` for mono8, else
    ``(H, W, 3)``."""
    return vis.shape[:2] if cfg.encoding == "mono8" else (*vis.shape[:2], 3)


def restore_colour_numpy(fused_y: np.ndarray, vis: np.ndarray, cfg: PostConfig = PostConfig()) -> np.ndarray:
    """Pure-numpy reference of :func:`restore_colour` (same arguments, same result within 1 grey level)."""
    y = np.clip(np.nan_to_num(_check_fused(fused_y, vis).astype(np.float64), nan=0.0), 0.0, 255.0)
    if cfg.encoding == "mono8":
        return _round_u8(y)
    if vis.ndim == 2:
        return _round_u8(np.repeat(y[..., None], 3, axis=2))
    k = _kernels()  # the BT.601 constants the kernel uses
    b, g, r = (vis[..., c].astype(np.float64) for c in range(3))
    y_vis = k.KR * r + k.KG * g + k.KB * b
    cb, cr = (b - y_vis) * k.CB_SCALE, (r - y_vis) * k.CR_SCALE
    return _round_u8(np.stack([y + k.B_CB * cb, y + k.G_CB * cb + k.G_CR * cr, y + k.R_CR * cr], axis=2))


def _kernels() -> ModuleType:
    """:mod:`streamfuse.post_kernels`, imported on first use (numba takes about half a second to load)."""
    from streamfuse.numba_cache import kernels

    return kernels("streamfuse.post_kernels")


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
