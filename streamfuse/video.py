"""The fused video writer and the decoder helpers that read its output back (PyAV).

A :class:`VideoWriter` writes to ``.NAME.partial`` (NUT, readable after a kill) and remuxes into the final name on
:meth:`VideoWriter.commit`; :func:`decode_frames` reads any video up to its last whole packet, which is what a
resumed replay takes over from a partial file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from streamfuse.atomic_write import WriterThread, durable_replace, partial_path
from streamfuse.errors import io_reason
from streamfuse.signals import finished_first

__all__ = ["VideoWriter", "work_paths", "pick_encoder", "container_format", "decode_frames", "upright",
           "announced_end_s", "announced_frames", "read_tags", "LENIENT_TAGS", "LET_GO", "MP4_FINEST_TIMESCALE"]

log = logging.getLogger(__name__)

_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".nut": "nut", ".avi": "avi"}
_H264_ENCODERS = ("libx264", "libopenh264", "mpeg4")
_DURATION_IS_END = {"matroska", "webm", "nut", "flv"}  # FFmpeg demuxers whose duration counts from 0 (see below)
MP4_FINEST_TIMESCALE = 1_000_000  # ticks a second: a frame's duration fits MP4's 31 bits up to 35 minutes
# when a second stop stops a writer's end: a codec freed under the frame in its hands crashes, so that one is waited for
LET_GO = "as soon as the encoder lets go of the frame in its hands"
_NUT_TAG_BYTES = 1000  # FFmpeg's NUT demuxer drops a tag value of 1 KiB or more (the resolved config is ~2 KB)
# av.open's options for a file of others: tags that are not UTF-8 (an AVI's Latin-1 INFO title, which FFmpeg plays)
# replaced, where PyAV up to 18 decodes them strictly (19 escapes them itself and takes no such option)
LENIENT_TAGS = {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}


def work_paths(path: str | os.PathLike) -> list[Path]:
    """Every file a :class:`VideoWriter` for ``path`` writes: the output, its partial file and its remux file."""
    partial = partial_path(path)
    return [Path(path), partial, partial.with_suffix(".remux")]


def container_format(path: Path, codec: str | None = None) -> str:
    """FFmpeg muxer for an output path's extension; ValueError (one line) for an unknown one, or one that cannot
    keep ``codec``'s frames as written: FFV1 has no place in MP4/MOV, and AVI stores no pts, so H.264's reordered
    frames would come back with guessed, shifted times."""
    fmt = _CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"output {path}: unknown container {path.suffix!r}; use one of {', '.join(_CONTAINERS)}")
    if codec == "ffv1" and fmt in ("mp4", "mov"):
        raise ValueError(f"output {path}: FFV1 cannot be stored in {path.suffix}; use .mkv, .nut or .avi")
    if codec == "h264" and fmt == "avi":
        raise ValueError(f"output {path}: H.264 in .avi loses its frame times (AVI stores none); use .mp4 or .mkv, "
                         f"or codec ffv1")
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
    writes the start offset in ms); a time base finer than 1 us (the ns of frame folders and recordings) gets 1 MHz,
    pts kept to the microsecond, since MP4 holds a frame's duration in 31 bits: at 1 ns no pause over 2.1 s.
    Matroska stores times in ms, so there pts agree to within 1 ms. NUT would shift every pts by the encoder's
    B-frame delay to avoid a negative dts unless told not to. H.264 wants even sizes for 4:2:0; odd sizes use 4:4:4.
    FFV1 is stored as ``bgr0``, bit-exact to the BGR input.

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
        threads: the encoder's own threads; 0 = FFmpeg's choice (libx264: about 1.5 per core).
        threaded: encode on a thread of its own (``write`` hands the frame over); False: in ``write``.
    """

    def __init__(self, path: str | os.PathLike, *, codec: str, crf: int, time_base: Fraction, rate: Fraction,
                 width: int, height: int, preset: str = "veryfast", metadata: dict[str, str] | None = None,
                 queue_size: int = 4, threads: int = 0, threaded: bool = True):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        fmt = container_format(self.path, codec)
        if not self.path.parent.is_dir():
            why = "is a file" if self.path.parent.exists() else "does not exist"
            raise FileNotFoundError(f"output folder {why}: {self.path.parent}")
        if not os.access(self.path.parent, os.W_OK):
            raise PermissionError(f"output folder is not writable: {self.path.parent}")
        self.encoder = pick_encoder(codec)
        self._format, self._options = fmt, _muxer_options(fmt, time_base)
        self.metadata, self._rate = metadata or {}, rate
        self.count, self._last_pts, self._finished, self._sealed, self.encoded = 0, None, False, False, False
        try:
            self._container = av.open(str(self.partial), mode="w", format="nut",
                                      options={**_muxer_options("nut", time_base), "flush_packets": "1"})
        except (OSError, av.FFmpegError) as exc:
            raise RuntimeError(f"cannot write output {self.path}: {io_reason(exc)}") from None
        stream = self._container.add_stream(self.encoder, rate=rate, options=self._codec_options(crf, preset))
        stream.width, stream.height = width, height
        stream.pix_fmt = self._pix_fmt(width, height)
        stream.time_base = self.time_base = time_base
        stream.codec_context.time_base = time_base
        if threads:
            stream.codec_context.thread_count = threads
        if self.encoder != "libx264" and self.encoder != "ffv1":
            stream.bit_rate = int(width * height * float(rate) * 0.2)  # ~0.2 bit/pixel: visually clean
        try:  # an encoder refusing the frame size (FFV1 one pixel wide) fails now, not as a write of a first frame
            stream.codec_context.open()
        except (OSError, av.FFmpegError) as exc:
            self._container.close()
            raise RuntimeError(f"cannot encode {width}x{height} frames with {self.encoder}: {io_reason(exc)}") from None
        self._stream, self.size = stream, (height, width)  # (H, W) of every frame
        self._worker = WriterThread(f"encode {self.path.name}", self._encode, f"writing {self.partial}", queue_size,
                                    threaded=threaded)
        self.busy_ns = self._worker.busy_ns  # encoder thread time per frame

    @classmethod
    def encoded_whole(cls, path: str | os.PathLike, *, codec: str, time_base: Fraction, rate: Fraction,
                      metadata: dict[str, str]) -> VideoWriter:
        """A writer of ``path`` whose partial file an earlier writer encoded and closed whole, its remux cut short (a
        full disk): :meth:`commit` remuxes that file as it is, no frame encoded again."""
        writer = cls.__new__(cls)
        writer.path, writer.partial, writer.time_base = Path(path), partial_path(path), time_base
        writer._format = container_format(writer.path, codec)
        writer._options, writer.metadata, writer._rate = _muxer_options(writer._format, time_base), metadata, rate
        writer.encoded, writer._sealed = True, False
        return writer

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
        if image.shape[:2] != self.size:  # the encoder would rescale it silently
            raise ValueError(f"frame {self.count} is {image.shape[1]}x{image.shape[0]}, the video's frames are "
                             f"{self.size[1]}x{self.size[0]} (the input changed size)")
        self._worker.put((image, pts))
        self._last_pts = pts
        self.count += 1

    def _encode(self, item: tuple[np.ndarray, int]) -> None:
        image, pts = item
        frame = av.VideoFrame.from_ndarray(image, format="bgr24" if image.ndim == 3 else "gray")
        frame.pts, frame.time_base = pts, self.time_base  # not stream.time_base: the muxer may change that
        self._container.mux(self._stream.encode(frame))

    def _finish(self) -> None:
        """Encode what is queued, flush the encoder, close the file; cut short by a stop, the file stays as far as it
        got, closed by the encoder thread as it ends where that still runs (under it, a freed codec: a segfault)."""
        self._finished = True
        try:
            self._worker.join()
            self._container.mux(self._stream.encode(None))  # flush the encoder's delayed frames
            self._container.close()
        except (OSError, av.FFmpegError) as exc:
            raise RuntimeError(f"finishing {self.partial} failed: {io_reason(exc)}") from None
        except KeyboardInterrupt:
            self._worker.abandon(self._close)
            raise

    def _close(self) -> None:
        with contextlib.suppress(OSError, av.FFmpegError):  # the disk still full: the partial file is what it is
            self._container.close()

    def seal(self) -> None:
        """Encode what is queued, flush, close and remux into the final container under a temporary name (the long
        part of :meth:`commit`); on an error or Ctrl-C the half-written copy goes and the partial file stays. A first
        stop as the encoder takes the last frames (the queue's, its own delayed ones) waits for the file to be whole."""
        if not self.encoded:
            with finished_first(until=f"the encoder has written its last frames into {self.partial}", cut=LET_GO):
                self._finish()
                self.encoded = True  # every frame: a writer sealed is one the caller gives no more
        remuxed = work_paths(self.path)[2]
        try:
            self._remux(remuxed)
        except (OSError, av.FFmpegError) as exc:
            remuxed.unlink(missing_ok=True)
            raise RuntimeError(f"writing {self.path} from {self.partial} failed: {io_reason(exc)}") from None
        except KeyboardInterrupt:  # the partial file stays for --resume
            remuxed.unlink(missing_ok=True)
            raise
        self._sealed = True

    def commit(self) -> None:
        """:meth:`seal` (unless done), then rename the remuxed copy to the final name (atomic on one filesystem); the
        partial file is removed only then."""
        if not self._sealed:
            self.seal()
        durable_replace(work_paths(self.path)[2], self.path)
        self.partial.unlink()

    def _remux(self, dst: Path) -> None:
        """Copy the partial file's packets into ``dst`` in the final container, with the tags."""
        slot = self._frame_slot()
        with av.open(str(self.partial)) as src, \
                av.open(str(dst), mode="w", format=self._format, options=self._options) as out:
            stream = out.add_stream_from_template(src.streams.video[0])
            stream.time_base, stream.codec_context.framerate = slot or self.time_base, self._rate
            out.metadata.update(_split_tags(self.metadata) if self._format == "nut" else self.metadata)
            muxed = 0
            for packet in src.demux(src.streams.video[0]):
                if packet.size:  # the demuxer ends with an empty flush packet
                    if slot:  # FFV1 (AVI's only codec here) has no reordering: dts is pts
                        packet.pts = packet.dts = round(packet.pts * packet.time_base / slot)
                        packet.time_base, packet.duration = slot, 1
                        if packet.pts > 0 and not muxed:
                            # AVI's muxer fills the slots before a frame with empty chunks only once one is written:
                            # without one in the first slot the first frame would be at 0 s
                            out.mux(_empty(stream, slot))
                    # NUT keeps no packet durations; without them the final file's duration and rate come out wrong
                    packet.duration = packet.duration or round(1 / (self._rate * packet.time_base))
                    packet.stream = stream
                    out.mux(packet)
                    muxed += 1

    def _frame_slot(self) -> Fraction | None:
        """AVI's time base, one frame's time (``1 / rate``), where every frame lies within 1 ms of a slot of its own
        (a constant rate); else None (the pts' own time base, a variable rate's times kept). Players take AVI's time
        base for the frame rate and count its slots as frames: with the pts' own (1/1000 from Matroska) a 30 fps
        video said 1000 fps and 100,000 frames, 3,000 of them real."""
        if self._format != "avi":
            return None
        slot = 1 / Fraction(self._rate)
        with av.open(str(self.partial)) as src:
            times = [p.pts * p.time_base for p in src.demux(src.streams.video[0]) if p.size]
        slots = [round(t / slot) for t in times]
        if all(a < b for a, b in zip(slots, slots[1:])) and all(abs(t - n * slot) <= Fraction(1, 1000)
                                                                 for t, n in zip(times, slots)):
            return slot
        return None

    def abort(self) -> None:
        """Encode what is queued, flush and close, keeping the temporary name (``--resume`` reads it); never raises."""
        try:
            if not self._finished:
                self._finish()
                return
        except RuntimeError as exc:
            log.warning("%s; it may be unreadable", exc)
        except KeyboardInterrupt:  # the run's second stop: the file as far as it got (_finish)
            return
        with contextlib.suppress(RuntimeError):  # its error was said where it stopped the run
            self._worker.join()  # an abandoned encoder thread closes the file as it ends (soon): it is counted next
        self._close()  # where that thread closed it already: nothing


def _empty(stream: av.video.stream.VideoStream, slot: Fraction) -> av.Packet:
    """An empty packet of ``stream`` in its first slot: a frame slot holding no picture."""
    packet = av.Packet()
    packet.pts = packet.dts = 0
    packet.time_base, packet.duration, packet.stream = slot, 1, stream
    return packet


def _split_tags(tags: dict[str, str]) -> dict[str, str]:
    """NUT's tags: a value too long for its demuxer goes on in ``KEY_2``, ``KEY_3``, ... (:func:`read_tags`)."""
    split = {}
    for key, value in tags.items():
        data, start, n = value.encode(), 0, 1
        while start < len(data) or n == 1:
            end = min(start + _NUT_TAG_BYTES, len(data))
            while end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a character
                end -= 1
            split[key if n == 1 else f"{key}_{n}"] = data[start:end].decode()
            start, n = end, n + 1
    return split


def read_tags(container: av.container.InputContainer) -> dict[str, str]:
    """A video's container tags, keys in lower case (Matroska writes COMMENT), a NUT tag's parts joined again."""
    tags = {k.lower(): v for k, v in container.metadata.items()}
    for key in [k for k in tags if f"{k}_2" in tags]:
        n = 2
        while f"{key}_{n}" in tags:
            tags[key] += tags.pop(f"{key}_{n}")
            n += 1
    return tags


def _muxer_options(fmt: str, time_base: Fraction) -> dict[str, str]:
    """FFmpeg muxer options that keep the caller's integer pts (see :class:`VideoWriter`)."""
    if fmt == "nut":
        return {"avoid_negative_ts": "disabled"}
    if fmt not in ("mp4", "mov"):
        return {}
    opts = {"movflags": "use_metadata_tags"}  # keep our own tags (the config, streamfuse_t0_ns)
    if time_base.numerator == 1:
        scale = str(min(time_base.denominator, MP4_FINEST_TIMESCALE))
        opts |= {"video_track_timescale": scale, "movie_timescale": scale}
    return opts


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
        log.info("stopped reading %s: %s", path, io_reason(exc))


def upright(frame: av.VideoFrame, image: np.ndarray) -> np.ndarray:
    """``image`` (``frame``'s pixels) turned as the frame's display matrix says, as players show it: a phone's portrait
    clip is stored sideways."""
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def announced_end_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                    first_dts: int | None = None) -> float | None:
    """Where the container says the video ``stream`` ends, s on its pts clock (None when it does not say), to notice
    a silently truncated file.

    A stream's own duration is a span from its start. A container's is too, except that Matroska/WebM and NUT give
    the end of their timeline, counted from 0: start + duration would put the end of a video that starts late (its
    first pts at 10 s, say) that much too late and make it look truncated. FLV's counts from its first dts
    (``first_dts``: the stream's first packet's, in its time base), before the first pts by the B-frame delay; without
    it, from 0 (an end never later than the real one). The container's is used only when the video is all it holds:
    audio often runs longer than the video. AVI counts frame slots, empty chunks (skipped frames: a late start, a
    variable rate) included: its count times the frame duration is its end, in a truncated file too (whose duration
    FFmpeg only estimates), and the end of its last packet's slot (dts + duration), not a decoded pts (a decoder may
    put a frame one slot later), is what to compare it with.
    """
    names = set(container.format.name.split(","))
    if "avi" in names and stream.frames:
        return float(stream.frames * stream.time_base)
    if stream.duration:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base)
    if not container.duration or len(container.streams) > 1:
        return None
    if "flv" in names and first_dts is not None:
        return float(first_dts * stream.time_base) + container.duration / 1e6
    start = 0 if _DURATION_IS_END & names else container.start_time or 0
    return (start + container.duration) / 1e6


def announced_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """How many frames the container says the video ``stream`` has (as MP4 does), to notice a truncated file; 0 when
    it does not say, and for AVI, whose count takes in the empty chunks of skipped frames (:func:`announced_end_s`
    turns it into where the video ends)."""
    return 0 if "avi" in container.format.name.split(",") else stream.frames
