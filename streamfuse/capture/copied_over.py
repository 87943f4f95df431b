"""A looped video file copied over in place while it plays (``cp new.mp4 clip.mp4``): the open container reads the
new bytes through the old file's index, so the rest of its pass is lost (undecodable, or frames of neither file);
one renamed over it (``mv``) is another file, which leaves the open one whole. Told by the file's status before each
frame and after an error: the rest of the pass is counted lost, and the new file plays once its copy has settled,
from where the pass would have ended (the other input's pass goes on meanwhile, so the two stay paired in step). A
new file that fails in turn (unchanged since it opened) ends the source in one line, as any corrupt file does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from streamfuse.capture.sources import SourceError
from streamfuse.frames import Frame

__all__ = ["CopiedOver", "file_mark", "copied_over", "settle", "SETTLE_S"]

SETTLE_S = 0.5  # a file unchanged this long has been copied (a copy writes on without pause)
_MOST_S = 30.0  # a file still changing after this long is opened as it is (its errors then end the source)

Mark = tuple[int, int, int]


def file_mark(path: str) -> Mark | None:
    """``path``'s inode, size and modification time (ns); None where it cannot be looked at (gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def copied_over(path: str, mark: Mark | None) -> bool:
    """Whether the file at ``path`` was written in place since ``mark`` (the same inode: an open one's bytes)."""
    now = file_mark(path)
    return mark is not None and now is not None and now[0] == mark[0] and now != mark


def settle(path: str, wait: Callable[[float], object]) -> None:
    """Return once ``path`` has stayed unchanged for :data:`SETTLE_S`, or after :data:`_MOST_S`; ``wait(s)`` sleeps,
    returning true when the run stops (then at once)."""
    deadline, mark = time.monotonic() + _MOST_S, file_mark(path)
    while time.monotonic() < deadline and not wait(SETTLE_S):
        if (now := file_mark(path)) == mark and now is not None:
            return
        mark = now


class CopiedOver:
    """The video file source's side of it: ``_read`` goes on with the new file. The source keeps ``_mark`` (the
    file's :func:`file_mark` taken before each open) and has ``_next_frame`` (this pass's next frame), ``_new_pass``
    (the next pass, one period after the last frame), ``_times`` (its ``FileClock``), ``_where`` and its
    container's announced length (``_expected`` frames, or ``_container``'s end)."""

    def _read(self) -> Frame | None:
        try:
            if not self._copied_over():
                return self._next_frame()
        except SourceError:
            if not self._copied_over():
                raise
        return self._next_file()

    def _copied_over(self) -> bool:
        return self.cfg.loop and not self.live and copied_over(self.cfg.path, self._mark)

    def _next_file(self) -> Frame | None:
        lost = self._lost()
        self.skipped += lost  # counted with the packets skipped (the run's capture_skipped)
        self.warn(f"{self.section}: {self.cfg.path}: the file changed while it played (copied over?) {self._where()}: "
                  f"{f'its last {lost} frames are lost' if lost else 'the rest of its pass is lost'}; its next pass "
                  f"plays the new file")
        settle(self.cfg.path, self.stop_event.wait if self.stop_event is not None else time.sleep)
        self._times.shift(lost * self._period_ns)
        return self._new_pass()

    def _lost(self) -> int:
        """The frames of this pass after the last one read, as its container announces them (0 where it does not)."""
        from streamfuse.video import announced_end_s

        if self._expected:
            return max(self._expected - self._decoded, 0)
        end_s = announced_end_s(self._container, self._stream, self._first_dts)  # the header read at the open
        last_ns = self._last_pts_ns if self._last_pts_ns is not None else -self._period_ns
        return max(round((end_s * 1e9 - last_ns) / self._period_ns) - 1, 0) if end_s is not None else 0
