"""Outputs that a crash never leaves looking complete: the temporary name, and the writer thread behind it.

Every output (recording, fused video, evaluation table or image) is written under a hidden temporary name
(``.NAME.partial``; ``.NAME.<random>.partial`` for a whole file written at once, so two writers never share one) and
renamed only when complete. The rename is :func:`durable_replace`: the bytes reach the disk
before it, so a power loss (a robot's battery) never leaves a final name over a file the disk had not yet written.
The disk and codec work runs on a :class:`WriterThread`, so it overlaps the caller's work.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import queue
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamfuse.ended_thread import EndedThread
from streamfuse.errors import io_reason, printable
from streamfuse.stage_samples import StageSamples

__all__ = ["partial_path", "final_path", "write_refusal", "durable_replace", "durable_rename_new", "Unsynced",
           "say_unsynced", "write_file", "write_png", "whole_png", "WriterThread", "BackgroundSync"]

log = logging.getLogger(__name__)

_PARTIAL = ".partial"  # the end of a temporary name
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name an output is written under: ``dir/out.mp4`` -> ``dir/.out.mp4.partial``."""
    path = Path(path)
    return path.with_name(f".{path.name}{_PARTIAL}")


def final_path(partial: str | os.PathLike) -> Path | None:
    """The output whose temporary name (:func:`partial_path`) ``partial`` is: ``dir/.out.mp4.partial`` ->
    ``dir/out.mp4``; None for a name of no such form."""
    partial = Path(partial)
    name = partial.name
    if not (name.startswith(".") and name.endswith(_PARTIAL)):
        return None
    final = name[1:-len(_PARTIAL)]
    return partial.with_name(final) if final not in ("", ".", "..") else None


def write_refusal(folder: str | os.PathLike) -> OSError | None:
    """The error a new file in ``folder`` meets, else None: a real write, since ``os.access`` says yes to root on a
    read-only mount and in special folders."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        return exc
    return None


class Unsynced(OSError):
    """The file has its final name, whole, but its folder's sync failed: that the name survives a power loss is not
    confirmed (the caller must not say the write failed, nor remove the file)."""


def durable_replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename the written file ``src`` to ``dst`` so that after a power loss ``dst`` holds all of ``src`` or what it
    held before: ``src``'s bytes are flushed to the disk first, and the rename itself before this returns. A folder
    sync failing after the rename is a warning, not an error: ``dst`` is in place and whole (its inputs are kept), so
    the caller goes on and must not remove it."""
    _flush(src)
    os.replace(src, dst)
    try:
        _sync_folder(Path(dst).parent)
    except OSError as exc:
        _warn_unsynced(Path(dst), exc)


def durable_rename_new(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """:func:`durable_replace`, but never over a file (or link) that took the name ``dst`` meanwhile (one checked
    for when a recording began, hours before its end): ``FileExistsError``, ``src`` left as it is. Another OSError
    once ``dst`` is linked (its folder's sync failed) is :class:`Unsynced` and leaves ``dst`` alone, the one name of
    the file."""
    try:
        _link_new(Path(src), Path(dst))
    except Unsynced:  # linked: the temporary name goes still, so one name is left, the final
        with contextlib.suppress(OSError):
            if os.path.samefile(src, dst):
                os.unlink(src)
        raise
    if os.path.exists(src):  # linked: the temporary name goes (renamed on a filesystem without hard links)
        os.unlink(src)
        try:
            _sync_folder(Path(dst).parent)
        except OSError as exc:
            raise Unsynced(exc.errno, exc.strerror) from None


# folder -> the files written whole in it since its sync first failed: one line each where a command writes a file a
# frame (subscribe --save, a replay's frames_dir) would flood the log; the rest are counted, said by say_unsynced()
_unsynced: dict[Path, int] = {}
_unsynced_lock = threading.Lock()


def _warn_unsynced(path: Path, exc: OSError) -> None:
    with _unsynced_lock:
        first = path.parent not in _unsynced
        _unsynced[path.parent] = _unsynced.get(path.parent, 0) + 1
    if first:
        log.warning("%s is written whole, but its folder could not be synced after it took its name (%s): a power loss "
                    "may yet lose that name (the later files of that folder are counted at the end)", printable(path),
                    io_reason(exc))


def say_unsynced() -> None:
    """One line per folder whose sync failed for more files than its first, which its warning named: how many."""
    with _unsynced_lock:
        folders = dict(_unsynced)
        _unsynced.clear()
    for folder, files in folders.items():
        if files > 1:
            log.warning("%d more files written whole in %s after the first one said, whose folder's sync failed too: "
                        "a power loss may yet lose their names", files - 1, printable(folder))


def _flush(path: str | os.PathLike) -> None:
    """Flush a written file's bytes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk; a filesystem that cannot (some network or FUSE ones
    refuse a folder's fsync) keeps them as it does."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, new: bool = False) -> Path:
    """``data`` to ``path`` through a temporary file of its own: a full disk or Ctrl-C leaves no truncated file at
    ``path``, and two writers of one name never share a temporary file.

    Args:
        new: never write over or through anything there (a file, a folder, a FIFO, a link): the first free name
            of ``path``, ``NAME-2.png``, ``NAME-3.png``, ... (subscribe --save: a restarted publisher's frames,
            numbered from 0 again; view --screenshot run twice), each taken in one step (a hard link), so that two
            processes saving into one folder never take the same name.

    Returns:
        The path written.

    Raises:
        RuntimeError: one line naming ``path`` and the OS's reason (the temporary file removed).
    """
    # a device or pipe (/dev/stdout): never replaced; ``new`` only ever takes a name that nothing has (a folder, a
    # FIFO that would block the writer, a link: the next name), beside ``path``
    direct = not new and Path(path).exists() and not Path(path).is_file()
    real = Path(path) if direct or new else Path(path).resolve()  # a symlink keeps pointing at the new file
    partial = None
    try:
        if direct:
            real.write_bytes(data)
            return Path(path)
        partial = _new_partial(real)
        partial.write_bytes(data)
        if not new:
            durable_replace(partial, real)
            return Path(path)
        others = (real.with_name(f"{real.stem}-{n}{real.suffix}") for n in itertools.count(2))
        for name in itertools.chain([real], others):
            try:
                _link_new(partial, name)
            except FileExistsError:
                continue
            except Unsynced as exc:
                _warn_unsynced(name, exc)
            return name
    except OSError as exc:
        raise RuntimeError(f"cannot write {path}: {io_reason(exc)}") from None
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)


def _new_partial(path: Path) -> Path:
    """A new, empty temporary file beside ``path``, ``.NAME.<random>.partial``: made here (not opened through a link
    planted under its name), and no other writer's."""
    while True:
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_PARTIAL}")
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))
            return partial
        except FileExistsError:
            continue


def _link_new(src: Path, dst: Path) -> None:
    """Give the flushed file ``src`` the name ``dst`` unless a file has it (``FileExistsError``); :class:`Unsynced`
    where it has the name, its folder unsynced."""
    _flush(src)
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: a check, then the rename
        if os.path.lexists(dst):  # a link too, even one that points nowhere
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        os.replace(src, dst)
    try:
        _sync_folder(dst.parent)
    except OSError as exc:
        raise Unsynced(exc.errno, exc.strerror) from None


def write_png(path: Path, image: np.ndarray, *, new: bool = False) -> Path:
    """``image`` as a PNG at ``path`` through its temporary name (:func:`write_file`, which ``new`` is given to): a
    kill or a full disk never leaves a truncated PNG under the final name, where a resumed replay would keep it as a
    finished frame. Returns the path written.

    Raises:
        RuntimeError: one line naming ``path``.
    """
    import cv2  # here: of the modules importing this one, only those writing PNGs need OpenCV (0.1-0.2 s of CPU)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"cannot write {path}: OpenCV cannot encode a {image.dtype} image of shape {image.shape} "
                           f"as PNG")
    return write_file(path, data.tobytes(), new=new)


def whole_png(path: Path) -> bool:
    """A PNG file that ends with its IEND chunk; not one cut short (written in place by an earlier version when a
    kill came, or ended by a power loss), which a resumed replay must write again rather than keep."""
    try:
        with open(path, "rb") as f:
            f.seek(-len(_PNG_END), os.SEEK_END)
            return f.read() == _PNG_END
    except OSError:  # missing, or shorter than the chunk
        return False


class WriterThread:
    """Runs ``handle(item)`` for each queued item, in order, on one thread; the bounded queue gives back-pressure.

    Used for the disk and codec work of the recorder and the video writer: zstd and FFmpeg release the GIL, so
    the work overlaps the caller's. The first failure stops the handling (later items are drained unhandled, so
    :meth:`put` never blocks on a dead thread) and is raised, as one line, by the next :meth:`put` or :meth:`join`.
    With ``idle=(seconds, call)``, ``call()`` also runs on the thread whenever no item came for that long.
    """

    def __init__(self, name: str, handle: Callable[[Any], None], what: str, maxsize: int, *, threaded: bool = True,
                 idle: tuple[float, Callable[[], None]] | None = None, timed: bool = True):
        self.busy_ns = StageSamples()  # handling time per item, if ``timed`` (a live run's are not: nobody reads them)
        self._timed = timed
        self.error: RuntimeError | None = None
        self._handle = handle
        self.what = what  # the work, as its error line names it (a recording's file, renamed as it goes to a new one)
        self._idle_s, self._idle = idle or (None, None)
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        # abandoned: set once its owner stopped waiting for it (no item is handled from then on); _ending: by join(),
        # whose end marker may never get into a full queue (a Ctrl-C as it waited for room)
        self._handling, self.abandoned, self._ending = threading.Lock(), False, False
        # None: put() handles each item in the caller's thread
        self._thread = EndedThread(self._run, name) if threaded else None

    def _run(self) -> None:
        while not (self._ending and self._queue.empty()):
            try:
                item = self._queue.get(timeout=self._idle_s)
            except queue.Empty:
                if self.error is None:
                    self._guarded(self._idle)
                continue
            if item is None:
                return
            if self.error is None:
                self._handle_one(item)

    def _handle_one(self, item: Any) -> None:
        t0 = time.perf_counter_ns()
        with self._handling:
            if not self.abandoned:
                self._guarded(self._handle, item)
        if self._timed:
            self.busy_ns.append(time.perf_counter_ns() - t0)

    def _guarded(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 -- any failure must reach the caller, not end the thread
            self.error = RuntimeError(f"{self.what} failed: {io_reason(exc)}")

    def put(self, item: Any) -> None:
        """Queue one item (blocks while the queue is full), or handle it now when not threaded; raises the first
        error, if any."""
        if self.error is not None:
            raise self.error
        if self._thread is not None:
            self._queue.put(item)
        else:
            self._handle_one(item)
            if self.error is not None:
                raise self.error

    def offer(self, item: Any) -> bool:
        """Queue one item unless the queue is full (then False: the caller counts the loss); never blocks. Raises
        the first error, if any."""
        if self.error is not None:
            raise self.error
        if self._thread is None:
            self.put(item)
            return True
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def running(self) -> bool:
        """Whether the thread still runs: a :meth:`join` cut short (Ctrl-C) leaves it handling the queued items."""
        return self._thread is not None and self._thread.running()

    def join(self) -> None:
        """Handle everything queued, stop the thread; raises the thread's error, if any. Cut short (Ctrl-C), it can
        be called again."""
        if self.running():
            self._ending = True
            self._queue.put(None)  # a second one, after a join cut short, stays queued: the thread ends at the first
            self._thread.wait()
        if self.error is not None:
            raise self.error

    def when_ended(self, close: Callable[[], None]) -> None:
        """``close()`` what the thread works on once it has ended: now, or on the thread as it ends. For an owner whose
        wait a stop cut short, which must not close that under it."""
        if self._thread is None:
            close()
        else:
            self._thread.when_ended(close)

    def abandon(self, close: Callable[[], None]) -> None:
        """Handle no more items (the one being handled is waited for: what it wrote is the caller's to count), and
        :meth:`when_ended` ``close()``."""
        self.abandoned = True  # the next item is not handled: the lock waits for the one being handled, if any
        with self._handling:
            pass
        self.when_ended(close)


class BackgroundSync:
    """Flushes an open file to the disk (fsync) on its own thread whenever asked: a disk slow to sync (an SD card
    under load) then holds up nothing but the sync, and the requests that come meanwhile are served by one more."""

    def __init__(self, fd: int, name: str) -> None:
        self.error: OSError | None = None  # the first failed sync; no more are tried after it
        self._fd, self._asked, self._closing = fd, threading.Event(), False
        self._thread = EndedThread(self._run, name)

    def request(self) -> None:
        """Ask for a sync of what was written so far; raises the error of an earlier one, if any."""
        if self.error is not None:
            raise self.error
        self._asked.set()

    def close(self) -> None:
        """Stop once the sync under way, if any, is done: the file must stay open until this returns (cut short by a
        Ctrl-C, it can be called again)."""
        self._closing = True
        self._asked.set()
        self._thread.wait()

    def _run(self) -> None:
        while True:
            self._asked.wait()
            self._asked.clear()
            if self._closing:
                return
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.error = exc
                return
