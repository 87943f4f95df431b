"""RecordConfig and the lossless MCAP recorder of live rigs, with its ``sensor_msgs/Image`` codec.

The ``mcap`` capture source (``streamfuse.capture.mcap_source``) reads the recordings back; the fused video
writer is ``streamfuse.video``.

Recording format: MCAP (indexed, zstd chunks; Foxglove opens it, ROS 2 tooling reads it). Channels:

- ``/ir/image`` and ``/vis/image``, schema ``sensor_msgs/msg/Image`` (encoding ``ros2msg``), messages
  ``cdr``-encoded: ``header.stamp`` = capture time, ``header.frame_id`` = the optical frame, ``height``,
  ``width``, ``encoding`` (``mono8`` IR, ``bgr8`` or ``mono8`` visible), ``is_bigendian`` = 0, ``step`` (bytes
  per row) and ``data`` (the raw pixels).
- ``/ir/counts``, the same schema in ``mono16``: where the IR camera gives more than 8 bits (a thermal camera's
  counts), the counts each ``/ir/image`` frame was made from, at the same time and sequence number; a replay reads
  ``/ir/image`` (the frames the live run fused), ``ir.topic: /ir/counts`` replays from the counts.
- MCAP record fields: ``log_time`` = ``publish_time`` = the frame's ``t_capture_ns`` (integer ns, exact),
  ``sequence`` = the frame's per-source ``seq``.

Why the ROS 2 layout rather than a JSON schema: JSON would need base64 pixels (a third larger, slow to encode);
CDR ``sensor_msgs/Image`` is raw bytes after a header of a few dozen bytes, and Foxglove and ``ros2 bag`` show it as
an image with no plug-in. Why MCAP rather than lossless video + sidecar: one indexed file holds both streams, exact ns
times and sequence numbers travel with every frame, and messages stay in the order the live loop saw them,
which is what makes a replay reproduce the live pairs exactly.

The recording is written under a hidden temporary name (``.NAME.mcap.partial``) and renamed only when complete,
so a crash never leaves a truncated file that looks finished (``streamfuse.atomic_write``). With ``split_s`` or
``split_mb`` it is written in parts, each such a file (``streamfuse.record_parts``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from streamfuse.atomic_write import WriterThread, durable_rename_new, partial_path, write_refusal
from streamfuse.checks import check
from streamfuse.errors import io_reason
from streamfuse.frames import Frame, optical_frame
from streamfuse.record_parts import PartWriter, Parts, being_recorded, part_path, taken_part

__all__ = ["RecordConfig", "Recorder", "being_recorded", "check_record_path", "encode_image", "TOPICS", "COUNTS_TOPIC",
           "IMAGE_SCHEMA_TEXT"]

log = logging.getLogger(__name__)

TOPICS = {"ir": "/ir/image", "vis": "/vis/image"}
COUNTS_TOPIC = "/ir/counts"
_SCHEMA_NAME = "sensor_msgs/msg/Image"
IMAGE_SCHEMA_TEXT = """std_msgs/Header header
uint32 height
uint32 width
string encoding
uint8 is_bigendian
uint32 step
uint8[] data
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""
_CDR_LE = b"\x00\x01\x00\x00"  # CDR encapsulation header: plain CDR, little-endian


@dataclass(frozen=True)
class RecordConfig:
    """Recording of the raw IR and visible streams of a live run (``record:`` in a live config).

    Args:
        path: output ``NAME.mcap`` file (written as ``.NAME.mcap.partial`` and renamed when the run ends
            cleanly).
        compression: MCAP chunk compression, ``zstd`` or ``none``.
        chunk_mb: uncompressed chunk size in MiB (a crash loses at most the chunk being filled).
        flush_s: seconds a chunk is filled at most: it is written out by then, even while frames are few, small or
            stalled, so a kill loses at most this much of the recording (or ``chunk_mb``, whichever comes first).
        split_s: seconds a part of the recording spans at most (0 = not split), counted on the recorder's own
            clock (as ``ros2 bag record --max-bag-duration``), not the frames' stamps: the recording is written as
            complete files ``NAME_0000.mcap``, ``NAME_0001.mcap``, ... (``streamfuse.record_parts``).
        split_mb: MiB on disk a part reaches at most, give or take the chunk that takes it past them (0 = not split);
            with ``split_s`` too, a part ends at whichever comes first.
    """

    path: str = ""
    compression: Literal["zstd", "none"] = "zstd"
    chunk_mb: float = 4.0
    flush_s: float = 1.0
    split_s: float = 0.0
    split_mb: float = 0.0

    def __post_init__(self) -> None:
        # replay and the mcap source know a recording by its suffix: another name could not be read back as one
        check(self.path.lower().endswith(".mcap"), "path", self.path,
              "a .mcap file path such as runs/rig0.mcap (a record section needs one)")
        check(0.0625 <= self.chunk_mb <= 256, "chunk_mb", self.chunk_mb, "0.0625..256 MiB")
        check(0.01 <= self.flush_s <= 3600, "flush_s", self.flush_s, "0.01..3600 s")
        check(self.split_s == 0 or 1 <= self.split_s <= 30 * 86400, "split_s", self.split_s,
              "0 (one file) or 1..2592000 s")
        check(self.split_mb == 0 or 1 <= self.split_mb <= 2**20, "split_mb", self.split_mb,
              "0 (one file) or 1..1048576 MiB")

    @property
    def split(self) -> bool:
        """Whether the recording is written in parts."""
        return bool(self.split_s or self.split_mb)


def check_record_path(path: str | os.PathLike, split: bool = False) -> None:
    """Refuse (``RuntimeError``, one line) a recording ``path`` that is there already, or its partial file, or (with
    ``split``) a part of it, or whose folder (the nearest that exists: the others are made) takes no new file of this
    user's: a live run checks it before its model loads and its publisher binds, and the recorder again as it opens."""
    path = Path(path)
    if split and (part := taken_part(path)) is not None:  # the parts of an earlier split recording to that path
        raise RuntimeError(f"cannot record to {path} in parts: {part} exists; choose another record.path or move it "
                           f"away")
    # an existing file is an earlier recording or one of the run's own inputs; a partial one is what is left of a run
    # that did not finish: none is written over
    for existing in (path, partial_path(path)):
        if os.path.lexists(existing):  # a link pointing nowhere too: the final rename would not write over it
            left = existing != path  # what a killed run left, or a running run's recording
            finish = f" (`python -m streamfuse recover {existing}` finishes it)" if left else ""
            if left and being_recorded(existing):
                finish = " (another run is recording to it)"
            raise RuntimeError(f"cannot record to {path}: {existing} exists{finish}; choose another record.path or "
                               f"move it away")
    folder = next(p for p in path.absolute().parents if os.path.lexists(p))
    if (exc := write_refusal(folder)) is not None:
        why = "is not a folder" if exc.errno == errno.ENOTDIR else f"is not writable ({io_reason(exc)})"
        raise RuntimeError(f"cannot write recording {path}: {folder} {why}") from None


def encode_image(frame: Frame, frame_id: str, image: np.ndarray | None = None) -> bytes:
    """CDR bytes of a ``sensor_msgs/msg/Image`` holding ``image`` (default ``frame.image``): mono8, bgr8, or
    mono16 (the IR's counts)."""
    img = np.ascontiguousarray(frame.image if image is None else image)
    encoding = {(np.uint8, 2): b"mono8", (np.uint8, 3): b"bgr8", (np.uint16, 2): b"mono16"}.get(
        (img.dtype.type, img.ndim)) if img.shape[2:] in ((), (3,)) else None
    if encoding is None:
        raise ValueError(f"cannot record {frame.stream} frame {frame.seq}: image must be (H, W) or (H, W, 3) uint8 "
                         f"or (H, W) uint16, got {img.shape} {img.dtype}")
    height, width = img.shape[:2]
    sec, nanosec = divmod(frame.t_capture_ns, 1_000_000_000)
    fid = frame_id.encode() + b"\0"
    buf = bytearray(_CDR_LE)
    buf += struct.pack("<iII", sec, nanosec, len(fid)) + fid
    buf += b"\0" * (-(len(buf) - 4) % 4)  # CDR aligns each field to its size, counted after the 4-byte header
    enc = encoding + b"\0"
    buf += struct.pack("<III", height, width, len(enc)) + enc
    buf += b"\0"  # is_bigendian
    buf += b"\0" * (-(len(buf) - 4) % 4)
    buf += struct.pack("<II", img.strides[0], img.nbytes)
    return bytes(buf) + img.tobytes()


class Recorder:
    """Writes every raw IR and visible frame of a live run to MCAP, losslessly, in the order it is given them.

    Call :meth:`write` for each frame as the live loop receives it, before pairing: a replay pushes the frames
    to the same Pairer in the same order, so it forms the same pairs. Use as a context manager, or call
    :meth:`close`; the file gets its final name only on a clean close (a part of a split recording, when the next
    begins: :attr:`file` is the one being written). A write error (a full disk) stops the
    recording, never the live run: it is logged once and kept in :attr:`error`, the file keeps its ``.partial``
    name, and the frames not recorded are counted in ``dropped``.

    Args:
        cfg: the ``record`` section.
        frame_ids: optical frame name per stream, default ``<stream>_optical_frame``.
        queue_size: frames queued for the writer thread; beyond them :meth:`write` drops and counts.
    """

    def __init__(self, cfg: RecordConfig, frame_ids: dict[str, str] | None = None, queue_size: int = 64):
        self.path = Path(cfg.path)
        self._cfg = cfg
        self._frame_ids = {s: optical_frame(s, (frame_ids or {}).get(s, "")) for s in TOPICS}
        self.counts = {s: 0 for s in TOPICS}
        self.dropped = {s: 0 for s in TOPICS}  # frames the disk could not keep up with, or after a write error
        self.error: str | None = None  # why the recording stopped, once it has
        self.finished = False  # the error came only at the final rename: the .partial file is the whole recording
        # frames in chunks on disk, and in the chunk being filled (by the writer thread): a write error loses the latter
        self._written = {s: 0 for s in TOPICS}
        self._unflushed = {s: 0 for s in TOPICS}
        self._chunk_t0: float | None = None  # when the chunk being filled got its first frame (monotonic s)
        self._closed = False
        check_record_path(self.path, cfg.split)  # again: the run's start checked it, a while before
        self._made = [p for p in self.path.parents if not p.exists()]  # removed again by discard(), if left empty
        try:  # a new folder (runs/rig0.mcap) is made, as train --out and replay_many --out make theirs
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # the parent is a file
            raise RuntimeError(f"cannot write recording {self.path}: {self.path.parent} is not a folder") from None
        except OSError as exc:
            raise RuntimeError(f"cannot write recording {self.path}: {io_reason(exc)}") from None
        try:
            self._parts = Parts(self.path, cfg, (_SCHEMA_NAME, "ros2msg", IMAGE_SCHEMA_TEXT.encode()),
                                tuple(TOPICS.values()))
        except OSError as exc:  # (a name too long, say) the folders just made go too: the rerun starts clean
            for folder in self._made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise RuntimeError(f"cannot write recording {self.path}: {io_reason(exc)}") from None
        self._worker = WriterThread(f"record {self.path.name}", self._append, f"writing recording {self._part.partial}",
                                    queue_size, idle=(cfg.flush_s, self._flush), timed=False)

    @property
    def _part(self) -> PartWriter:
        return self._parts.part

    @property
    def file(self) -> Path:
        """The file being written, by its final name: ``path``, or the part the recording is at."""
        return self._part.path

    @property
    def parts(self) -> int:
        """Files the recording is written in: more than one with ``split_s`` or ``split_mb``."""
        return self._parts.count

    def write(self, frame: Frame) -> None:
        """Queue one raw frame (stream ``ir`` or ``vis``, capture time >= 0 ns) for the file.

        Compression and disk writes run on a worker thread. When ``queue_size`` frames wait (the disk is slower
        than the cameras) the frame is left out of the file and counted in ``dropped``, since blocking here would
        stall the live loop, and the cameras' rings would lose frames instead. After a write error (see
        :attr:`error`) every frame is left out and counted the same way; nothing is raised.
        """
        if frame.stream not in TOPICS:
            raise ValueError(f"cannot record stream {frame.stream!r}; recordable streams: {', '.join(TOPICS)}")
        if frame.t_capture_ns < 0:
            raise ValueError(f"cannot record {frame.stream} frame {frame.seq}: negative capture time "
                             f"{frame.t_capture_ns} ns (MCAP times are unsigned)")
        queued = False
        if self.error is None:
            try:
                queued = self._worker.offer(frame)
            except RuntimeError as exc:  # the writer thread failed on an earlier frame
                self._stopped(exc)
                self._close_file()  # at once: its lock would have `recover` refuse it as recorded until the run ends
        if queued:
            self.counts[frame.stream] += 1
        else:
            self.dropped[frame.stream] += 1

    def _append(self, frame: Frame) -> None:
        t_ns = frame.t_capture_ns
        if self._parts.due():  # before this frame: no part ends without a frame, nor the next begins without one
            self._worker.what = f"beginning recording part {self._parts.next_path}"
            self._parts.turn(self._flushed)  # the last part's frames on disk, under its final name
            self._worker.what = f"writing recording {self._part.partial}"
        end = self._part.file.tell()
        self._unflushed[frame.stream] += 1
        self._part.add(TOPICS[frame.stream], t_ns, encode_image(frame, self._frame_ids[frame.stream]), frame.seq)
        if frame.counts is not None:
            self._part.add(COUNTS_TOPIC, t_ns, encode_image(frame, self._frame_ids["ir"], frame.counts), frame.seq)
        now = time.monotonic()
        self._chunk_t0 = now if self._chunk_t0 is None else self._chunk_t0
        # the writer wrote out its chunk (this frame in it), or the chunk has waited flush_s: all of it to the OS,
        # which keeps it through a kill of this process
        if self._part.file.tell() != end or now - self._chunk_t0 >= self._cfg.flush_s:
            self._flush()

    def _flush(self) -> None:
        """Writer thread: the chunk being filled, if any, written out to the OS, and to the disk by the sync thread
        (the idle call too: no frame came for flush_s, so the chunk's first frame has waited that long)."""
        if self._chunk_t0 is None:
            return
        self._part.flush()
        self._flushed()

    def _flushed(self) -> None:
        self._chunk_t0 = None
        for stream, n in self._unflushed.items():
            self._written[stream] += n
            self._unflushed[stream] = 0

    def _stopped(self, exc: RuntimeError) -> None:
        """The file cannot take more: say so once, and count the frames queued behind the failure as not recorded
        (the writer thread handles none after its first error)."""
        # the writer thread keeps its error: with a traceback, that would tie our callers' frames (the live loop's,
        # holding the producers' semaphores) into a reference cycle that the CLI's os._exit never frees
        exc.with_traceback(None)
        if self.error is not None:
            return
        self.error = str(exc)
        for stream in TOPICS:
            self.dropped[stream] += self.counts[stream] - self._written[stream]
            self.counts[stream] = self._written[stream]
        kept = "what was written stays in that file" if any(self.counts.values()) else "no frame had reached it"
        kept = "what was written stays in its parts" if self._cfg.split and any(self.counts.values()) else kept
        log.error("recording stopped: %s; %s, the run goes on without recording", self.error, kept)

    def close(self, capture_dropped: dict[str, int] | None = None) -> None:
        """Write what is queued, finish the file (index, summary) and give it its final name; after a write error
        (:attr:`error`, set here too when the last frames or the summary fail) keep the ``.partial`` name, unless no
        frame reached it: that one is deleted, as it holds nothing to recover. ``capture_dropped``: frames per source
        that capture dropped before they reached the recording (the live loop fell behind them), said at the end
        beside those the disk could not keep up with. A recording given no
        frame is discarded instead (said in one line): an empty file would only block the next run's record.path."""
        if self._closed:
            return
        if not any(self.counts.values()) and self.error is None:
            self.discard()
            log.warning("no frame was recorded: no recording written to %s", self.path)
            return
        self._closed = True
        try:
            self._worker.join()
            self._parts.end()
            self._part.writer.finish()
            self._flushed()
        except RuntimeError as exc:  # the writer thread's failure
            self._stopped(exc)
        except OSError as exc:
            self._stopped(RuntimeError(f"finishing recording {self._part.partial} failed: {io_reason(exc)}"))
        except BaseException:  # a Ctrl-C cut the wait for the writer thread short: the file is its to close, once done
            self._worker.when_ended(self._close_file)
            raise
        self._close_file()
        if self.error is not None:
            if not any(self.counts.values()):  # kept, it would only block the rerun's record.path
                self._remove()
            return
        try:  # not over a file given its name while the run recorded (checked for only at the start)
            durable_rename_new(self._part.partial, self._part.path)
        except OSError as exc:  # finished, only not renamed: the run's end must still say so, and where it is
            self.error = (f"{self._part.path} appeared while the run recorded, and is not written over"
                          if isinstance(exc, FileExistsError) else io_reason(exc))
            self.finished = True
            return
        where = (f"{self.parts} parts, {part_path(self.path, 0).name} to {self._part.path.name} (a replay reads them "
                 f"all from the first)" if self._cfg.split else self.path)
        log.info("recorded %d IR and %d visible frames to %s", self.counts["ir"], self.counts["vis"], where)
        if any(self.dropped.values()):
            log.warning("%s lacks %d IR and %d visible frames that the disk could not keep up with; a replay of it "
                        "pairs what is there", self.path, self.dropped["ir"], self.dropped["vis"])
        lost = capture_dropped or {}
        if any(lost.values()):
            log.warning("%s lacks %d IR and %d visible frames that capture dropped before they reached it (the live "
                        "loop fell behind them: capture_dropped); a replay of it pairs what is there", self.path,
                        lost.get("ir", 0), lost.get("vis", 0))

    def abort(self) -> None:
        """Write what is queued and the chunk being filled, and close without the final name: the ``.NAME.partial``
        file stays readable, for ``recover``."""
        if self._closed:
            return
        self._closed = True
        try:
            self._worker.join()
            self._flush()  # the worker has stopped: its open chunk (up to flush_s of frames) was lost with the file
        except RuntimeError as exc:
            if self.error is None:  # not said yet
                log.warning("%s", exc)
        except OSError as exc:
            log.warning("the last frames of %s could not be written: %s", self._part.partial, io_reason(exc))
        self._close_file()

    def _close_file(self) -> None:
        """Close the file, after its sync thread (closed even when this raises): bytes still buffered behind a write
        error (a disk full from its first byte) fail again here, which is that error, not one to raise out of the run's
        end. Called again once closed, it does nothing."""
        self._part.sync.close()
        try:
            self._part.file.close()
        except OSError as exc:
            self._stopped(RuntimeError(f"writing recording {self._part.partial} failed: {io_reason(exc)}"))

    def discard(self) -> None:
        """Close and delete the recording, and the folders made for it: a run that failed at its start (a source
        that never delivered a frame) keeps nothing that its corrected rerun would be refused over."""
        self.abort()
        self._remove()

    def _remove(self) -> None:
        self._part.partial.unlink(missing_ok=True)
        for index in range(self.parts - 1):  # a split recording's finished parts: the rerun would be refused over them
            part_path(self.path, index).unlink(missing_ok=True)
        for folder in self._made:
            with contextlib.suppress(OSError):  # not empty: another run's or a user's files went there meanwhile
                folder.rmdir()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        elif any(self.counts.values()):
            self.abort()
        else:  # a run that failed before its first frame: nothing to keep
            self.discard()
