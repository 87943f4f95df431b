"""Device cameras (``camera``): OpenCV ``VideoCapture`` by index or device path, frames stamped with ``time.time_ns()``
right after the grab (network cameras are ``stream`` sources: :mod:`~streamfuse.capture.video_sources`)."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from pathlib import Path

import cv2

from streamfuse.capture.sources import BaseSource, SourceError
from streamfuse.errors import opencv_quiet
from streamfuse.file_names import opencv_name
from streamfuse.frames import Frame
from streamfuse.registry import register

__all__ = ["CameraSource"]


@register("source", "camera")
class CameraSource(BaseSource):
    """OpenCV ``VideoCapture`` by device index (``"0"``) or path; frames stamped with ``time.time_ns()`` at grab."""

    live = True

    def _open(self) -> None:
        path = self.cfg.path or "0"
        target: int | str = int(path) if path.isdigit() else path
        device = f"/dev/video{target}" if isinstance(target, int) else target
        if sys.platform.startswith("linux") and device.startswith("/dev/") and not Path(device).exists():
            # waited for like a network camera not up yet: a USB camera enumerates seconds into a robot's boot, and
            # one unplugged mid-run is missing in the same way; a wrong index shows here at every try
            found = ", ".join(sorted(str(p) for p in Path("/dev").glob("video*"))) or "none"
            missing = f"{device} missing; " if device != path else ""
            raise SourceError(f"{self.section}: camera {path!r} is not plugged in ({missing}found: {found})",
                              unreachable=True)
        kind = _file_kind(device)
        if kind:  # OpenCV would wait on a FIFO for a writer, silently, until the first-frame allowance ran out
            raise SourceError(f"{self.section}: camera {path!r} is {kind}, not a camera device or a video file")
        with opencv_quiet(), contextlib.nullcontext(target) if isinstance(target, int) else opencv_name(target) as name:
            cap = cv2.VideoCapture(name)
        if not cap.isOpened():
            raise SourceError(f"{self.section}: cannot open camera {path!r}")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
        cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep at most one stale frame in the driver
        self._cap, self._path, self._is_file = cap, path, Path(path).is_file()

    def _read(self) -> Frame | None:
        if not self._cap.grab():
            if self._is_file:
                return None
            raise SourceError(f"{self.section}: camera {self._path!r} stopped delivering frames (unplugged?)")
        t_ns, mono_ns = time.time_ns(), time.monotonic_ns()
        ok, image = self._cap.retrieve()
        if not ok:
            raise SourceError(f"{self.section}: camera {self._path!r} returned an empty frame")
        return self._frame(t_ns, self._convert(image), mono_ns)

    def _close(self) -> None:
        self._cap.release()


def _file_kind(path: str) -> str:
    """What ``path`` is where it is neither a device nor a regular file (``"a FIFO"``), else ``""`` (a camera, a video,
    or no file at all: an index, a URL or a device not plugged in yet)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return ""
    if stat.S_ISCHR(mode) or stat.S_ISREG(mode):
        return ""
    return "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a socket or block device"
