"""The sources of real video: OpenCV cameras (``camera``), PyAV files and network streams (``file``, ``stream``) and
folders of numbered images (``folder``).

Capture times (``t_capture_ns``):

- ``camera``: ``time.time_ns()`` right after the grab;
- ``file``: ``round(pts * time_base * 1e9)``, converted once here; relative to the file's time origin, so the IR
  and visible files of one recording stay comparable (with ``loop`` later passes are shifted to stay increasing);
- ``stream``: the stream's pts, anchored to ``time.time_ns()`` at its first frame (so a network stream pairs with a
  live camera while keeping the sender's frame spacing);
- ``folder``: ``index / fps`` seconds.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2

from streamfuse.capture.sources import BaseSource, SourceError
from streamfuse.frames import Frame
from streamfuse.registry import register

__all__ = ["CameraSource", "AvSource", "FolderSource"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp"}


# -- OpenCV camera -----------------------------------------------------------------------------------------------


@register("source", "camera")
class CameraSource(BaseSource):
    """OpenCV ``VideoCapture`` by device index (``"0"``) or path; frames stamped with ``time.time_ns()`` at grab."""

    live = True

    def _open(self) -> None:
        path = self.cfg.path or "0"
        target: int | str = int(path) if path.isdigit() else path
        device = f"/dev/video{target}" if isinstance(target, int) else target
        if sys.platform.startswith("linux") and device.startswith("/dev/") and not Path(device).exists():
            found = ", ".join(sorted(str(p) for p in Path("/dev").glob("video*"))) or "none"
            raise SourceError(f"{self.section}: camera {path!r} does not exist ({device} missing; found: {found})")
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # we raise one clear line instead
        try:
            cap = cv2.VideoCapture(target)
        finally:
            cv2.utils.logging.setLogLevel(previous)
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
        t_ns = time.time_ns()
        ok, image = self._cap.retrieve()
        if not ok:
            raise SourceError(f"{self.section}: camera {self._path!r} returned an empty frame")
        return self._frame(t_ns, self._convert(image))

    def _close(self) -> None:
        self._cap.release()


# -- PyAV file / stream ------------------------------------------------------------------------------------------


class AvSource(BaseSource):
    """A video file or network stream decoded with PyAV; see the module docstring for its capture times.

    Attributes:
        time_base: the video stream's ``time_base`` (``Fraction``), so a writer can turn ``t_capture_ns`` back
            into the input's integer pts: ``round(t_ns * time_base.denominator / (time_base.numerator * 1e9))``.
    """

    _OPEN_TIMEOUT_S = 10.0  # network streams: open and per-read timeouts, so a dead sender cannot hang us
    _READ_TIMEOUT_S = 5.0

    def _open(self) -> None:
        self.live = self.cfg.kind == "stream"
        self._t_offset_ns: int | None = None  # added to pts: the stream's wall-clock anchor, loop passes
        self._first_pts_ns: int | None = None  # of the current pass
        self._last_pts_ns: int | None = None
        self._open_container()

    def _open_container(self) -> None:
        import av

        path = self.cfg.path
        if not path:
            raise SourceError(f"{self.section}: no path given for a {self.cfg.kind} source")
        if self.cfg.kind == "file" and not Path(path).is_file():
            what = "not found" if not Path(path).exists() else "not a regular file (a pipe or a device?)"
            raise SourceError(f"{self.section}: video file {what}: {path}")
        self._stack = contextlib.ExitStack()
        timeout = (self._OPEN_TIMEOUT_S, self._READ_TIMEOUT_S) if self.live else None
        try:
            container = self._stack.enter_context(av.open(path, timeout=timeout))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            why = _one_line(exc)
            if isinstance(exc, (av.InvalidDataError, UnicodeDecodeError)):
                why = f"not a readable video ({why})"
            raise SourceError(f"{self.section}: cannot open {path}: {why}") from None
        if not container.streams.video:
            self._stack.close()
            raise SourceError(f"{self.section}: {path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if self.cfg.decode_threads:
            stream.thread_count = self.cfg.decode_threads
        self.time_base: Fraction = stream.time_base or Fraction(1, 90_000)
        rate = stream.average_rate or stream.guessed_rate
        self._period_ns = round(1e9 / float(rate)) if rate else round(1e9 / self.cfg.fps)
        self._expected = stream.frames  # 0 when the container does not say (e.g. Matroska)
        # The video's announced end, to notice a silently truncated file (Matroska decodes what is left and stops).
        # Only the video stream's own duration, or the container's when video is all it holds: audio often
        # runs longer than the video.
        if stream.duration is not None:
            self._end_ns = round(((stream.start_time or 0) + stream.duration) * self.time_base * 1_000_000_000)
        elif container.duration and len(container.streams) == 1:
            self._end_ns = ((container.start_time or 0) + container.duration) * 1000  # AV_TIME_BASE is us
        else:
            self._end_ns = None
        self._decoded = 0  # in this pass
        self._frames = container.decode(stream)

    def _read(self) -> Frame | None:
        import av

        try:
            frame = next(self._frames)
        except StopIteration:
            frame = None
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"{self.section}: {self.cfg.path}: decoding stopped {self._where()}: {_one_line(exc)}") \
                from None
        if frame is None:
            if 0 < self._decoded < self._expected:
                raise SourceError(f"{self.section}: {self.cfg.path}: truncated or corrupt video: decoding stopped "
                                  f"{self._where()}; the container announces {self._expected} frames")
            if self._decoded and self._end_ns is not None and self._last_pts_ns + 2 * self._period_ns < self._end_ns:
                raise SourceError(f"{self.section}: {self.cfg.path}: truncated or corrupt video: decoding stopped "
                                  f"{self._where()}; the container announces {self._end_ns / 1e9:.3f} s")
            if not self.cfg.loop or self._decoded == 0:
                return None
            # Loop: the next pass starts one frame period after this one ended, so times keep increasing.
            self._t_offset_ns += self._last_pts_ns + self._period_ns - self._first_pts_ns
            self._first_pts_ns = self._last_pts_ns = None
            self._stack.close()
            self._open_container()
            return self._read()
        # pts -> ns once, here at the edge; a frame without pts follows the previous one by one period.
        if frame.pts is not None:
            pts_ns = round(frame.pts * (frame.time_base or self.time_base) * 1_000_000_000)
        else:
            pts_ns = 0 if self._last_pts_ns is None else self._last_pts_ns + self._period_ns
        if self._t_offset_ns is None:
            self._t_offset_ns = time.time_ns() - pts_ns if self.live else 0
        if self._first_pts_ns is None:
            self._first_pts_ns = pts_ns
        self._last_pts_ns = pts_ns
        self._decoded += 1
        t_ns = pts_ns + self._t_offset_ns
        image = frame.to_ndarray(format="gray" if self._is_ir or frame.format.name.startswith("gray") else "bgr24")
        self._pace(t_ns)
        return self._frame(t_ns, self._convert(image))

    def _where(self) -> str:
        if self._last_pts_ns is None:
            return "before the first frame"
        return f"after frame {self._decoded} (t={(self._last_pts_ns - self._first_pts_ns) / 1e9:.3f} s)"

    def _close(self) -> None:
        self._stack.close()


register("source", "file")(AvSource)
register("source", "stream")(AvSource)


# -- numbered image folder ---------------------------------------------------------------------------------------


def _number_key(path: Path) -> tuple[int, str]:
    """Sort key: the last integer in the file stem (``frame_0012.png`` -> 12), then the name."""
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


@register("source", "folder")
class FolderSource(BaseSource):
    """Numbered image files sorted numerically; frame ``i`` (in that order, across loops) has ``t = i / fps``."""

    def _open(self) -> None:
        folder = Path(self.cfg.path)
        if not self.cfg.path or not folder.is_dir():
            raise SourceError(f"{self.section}: image folder not found: {self.cfg.path!r}")
        self._files = sorted((p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES), key=_number_key)
        if not self._files:
            raise SourceError(f"{self.section}: no image files ({', '.join(sorted(_IMAGE_SUFFIXES))}) in {folder}")

    def _read(self) -> Frame | None:
        index = self._seq
        if index >= len(self._files) and not self.cfg.loop:
            return None
        path = self._files[index % len(self._files)]
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SourceError(f"{self.section}: cannot read image {path}")
        t_ns = round(index * 1e9 / self.cfg.fps)
        self._pace(t_ns)
        return self._frame(t_ns, self._convert(image))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
