"""Stage 0: the IR frame on the visible frame's pixels (RegisterConfig, Registration).

A rig whose two cameras do not share one optical path sees the scene from two places, so its IR and visible pixels
do not line up and fusion would ghost every edge. ``register.homography`` maps IR pixels onto visible pixels (a
3x3 matrix, exact for a plane and close for a scene far from cameras mounted close together), and each IR frame is
warped through it onto the visible frame's grid before any other stage. Without one the IR frame is only resized
to the visible size (``ir.resize``), as for a registered rig or dataset. Where the warped IR frame does not reach,
it is filled with its own median: a level the IR frame already has, where black would read as a cold region to the
OT alignment's histogram and to the fusion.
``tools/homography.py`` finds the matrix from points matched by hand in one IR and one visible frame.

>>> import numpy as np
>>> from streamfuse.frames import Frame, FramePair
>>> ir = np.zeros((4, 4), np.uint8); ir[1, 1] = 255
>>> shift = Registration(RegisterConfig(homography=(1, 0, 2, 0, 1, 1, 0, 0, 1)))  # 2 px right, 1 px down
>>> out = shift(FramePair(Frame("ir", 0, 0, ir), Frame("vis", 0, 0, np.zeros((4, 4, 3), np.uint8))))
>>> [int(v) for v in np.argwhere(out == 255)[0]]
[2, 3]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from streamfuse.checks import check
from streamfuse.frames import FramePair, SizeMismatch

__all__ = ["RegisterConfig", "Registration"]


@dataclass(frozen=True)
class RegisterConfig:
    """Registration of IR onto the visible camera.

    Args:
        homography: 9 numbers, the 3x3 matrix row by row, taking an IR pixel ``(x, y, 1)`` of the IR camera's own
            resolution to the visible pixel it sees; empty = the cameras are registered (IR only resized).
    """

    homography: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        h = self.homography
        check(len(h) in (0, 9) and all(math.isfinite(v) for v in h), "homography", h,
              "9 finite numbers (a 3x3 matrix, row by row), or [] for none")
        check(not h or abs(np.linalg.det(np.reshape(h, (3, 3)))) > 1e-12, "homography", h,
              "an invertible matrix (this one maps the IR frame onto a line or a point)")


class Registration:
    """The IR frame of a pair at the visible frame's size and on its pixels: warped through the homography, or
    resized (``resize: resize``) or refused (``resize: error``) when there is none."""

    def __init__(self, cfg: RegisterConfig = RegisterConfig(), resize: str = "resize") -> None:
        self.matrix = np.reshape(cfg.homography, (3, 3)).astype(np.float64) if cfg.homography else None
        self.resize = resize
        self._seen: tuple = ()  # the IR and visible frame sizes found to share a view (see _check_view)

    def __call__(self, pair: FramePair) -> np.ndarray:
        if self.matrix is None:
            return pair.ir_at_vis_size(self.resize)
        ir, (h, w) = pair.ir.image, pair.vis.image.shape[:2]
        if self._seen != (ir.shape[:2], (h, w)):
            self._check_view(ir.shape[:2], (h, w))
        fill = float(np.median(ir[::4, ::4]))  # every 16th pixel: the level, at a sixteenth of the cost per frame
        return cv2.warpPerspective(ir, self.matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=fill)

    def _check_view(self, ir_size: tuple[int, ...], vis_size: tuple[int, int]) -> None:
        """SizeMismatch (one line) when the homography puts no pixel of an IR frame of ``ir_size`` on the visible
        frame: the fusion would get only the fill, and the run would look fused without any IR in it."""
        (ih, iw), (h, w) = ir_size, vis_size
        view = cv2.warpPerspective(np.ones((ih, iw), np.uint8), self.matrix, (w, h), flags=cv2.INTER_NEAREST)
        if not view.any():
            raise SizeMismatch(f"register.homography puts no pixel of the {iw}x{ih} IR frame on the {w}x{h} visible "
                               f"frame (a matrix for other frame sizes, or visible -> IR?); check it with "
                               f"tools/homography.py --overlay")
        self._seen = (ir_size, vis_size)
