"""numba kernels of the structure energy at full resolution on the CPU: the sources' ``g_max`` and ``dE/dx``.

The decoded-image guide (:func:`streamfuse.diffusion.guidance.guide_decoded`) evaluates the structure energy on a
whole frame. In torch that is 126 full-frame operations for ``g_max`` and ``dE/dx`` (counted by torch's profiler),
and with the OpenMP wait policy the pipeline needs under load (PASSIVE, :mod:`streamfuse.openmp`) each of them wakes
the sleeping worker threads; one pass per quantity does the same work 4-5x faster (640x480, two threads; the model
card's Speed section lists the change without figures). The torch forms in :mod:`streamfuse.diffusion.guidance` stay
the definition (and the GPU path); the tests hold these to them. Operators as :mod:`streamfuse.imageops`: Sobel
``SOBEL_X`` / 8 and its transpose with replicate border, ``G = sqrt(gx^2 + gy^2 + 1e-6)``; the adjoint is that of the
correlation with a zero border, as :func:`streamfuse.imageops.tensors.sobel_adjoint`.

Kernels are ``@njit`` on (H, W) float32 C-contiguous arrays, compiled for their one signature at import and cached
(:mod:`streamfuse.numba_cache`); :mod:`streamfuse.diffusion.guidance` imports this module on first use (numba takes
about half a second to load).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from streamfuse.numba_cache import CACHE

__all__ = ["g_max_kernel", "structure_grad_kernel"]

_F = np.float32
_SCALE = _F(0.125)  # SOBEL_SCALE
_EPS = _F(1e-6)
_TWO = _F(2.0)


@njit(inline="always")
def _sobel(x, i, j, h, w):  # noqa: ANN001, ANN202 (numba)
    """Sobel ``(gx, gy)`` / 8 at (i, j) with replicate border."""
    i0, i1, j0, j1 = max(i - 1, 0), min(i + 1, h - 1), max(j - 1, 0), min(j + 1, w - 1)
    gx = (x[i0, j1] - x[i0, j0]) + _TWO * (x[i, j1] - x[i, j0]) + (x[i1, j1] - x[i1, j0])
    gy = (x[i1, j0] - x[i0, j0]) + _TWO * (x[i1, j] - x[i0, j]) + (x[i1, j1] - x[i0, j1])
    return gx * _SCALE, gy * _SCALE


@njit("void(float32[:, ::1], float32[:, ::1], float32[:, ::1])", parallel=True, cache=CACHE)
def g_max_kernel(ir01, vis01, out):  # noqa: ANN001 (numba signature above)
    """``out = max(G(2 IR - 1), G(2 VIS - 1))``: the stronger source gradient in the guides' range [-1, 1]."""
    h, w = ir01.shape
    four = _F(4.0)  # the range's factor 2, squared
    for i in prange(h):
        for j in range(w):
            ax, ay = _sobel(ir01, i, j, h, w)
            bx, by = _sobel(vis01, i, j, h, w)
            out[i, j] = max(np.sqrt(four * (ax * ax + ay * ay) + _EPS), np.sqrt(four * (bx * bx + by * by) + _EPS))


@njit("void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1])",
      parallel=True, cache=CACHE)
def structure_grad_kernel(x, g_max, m_stru, rx, ry, out):  # noqa: ANN001 (numba signature above)
    """``out = dE/dx`` of ``E = 1/2 sum m_stru (G(x) - g_max)^2``: ``S^T (r gx, r gy)``, ``r = m (G - g_max) / G``;
    ``rx, ry`` are scratch of x's shape."""
    h, w = x.shape
    for i in prange(h):
        for j in range(w):
            gx, gy = _sobel(x, i, j, h, w)
            g = np.sqrt(gx * gx + gy * gy + _EPS)
            r = m_stru[i, j] * (g - g_max[i, j]) / g
            rx[i, j] = r * gx
            ry[i, j] = r * gy
    for i in prange(h):
        for j in range(w):
            s = _F(0.0)
            for a in range(3):  # kernel row a reads row i + a - 1, so its transpose gathers from row i + 1 - a
                ii = i + 1 - a
                if 0 <= ii < h:
                    for b in range(3):
                        jj = j + 1 - b
                        if 0 <= jj < w:
                            vert = _F(2 - abs(a - 1))  # SOBEL_X[a][b] = (b - 1) * (2 - |a - 1|), SOBEL_Y its transpose
                            horiz = _F(2 - abs(b - 1))
                            s += _F(b - 1) * vert * rx[ii, jj] + _F(a - 1) * horiz * ry[ii, jj]
            out[i, j] = s * _SCALE
