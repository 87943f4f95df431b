"""The ``mcap`` source: a recording made by :class:`streamfuse.recording.Recorder`, read back as capture frames.

A recording holds both streams; :func:`read_recording` yields them in the order they were recorded (the live
loop's order), and :class:`McapSource` gives one of them as a capture Source. :func:`read_messages` gives the
records themselves, as written (``streamfuse.recover`` copies them out of a cut recording).

A robot's own ``ros2 bag`` in MCAP storage, or in sqlite3 storage (a ``.db3`` file:
:mod:`streamfuse.capture.sqlite_bag`), and a ROS 1 bag (a ``.bag`` file: :mod:`streamfuse.capture.ros1_bag`) read
the same way, as does an MCAP file the Foxglove SDK logged: ``ir.topic`` and ``vis.topic`` name its cameras'
topics (raw or compressed images, :mod:`streamfuse.capture.ros_images`, :mod:`streamfuse.capture.foxglove_images`),
and a frame's capture time is its message's stamp (in our recordings the same as the log time), or its log time where
the driver left the stamp at 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sqlite3
import struct
from pathlib import Path
from typing import Callable, Iterator

from mcap.exceptions import EndOfFile, McapError
from mcap.reader import NonSeekingReader, SeekingReader
from mcap.records import Channel, Message, Schema
from zstandard import ZstdError

from streamfuse.atomic_write import final_path
from streamfuse.capture import foxglove_images, ros_images
from streamfuse.capture.bag_folder import folder_topics, is_bag_folder, storage_files
from streamfuse.capture.image_messages import ImageMessage, Images, stamp_of
from streamfuse.capture.mcap_records import KnownRecords
from streamfuse.capture.ros1_bag import BagError, bag1_messages, bag1_topics, is_bag1
from streamfuse.capture.ros_images import Unsupported
from streamfuse.capture.rosbag2_compression import decompressed, is_compressed, message
from streamfuse.capture.sources import BaseSource, SourceConfig, SourceError
from streamfuse.capture.sqlite_bag import db3_messages, db3_topics, is_db3
from streamfuse.capture.stamp_order import in_stamp_order
from streamfuse.errors import io_reason
from streamfuse.frames import FAR_NS, Frame
from streamfuse.part_set import set_parts
from streamfuse.recording import COUNTS_TOPIC, TOPICS
from streamfuse.registry import register

__all__ = ["McapSource", "read_messages", "read_recording", "image_topics", "recording_files", "topic_of"]

log = logging.getLogger(__name__)
IMAGE_SCHEMAS = frozenset((*ros_images.SCHEMAS, *foxglove_images.SCHEMAS))
Topics = dict[str, tuple[str, int | None]]  # image topic -> (schema, messages or None)


def topic_of(stream: str, cfg: SourceConfig) -> str:
    """The topic a stream is read from: its ``topic``, else the one our recorder writes it to."""
    return cfg.topic or TOPICS[stream]


def image_topics(path: str | os.PathLike) -> Topics | None:
    """Topic -> (schema, messages, None where the summary does not count them) of a recording's image channels, from
    its summary (a ``.db3`` bag's topics table, a ROS 1 bag's index); None for a recording without one (cut short:
    only reading it through tells; a bag compressed by file, which would have to be decompressed)."""
    if is_bag_folder(path):  # its files' own tables: a stale metadata.yaml (its recorder killed) may lack a topic
        found = None
        with contextlib.suppress(ValueError):  # no storage file, or a listed one missing: said by the read
            found = _files_topics(storage_files(path))
        if found is not None:
            return found
        found = folder_topics(path)  # files without a table (compressed, cut short): what metadata.yaml says
        return {t: kind_n for t, kind_n in found.items() if kind_n[0] in IMAGE_SCHEMAS} if found is not None else None
    if is_compressed(path):
        return None
    try:
        parts = set_parts(path)
    except ValueError:  # said by the read
        return None
    if parts is not None:
        return _files_topics(parts, _mcap_topics)
    if is_db3(path) or is_bag1(path):
        try:
            topics = db3_topics(path) if is_db3(path) else bag1_topics(path)
        except (sqlite3.DatabaseError, BagError, OSError):
            return None
        return {t: found for t, found in topics.items() if found[0] in IMAGE_SCHEMAS} if topics is not None else None
    return _mcap_topics(path)


def _mcap_topics(path: str | os.PathLike) -> Topics | None:
    """:func:`image_topics` of one MCAP file."""
    try:
        with open(path, "rb") as f:
            summary = SeekingReader(f, validate_crcs=False).get_summary()
    except (McapError, ZstdError, EOFError, struct.error, ValueError, OSError):
        return None
    if summary is None:
        return None
    counts = summary.statistics.channel_message_counts if summary.statistics else None
    return {ch.topic: (summary.schemas[ch.schema_id].name, counts.get(ch.id, 0) if counts is not None else None)
            for ch in summary.channels.values()
            if ch.schema_id in summary.schemas and summary.schemas[ch.schema_id].name in IMAGE_SCHEMAS}


def recording_files(path: str | os.PathLike) -> list[Path]:
    """The files a recording is read from, in order: a bag folder's storage files, a split recording's parts (given as
    its first), else the file itself.

    Raises:
        ValueError: one line naming a file that cannot be read with the others.
    """
    if is_bag_folder(path):
        return storage_files(path)
    return set_parts(path) or [Path(path)]


def _files_topics(files: list[Path], topics_of: Callable[[Path], Topics | None] = image_topics) -> Topics | None:
    """The image topics of a bag folder's storage files (or a split recording's parts) together; None where one of
    them has no summary."""
    merged: Topics = {}
    for file in files:
        if (found := topics_of(file)) is None:
            return None
        for topic, (kind, n) in found.items():
            had = merged.get(topic, (kind, 0))[1]
            merged[topic] = kind, None if n is None or had is None else had + n
    return merged


def read_messages(path: str | os.PathLike, topics: tuple[str, ...] = tuple(TOPICS.values()), *,
                  shown: str | os.PathLike | None = None, others: list[object] | None = None,
                  recovering: bool = False) -> Iterator[tuple[Schema | None, Channel, Message]]:
    """The MCAP records of a recording's image messages, as written, in the order they were written.

    Reads sequentially, so a recording whose writer was killed (no index) still yields every complete chunk;
    the truncated end raises SourceError naming how many messages were read (and ``shown``, default ``path``). Chunk
    CRCs are checked: after a power loss the file's end may hold zeros or stale blocks instead of what was written,
    which must not pass as frames. ``others`` gets the schema, channel and metadata records and the data section's
    end as they are read (``recover`` finds a split recording's records, and its channels without a message, in the
    same read); ``recovering``: ``recover`` reads it, whose line of a damaged file must not tell to run ``recover``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recording not found: {path}")
    read = 0
    with open(path, "rb") as f:
        reader = NonSeekingReader(f, validate_crcs=True)
        # its own stream reader replaced: see there
        records = reader._stream_reader = KnownRecords(f, Path(shown or path), validate_crcs=True,  # noqa: SLF001
                                                       others=others)
        try:
            for record in reader.iter_messages(topics=sorted(topics), log_time_order=False):
                yield record
                read += 1
        # a damaged chunk header's size: past what an index holds (OverflowError) or any memory (MemoryError)
        except (McapError, ZstdError, EOFError, struct.error, ValueError, OverflowError, MemoryError) as exc:
            raise _Damaged(_damaged(Path(shown or path), read, exc, data_ended=records.data_ended,
                                    told=not recovering)) from None
        finally:
            records.said()


def read_recording(path: str | os.PathLike, topics: dict[str, str] | None = None, palette: str = "",
                   warn: Callable[[str], None] = log.warning) -> Iterator[Frame]:
    """Frames of a recording in the order they were recorded (the live loop's order), read by :func:`read_messages`
    (a ``.db3`` bag by :func:`~streamfuse.capture.sqlite_bag.db3_messages`, a ROS 1 bag by
    :func:`~streamfuse.capture.ros1_bag.bag1_messages`).

    ``topics`` maps each stream wanted to its topic (default: both streams, on our recorder's topics). Channels
    without our ``seq`` marker (e.g. a ROS 2 bag) get sequence numbers counted from 0; IR images come grey and 8-bit,
    as from any capture source (16-bit ones by the IR rule of :mod:`streamfuse.bitdepth`, colour ones by ``palette``,
    ``ir.palette``: :mod:`~streamfuse.capture.palette`; ``warn`` takes one line on the IR's first frame's colours).
    A bag's frames whose stamps go back within their stream are put back in stamp order
    (:mod:`~streamfuse.capture.stamp_order`); our recordings' are read as recorded.
    """
    return in_stamp_order(_read_ahead(path, topics or TOPICS, palette, warn), ImageMessage.frame,
                          lambda message: message.nbytes, str(path))


def _read_ahead(path: str | os.PathLike, topics: dict[str, str], palette: str,
                warn: Callable[[str], None]) -> Iterator[tuple[ImageMessage, bool]]:
    """:func:`read_recording`'s messages in the order they were recorded, undecoded, each with whether it is a bag's
    (numbered by its place in its stream, so free to move there)."""
    streams = {topic: stream for stream, topic in topics.items()}
    if len(streams) < len(topics):
        raise SourceError(f"recording {path}: ir.topic and vis.topic are both {next(iter(streams))}")
    counts = {s: 0 for s in topics}
    images = Images(path, list(topics), palette, warn, lambda read, exc: _damaged(Path(path), read, exc))
    for kind, encoding, topic, log_ns, seq, data in _records(path, tuple(streams)):
        stream = streams[topic]
        try:
            if encoding == "cdr":  # a ROS 2 bag's, zstd-compressed one by one in rosbag2's message mode
                data = message(data)
            stamp = stamp_of(kind, data, encoding)
        except Unsupported as exc:
            raise SourceError(f"recording {path}: {topic}: {exc}") from None
        except ValueError as exc:
            raise SourceError(_damaged(Path(path), sum(counts.values()), exc)) from None
        if stamp < 0:  # no camera captured before 1970 (ROS 2's own rclcpp::Time refuses such a time too)
            raise SourceError(f"recording {path}: {topic}: after {sum(counts.values())} frames, a message stamped "
                              f"{stamp / 1e9:.9f} s: before 1970, not a capture time")
        if (stamp or log_ns) >= FAR_NS:  # a damaged log time (an unsigned 64-bit count): past every stage's times
            raise SourceError(f"recording {path}: {topic}: after {sum(counts.values())} frames, a message timed "
                              f"{(stamp or log_ns) / 1e9:.0f} s: over 146 years after 1970, not a capture time")
        placed = seq is None
        seq = counts[stream] if placed else seq
        yield images.message(stream, seq, stamp or log_ns, topic, (kind, encoding), data, sum(counts.values())), placed
        counts[stream] += 1


def _records(path: str | os.PathLike, topics: tuple[str, ...],
             shown: str | os.PathLike | None = None) -> Iterator[tuple[str, str, str, int, int | None, bytes]]:
    """(message type, serialization, topic, log time, our seq or None, bytes) of the messages on ``topics``; errors
    name ``shown`` (default ``path``: a compressed bag's name, where ``path`` is its plain copy)."""
    shown = Path(shown or path)
    if is_bag_folder(path):  # a ros2 bag split into several files: each in turn
        try:
            files = storage_files(path)
        except ValueError as exc:
            raise SourceError(f"recording {exc}") from None
        for file in files:
            yield from _records(file, topics)
        return
    try:
        parts = set_parts(path)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    if parts is not None:  # a recording split into parts, named by its first: each in turn
        _check_topics(parts)
        for part in parts:
            yield from _mcap_records(part, topics, part)
        return
    if is_compressed(path):
        try:
            with decompressed(path) as plain:
                yield from _records(plain, topics, shown)
        except ValueError as exc:
            raise SourceError(_damaged(shown, 0, exc)) from None
        except OSError as exc:
            raise SourceError(f"recording {shown}: cannot decompress it into a temporary folder "
                              f"({io_reason(exc)})") from None
        return
    if not (is_db3(path) or is_bag1(path)):
        yield from _mcap_records(path, topics, shown)
        return
    read = 0
    try:
        for kind, encoding, topic, log_ns, data in (db3_messages if is_db3(path) else bag1_messages)(path, topics):
            yield kind, encoding, topic, log_ns, None, data
            read += 1
    except (sqlite3.DatabaseError, BagError) as exc:
        raise SourceError(_damaged(shown, read, exc)) from None


def _check_topics(parts: list[Path]) -> None:
    """Refuse (SourceError, one line) a later part holding images on a topic the first part has none of, or of
    another schema: a run records its streams on one set of topics (the IR's counts topic begins with its first
    16-bit frame), so that part is of another recording, and its frames there would be left out unsaid. A part
    without a summary (damaged: its read says so) is not asked; one without a topic (a recovered part holds those
    whose channels reached the disk before its cut) is read as it is."""
    first = _mcap_topics(parts[0])
    for part in parts[1:]:
        if first is None or (found := _mcap_topics(part)) is None:
            continue
        ours, theirs = ({t: kind for t, (kind, _) in topics.items() if t != COUNTS_TOPIC} for topics in (first, found))
        if any(ours.get(topic) != kind for topic, kind in theirs.items()):
            named = (lambda topics: ", ".join(sorted(topics))) if not theirs.keys() <= ours.keys() else \
                (lambda topics: ", ".join(f"{t} ({kind})" for t, kind in sorted(topics.items())))
            raise SourceError(f"recording {parts[0]}: its part {part.name} holds its images on {named(theirs)}, "
                              f"where part 0 holds them on {named(ours)} (a recording's parts share their topics): "
                              f"it is of another recording")


def _mcap_records(path: str | os.PathLike, topics: tuple[str, ...],
                  shown: Path) -> Iterator[tuple[str, str, str, int, int | None, bytes]]:
    """:func:`_records` of one MCAP file."""
    try:
        for schema, channel, msg in read_messages(path, topics, shown=shown):
            yield (schema.name if schema else "", channel.message_encoding, channel.topic, msg.log_time,
                   msg.sequence if channel.metadata.get("seq") == "mcap_sequence" else None, msg.data)
    except _Damaged as exc:  # a finished file as it is on the disk (not a compressed bag's copy): recover reads it
        if final_path(shown) is not None or Path(path) != shown:
            raise
        raise SourceError(f"{exc}; `python -m streamfuse recover {shlex.quote(str(shown))} --out NEW.mcap` may save "
                          f"the frames before the damage") from None
    except OSError as exc:  # a part moved away since the set was listed (copied off meanwhile), a disk's read error
        why = "not found" if isinstance(exc, FileNotFoundError) else io_reason(exc)
        raise SourceError(f"recording {shown}: cannot read it ({why})") from None


class _Damaged(SourceError):
    """An MCAP file that does not read back whole (``recover``'s check of a complete one, and a replay's read)."""


def _damaged(path: Path, frames: int, exc: Exception, *, data_ended: bool = False, told: bool = True) -> str:
    """The line of a recording whose read failed after ``frames`` frames; ``data_ended``: its data section was read
    whole (what failed is the summary after it); ``told``: a file under its temporary name is said to be ``recover``'s
    to finish."""
    line = f"recording {path} is truncated or corrupt after {frames} frames ({_reason(exc, data_ended)})"
    if told and final_path(path) is not None:  # the recorder's name for it while a run writes
        line += (f"; a run cut before its end leaves such a file: `python -m streamfuse recover "
                 f"{shlex.quote(str(path))}` saves its frames")
    return line


def _reason(exc: Exception, data_ended: bool) -> str:
    """What is damaged, in words: Python's ("unpack requires a buffer of 8 bytes") and MCAP's own (EndOfFile, with no
    text) name neither the record nor the cause."""
    if isinstance(exc, (struct.error, EOFError, EndOfFile)):
        where = "its summary or footer, after all its data," if data_ended else "a record"
        return f"{where} runs past the file's end: the file is cut short, or a record's length is damaged"
    return str(exc) or type(exc).__name__


def _said(line: str) -> None:
    """Drops a line already given."""


@register("source", "mcap")
class McapSource(BaseSource):
    """One stream (section ``ir`` or ``vis``) of a recording, as a capture Source (recorded times, re-readable).

    ``cfg.realtime`` paces frames at their recorded capture times; ``cfg.loop`` starts again at the end with
    capture times shifted past the last frame and sequence numbers continuing, so a looped demo stays monotonic.
    """

    def __init__(self, section: str, cfg: SourceConfig) -> None:
        if section not in TOPICS:
            raise ValueError(f"mcap source section must be one of {', '.join(TOPICS)}, got {section!r}")
        super().__init__(section, cfg)

    def _open(self) -> None:
        """Check the file and start reading from the beginning."""
        path = Path(self.cfg.path)
        if not (path.is_file() or is_bag_folder(path)):
            what = "not a regular file (a pipe or a device?)" if path.exists() and not path.is_dir() else "not found"
            raise SourceError(f"{self.section}: recording {what}: {path}")
        self._pace_anchor = None  # a reopen replays from the first recorded time: pace from there afresh
        self._shift_ns = self._seq_offset = 0  # what this pass adds to the recorded times and seqs
        self._it = self._frames()

    def _frames(self) -> Iterator[Frame]:
        warn = self.warn
        while True:
            first_ns = last_ns = prev_ns = last_seq = None  # this pass's recorded times and last seq
            for frame in read_recording(self.cfg.path, {self.section: topic_of(self.section, self.cfg)},
                                        self.cfg.palette, warn):
                if first_ns is None:
                    first_ns = frame.t_capture_ns
                    self._begin_pass(first_ns + self._shift_ns)
                prev_ns = frame.t_capture_ns if last_ns is None else last_ns
                last_ns, last_seq = frame.t_capture_ns, frame.seq
                frame.t_capture_ns += self._shift_ns
                frame.seq += self._seq_offset  # the recorded seq, not BaseSource's counter
                self._pace(frame.t_capture_ns)
                yield frame
            if not self.cfg.loop or last_ns is None:
                return
            warn = _said  # a looped recording's first frame again: its note was given on the first pass
            # the next pass starts one frame interval after this one ended: its last, or 1 / fps where it has none
            # (one frame, or two last ones at one time: a step of 1 ns looped them as fast as they could be read)
            self._shift_ns += last_ns - first_ns + (last_ns - prev_ns if last_ns > prev_ns else self.frame_interval_ns)
            self._seq_offset += last_seq + 1

    def _skip_passes(self, passes: int, seq_step: int, t_step_ns: int) -> None:
        self._shift_ns += passes * t_step_ns  # each pass read afresh (its 8-bit conversion too): times and seqs move
        self._seq_offset += passes * seq_step

    def _read(self) -> Frame | None:
        return next(self._it, None)

    def _close(self) -> None:
        self._it.close()  # closes the recording file now rather than when the generator is collected
