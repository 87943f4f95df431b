"""Replay inputs: the IR and visible paths resolved into sources, read on decoder threads, merged by time and (with
``pacing: realtime``) released at their recorded times.

An input is a video file, a folder of numbered frames, or one MCAP recording holding both streams (then read as
one source, in recorded order, which reproduces the live run's pairs). :func:`find_pairs` lists the pairs of a
batch.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import os
import queue
import shlex
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import av

from streamfuse.bitdepth import IMAGE_SUFFIXES
from streamfuse.capture.bag_folder import STORAGE_SUFFIXES, is_bag_folder
from streamfuse.capture.image_folder import frame_files
from streamfuse.capture.mcap_source import image_topics, read_recording, recording_files, topic_of
from streamfuse.capture.sources import SourceError
from streamfuse.capture.timestamps import JUMP_NS, FileClock
from streamfuse.errors import io_reason, not_found
from streamfuse.file_names import local_name
from streamfuse.frames import Frame
from streamfuse.recording import being_recorded
from streamfuse.stage_samples import StageSamples
from streamfuse.video import LENIENT_TAGS, announced_frames

__all__ = ["Input", "Reader", "RecordedOrder", "Pacing", "input_kind", "input_path", "resolve", "check_pair",
           "merged", "on_topic", "outside", "no_pairs", "size_changed", "ListedPair", "find_pairs"]

log = logging.getLogger(__name__)

_VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".nut", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".vob",
               ".asf", ".m2ts", ".mts", ".3gp", ".ogv", ".mxf", ".y4m"}
_DEPTH = 4  # frames a reader decodes ahead of the loop


@dataclass
class Input:
    """One resolved input: its SourceConfig (kind inferred from the path) and what the container says."""

    stream: str
    cfg: Any  # SourceConfig
    time_base: Fraction  # unit of output pts when this is the visible input
    rate: Fraction  # nominal frame rate
    expected: int | None = None  # frame count the container states (the progress bar's total)
    shift: int = 0  # added to a video's pts in the output, which holds none below 0 (an MPEG-TS begun near its wrap)


def input_kind(path: Path) -> str:
    if is_bag_folder(path):  # a ros2 bag's folder, read as ``ros2 bag play`` plays it
        return "mcap"
    if path.is_dir():
        return "folder"
    # a recording (or a ROS 1 bag) cut short by a crash keeps its temporary name: still readable up to its last
    # complete chunk; a ROS 2 bag in sqlite3 storage and a ROS 1 bag are read as recordings too
    return "mcap" if path.name.lower().endswith((*STORAGE_SUFFIXES, ".mcap.partial", ".bag.active")) else "file"


def input_path(section: Any, override: str | os.PathLike | None) -> Path | None:
    """The input path used: ``--ir``/``--vis`` when given, else the config's ``path`` (None when neither)."""
    return Path(override) if override else Path(section.path) if section.path else None


def resolve(stream: str, section: Any, override: str | os.PathLike | None, decode_threads: int = 0) -> Input:
    """SourceConfig of one input (kind from the path, no pacing or looping; ``decode_threads`` when not 0) and what
    its container says."""
    path = input_path(section, override)
    if path is None:
        raise ValueError(f"no {stream} input: pass --{stream} PATH or set {stream}.path in the config")
    if not path.exists() and not override and section.kind in ("camera", "stream"):  # `replay --config rig`
        raise ValueError(f"no {stream} input: the config's {stream} is a live {section.kind} ({section.path}); pass "
                         f"--{stream} PATH of a recorded input")
    if not path.exists():
        raise FileNotFoundError(f"{stream} input {not_found(path)}: {path}")
    if not (path.is_file() or path.is_dir()):  # a FIFO or a device: reading it would wait for a writer for ever
        raise ValueError(f"{stream} input {path} is not a file or a folder of frames (a pipe or a device?)")
    kind = input_kind(path)
    cfg = dataclasses.replace(section, kind=kind, path=str(path), realtime=False, loop=False, restart=False,
                              decode_threads=decode_threads or section.decode_threads)
    rate = Fraction(section.fps).limit_denominator(1001)
    if kind == "folder":
        n = len(frame_files(path, f"{stream} input folder"))
        if n == 0:
            bags = sorted(p.name for p in path.iterdir() if p.name.lower().endswith(STORAGE_SUFFIXES))
            raise ValueError(f"{stream} input folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})" + (
                f"; its {', '.join(bags)}: a ros2 bag without its metadata.yaml (`ros2 bag reindex` writes it), or "
                f"give a bag file as the input" if bags else ""))
        return Input(stream, cfg, Fraction(1, 1_000_000_000), rate, n)
    if kind == "mcap":
        if being_recorded(path):  # its end is where the writer is now: read, it would look truncated
            raise ValueError(f"{stream} input {path} is being recorded by a running run (its record.path); replay it "
                             f"once that run has ended and named it")
        recording_files(path)  # each file or part there: one line now rather than after some of them
        _check_topic(stream, cfg, path)
        return Input(stream, cfg, Fraction(1, 1_000_000_000), rate)
    try:
        with av.open(str(path), **LENIENT_TAGS) as container:  # a Latin-1 title read, as the file source reads it
            if not container.streams.video:
                raise ValueError(f"{stream} input {path} has no video stream")
            st = container.streams.video[0]
            if (sar := st.sample_aspect_ratio) and sar != 1:  # anamorphic: its players stretch it, ours would not
                log.warning("%s input %s has non-square pixels (sample aspect ratio %d:%d): they are fused and written "
                            "as stored, so the output shows %dx%d where its players show %dx%d; scale it to square "
                            "pixels first (ffmpeg -vf scale=iw*sar:ih,setsar=1)", stream, path, sar.numerator,
                            sar.denominator, st.width, st.height, round(st.width * sar), st.height)
            return Input(stream, cfg, Fraction(st.time_base), Fraction(st.average_rate or rate),
                         announced_frames(container, st) or None, max(0, -(st.start_time or 0)))
    except (OSError, av.FFmpegError) as exc:
        raise ValueError(f"{stream} input {path} is not a video PyAV can read ({io_reason(exc)})") from None


def check_pair(ir: Input, vis: Input) -> None:
    """``ValueError`` (one line) for two inputs that are no pair: a recording beside another input (it holds both
    streams), or one video or frame folder given as both (each frame would be fused with itself)."""
    recording, same = "mcap" in (ir.cfg.kind, vis.cfg.kind), os.path.samefile(ir.cfg.path, vis.cfg.path)
    if recording and not same:  # IR from --vis
        raise ValueError(f"a recording holds both streams: give the .mcap alone as --ir, or the same file to --ir "
                         f"and --vis (got {ir.cfg.path} and {vis.cfg.path})")
    if same and not recording:
        raise ValueError(f"the IR and visible inputs are one {ir.cfg.kind} ({ir.cfg.path}, {vis.cfg.path}): give "
                         f"each its own")


def on_topic(inp: Input) -> str:
    """`` on TOPIC (STREAM.topic)`` for a recording's stream, where it was read from; '' for another input."""
    return f" on {topic_of(inp.stream, inp.cfg)} ({inp.stream}.topic)" if inp.cfg.kind == "mcap" else ""


def _check_topic(stream: str, cfg: Any, path: Path) -> None:
    """A recording with a summary that has no image channel on the stream's topic: one line naming those it has."""
    found, topic = image_topics(path), topic_of(stream, cfg)
    if found is None or topic in found:  # no summary (cut short), or the topic is there (empty: said at the end)
        return
    listed = ", ".join(f"{t} ({schema}" + (f", {n} messages)" if n is not None else ")")
                       for t, (schema, n) in sorted(found.items())) or "none"
    raise ValueError(f"{stream} input {path} has no images on {topic} ({stream}.topic); its image topics: {listed}")


class Reader:
    """Decodes one source (or a whole recording in recorded order) on a worker thread, a few frames ahead.

    FFmpeg releases the GIL while decoding, so this overlaps fusion. A full queue blocks the thread (nothing is
    dropped); a read error ends the stream and is kept as ``error``.

    Args:
        name: ``ir``, ``vis`` or ``recording``.
        source: a capture Source (opened).
        path: the input's path, for messages.
        wait_ns: gets the time :meth:`next` waited for each frame (the loop's "decode" stage).
        busy_ns: gets the thread's own time per frame ("decode_thread").
        periods_ns: each stream's frame interval, ns: where its frame comes after a clock stepped back.
        threaded: decode on the worker thread; false decodes each frame in :meth:`next` (no overlap, one core).

    Frames keep their capture times; merging, pacing and the span checks go by each stream's time line instead
    (``line_ns`` of the frame taken last): the same times, but where the recording rig's clock was stepped back they
    go on from one frame interval after the frame before (:class:`~streamfuse.capture.timestamps.FileClock`).
    """

    def __init__(self, name: str, source: Any, path: str, wait_ns: StageSamples, busy_ns: StageSamples,
                 periods_ns: dict[str, int], *, threaded: bool = True):
        self.name, self.source, self.path, self.wait_ns, self.busy_ns = name, source, path, wait_ns, busy_ns
        self.error, self.ended = "", False
        self.line_ns = 0  # time line of the frame taken last, ns
        self.first_ns: int | None = None  # time line of the first and the last frame taken, ns
        self.last_ns: int | None = None
        self._lines = {s: FileClock(p, rebase_ahead=False) for s, p in periods_ns.items()}
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=_DEPTH)
        # _ended, not Thread.join: a join that a Ctrl-C cut short takes the thread for ended (Python before 3.13)
        self._stop, self._ended, self._began = threading.Event(), threading.Event(), False
        # started by start(), once the caller holds this reader to stop; without it next() pulls _inline
        self._thread = threading.Thread(target=self._run, name=f"decode {name}", daemon=True) if threaded else None
        self._inline: Iterator[Frame] | None = None if threaded else self._decoded()

    def start(self) -> None:
        """Start decoding on the worker thread (with ``threaded``)."""
        if self._thread is not None:
            self._began = True  # first: a Ctrl-C can come as start() waits for the thread, which then runs on
            self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self._decoded():
                self._put(frame)
        finally:
            self._put(None)  # the loop never waits forever on a dead thread
            self._ended.set()

    def _decoded(self) -> Iterator[Frame]:
        """The source's frames until its end, a read error (kept as ``error``) or :meth:`stop`."""
        handled = False
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter_ns()
                frame = self.source.read()
                self.busy_ns.append(time.perf_counter_ns() - t0)
                if frame is None:
                    break
                yield frame
            handled = True
        except SourceError as exc:
            self.error, handled = str(exc), True
        except av.FFmpegError as exc:  # one the source did not word (a frame's conversion, say): still one line
            self.error, handled = f"{self.name}: {self.path}: decoding failed: {io_reason(exc)}", True
        finally:
            if not handled:  # an unexpected exception: threading logs its traceback
                self.error = f"the {self.name} decoder failed (see the log)"

    def _put(self, item: Frame | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> Frame | None:
        """The next frame, or None at the end (then ``error`` says whether it ended early)."""
        if self.ended:
            return None
        t0 = time.perf_counter_ns()
        frame = self._queue.get() if self._inline is None else next(self._inline, None)
        self.wait_ns.append(time.perf_counter_ns() - t0)
        self.ended = frame is None
        if frame is not None:
            self.line_ns = self._lines[frame.stream].stamp(frame.t_capture_ns)
            self.first_ns = self.line_ns if self.first_ns is None else self.first_ns
            self.last_ns = self.line_ns
        return frame

    def stop(self) -> bool:
        """Stop decoding; whether the thread ended: its source may be closed only then (FFmpeg would crash in it)."""
        self._stop.set()
        return not self._began or self._ended.wait(5.0)


class RecordedOrder:
    """A recording's IR and visible frames as one source, in the order they were recorded (each on its topic)."""

    def __init__(self, ir: Input, vis: Input):
        self._it = read_recording(vis.cfg.path, {i.stream: topic_of(i.stream, i.cfg) for i in (ir, vis)},
                                  ir.cfg.palette)

    def read(self) -> Frame | None:
        return next(self._it, None)

    def close(self) -> None:
        self._it.close()


class Pacing:
    """``pacing: realtime``: each frame is released at its recorded time (its time line), counted from the first."""

    _t_first: int | None = None
    _wall0_ns = 0  # the first frame's release: a wait before it (for a subscriber, a slow open) makes no frame late

    def drop(self, t_ns: int, next_ns: int | None) -> bool:
        """Wait until the frame at ``t_ns`` is due; True (drop it) when the next frame of its stream (at ``next_ns``)
        is already due: newest wins, as live."""
        if self._t_first is None:
            self._t_first, self._wall0_ns = t_ns, time.perf_counter_ns()
        due = t_ns - self._t_first - (time.perf_counter_ns() - self._wall0_ns)
        if due > JUMP_NS:  # the rig's clock was stepped forward: not a gap to sleep through (as a paced video's)
            self._t_first, due = self._t_first + due, 0
        if due > 0:
            time.sleep(due / 1e9)
            return False
        return next_ns is not None and next_ns - self._t_first <= time.perf_counter_ns() - self._wall0_ns


def merged(readers: list[Reader]) -> Iterator[tuple[Frame, int, int | None]]:
    """Frames of all readers, earliest on their time lines first; each with its time line and that of the next frame
    of its own stream (or None).

    Every reader's first frame is taken before the first is yielded, and a reader has ended (``ended``) by the time
    its last frame is yielded, so each reader's time span is known as far as the frames yielded need it.
    """
    heads = [(r.next(), r.line_ns) for r in readers]
    while True:
        live = [i for i, (f, _) in enumerate(heads) if f is not None]
        if not live:
            return
        i = min(live, key=lambda k: (heads[k][1], k))
        (frame, t_ns), heads[i] = heads[i], (readers[i].next(), readers[i].line_ns)
        after, next_ns = heads[i]
        yield frame, t_ns, (next_ns if after is not None and after.stream == frame.stream else None)


def outside(t_ns: int, other: Reader, tolerance_ns: int) -> str:
    """``before`` or ``after`` when a frame at ``t_ns`` lies outside the other stream's time span by more than the
    pairing tolerance (so it can never pair), else ''."""
    if other.first_ns is None or t_ns < other.first_ns - tolerance_ns:
        return "before"
    if other.ended and t_ns > other.last_ns + tolerance_ns:
        return "after"
    return ""


def no_pairs(inputs: tuple[Input, Input], first_t: dict[str, int], last_t: dict[str, int], sync: Any) -> str:
    """Why inputs that both have frames formed no pair: their time ranges and how they overlap.

    Args:
        inputs: the IR and visible inputs.
        first_t, last_t: capture time of each stream's first and last frame, ns.
        sync: the SyncConfig (its pairing tolerance).
    """
    # files: their own pts times; folders and recordings: from the earlier input's first frame
    origin = 0 if all(inp.cfg.kind == "file" for inp in inputs) else min(first_t.values())
    span = {k: f"{(first_t[k] - origin) / 1e9:.3f}-{(last_t[k] - origin) / 1e9:.3f} s" for k in ("ir", "vis")}
    tolerance = f"sync.hold_ms = {sync.hold_ms:g}" if sync.mode == "latest" else f"sync.slop_ms = {sync.slop_ms:g}"
    ranges = f"IR {span['ir']}, visible {span['vis']}"
    overlap_s = (min(last_t.values()) - max(first_t.values())) / 1e9
    if overlap_s < 0:
        return f"no pairs formed: the IR and visible times do not overlap ({ranges})"
    return (f"no pairs formed: the IR and visible times overlap for {overlap_s:.3f} s ({ranges}) but no IR and "
            f"visible frames there are within {tolerance} ms of each other")


def size_changed(vis: Input, frame: Frame, size: tuple[int, int], written: int) -> str:
    """Why a visible frame of another size than the output's (``size``: H, W) stops the run: the input and where."""
    h, w = frame.image.shape[:2]
    return (f"output frame {written} is {w}x{h}, the video's frames are {size[1]}x{size[0]} (the visible input "
            f"{vis.cfg.path} changes size at its frame {frame.seq}, counted from 0)")


class ListedPair(NamedTuple):
    """A pair of a batch: its IR and visible inputs, and its output's name where a list file gives one."""

    ir: Path
    vis: Path
    name: str = ""


def find_pairs(list_or_dir: str | os.PathLike) -> list[ListedPair]:
    """Recorded pairs to replay: a text file of ``IR VIS [NAME]`` lines (relative paths are relative to the file; words
    as a shell splits them: quotes or a backslash keep spaces in a path, ``#`` starts a comment; ``NAME``, the
    output's file name without its extension, tells apart two archives' IR files of one name), or a folder with
    ``ir/`` and ``vi/`` (or ``vis/``) subfolders of same-named videos."""
    src = Path(list_or_dir)
    if src.is_dir():
        vis_dir = next((src / d for d in ("vi", "vis") if (src / d).is_dir()), None)
        if not (src / "ir").is_dir() or vis_dir is None:
            raise ValueError(f"{src} must hold ir/ and vi/ (or vis/) subfolders of same-named videos")
        # hidden files are none: a Mac's "._NAME.mp4" (its metadata, copied onto a drive beside NAME.mp4) failed a pair
        exts = _VIDEO_EXTS | {".mcap"}
        ir_files = sorted((src / "ir").iterdir())
        pairs = [ListedPair(p, vis_dir / p.name) for p in ir_files if p.suffix.lower() in exts and p.name[0] != "."]
        # a missing visible video fails its pair alone when it runs, as in a list file; a visible video without an
        # IR one, or an IR file that is no video by its name, is not a pair at all, so say so here
        ir_names = {p.name for p, _, _ in pairs}
        alone = sorted(p.name for p in vis_dir.iterdir()
                       if p.suffix.lower() in exts and p.name[0] != "." and p.name not in ir_names)
        if alone:
            log.warning("%s: no IR video of the same name for %s; not replayed", vis_dir, ", ".join(alone))
        unknown = [p.name for p in ir_files if p.name not in ir_names]
        if unknown:
            log.warning("%s: %d %s hidden or without a video or recording extension (first: %s); not replayed",
                        src / "ir", len(unknown), "entry" if len(unknown) == 1 else "entries", unknown[0])
        return pairs
    if not src.is_file():
        raise FileNotFoundError(f"pair list not found: {src}")
    raw = src.read_bytes().removeprefix(codecs.BOM_UTF8)  # an editor's byte order mark is not part of the first path
    text = raw.decode("utf-8", "surrogateescape")  # a name's bytes that are not UTF-8 (`ls > list`) kept as they are
    if "\0" in text and text != raw.decode("utf-8", "replace"):  # NULs among bytes that are no UTF-8: a video or a
        # recording given where its list belongs
        raise ValueError(f"{src} is not a pair list (a text file of 'IR VIS' lines) nor a folder of pairs")
    return [pair for n, line in enumerate(text.splitlines(), 1) if (pair := _listed(src, n, line))]


def _listed(src: Path, n: int, line: str) -> ListedPair | None:
    """Line ``n`` of a pair list: its pair, or None for a blank or comment line."""
    if "\0" in line:  # no path holds one; the OS refuses it later without saying where it came from
        raise ValueError(f"{src}:{n}: a NUL byte in {line.strip()!r} (a list written with -print0?); give one pair "
                         f"a line, its paths separated by spaces")
    try:  # as a shell reads words: a path with spaces or '#' in quotes or escaped
        parts = shlex.split(line, comments=True)
    except ValueError as exc:
        raise ValueError(f"{src}:{n}: {exc} in {line.strip()!r}") from None
    if not parts:
        return None
    if len(parts) not in (2, 3):
        raise ValueError(f"{src}:{n}: expected 'IR_PATH VIS_PATH [OUTPUT_NAME]' (quote a path with spaces), got "
                         f"{line.strip()!r}")
    parts = [local_name(part) for part in parts]  # the files, under any locale
    name = parts[2] if len(parts) == 3 else ""
    if name and ("/" in name or name.startswith(".")):  # inside the output folder, and none of its work files
        raise ValueError(f"{src}:{n}: output name {name!r} must be a file name (no '/', not starting with '.')")
    ir, vis = (p if p.is_absolute() else src.parent / p for p in map(Path, parts[:2]))
    return ListedPair(ir, vis, name)
