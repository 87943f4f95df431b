"""The parts of a split recording (``record.split_s``, ``record.split_mb``): their names, the file each is written
in, and the set read back as one.

A recording to ``runs/rig0.mcap`` split into parts is ``runs/rig0_0000.mcap``, ``runs/rig0_0001.mcap``, ...: each
a complete, indexed MCAP file that any MCAP reader opens, finished (and given its name) when the next one begins, so
the parts of a recording still running can be copied off as they come. The first part stands for the whole set:
replay and the ``mcap`` source given ``rig0_0000.mcap`` read every part in turn, as one recording; a later part
given is read alone. Each part records the set it belongs to and its place in it (an MCAP metadata record,
``streamfuse.part``: ``set``, ``index``), and the last one, finished at the run's end, that the set ends there
(``streamfuse.set_end``: ``set``, ``parts``). A part missing between two others or after the last one here, one of
another set or another tool's file beside them, or one left cut short (``.rig0_0003.mcap.partial``, which ``recover``
finishes) stops the read in one line naming it rather than losing its frames unsaid, or mixing in others. An MCAP
file of another tool named like a first part is read alone, as any other.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import stat
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap.records import Channel, DataEnd, Header, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer
from zstandard import ZstdError

from streamfuse.atomic_write import BackgroundSync, durable_rename_new, final_path, partial_path
from streamfuse.errors import io_reason

__all__ = ["PartWriter", "Parts", "being_recorded", "cut_mark", "later_part", "part_marks", "part_path", "set_name",
           "set_parts", "taken_part", "PART_RECORD", "END_RECORD"]

log = logging.getLogger(__name__)

_SUFFIX = ".mcap"
_PART = re.compile(r"(?P<base>.+)_(?P<index>\d{4,})\.mcap", re.IGNORECASE)
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
    stem, suffix = path.name[:-len(_SUFFIX)], path.name[-len(_SUFFIX):]
    return path.with_name(f"{stem}_{index:04d}{suffix}")


def _found(folder: Path, base: str, suffix: str) -> dict[int, Path]:
    """Index -> the part of set ``base`` in ``folder``: its finished file, else its ``.partial`` one."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    found: dict[int, Path] = {}
    for name in names:
        final = final_path(name)  # a cut part's: read by the name it would have had
        match = _PART.fullmatch(final.name if final else name)
        if match and match["base"] == base and match[0].endswith(suffix):
            index = int(match["index"])
            if final is None or index not in found:
                found[index] = folder / name
    return found


def taken_part(path: str | os.PathLike) -> Path | None:
    """A part of a split recording to ``path`` (or its ``.partial`` file) that is there already, else None."""
    path = Path(path)
    found = _found(path.parent, path.name[:-len(_SUFFIX)], path.name[-len(_SUFFIX):])
    return found[min(found)] if found else None


def later_part(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a part after the first of a split recording whose first part is there (a folder of
    recordings replays the set once, from its first part)."""
    path = Path(path)
    match = _PART.fullmatch(path.name)
    return bool(match and int(match["index"]) > 0 and part_path(path.with_name(match["base"] + _SUFFIX), 0).is_file())


def part_marks(path: str | os.PathLike) -> tuple[str, dict[str, dict[str, str]]] | None:
    """The library that wrote a finished MCAP file, and the records it holds of a split recording's (by name:
    :data:`PART_RECORD`, :data:`END_RECORD`; none in another tool's file, an unsplit recording); None where they cannot
    be read (a damaged file: its read says so). A file whose index cannot be read (its footer damaged, its data
    whole) is read through for them: its data would be read, and the parts after it with it, unchecked."""
    damage = (McapError, ZstdError, EOFError, struct.error, ValueError, OverflowError, MemoryError)
    try:
        with _regular(path) as f:
            try:
                reader = SeekingReader(f, validate_crcs=False)
                marks = {m.name: m.metadata for m in reader.iter_metadata() if m.name in (PART_RECORD, END_RECORD)}
                return reader.get_header().library, marks
            except damage:
                f.seek(0)
                return _streamed_marks(f)
    except (*damage, OSError):
        return None


def _streamed_marks(f: BinaryIO) -> tuple[str, dict[str, dict[str, str]]]:
    """:func:`part_marks` of an MCAP file read through its data section, its chunks not unpacked."""
    library, marks = "", {}
    for record in StreamReader(f, skip_magic=False, emit_chunks=True).records:
        if isinstance(record, Header):
            library = record.library
        elif isinstance(record, Metadata) and record.name in (PART_RECORD, END_RECORD):
            marks[record.name] = dict(record.metadata)
        elif isinstance(record, DataEnd):
            break
    return library, marks


def _regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened to read; OSError for a file that is no regular one (a FIFO held its open() for good)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def cut_mark(partial: Path) -> dict[str, str] | None:
    """The set and place (:data:`PART_RECORD`) of the split recording's part cut short as ``partial``
    (``.rig0_0004.mcap.partial``): its own record, else the set of the finished part before it (a kill may cut a part
    before its record reached the disk); None for a file of no split recording's, one whose own record names no set or
    another place (a file only named like the part), or one whose set cannot be told."""
    final = final_path(partial)
    if final is None or (match := _PART.fullmatch(final.name)) is None:
        return None
    index = int(match["index"])
    with contextlib.suppress(McapError, EOFError, struct.error, ValueError, OverflowError, MemoryError, OSError), \
            open(partial, "rb") as f:
        for record in StreamReader(f, skip_magic=False).records:
            if isinstance(record, Metadata) and record.name == PART_RECORD:  # its set and this place, else no part
                good = record.metadata.get("set") and record.metadata.get("index") == str(index)
                return {"set": record.metadata["set"], "index": str(index)} if good else None
            if not isinstance(record, (Header, Schema, Channel, Metadata)):  # the data began: it has none
                break
    before = part_marks(partial.with_name(part_path(partial.with_name(match["base"] + _SUFFIX), index - 1).name)) \
        if index else None
    if before is None or "set" not in before[1].get(PART_RECORD, {}):
        return None
    return {"set": before[1][PART_RECORD]["set"], "index": str(index)}


def _first_part(path: Path) -> tuple[re.Match, dict[int, Path], dict[str, dict[str, str]] | None] | None:
    """(name match, parts found, the first part's records or None where unreadable or of a recorder that kept none)
    of the split recording whose first part is ``path``; None where ``path`` is no such part."""
    match = _PART.fullmatch(path.name)
    if match is None or int(match["index"]) != 0:
        return None
    found = _found(path.parent, match["base"], path.name[-len(_SUFFIX):])
    if 0 not in found or found[0] != path:
        return None
    marks = part_marks(path)
    if marks is not None and PART_RECORD not in marks[1]:
        if marks[0] != "streamfuse":  # another tool's file, only named like a part: read alone, as any other
            return None
        marks = None  # a part of an earlier recorder, which kept no records: its set told by names alone
    if len(found) < 2 and (marks is None or END_RECORD in marks[1]):
        return None  # one file, read as any other
    return match, found, marks[1] if marks is not None else None


def set_name(path: str | os.PathLike) -> str | None:
    """The name of the split recording whose first part is ``path`` (``rig0`` for ``rig0_0000.mcap``), else None."""
    first = _first_part(Path(path))
    return None if first is None else first[0]["base"]


def set_parts(path: str | os.PathLike) -> list[Path] | None:
    """The parts of the split recording whose first part is ``path``, in order; None where ``path`` is no first part
    or has no later part beside it (one file, read as any other).

    Raises:
        ValueError: one line naming the part that cannot be read with the others: missing between two of them or after
            the last one here, no regular file (a folder, a pipe, a device, a link to nothing), of another set, being
            recorded by a running run, or cut short (a killed run, a write error).
    """
    path = Path(path)
    if (first := _first_part(path)) is None:
        return None
    match, found, marks = first
    last = max(found)
    for index in range(last + 1):
        part = found.get(index)
        if part is None:
            raise ValueError(f"recording {path}: its part {part_path(path.parent / (match['base'] + _SUFFIX), index)} "
                             f"is missing (the set has parts up to {found[last].name}): its frames would be lost")
        if (what := _not_a_file(part)) is not None:
            raise ValueError(f"recording {path}: its part {part} is not a recording file ({what})")
        if final_path(part) is not None:
            if being_recorded(part):
                raise ValueError(f"recording {path}: its part {part} is being recorded by a running run; replay the "
                                 f"set once that run has ended")
            raise ValueError(f"recording {path}: its part {part} was cut short (a killed run, or a write error such as "
                             f"a full disk): `python -m streamfuse recover {part}` finishes it, then replay the set")
    parts = [found[index] for index in range(last + 1)]
    if marks is not None:
        _check_marks(path, marks[PART_RECORD].get("set", ""), parts)
    return parts


def _not_a_file(part: Path) -> str | None:
    """What ``part`` is where it is no regular file (a FIFO held its reader in open() for good), else None."""
    try:
        mode = os.stat(part).st_mode
    except OSError as exc:  # a link to nothing, or in a loop
        return f"a link to no file: {io_reason(exc)}" if os.path.islink(part) else io_reason(exc)
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a pipe or a device"


def _check_marks(path: Path, set_id: str, parts: list[Path]) -> None:
    """Refuse (ValueError, one line) a part of ``parts`` that records another set or place (a file only named like
    one) or the set's end anywhere but at its last part here, and a set whose last part here does not record its end
    (the parts after it missing)."""
    ended = False
    for index, part in enumerate(parts):
        if (found := part_marks(part)) is None:  # damaged: its read names it
            return
        mark = found[1].get(PART_RECORD, {})
        if (mark.get("set"), mark.get("index")) != (set_id, str(index)):
            raise ValueError(f"recording {path}: {part} is not its part {index} (it is of another recording, only "
                             f"named like one): move it away to replay the set")
        end = found[1].get(END_RECORD, {})
        if (ended := end.get("set") == set_id) and not end.get("parts") == str(index + 1) == str(len(parts)):
            raise ValueError(f"recording {path}: {part} records that the set ends with {end.get('parts')} parts, yet "
                             f"it is part {index} of {len(parts)} here: the parts contradict each other")
    if not ended:
        raise ValueError(f"recording {path}: the set goes on after {parts[-1].name}, its last part here (the run "
                         f"recorded more): its last parts are missing (copied off yet?), or the run was killed "
                         f"(`python -m streamfuse recover` finishes the .partial part it left)")


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
        """Finish the part being written: complete, indexed, under its final name."""
        self.part.finish()
        log.info("recording part %s finished", self.part.path)

    def _end_in(self, following: PartWriter) -> None:
        """The part being written could not be finished (it stays, cut or whole, as its ``.partial`` for ``recover``,
        or took its final name before a later step failed): ``following``, begun and holding no frame, ends the set,
        so that the set reads to its end either way; where it cannot be finished either, it goes."""
        try:
            following.writer.add_metadata(END_RECORD, {"set": self._set, "parts": str(self.count + 1)})
            following.finish()
        except OSError:
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
