"""``python -m streamfuse recover PARTIAL [--out FILE]``: a finished recording from one cut short by a kill.

A live run killed outright (``kill -9``, power loss) leaves its recording as ``.NAME.mcap.partial``: its complete
chunks read back, but it ends mid-chunk with no index, so a replay stops at the cut. This copies every message that
reads back (IR and visible images, in recorded order, with their log times, sequence numbers and bytes as written,
under the recording's own schema and channels) into a finished, indexed ``NAME.mcap`` beside it (or ``--out``),
written under a temporary name and renamed when complete. A split recording's part (``.rig0_0004.mcap.partial``) is
finished as its set's last part, recorded as such (unless a later part of its set is beside it): with no frame where
the kill came before any reached the disk, so that the set reads to its end. One left whole under its temporary name
(its run's final rename failed: a full disk, a permissions change) is finished the same way. A finished part damaged
inside, recovered with ``--out``, keeps its set's record: its place in the set. The cut recording is left as it is.
Exits 0 when done or when the recording is complete already (nothing to recover), 1 when nothing can be recovered or
written, or when the recovered file has its name but its folder's sync failed (the line says so: keep the cut one), 2
on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
from pathlib import Path
from typing import BinaryIO

from mcap.exceptions import McapError
from mcap.reader import NonSeekingReader
from mcap.records import Channel, Header, Schema
from mcap.writer import MCAP0_MAGIC, Writer

from streamfuse.atomic_write import Unsynced, durable_rename_new, final_path, partial_path
from streamfuse.capture.mcap_source import read_messages
from streamfuse.capture.sources import SourceError
from streamfuse.cli.args import Parser, path_arg
from streamfuse.errors import io_reason, printable
from streamfuse.part_set import cut_mark, part_marks, streamed_marks
from streamfuse.record_parts import END_RECORD, PART_RECORD, part_path
from streamfuse.recording import COUNTS_TOPIC, TOPICS, RecordConfig, being_recorded
from streamfuse.signals import HANGUP, handled, raise_interrupt, said_last

__all__ = ["recover", "main"]

_COMPLETE = "{} is a complete recording, not cut: nothing to recover (replay it as it is)"
_NOTHING = "nothing to recover: {} holds no complete frame (it was cut before its first chunk was written)"


class _Empty(ValueError):
    """A cut recording that holds not even its header."""


def recover(src: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Copy what reads back of the cut recording ``src`` into the finished recording ``out``; the line to print.

    ``out`` defaults to the final name of ``src`` (``.NAME.mcap.partial`` -> ``NAME.mcap``) and is never written
    over; ``src`` is only read. A complete ``src`` is left alone (the line says so), unless it is still under its
    temporary name.

    Raises:
        OSError, ValueError, RuntimeError: one line naming the file; no output is left behind, except where it has its
            name but its folder's sync failed (RuntimeError, the line saying what was recovered).
    """
    src = _recoverable(Path(src))
    mark = cut_mark(src)  # a split recording's part: finished as its set's last
    try:
        header, complete = _inspect(src)
    except _Empty:
        if mark is None:
            raise
        header, complete = Header(profile="ros2", library="streamfuse"), False
    # one left under its temporary name is finished too: its run could not give it its name (a full disk, a
    # permissions change), and a split recording's part must also record that its set ends there; one under its own
    # name only where a chunk inside does not read back (closed as a finished one is), found as it is copied
    finished = complete and final_path(src) is None
    if finished and out is None:  # nothing is written: its read says only whether it is whole
        _whole(_damage(src), finished, given=False)
        return _COMPLETE.format(src)
    given, out = out is not None, Path(out) if out is not None else _final_name(src)
    if not out.name.lower().endswith(".mcap"):
        raise ValueError(f"cannot recover to {out}: a recording's name must end in .mcap (replay knows it by that)")
    if os.path.lexists(out):  # a link pointing nowhere too: the final rename would not write over it
        raise FileExistsError(f"cannot recover to {out}: it exists; pass another --out or move it away")
    records = _part_records(src, mark) if mark is not None or complete else None  # a cut file's: read as copied
    tmp = partial_path(out)
    if tmp.resolve() == src.resolve():  # the default output's temporary name is the cut recording itself
        tmp = partial_path(tmp)
    try:
        f = open(tmp, "xb")  # noqa: SIM115 (closed below); "x": a file left there is never written over
    except OSError as exc:
        raise OSError(f"cannot write {out}: {tmp}: {io_reason(exc)}") from None
    try:
        with f:
            counts, first, last, records, damage = _copy(src, header, f, records)
        if complete and _whole(damage, finished, given):
            tmp.unlink()
            return _COMPLETE.format(src)
        complete = complete and damage is None  # one damaged inside loses what follows the damage
        ends = any(name == END_RECORD for name, _ in records)
        if not any(counts.values()) and mark is None:
            raise ValueError(_NOTHING.format(src))
        durable_rename_new(tmp, out)  # not over a file that took its name while this copied
    except Unsynced as exc:  # written whole under its name: kept, but the cut one is needed until it is safe
        raise RuntimeError(_unsynced(_said(src, out, counts, (first, last), complete, ends=ends), exc)) from None
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot recover {src} into {out}: {io_reason(exc)}") from None
    except BaseException:  # Ctrl-C included: a temporary file of no use is not left behind
        tmp.unlink(missing_ok=True)
        raise
    return _said(src, out, counts, (first, last), complete, ends=ends)


def _recoverable(src: Path) -> Path:
    """``src``, where it may be recovered: a file no running run records to (ValueError, one line, otherwise)."""
    if src.exists() and not src.is_file():  # a FIFO held its open() for good, waiting for a writer
        raise ValueError(f"{src} is not a recording file (a folder, pipe or device)")
    if being_recorded(src):  # a live run's recording, not a killed one's: that run finishes it itself
        raise ValueError(f"{src} is being recorded by a running run (its record.path); it is finished when that run "
                         f"ends: stop the run, not recover it")
    return src


def _whole(damage: str | None, finished: bool, given: bool) -> bool:
    """Whether a complete recording (``finished``: under its own name) reads whole and is left as it is; raises
    ValueError where it is damaged (``damage``: why) and no output was ``given`` for the frames before it."""
    if damage is not None and not given:
        raise ValueError(f"{damage}: pass --out FILE.mcap to recover the frames before the damage")
    return finished and damage is None


def _said(src: Path, out: Path, counts: dict[str, int], span: tuple[int, int], complete: bool, *, ends: bool) -> str:
    """The line that says what was recovered of ``src`` into ``out``: ``counts`` frames per stream of capture times
    ``span`` (first, last ns); ``complete``: ``src`` was whole, only not given its name; ``ends``: ``out`` records
    its split recording's end."""
    if not any(counts.values()):
        written = ("ends its split recording with no frame, so that the set reads to its end" if ends else
                   "keeps its place in its split recording with no frame, so that the set reads on to its next part")
        return (f"{printable(src)} holds no complete frame (it was cut before its first chunk was written): "
                f"{printable(out)} {written}")
    first, last = span
    lost = ("it was complete, only not given its name: nothing is lost" if complete else
            "what was recorded after the cut is lost")
    return (f"recovered {counts['ir']} IR and {counts['vis']} visible frames ({(last - first) / 1e9:.3f} s of "
            f"capture time, {first} to {last} ns) from {printable(src)} into {printable(out)}; {lost}")


def _unsynced(said: str, exc: OSError) -> str:
    """The line for a recovered file that has its name, but whose folder's sync (``exc``) failed after it took it:
    ``said`` (what was recovered), and what that leaves the user to do."""
    return (f"{said}; but its folder could not be synced after it took its name ({io_reason(exc)}): a power loss "
            f"may yet lose that name; keep the cut recording and copy the recovered one elsewhere")


def _part_records(src: Path, mark: dict[str, str] | None) -> list[tuple[str, dict[str, str]]]:
    """The split recording's records (name, metadata) the recovered ``src`` holds: a cut part's place (``mark``), and
    that its set ends there unless a later part is beside it (its run went on to the next part, which then ends the
    set, or was killed in it); a finished part's own records, kept."""
    if mark is None:
        return sorted((part_marks(src) or ("", {}))[1].items())
    final = _final_name(src)  # rig0_0004.mcap: the set's path rig0.mcap, and its part 5
    following = part_path(final.with_name(final.name[:final.name.rindex("_")] + final.suffix), int(mark["index"]) + 1)
    if os.path.lexists(following) or os.path.lexists(partial_path(following)):
        return [(PART_RECORD, mark)]
    return [(PART_RECORD, mark), (END_RECORD, {"set": mark["set"], "parts": str(int(mark["index"]) + 1)})]


def _inspect(src: Path) -> tuple[Header, bool]:
    """The recording's MCAP header, and whether it is complete (ends with its closing magic, as a finished file
    does); raises ValueError for a file that is not an MCAP recording or holds not even its header."""
    try:
        with open(src, "rb") as f:
            if not MCAP0_MAGIC.startswith(f.read(len(MCAP0_MAGIC))):
                raise ValueError(f"{src} is not an MCAP recording")
            f.seek(0)
            try:
                header = NonSeekingReader(f).get_header()
            # an empty file is what a run killed at its start leaves; a damaged one can claim any size
            except (McapError, EOFError, struct.error, OverflowError, MemoryError):
                raise _Empty(_NOTHING.format(src)) from None
            f.seek(-len(MCAP0_MAGIC), os.SEEK_END)
            return header, f.read() == MCAP0_MAGIC
    except FileNotFoundError:
        raise FileNotFoundError(f"recording not found: {src}") from None
    except OSError as exc:
        raise OSError(f"cannot read {src}: {io_reason(exc)}") from None


def _damage(src: Path) -> str | None:
    """Why a complete recording does not read back whole (a damaged chunk, as a replay of it would stop at), or None."""
    try:
        for _ in read_messages(src, (*TOPICS.values(), COUNTS_TOPIC), recovering=True):
            pass
    except SourceError as exc:
        return str(exc)
    return None


def _final_name(src: Path) -> Path:
    """``dir/.NAME.mcap.partial`` -> ``dir/NAME.mcap``, the name the recorder would have renamed it to."""
    if (final := final_path(src)) is None:
        raise ValueError(f"cannot name the recovered recording of {src} (not a .NAME.mcap.partial file): pass --out")
    return final


def _copy(src: Path, header: Header, f: BinaryIO, records: list[tuple[str, dict[str, str]]] | None
          ) -> tuple[dict[str, int], int, int, list[tuple[str, dict[str, str]]], str | None]:
    """Every image message of ``src`` up to its cut into a finished MCAP on ``f``, with the split recording's
    ``records`` (name, metadata: its part's set and place, its end; None: those ``src`` holds, found as it is read):
    (frames per stream, first and last log time, the records written, why the read stopped short or None)."""
    # the recorder's default chunks (zstd), and its data section CRC
    writer = Writer(f, chunk_size=int(RecordConfig.chunk_mb * 2**20), enable_data_crcs=True)
    writer.start(profile=header.profile, library=header.library)
    schemas: dict[int, int] = {0: 0}  # input id -> output id; 0: no schema
    channels: dict[int, int] = {}
    counts, first, last, damage = {s: 0 for s in TOPICS}, None, 0, None
    streams = {topic: s for s, topic in TOPICS.items()}
    others: list[object] = []  # its schemas, channels and metadata records, and its data section's end where it has one
    topics = (*TOPICS.values(), COUNTS_TOPIC)
    try:
        for schema, channel, msg in read_messages(src, topics, others=others, recovering=True):
            if channel.id not in channels:
                channels[channel.id] = _channel(writer, schemas, schema, channel)
            writer.add_message(channels[channel.id], msg.log_time, msg.data, msg.publish_time, msg.sequence)
            if channel.topic in streams:  # frames; the IR's counts go with its frames
                counts[streams[channel.topic]] += 1
            first, last = msg.log_time if first is None else min(first, msg.log_time), max(last, msg.log_time)
    except SourceError as exc:  # the cut (or damage): everything before it is in
        damage = str(exc)
    found = {r.id: r for r in others if isinstance(r, Schema)}
    for channel in (r for r in others if isinstance(r, Channel) and r.topic in topics and r.id not in channels):
        # one without a message (a stream whose first frame came later): a later part of its set holds it too
        if channel.schema_id in found or not channel.schema_id:
            channels[channel.id] = _channel(writer, schemas, found.get(channel.schema_id), channel)
    if records is None:
        records = sorted((streamed_marks(src, others) or {}).items())
    for name, metadata in records:
        writer.add_metadata(name, metadata)
    writer.finish()
    return counts, first or 0, last, records, damage


def _channel(writer: Writer, schemas: dict[int, int], schema: Schema | None, channel: Channel) -> int:
    """``channel`` (of ``schema``) registered with ``writer`` as recorded; ``schemas``: input id -> output id."""
    if schema is not None and schema.id not in schemas:
        schemas[schema.id] = writer.register_schema(schema.name, schema.encoding, schema.data)
    return writer.register_channel(channel.topic, channel.message_encoding, schemas[channel.schema_id],
                                   dict(channel.metadata))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = Parser(prog="python -m streamfuse recover", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("partial", type=path_arg, help="the cut recording, e.g. runs/.rig0.mcap.partial")
    parser.add_argument("--out", type=path_arg, help="the finished recording to write (default: the cut one's final "
                        "name beside it, e.g. runs/rig0.mcap); never written over")
    args = parser.parse_args(argv)
    try:  # SIGTERM and SIGHUP stop it as Ctrl-C does: the temporary file removed, one line
        with handled(raise_interrupt, (signal.SIGTERM, *HANGUP)):
            said = recover(args.partial, args.out)
    except (OSError, RuntimeError, ValueError) as exc:
        return said_last(f"streamfuse recover: error: {printable(exc)}", 1)
    print(said, flush=True)  # a full disk under a redirect is the console's one line, as for every command
    return 0
