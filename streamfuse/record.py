"""RecordConfig, the lossless MCAP recorder of live rigs, the ``mcap`` source that replays it, and the video writer.

Recording format: MCAP (indexed, zstd chunks; Foxglove opens it, ROS 2 tooling reads it). Channels:

- ``/ir/image`` and ``/vis/image``, schema ``sensor_msgs/msg/Image`` (encoding ``ros2msg``), messages
  ``cdr``-encoded: ``header.stamp`` = capture time, ``header.frame_id`` = the optical frame, ``height``,
  ``width``, ``encoding`` (``mono8`` IR, ``bgr8`` or ``mono8`` visible), ``is_bigendian`` = 0, ``step`` (bytes
  per row) and ``data`` (the raw pixels).
- MCAP record fields: ``log_time`` = ``publish_time`` = the frame's ``t_capture_ns`` (integer ns, exact),
  ``sequence`` = the frame's per-source ``seq``.

Why the ROS 2 layout rather than a JSON schema: JSON would need base64 pixels (a third larger, slow to encode);
CDR ``sensor_msgs/Image`` is raw bytes after a 40-byte header, and Foxglove and ``ros2 bag`` show it as an image
with no plug-in. Why MCAP rather than lossless video + sidecar: one indexed file holds both streams, exact ns
times and sequence numbers travel with every frame, and messages stay in the order the live loop saw them,
which is what makes a replay reproduce the live pairs exactly.

Every output (recording or fused video) is written under a hidden temporary name (``.NAME.partial``) and
renamed only when complete, so a crash never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import av
import cv2
import numpy as np
from mcap.exceptions import McapError
from mcap.reader import NonSeekingReader
from mcap.writer import CompressionType, Writer

from streamfuse.capture.sources import BaseSource, SourceConfig, SourceError
from streamfuse.config import check
from streamfuse.frames import Frame
from streamfuse.registry import register

__all__ = ["RecordConfig", "Recorder", "McapSource", "read_recording", "VideoWriter", "partial_path", "work_paths",
           "pick_encoder", "container_format", "decode_frames", "TOPICS"]

log = logging.getLogger(__name__)

TOPICS = {"ir": "/ir/image", "vis": "/vis/image"}
_STREAMS = {topic: stream for stream, topic in TOPICS.items()}
_SCHEMA_NAME = "sensor_msgs/msg/Image"
_SCHEMA_TEXT = """std_msgs/Header header
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
        path: output ``.mcap`` file (written as ``.NAME.partial`` and renamed when the run ends cleanly).
        format: ``mcap`` (the only format; see the module docstring for why).
        compression: MCAP chunk compression, ``zstd`` or ``none``.
        chunk_mb: uncompressed chunk size in MiB (a crash loses at most the chunk being filled).
    """

    path: str = ""
    format: Literal["mcap"] = "mcap"
    compression: Literal["zstd", "none"] = "zstd"
    chunk_mb: float = 4.0

    def __post_init__(self) -> None:
        check(self.path != "", "path", self.path, "a file path such as runs/rig0.mcap")
        check(0.0625 <= self.chunk_mb <= 256, "chunk_mb", self.chunk_mb, "0.0625..256 MiB")


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name an output is written under: ``dir/out.mp4`` -> ``dir/.out.mp4.partial``."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def work_paths(path: str | os.PathLike) -> list[Path]:
    """Every file a :class:`VideoWriter` for ``path`` writes: the output, its partial file and its remux file."""
    partial = partial_path(path)
    return [Path(path), partial, partial.with_suffix(".remux")]


# ---------------------------------------------------------------------------------------------------------- MCAP


def _encode_image(frame: Frame, frame_id: str) -> bytes:
    """CDR bytes of a ``sensor_msgs/msg/Image`` holding ``frame.image`` (mono8 or bgr8)."""
    img = np.ascontiguousarray(frame.image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or img.shape[2:] not in ((), (3,)):
        raise ValueError(f"cannot record {frame.stream} frame {frame.seq}: image must be (H, W) or (H, W, 3) uint8, "
                         f"got {img.shape} {img.dtype}")
    height, width = img.shape[:2]
    encoding = b"mono8" if img.ndim == 2 else b"bgr8"
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


def _decode_image(data: bytes) -> np.ndarray:
    """Image of a CDR ``sensor_msgs/msg/Image`` (mono8, bgr8 or rgb8) -> ``(H, W)`` or ``(H, W, 3)`` BGR uint8."""
    if data[:4] != _CDR_LE:
        raise ValueError("not a little-endian CDR sensor_msgs/Image message")
    pos = 4

    def take(fmt: str) -> tuple:
        nonlocal pos
        pos += -(pos - 4) % struct.calcsize(fmt[1])
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals

    def string() -> bytes:
        nonlocal pos
        (n,) = take("<I")
        pos += n
        return bytes(data[pos - n:pos - 1])

    take("<iI")  # stamp (the capture time is the MCAP log_time)
    string()  # frame_id
    height, width = take("<II")
    encoding = string().decode()
    take("<B")  # is_bigendian: 8-bit encodings have no byte order
    step, n = take("<II")
    channels = {"mono8": 1, "bgr8": 3, "rgb8": 3}.get(encoding)
    if channels is None:
        raise ValueError(f"image encoding {encoding!r} is not supported; supported: mono8, bgr8, rgb8")
    rows = np.frombuffer(data, np.uint8, count=n, offset=pos).reshape(height, step)
    img = rows[:, :width * channels].reshape((height, width, channels) if channels == 3 else (height, width))
    return cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if encoding == "rgb8" else img.copy()


class _Worker:
    """Runs ``handle(item)`` for each queued item, in order, on one thread; the bounded queue gives back-pressure.

    Used for the disk and codec work of the recorder and the video writer: zstd and FFmpeg release the GIL, so
    the work overlaps the caller's. The first failure stops the handling (later items are drained unhandled, so
    :meth:`put` never blocks on a dead worker) and is raised, as one line, by the next :meth:`put` or :meth:`join`.
    """

    def __init__(self, name: str, handle: Callable[[Any], None], what: str, maxsize: int):
        self.busy_ns: list[int] = []  # handling time per item
        self.error: RuntimeError | None = None
        self._handle, self._what = handle, what
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue
            t0 = time.perf_counter_ns()
            try:
                self._handle(item)
            except Exception as exc:  # noqa: BLE001 -- any failure must reach the caller, not end the thread
                self.error = RuntimeError(f"{self._what} failed: {_why(exc)}")
            self.busy_ns.append(time.perf_counter_ns() - t0)

    def put(self, item: Any) -> None:
        """Queue one item (blocks while the queue is full); raises the worker's error, if any."""
        if self.error is not None:
            raise self.error
        self._queue.put(item)

    def join(self) -> None:
        """Handle everything queued, stop the thread; raises the worker's error, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.error is not None:
            raise self.error


class Recorder:
    """Writes every raw IR and visible frame of a live run to MCAP, losslessly, in the order it is given them.

    Call :meth:`write` for each frame as the live loop receives it, before pairing: a replay pushes the frames
    to the same Pairer in the same order, so it forms the same pairs. Use as a context manager, or call
    :meth:`close`; the file gets its final name only on a clean close.

    Args:
        cfg: the ``record`` section.
        frame_ids: optical frame name per stream, default ``<stream>_optical_frame``.
        queue_size: frames queued for the writer thread before :meth:`write` blocks.
    """

    def __init__(self, cfg: RecordConfig, frame_ids: dict[str, str] | None = None, queue_size: int = 64):
        self.path = Path(cfg.path)
        self._partial = partial_path(self.path)
        self._frame_ids = {s: (frame_ids or {}).get(s) or f"{s}_optical_frame" for s in TOPICS}
        self.counts = {s: 0 for s in TOPICS}
        try:
            self._file = open(self._partial, "wb")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise RuntimeError(f"cannot write recording {self.path}: {exc.strerror}") from None
        compression = CompressionType.ZSTD if cfg.compression == "zstd" else CompressionType.NONE
        self._writer = Writer(self._file, chunk_size=int(cfg.chunk_mb * 2**20), compression=compression)
        self._writer.start(profile="ros2", library="streamfuse")
        schema = self._writer.register_schema(_SCHEMA_NAME, "ros2msg", _SCHEMA_TEXT.encode())
        self._channels = {s: self._writer.register_channel(topic, "cdr", schema, {"seq": "mcap_sequence"})
                          for s, topic in TOPICS.items()}
        self._worker = _Worker(f"record {self.path.name}", self._append, f"writing recording {self._partial}",
                               queue_size)

    def write(self, frame: Frame) -> None:
        """Queue one raw frame (stream ``ir`` or ``vis``, capture time >= 0 ns) for the file.

        Compression and disk writes run on a worker thread; when ``queue_size`` frames wait (the disk is slower
        than the cameras) this blocks rather than lose a frame. A write error is raised by the next call.
        """
        if frame.stream not in self._channels:
            raise ValueError(f"cannot record stream {frame.stream!r}; recordable streams: {', '.join(TOPICS)}")
        if frame.t_capture_ns < 0:
            raise ValueError(f"cannot record {frame.stream} frame {frame.seq}: negative capture time "
                             f"{frame.t_capture_ns} ns (MCAP times are unsigned)")
        self._worker.put(frame)
        self.counts[frame.stream] += 1

    def _append(self, frame: Frame) -> None:
        self._writer.add_message(self._channels[frame.stream], log_time=frame.t_capture_ns, publish_time=
                                 frame.t_capture_ns, data=_encode_image(frame, self._frame_ids[frame.stream]),
                                 sequence=frame.seq)

    def close(self) -> None:
        """Write what is queued, finish the file (index, summary) and give it its final name."""
        if self._file.closed:
            return
        try:
            self._worker.join()
            self._writer.finish()
        except OSError as exc:
            raise RuntimeError(f"finishing recording {self._partial} failed: {exc.strerror or exc}") from None
        finally:
            self._file.close()
        os.replace(self._partial, self.path)
        log.info("recorded %d IR and %d visible frames to %s", self.counts["ir"], self.counts["vis"], self.path)

    def abort(self) -> None:
        """Write what is queued and close without the final name: the ``.NAME.partial`` file stays readable."""
        if self._file.closed:
            return
        try:
            self._worker.join()
        except RuntimeError as exc:
            log.warning("%s", exc)
        self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_recording(path: str | os.PathLike, streams: tuple[str, ...] = ("ir", "vis")) -> Iterator[Frame]:
    """Frames of a recording in the order they were recorded (the live loop's order).

    Reads sequentially, so a recording whose writer was killed (no index) still yields every complete chunk;
    the truncated end raises SourceError naming how many frames were read. Channels without our ``seq``
    marker (e.g. a ROS 2 bag) get sequence numbers counted from 0.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recording not found: {path}")
    wanted = {TOPICS[s] for s in streams}
    counts: dict[str, int] = {s: 0 for s in streams}
    with open(path, "rb") as f:
        try:
            for _, channel, msg in NonSeekingReader(f).iter_messages(topics=sorted(wanted), log_time_order=False):
                stream = _STREAMS[channel.topic]
                seq = msg.sequence if channel.metadata.get("seq") == "mcap_sequence" else counts[stream]
                counts[stream] += 1
                yield Frame(stream, seq, msg.log_time, _decode_image(msg.data))
        except (McapError, EOFError, struct.error, ValueError) as exc:
            raise SourceError(f"recording {path} is truncated or corrupt after {sum(counts.values())} frames "
                              f"({str(exc) or type(exc).__name__})") from None


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
        if not Path(self.cfg.path).is_file():
            raise SourceError(f"{self.section}: recording not found: {self.cfg.path}")
        self._pace_anchor = None  # a reopen replays from the first recorded time: pace from there afresh
        self._it = self._frames()

    def _frames(self) -> Iterator[Frame]:
        shift_ns, seq_offset = 0, 0
        while True:
            last = first_ns = prev_ns = None
            for frame in read_recording(self.cfg.path, (self.section,)):
                first_ns = frame.t_capture_ns if first_ns is None else first_ns
                prev_ns = last.t_capture_ns - shift_ns if last is not None else frame.t_capture_ns
                frame.t_capture_ns += shift_ns
                frame.seq += seq_offset  # the recorded seq, not BaseSource's counter
                self._pace(frame.t_capture_ns)
                last = frame
                yield frame
            if not self.cfg.loop or last is None:
                return
            # the next pass starts one frame interval after this one ended
            last_ns = last.t_capture_ns - shift_ns
            shift_ns += last_ns - first_ns + max(last_ns - prev_ns, 1)
            seq_offset = last.seq + 1

    def _read(self) -> Frame | None:
        return next(self._it, None)

    def _close(self) -> None:
        self._it.close()  # closes the recording file now rather than when the generator is collected


# ---------------------------------------------------------------------------------------------- fused video writer

_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".nut": "nut", ".avi": "avi"}
_H264_ENCODERS = ("libx264", "libopenh264", "mpeg4")


def container_format(path: Path) -> str:
    """FFmpeg muxer for an output path's extension; an unknown one raises ValueError listing the known."""
    fmt = _CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"output {path}: unknown container {path.suffix!r}; use one of {', '.join(_CONTAINERS)}")
    return fmt


def pick_encoder(codec: str) -> str:
    """FFmpeg encoder for ``h264`` or ``ffv1``: libx264, else libopenh264, else mpeg4 (logged), as PyAV has them."""
    if codec == "ffv1":
        if "ffv1" not in av.codecs_available:
            raise RuntimeError("this PyAV build has no ffv1 encoder; use replay.codec: h264")
        return "ffv1"
    for name in _H264_ENCODERS:
        if name in av.codecs_available:
            if name != "libx264":
                log.warning("PyAV has no libx264; encoding with %s instead", name)
            return name
    raise RuntimeError(f"this PyAV build has none of the encoders {', '.join(_H264_ENCODERS)}")


class VideoWriter:
    """Fused frames -> a video file with caller-given pts, written to ``.NAME.partial`` and remuxed on commit.

    The partial file is NUT whatever the final container: it has no index to write at the end and every packet
    is flushed to disk as it is muxed, so after a kill (even SIGKILL) it still decodes up to its last whole packet
    (:func:`decode_frames`), and NUT keeps any codec and the exact integer pts. :meth:`commit` remuxes it (packets
    copied, no re-encoding) into the container the extension asks for.

    Media notes: MP4/MOV get ``video_track_timescale`` and ``movie_timescale`` equal to the time base
    denominator, so output pts equal the input pts as integers (MP4 otherwise rescales to its own timescale and
    writes the start offset in ms). Matroska stores times in ms, so there pts agree to within 1 ms. NUT would
    shift every pts by the encoder's B-frame delay to avoid a negative dts unless told not to. H.264 wants
    even sizes for 4:2:0; odd sizes use 4:4:4. FFV1 is stored as ``bgr0``, bit-exact to the BGR input.

    Args:
        path: final output path; its extension picks the container (.mp4 .m4v .mov .mkv .nut .avi).
        codec: ``h264`` (libx264 when PyAV has it) or ``ffv1`` (lossless).
        crf: H.264 constant rate factor (0 = lossless .. 51); ignored by ffv1.
        preset: libx264 preset (speed vs size); ignored by the other encoders.
        time_base: time base of the pts passed to :meth:`write` (the input's, e.g. 1/15360).
        rate: nominal frame rate, for the encoder's rate control.
        width, height: frame size in pixels.
        metadata: container tags (e.g. the resolved config).
        queue_size: frames queued for the encoder thread before :meth:`write` blocks.
    """

    def __init__(self, path: str | os.PathLike, *, codec: str, crf: int, time_base: Fraction, rate: Fraction,
                 width: int, height: int, preset: str = "veryfast", metadata: dict[str, str] | None = None,
                 queue_size: int = 4):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        fmt = container_format(self.path)
        if codec == "ffv1" and fmt in ("mp4", "mov"):
            raise ValueError(f"output {self.path}: FFV1 cannot be stored in {self.path.suffix}; use .mkv or .nut")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output folder does not exist: {self.path.parent}")
        if not os.access(self.path.parent, os.W_OK):
            raise PermissionError(f"output folder is not writable: {self.path.parent}")
        self.encoder = pick_encoder(codec)
        self._format, self._options = fmt, _muxer_options(fmt, time_base)
        self._metadata, self._rate = metadata or {}, rate
        self.count, self._last_pts, self._finished = 0, None, False
        try:
            self._container = av.open(str(self.partial), mode="w", format="nut",
                                      options={**_muxer_options("nut", time_base), "flush_packets": "1"})
        except (OSError, av.FFmpegError) as exc:
            raise RuntimeError(f"cannot write output {self.path}: {_why(exc)}") from None
        stream = self._container.add_stream(self.encoder, rate=rate, options=self._codec_options(crf, preset))
        stream.width, stream.height = width, height
        stream.pix_fmt = self._pix_fmt(width, height)
        stream.time_base = self.time_base = time_base
        stream.codec_context.time_base = time_base
        if self.encoder != "libx264" and self.encoder != "ffv1":
            stream.bit_rate = int(width * height * float(rate) * 0.2)  # ~0.2 bit/pixel: visually clean
        self._stream = stream
        self._worker = _Worker(f"encode {self.path.name}", self._encode, f"writing {self.partial}", queue_size)
        self.busy_ns = self._worker.busy_ns  # encoder thread time per frame

    def _codec_options(self, crf: int, preset: str) -> dict[str, str]:
        if self.encoder == "libx264":
            return {"crf": str(crf), "preset": preset}
        if self.encoder == "ffv1":
            return {"level": "3", "slicecrc": "1"}
        return {}

    def _pix_fmt(self, width: int, height: int) -> str:
        if self.encoder == "ffv1":
            return "bgr0"
        if width % 2 or height % 2:
            if self.encoder != "libx264":
                raise ValueError(f"{self.encoder} needs an even frame size, got {width}x{height}")
            return "yuv444p"
        return "yuv420p"

    def write(self, image: np.ndarray, pts: int) -> None:
        """Queue one ``(H, W, 3)`` BGR or ``(H, W)`` grey uint8 image with presentation time ``pts`` for encoding.

        Encoding runs on a worker thread, overlapping the next frame's fusion; a full queue blocks here
        (back-pressure). An encoder or disk error is raised by the next call.
        """
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"output pts must increase: {pts} after {self._last_pts}")
        self._worker.put((image, pts))
        self._last_pts = pts
        self.count += 1

    def _encode(self, item: tuple[np.ndarray, int]) -> None:
        image, pts = item
        frame = av.VideoFrame.from_ndarray(image, format="bgr24" if image.ndim == 3 else "gray")
        frame.pts, frame.time_base = pts, self.time_base  # not stream.time_base: the muxer may change that
        self._container.mux(self._stream.encode(frame))

    def _finish(self) -> None:
        self._finished = True
        self._worker.join()
        try:
            self._container.mux(self._stream.encode(None))  # flush the encoder's delayed frames
            self._container.close()
        except (OSError, av.FFmpegError) as exc:
            raise RuntimeError(f"finishing {self.partial} failed: {_why(exc)}") from None

    def commit(self) -> None:
        """Encode what is queued, flush, close, remux into the final container and rename it to the final name
        (atomic on one filesystem); the partial file is removed only then."""
        self._finish()
        remuxed = work_paths(self.path)[2]
        try:
            self._remux(remuxed)
        except (OSError, av.FFmpegError) as exc:
            remuxed.unlink(missing_ok=True)
            raise RuntimeError(f"writing {self.path} from {self.partial} failed: {_why(exc)}") from None
        os.replace(remuxed, self.path)
        self.partial.unlink()

    def _remux(self, dst: Path) -> None:
        """Copy the partial file's packets into ``dst`` in the final container, with the tags."""
        with av.open(str(self.partial)) as src, \
                av.open(str(dst), mode="w", format=self._format, options=self._options) as out:
            stream = out.add_stream_from_template(src.streams.video[0])
            stream.time_base, stream.codec_context.framerate = self.time_base, self._rate
            out.metadata.update(self._metadata)
            for packet in src.demux(src.streams.video[0]):
                if packet.size:  # the demuxer ends with an empty flush packet
                    # NUT keeps no packet durations; without them the final file's duration and rate come out wrong
                    packet.duration = packet.duration or round(1 / (self._rate * packet.time_base))
                    packet.stream = stream
                    out.mux(packet)

    def abort(self) -> None:
        """Encode what is queued, flush and close, keeping the temporary name (``--resume`` reads it); never raises."""
        try:
            if not self._finished:
                self._finish()
                return
        except RuntimeError as exc:
            log.warning("%s; it may be unreadable", exc)
        try:
            self._container.close()
        except (OSError, av.FFmpegError):
            pass  # already closed, or the disk is still full: the partial file is what it is


def _muxer_options(fmt: str, time_base: Fraction) -> dict[str, str]:
    """FFmpeg muxer options that keep the caller's integer pts (see :class:`VideoWriter`)."""
    if fmt == "nut":
        return {"avoid_negative_ts": "disabled"}
    if fmt not in ("mp4", "mov"):
        return {}
    opts = {"movflags": "use_metadata_tags"}  # keep our own tags (the config, streamfuse_t0_ns)
    if time_base.numerator == 1:
        opts |= {"video_track_timescale": str(time_base.denominator), "movie_timescale": str(time_base.denominator)}
    return opts


def _why(exc: BaseException) -> str:
    """The OS or FFmpeg reason of an I/O error, without PyAV's call details."""
    return getattr(exc, "strerror", None) or str(exc)


def decode_frames(path: str | os.PathLike) -> Iterator[tuple[Fraction, np.ndarray]]:
    """``(time in s, BGR image)`` of every frame of a video that decodes; stops quietly at a truncated end.

    A file cut by a kill ends in a packet that reaches the end of the file: its data may be short, and a short
    H.264 packet decodes into a damaged picture without any error, so that packet is left out.
    """
    size = Path(path).stat().st_size if Path(path).is_file() else None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            decoder = stream.codec_context
            for packet in container.demux(stream):
                cut = size is not None and packet.size and packet.pos is not None and packet.pos + packet.size >= size
                for frame in decoder.decode(None if cut or not packet.size else packet):
                    yield frame.pts * stream.time_base, frame.to_ndarray(format="bgr24")
                if cut:
                    return
    except (OSError, av.FFmpegError, IndexError) as exc:
        log.info("stopped reading %s: %s", path, _why(exc))

