"""StabilizeConfig and the IR level stabilizer: the first per-frame stage on video, before any fuser.

IR cameras jump in gain and offset from one frame to the next (automatic gain control, shutter/NUC events).
:class:`LevelStabilizer` maps each frame's mean and contrast to their moving averages, so such a jump does not flash
through the fused stream while a lasting change is followed within a few frames. It is not the OT alignment
(:mod:`streamfuse.align`), which maps IR intensities onto the visible ones within one frame.

>>> import numpy as np
>>> stab = LevelStabilizer(StabilizeConfig(strength=0.9))
>>> first = np.full((4, 4), 100, np.uint8)
>>> stab(first) is first, int(stab(first + 50).mean())  # a sudden +50 is mostly held back
(True, 105)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streamfuse.checks import check

__all__ = ["StabilizeConfig", "LevelStabilizer"]


@dataclass(frozen=True)
class StabilizeConfig:
    """The IR level stabilization stage (video only; stills and the ``eval`` config keep it off).

    Args:
        strength: 0 (off) to 0.95, the weight kept of the past in the moving averages of the IR frame's mean and
            standard deviation that each frame is mapped to; a lasting change is followed within about
            ``1 / (1 - strength)`` frames. Restarts at a replay's ``--resume`` point.
    """

    strength: float = 0.0

    def __post_init__(self) -> None:
        check(0.0 <= self.strength <= 0.95, "strength", self.strength, "0 (off) .. 0.95")


class LevelStabilizer:
    """IR level stabilization for one stream: each frame's mean and standard deviation are mapped to their moving
    averages ``ref += (1 - strength) (current - ref)`` by one 256-entry table (``cv2.LUT``).

    A one-frame gain or offset jump of the camera is undone almost entirely; a lasting change of the scene's level is
    followed with time constant ``1 / (1 - strength)`` frames. The first frame, and a frame of a new size, pass
    unchanged; a static input stays exactly static.
    """

    def __init__(self, cfg: StabilizeConfig):
        self.rate = 1.0 - cfg.strength
        self._ref: tuple[float, float] | None = None
        self._shape: tuple[int, ...] = ()

    def __call__(self, ir: np.ndarray) -> np.ndarray:
        """Stabilize one ``(H, W)`` uint8 IR frame; returns the input itself when off or when nothing changes."""
        if self.rate == 1.0:
            return ir
        mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(ir))
        if self._ref is None or ir.shape != self._shape:
            self._ref, self._shape = (mean, std), ir.shape
            return ir
        ref_mean, ref_std = (r + self.rate * (c - r) for r, c in zip(self._ref, (mean, std)))
        self._ref = (ref_mean, ref_std)
        gain = ref_std / std if std > 0.5 else 1.0  # a flat frame has no contrast to rescale
        if abs(gain - 1.0) < 1e-6 and abs(ref_mean - mean) < 1e-6:
            return ir
        table = np.clip((np.arange(256) - mean) * gain + ref_mean + 0.5, 0, 255).astype(np.uint8)
        return cv2.LUT(ir, table)
