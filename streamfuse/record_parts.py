"""The parts of a split recording (``record.split_s``, ``record.split_mb``): their names and the file each is
written in.

A recording to ``runs/rig0.mcap`` split into parts is ``runs/rig0_0000.mcap``, ``runs/rig0_0001.mcap``, ...: each
a complete, indexed MCAP file that any MCAP reader opens, finished (and given its name) when the next one begins, so
the parts of a recording still running can be copied off as they come. Each part records the set it belongs to and
its place in it (an MCAP metadata record, ``streamfuse.part``: ``set``, ``index``), and the last one, finished at the
run's end, that the set ends there (``streamfuse.set_end``: ``set``, ``parts``); :mod:`streamfuse.part_set` reads
the set back as one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Callable

from mcap.writer import CompressionType, Writer

from streamfuse.atomic_write import BackgroundSync, Unsynced, durable_rename_new, final_path, partial_path
from streamfuse.errors import io_reason

__all__ = ["PartWriter", "Parts", "being_recorded", "found_parts", "part_path", "taken_part", "PART_NAME",
           "PART_RECORD", "END_RECORD", "SUFFIX"]

log = logging.getLogger(__name__)

SUFFIX = ".mcap"
PART_NAME = re.compile(r"(?P<base>.+)_(?P<index>\d{4,})\.mcap", re.IGNORECASE)
PART_RECORD, END_RECORD = "streamfuse.part", "streamfuse.set_end"  # MCAP metadata: a part's set and place; its end


def being_recorded(path: Path) -> bool:
    """Whether a running recorder writes ``path`` (it locks its ``.partial`` file; the kernel drops the lock when the
    run dies, however it dies, so a killed run's file is not)."""
    try:  # not blocking: a FIFO of that name, with no writer, held the caller (a run, recover) in open() for good
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:  # gone, unreadable: not known to be written
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a filesystem without locks: not known to be written
        return False
    finally:
        os.close(fd)
    return False


def part_path(path: str | os.PathLike, index: int) -> Path:
    """Part ``index`` of a recording to ``path``: ``runs/rig0.mcap`` -> ``runs/rig0_0000.mcap`` (four digits, more
    past 9999: the readers order parts by their number)."""
    path = Path(path)
    stem, suffix = path.name[:-len(SUFFIX)], path.name[-len(SUFFIX):]
    return path.with_name(f"{stem}_{index:04d}{suffix}")


def found_parts(folder: Path, base: str, suffix: str) -> dict[int, Path]:
    """Index -> the part of set ``base`` in ``folder``: its finished file, else its ``.partial`` one."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    found: dict[int, Path] = {}
    for name in names:
        final = final_path(name)  # a cut part's: read by the name it would have had
        match = PART_NAME.fullmatch(final.name if final else name)
        if match and match["base"] == base and match[0].endswith(suffix):
            index = int(match["index"])
            if final is None or index not in found:
                found[index] = folder / name
    return found


def taken_part(path: str | os.PathLike) -> Path | None:
    """A part of a split recording to ``path`` (or its ``.partial`` file) that is there already, else None."""
    path = Path(path)
    found = found_parts(path.parent, path.name[:-len(SUFFIX)], path.name[-len(SUFFIX):])
    return found[min(found)] if found else None


class PartWriter:
    """One MCAP file of a recording being written: under its ``.partial`` name (locked while written, so ``recover``
    and replay refuse it), given its final name by :meth:`finish`. Channels: ``topics``, registered at the start,
    and any other topic at its first message, all of one schema. ``mark``: a split recording's part's set and place
    (:data:`PART_RECORD`), recorded first.

    Raises:
        OSError: the ``.partial`` file cannot be made (one is there already: never written over).
    """

    def __init__(self, path: Path, compression: str, chunk_mb: float, schema: tuple[str, str, bytes],
                 topics: tuple[str, ...], mark: dict[str, str] | None = None):
        self.path, self.partial = path, partial_path(path)
        if taken := next((p for p in (path, self.partial) if os.path.lexists(p)), None):  # a user's or a killed run's
            raise FileExistsError(f"{taken} is there already, and is not written over")
        self.file = open(self.partial, "xb")  # noqa: SIM115 (closed in close())
        with contextlib.suppress(OSError):  # held while the run writes it: `recover` refuses it (being_recorded)
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        # the data section's CRC (checked at its end) also covers what no chunk CRC does: a chunk's opcode damaged
        # into an unknown one made readers skip the whole chunk, its frames gone without a word
        self.writer = Writer(self.file, chunk_size=int(chunk_mb * 2**20), enable_data_crcs=True,
                             compression=CompressionType.ZSTD if compression == "zstd" else CompressionType.NONE)
        self.writer.start(profile="ros2", library="streamfuse")
        if mark is not None:
            self.writer.add_metadata(PART_RECORD, mark)
        self._schema = self.writer.register_schema(*schema)
        self._channels: dict[str, int] = {}
        for topic in topics:
            self._channel(topic)
        self.sync = BackgroundSync(self.file.fileno(), f"sync {path.name}")

    def _channel(self, topic: str) -> int:
        if topic not in self._channels:
            self._channels[topic] = self.writer.register_channel(topic, "cdr", self._schema, {"seq": "mcap_sequence"})
        return self._channels[topic]

    def add(self, topic: str, t_ns: int, data: bytes, seq: int) -> None:
        self.writer.add_message(self._channel(topic), log_time=t_ns, publish_time=t_ns, data=data, sequence=seq)

    def flush(self) -> None:
        """The chunk being filled to the OS, and to the disk by the sync thread."""
        self.writer.flush()
        self.sync.request()  # not only to the OS: a power loss (a robot's battery) keeps it too

    def finish(self) -> None:
        """Write the index and summary, close, and give the file its final name (never over a file that took it
        meanwhile: ``FileExistsError``, the ``.partial`` file kept)."""
        self.writer.finish()
        self.sync.close()
        self.file.close()
        durable_rename_new(self.partial, self.path)


class Parts:
    """The files a recording (``record`` config ``cfg``) is written in, one after the other (one, unsplit): the part
    being written (:attr:`part`), and when it has reached ``split_s`` or ``split_mb``. Each new part starts a new MCAP
    writer, and with it a new chunk index: a recording left running for days holds that of one part.

    Raises:
        OSError: the first part's ``.partial`` file cannot be made.
    """

    def __init__(self, path: Path, cfg: Any, schema: tuple[str, str, bytes], topics: tuple[str, ...]):
        self._path, self._cfg, self._schema, self._topics = path, cfg, schema, topics
        self._span_ns, self._size = round(cfg.split_s * 1e9), round(cfg.split_mb * 2**20)
        self._set = secrets.token_hex(8)  # what a part of this recording records, that another's does not
        self.part = self._open(0)
        self.count = 1
        # when the part got its first frame, on the recorder's own clock: the frames' stamps are a camera's or the
        # wall clock's, which a clock set forward or back jumps (the part ended at once, or never)
        self._t0_ns: int | None = None

    def _open(self, index: int) -> PartWriter:
        if not self._cfg.split:
            return PartWriter(self._path, self._cfg.compression, self._cfg.chunk_mb, self._schema, self._topics)
        return PartWriter(part_path(self._path, index), self._cfg.compression, self._cfg.chunk_mb, self._schema,
                          self._topics, {"set": self._set, "index": str(index)})

    @property
    def next_path(self) -> Path:
        return part_path(self._path, self.count)

    def due(self) -> bool:
        """Whether the frame being written now begins the next part (then :meth:`turn`)."""
        now = time.monotonic_ns()
        if self._t0_ns is None:
            self._t0_ns = now
            return False
        return 0 < self._span_ns <= now - self._t0_ns or 0 < self._size <= self.part.file.tell()

    def end(self) -> None:
        """Record in the part being written, before the run finishes it, that the recording ends there."""
        if self._cfg.split:
            self.part.writer.add_metadata(END_RECORD, {"set": self._set, "parts": str(self.count)})

    def finish(self) -> None:
        """Finish the part being written: complete, indexed, under its final name (a folder sync failing after it
        took the name is a warning: the part is whole, and the recording goes on in the next)."""
        try:
            self.part.finish()
        except Unsynced as exc:
            log.warning("recording part %s is whole and has its name, but its folder could not be synced after it took "
                        "it (%s): a power loss may yet lose that name; copy it elsewhere", self.part.path,
                        io_reason(exc))
            return
        log.info("recording part %s finished", self.part.path)

    def _end_in(self, following: PartWriter) -> None:
        """The part being written could not be finished (it stays, cut or whole, as its ``.partial`` for ``recover``,
        or took its final name before a later step failed): ``following``, begun and holding no frame, ends the set,
        so that the set reads to its end either way; where it cannot be finished either, it goes."""
        try:
            following.writer.add_metadata(END_RECORD, {"set": self._set, "parts": str(self.count + 1)})
            following.finish()
        except Exception:  # noqa: BLE001 - a disk error, or its last chunk's compression out of memory alike
            following.sync.close()
            following.file.close()
            following.partial.unlink(missing_ok=True)

    def turn(self, finished: Callable[[], None]) -> None:
        """Finish the part being written (complete, indexed, under its final name; then call ``finished``) and begin
        the next, for the frame being written now; where the next cannot begin, the one being written ends the
        recording, recorded so.

        Raises:
            OSError: the next part's file (or its final name) is there already, or cannot be made; or the part being
                written cannot be finished.
        """
        try:  # the next one first: while the last still open, it can still record that the recording ends there
            following = self._open(self.count)
        except OSError:
            self.end()
            self.finish()
            finished()
            raise
        try:
            self.finish()
        except BaseException:
            self._end_in(following)
            raise
        finished()
        self.part = following
        self.count += 1
        self._t0_ns = time.monotonic_ns()
