"""The post stage's numba kernels (colour restore, luma to uint8, the temporal denoiser) and the BT.601 constants.

Kernels are ``@njit`` functions on plain numpy arrays, compiled for their one signature when this module is imported
and cached (under ``__pycache__`` where it can be written, :mod:`streamfuse.numba_cache`), so later imports only load
them. Their
pure-numpy references, the tests' oracles, and the classes that call them are in :mod:`streamfuse.postprocess`, which
imports this module on first use: reading a config imports the post stage, and numba takes about half a second to load.
``NUMBA_DISABLE_JIT=1`` runs the kernels as plain Python.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from streamfuse.numba_cache import CACHE

__all__ = ["KR", "KG", "KB", "CB_SCALE", "CR_SCALE", "B_CB", "R_CR", "G_CB", "G_CR", "colour_kernel", "luma_kernel",
           "denoise_kernel"]

# BT.601 (the weights OpenCV uses for BGR2YCrCb and BGR2GRAY). Chroma is kept centred on 0: the +128 offset
# of the 8-bit YCrCb encoding cancels between the forward and inverse transforms, so it never appears.
KR, KG, KB = 0.299, 0.587, 0.114
CB_SCALE = 0.5 / (1.0 - KB)  # Cb = (B - Y) * CB_SCALE
CR_SCALE = 0.5 / (1.0 - KR)  # Cr = (R - Y) * CR_SCALE
B_CB = 2.0 * (1.0 - KB)  # B = Y + B_CB * Cb
R_CR = 2.0 * (1.0 - KR)  # R = Y + R_CR * Cr
G_CB = -B_CB * KB / KG  # G = Y + G_CB * Cb + G_CR * Cr
G_CR = -R_CR * KR / KG

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


@njit("void(float32[:, ::1], uint8[:, :, ::1], uint8[:, :, ::1])", parallel=True, cache=CACHE)
def colour_kernel(fused_y, vis, out):  # noqa: ANN001 (numba signature above)
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


@njit("void(float32[:, ::1], uint8[:, ::1])", parallel=True, cache=CACHE)
def luma_kernel(fused_y, out):  # noqa: ANN001 (numba signature above)
    h, w = fused_y.shape
    for i in prange(h):
        for j in range(w):
            out[i, j] = _to_u8(fused_y[i, j])


@njit("void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32, float32)", parallel=True,
      cache=CACHE)
def denoise_kernel(y, prev, out, strength, inv_t2):  # noqa: ANN001 (numba signature above)
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
