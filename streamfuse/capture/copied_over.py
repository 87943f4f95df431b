"""A looped video file copied over in place while it plays (``cp new.mp4 clip.mp4``): the open container reads the new
bytes through the old file's index, so the rest of its pass is lost (undecodable, or frames of neither file); one
renamed over it (``mv``) is another file, which leaves the open one whole. Told by the file's status before each
frame and after an error, and where only its status time changed (its ctime, which every write and change of its
times sets: ``cp -p`` puts the new file's modification time on it, the old one's where they were alike), by blocks of
its bytes (a ``touch`` changes nothing the container reads; ``cp`` of a file of the same size keeps the inode and
size too) or, where those blocks are the same, by an error reading it after that change, where the file, once settled
and opened afresh, reads otherwise up to where the pass failed (a touched file reads the same, and its error is its
own, as it is where the blocks cover the whole file, up to 256 KiB, and are the same): the rest of the pass is
counted lost, and the new file plays once its copy has settled, from where the pass would have ended (the other
input's pass goes on meanwhile, so the two stay paired in step). A new file that fails in turn (unchanged since it
opened) ends the source in one line, as any corrupt file does."""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Callable

from streamfuse.capture.sources import SourceError
from streamfuse.frames import Frame

__all__ = ["CopiedOver", "file_mark", "copied_over", "settle", "SETTLE_S"]

SETTLE_S = 0.5  # a file unchanged this long has been copied (a copy writes on without pause)
_MOST_S = 30.0  # a file still changing after this long is opened as it is (its errors then end the source)
# blocks read spread over the file, and their size: a compressed video's bytes differ in any block of another video
# (a whole file read at each pass would double a long clip's reads)
_SAMPLES, _BLOCK = 64, 4096

Mark = tuple[int, int, int, bytes]


def file_mark(path: str) -> Mark | None:
    """``path``'s inode, size, status change time (ctime, ns) and a digest of blocks spread over its bytes; None where
    it cannot be looked at (gone)."""
    try:  # not blocking: a FIFO put in its place, with no writer, would hold the source in open() for good
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        digest = hashlib.blake2b(digest_size=16)
        for i in range(_SAMPLES):
            digest.update(os.pread(fd, _BLOCK, i * max(st.st_size - _BLOCK, 0) // (_SAMPLES - 1)))
    except OSError:
        return None
    finally:
        os.close(fd)
    return st.st_ino, st.st_size, st.st_ctime_ns, digest.digest()


def copied_over(path: str, mark: Mark | None) -> tuple[bool, Mark | None]:
    """Whether the file at ``path`` was written in place since ``mark`` (the same inode: an open one's bytes), and
    the mark to keep: where only its status time changed (``touch``), the new one, so its bytes are read once."""
    try:
        st = os.stat(path)
    except OSError:
        return False, mark
    if mark is None or st.st_ino != mark[0] or (st.st_size, st.st_ctime_ns) == mark[1:3]:
        return False, mark
    now = file_mark(path)
    if now is None or now[0] != mark[0]:
        return False, mark
    return (now[1], now[3]) != (mark[1], mark[3]), now


def _same_bytes(mark: Mark, other: Mark) -> bool:
    """Whether two marks of one file prove its bytes unchanged: its size and blocks alike, where the blocks cover
    every byte (a file of at most :data:`_SAMPLES` blocks)."""
    return mark[1] == other[1] <= _SAMPLES * _BLOCK and mark[3] == other[3]


def packet_again(path: str, number: int, options: dict[str, str]) -> tuple[tuple[int, int | None, bytes], bool] | None:
    """The position, dts and bytes of the ``number``-th video packet with data (from 1) that a fresh open of ``path``
    with FFmpeg ``options`` reads, and whether it reads another after it; None where it reads no such packet."""
    import av

    from streamfuse.video import LENIENT_TAGS

    try:
        with av.open(path, options=options, **LENIENT_TAGS) as container:
            packets = (p for p in container.demux(container.streams.video[0]) if p.size)
            packet = next(itertools.islice(packets, number - 1, None), None)
            if packet is None:
                return None
            try:
                more = next(packets, None) is not None
            except (av.FFmpegError, OSError):  # where the pass's demuxer failed too
                more = False
            return (packet.pos, packet.dts, bytes(packet)), more
    except (av.FFmpegError, OSError, IndexError, UnicodeDecodeError):
        return None


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
    file's :func:`file_mark` taken before each open, renewed where only its status time changed) and
    ``_mark_at_open`` (the one taken before the open) and has ``_next_frame`` (this pass's next frame), ``_new_pass``
    (the next pass, one period after the last frame), ``_times`` (its ``FileClock``), ``_where``, ``_options`` (the
    FFmpeg options it opens with), ``_failed`` (the packet its decoder failed on and its number, or None),
    ``_packets`` and ``_last_dts`` (the pass's video packets read, the last one's dts) and its container's announced
    length (``_expected`` frames, or ``_container``'s end)."""

    def _read(self) -> Frame | None:
        try:
            if not self._copied_over():
                return self._next_frame()
        except SourceError:
            if not self._copied_over() and not self._rewritten():
                raise
        return self._next_file()

    def _rewritten(self) -> bool:
        """Whether the file, its status time changed since it opened and its inode and size the same, had bytes
        rewritten in place where no sampled block shows them, which its decoder or demuxer then failed on (a read of
        the whole file at each change of its time would hold a long clip's source for seconds): it changes again while
        it settles (a copy at work), or a fresh open reads it otherwise up to where the pass stopped: other bytes for
        the packet its decoder failed on, or where none did, another last packet (its dts) or more packets after it.
        Where it reads the same, the file was only touched and the error is its own; only this error pays for the
        file read again."""
        if None in (self._mark, self._mark_at_open) or self._mark[2] == self._mark_at_open[2] or \
                _same_bytes(self._mark, self._mark_at_open):
            return False
        if not self._packets:  # it stopped before any packet: taken as a copy's
            return True
        mark, (packet, number) = self._mark, self._failed or (None, self._packets)
        settle(self.cfg.path, self._wait)
        if file_mark(self.cfg.path) != mark or (again := packet_again(self.cfg.path, number, self._options())) is None:
            return True
        (pos, dts, data), more = again
        if packet is not None:  # the one its decoder failed on
            return (pos, data) != (packet.pos, bytes(packet))
        return (dts, more) != (self._last_dts, False)  # the last one the pass read, its demuxer's last or failing

    def _copied_over(self) -> bool:
        if not self.cfg.loop or self.live:
            return False
        changed, self._mark = copied_over(self.cfg.path, self._mark)
        return changed

    def _next_file(self) -> Frame | None:
        lost = self._lost()
        self.skipped += lost  # counted with the packets skipped (the run's capture_skipped)
        self.warn(f"{self.section}: {self.cfg.path}: the file changed while it played (copied over?) {self._where()}: "
                  f"{f'its last {lost} frames are lost' if lost else 'the rest of its pass is lost'}; its next pass "
                  f"plays the new file")
        settle(self.cfg.path, self._wait)
        self._times.shift(lost * self._period_ns)
        return self._new_pass()

    def _wait(self, s: float) -> bool:
        """Sleep ``s``; true, at once, where the run stops."""
        if self.stop_event is not None:
            return self.stop_event.wait(s)
        time.sleep(s)
        return False

    def _lost(self) -> int:
        """The frames of this pass after the last one read, as its container announces them (0 where it does not)."""
        from streamfuse.video import announced_end_s

        if self._expected:
            return max(self._expected - self._decoded, 0)
        end_s = announced_end_s(self._container, self._stream, self._first_dts)  # the header read at the open
        last_ns = self._last_pts_ns if self._last_pts_ns is not None else -self._period_ns
        return max(round((end_s * 1e9 - last_ns) / self._period_ns) - 1, 0) if end_s is not None else 0
