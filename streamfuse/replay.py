"""ReplayConfig and the offline replay loop: a recorded IR/visible pair -> one fused video, every frame.

Inputs are two video files, two folders of numbered frames, or one MCAP recording (``streamfuse.record``);
they are read through the same capture Sources as a live rig, so every later stage sees the same ``Frame``
objects. The loop is written in data-flow order: decode -> pair -> fuse -> postprocess -> encode (-> publish).

- ``pacing: fast`` reads the next frame of whichever stream is earliest in capture time, so the Pairer's
  queues never overflow and nothing is dropped; a recording is read in the order it was recorded, which
  reproduces the live run's pairs exactly. ``pacing: realtime`` releases frames at their recorded times; a
  frame whose successor is already due when it is taken is dropped (newest wins, as on a live rig) and counted.
- Output pts are the visible frame's pts in the visible file's time base (folders and recordings: ns since
  the first visible frame, whose capture time is stored in the ``streamfuse_t0_ns`` tag).
- Frames of one input outside the other input's time span (it started later or ended earlier) cannot pair: they
  are counted unpaired without going through the Pairer (whose bounded queue would count them dropped), and the
  summary says which input ended first.
- The video is written as ``.OUT.partial`` (NUT: readable after a kill) and remuxed into the final name only when
  every frame is in; a run that stops early (error, truncated input, Ctrl-C, SIGTERM) keeps the partial file and
  a ``.OUT.partial.json`` sidecar and raises :class:`ReplayError`; one killed outright keeps them too.
  ``resume`` re-encodes the frames the partial file holds (checked against the re-read pairs' times, so nothing
  is fused twice) and fuses from the first frame it lacks.
- The output (and every file it is written through) must not be one of the inputs, by any path or link.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import av
import cv2
import numpy as np

from streamfuse.capture.sources import SourceError, open_source
from streamfuse.config import check
from streamfuse.frames import Frame, FramePair, FusedFrame
from streamfuse.record import (VideoWriter, _why, container_format, decode_frames, partial_path, read_recording,
                               work_paths)

__all__ = ["ReplayConfig", "ReplayError", "ReplaySummary", "run_replay", "find_pairs",
           "check_output_paths", "STAGES"]

log = logging.getLogger(__name__)

# Decoding and encoding run on worker threads: "decode" and "encode" are the loop's waits on them (what limits
# throughput); "decode_thread" and "encode_thread" are those threads' own time per frame, which overlaps the loop
# (so shares can add up to more than 100%).
STAGES = ("decode", "pair", "fuse", "postprocess", "encode", "publish", "decode_thread", "encode_thread")
_INTERRUPTED = "interrupted (Ctrl-C)"
_TERMINATED = "interrupted (SIGTERM)"
_OTHER = {"ir": "vis", "vis": "ir"}
_NAMES = {"ir": "IR", "vis": "visible"}
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}
_VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".nut", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}


@dataclass(frozen=True)
class ReplayConfig:
    """Offline replay of a recorded pair.

    Args:
        out: fused video path (``--out``); the extension picks the container (.mp4 .mkv .mov .nut .avi).
        pacing: ``fast`` (every frame, as fast as possible) or ``realtime`` (recorded rate, live drop rules).
        codec: ``h264`` (libx264 when PyAV has it, else libopenh264 or mpeg4, logged) or ``ffv1`` (lossless; .mkv).
        crf: H.264 quality, 0 (lossless) .. 51; 18 is visually lossless.
        preset: libx264 speed/size trade-off; ``ultrafast`` encodes ~3x faster into ~2x larger files.
        frames_dir: also write every fused frame as ``NNNNNN.png`` here (empty: no).
        publish: also publish every fused frame over ZeroMQ (the ``publish`` section).
        resume: continue an interrupted replay from its partial output (``--resume``).
        progress: show a progress bar (on a terminal).
    """

    out: str = ""
    pacing: Literal["fast", "realtime"] = "fast"
    codec: Literal["h264", "ffv1"] = "h264"
    crf: int = 18
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "veryfast"
    frames_dir: str = ""
    publish: bool = False
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check(0 <= self.crf <= 51, "crf", self.crf, "0..51")


class ReplayError(RuntimeError):
    """A replay that did not finish; the message is one line and says where the partial output is."""

    def __init__(self, message: str, summary: ReplaySummary | None = None, *, interrupted: bool = False):
        super().__init__(message)
        self.summary = summary
        self.interrupted = interrupted  # Ctrl-C or SIGTERM: a batch should stop too


class _Terminated(KeyboardInterrupt):
    """SIGTERM during a replay: raised where the main thread is, as Ctrl-C raises KeyboardInterrupt."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the replay as Ctrl-C does (main thread only); the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already stopping: a second SIGTERM must not cut the cleanup
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class ReplaySummary:
    """What a replay did. Times in seconds, stage latencies in ms; ``share`` is the stage's part of wall time."""

    ir: str
    vis: str
    out: str
    complete: bool = False
    stopped: str = ""  # why the run ended early; empty when complete
    encoder: str = ""
    frames: dict[str, int] = field(default_factory=lambda: {"ir": 0, "vis": 0})  # frames read per source
    pairs: int = 0  # pairs formed by the Pairer
    fused: int = 0
    reused: int = 0  # frames taken over from a partial output (resume)
    written: int = 0
    unpaired: dict[str, int] = field(default_factory=lambda: {"ir": 0, "vis": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"ir": 0, "vis": 0})
    # unpaired frames outside the other input's time span, per stream: {"before": n, "after": n}
    outside: dict[str, dict[str, int]] = field(default_factory=lambda: {s: {"before": 0, "after": 0} for s in _OTHER})
    note: str = ""  # what the unequal inputs did (which ended first, how many frames were left unpaired)
    wall_s: float = 0.0
    fps: float = 0.0  # written frames per wall second
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    def format(self) -> str:
        """The summary as one log block."""
        state = "complete" if self.complete else f"NOT complete: {self.stopped}"
        lines = [
            f"replay {self.ir} + {self.vis} -> {self.out} ({state})",
            f"  read ir {self.frames['ir']}, vis {self.frames['vis']} | pairs {self.pairs} | fused {self.fused}"
            f" | reused {self.reused} | written {self.written} | unpaired ir {self.unpaired['ir']}, vis "
            f"{self.unpaired['vis']} | dropped ir {self.dropped['ir']}, vis {self.dropped['vis']}",
            *([f"  note: {self.note}"] if self.note else []),
            f"  wall {self.wall_s:.2f} s, {self.fps:.1f} frames/s, encoder {self.encoder or '-'}",
            f"  {'stage':<14}{'median ms':>10}{'p99 ms':>10}{'share':>8}",
        ]
        lines += [f"  {name:<14}{s['median_ms']:>10.2f}{s['p99_ms']:>10.2f}{s['share']:>8.1%}"
                  for name, s in self.stages.items()]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ inputs


@dataclass
class _Input:
    """One resolved input: its SourceConfig (kind inferred from the path) and what the container says."""

    stream: str
    cfg: Any  # SourceConfig
    time_base: Fraction  # unit of output pts when this is the visible input
    rate: Fraction  # nominal frame rate
    expected: int | None = None  # frame count the container states
    end_s: float | None = None  # end time the container states, s


def _kind(path: Path) -> str:
    if path.is_dir():
        return "folder"
    # a recording cut short by a crash keeps its temporary name: still readable up to its last complete chunk
    return "mcap" if path.name.lower().endswith((".mcap", ".mcap.partial")) else "file"


def _input_path(section: Any, override: str | os.PathLike | None) -> Path | None:
    """The input path used: ``--ir``/``--vis`` when given, else the config's ``path`` (None when neither)."""
    return Path(override) if override else Path(section.path) if section.path else None


def _resolve(stream: str, section: Any, override: str | os.PathLike | None) -> _Input:
    """SourceConfig of one input (kind from the path, no pacing or looping) and what its container says."""
    path = _input_path(section, override)
    if path is None:
        raise ValueError(f"no {stream} input: pass --{stream} PATH or set {stream}.path in the config")
    if not path.exists():
        raise FileNotFoundError(f"{stream} input not found: {path}")
    kind = _kind(path)
    cfg = dataclasses.replace(section, kind=kind, path=str(path), realtime=False, loop=False, restart=False)
    rate = Fraction(section.fps).limit_denominator(1001)
    if kind == "folder":
        n = sum(1 for p in path.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        if n == 0:
            raise ValueError(f"{stream} input folder {path} holds no image files ({', '.join(sorted(_IMAGE_EXTS))})")
        return _Input(stream, cfg, Fraction(1, 1_000_000_000), rate, n)
    if kind == "mcap":
        return _Input(stream, cfg, Fraction(1, 1_000_000_000), rate)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{stream} input {path} has no video stream")
            st = container.streams.video[0]
            end = None
            if st.duration:
                end = float(((st.start_time or 0) + st.duration) * st.time_base)
            elif container.duration:
                end = ((container.start_time or 0) + container.duration) / 1e6
            return _Input(stream, cfg, Fraction(st.time_base), Fraction(st.average_rate or rate), st.frames or None,
                          end)
    except (OSError, av.FFmpegError) as exc:
        raise ValueError(f"{stream} input {path} is not a video PyAV can read ({_why(exc)})") from None


class _Reader:
    """Decodes one source (or a whole recording in recorded order) on a worker thread, a few frames ahead.

    FFmpeg releases the GIL while decoding, so this overlaps fusion. A full queue blocks the thread (nothing is
    dropped); a read error ends the stream and is kept as ``error``.

    Args:
        name: ``ir``, ``vis`` or ``recording``.
        source: a capture Source (opened).
        wait_ns: gets the time :meth:`next` waited for each frame (the loop's "decode" stage).
        busy_ns: gets the thread's own time per frame ("decode_thread").
        depth: frames decoded ahead.
    """

    def __init__(self, name: str, source: Any, wait_ns: list[int], busy_ns: list[int], depth: int = 4):
        self.name, self.source, self.wait_ns, self.busy_ns = name, source, wait_ns, busy_ns
        self.error = ""
        self.first_ns: int | None = None  # capture time of the first and the last frame taken, ns
        self.last_ns: int | None = None
        self.ended = False
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"decode {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        handled = False
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter_ns()
                frame = self.source.read()
                self.busy_ns.append(time.perf_counter_ns() - t0)
                if frame is None:
                    break
                self._put(frame)
            handled = True
        except SourceError as exc:
            self.error, handled = str(exc), True
        finally:
            if not handled:  # an unexpected exception: threading logs its traceback
                self.error = f"the {self.name} decoder thread failed (see the log)"
            self._put(None)  # the loop never waits forever on a dead thread

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
        frame = self._queue.get()
        self.wait_ns.append(time.perf_counter_ns() - t0)
        self.ended = frame is None
        if frame is not None:
            self.first_ns = frame.t_capture_ns if self.first_ns is None else self.first_ns
            self.last_ns = frame.t_capture_ns
        return frame

    def stop(self) -> None:
        """Stop the thread (before the source is closed)."""
        self._stop.set()
        self._thread.join(timeout=5.0)


class _RecordedOrder:
    """A recording's IR and visible frames as one source, in the order they were recorded."""

    def __init__(self, path: str):
        self._it = read_recording(path)

    def read(self) -> Frame | None:
        return next(self._it, None)

    def close(self) -> None:
        self._it.close()


def _merged(readers: list[_Reader]) -> Iterator[tuple[Frame, Frame | None]]:
    """Frames of all readers, earliest capture time first; each with the next frame of its own stream (or None).

    Every reader's first frame is taken before the first is yielded, and a reader has ended (``ended``) by the time
    its last frame is yielded, so each reader's time span is known as far as the frames yielded need it.
    """
    heads = [r.next() for r in readers]
    while True:
        live = [i for i, f in enumerate(heads) if f is not None]
        if not live:
            return
        i = min(live, key=lambda k: (heads[k].t_capture_ns, k))
        frame, heads[i] = heads[i], readers[i].next()
        yield frame, (heads[i] if heads[i] is not None and heads[i].stream == frame.stream else None)


def _outside(t_ns: int, other: _Reader, tolerance_ns: int) -> str:
    """``before`` or ``after`` when a frame at ``t_ns`` lies outside the other stream's time span by more than the
    pairing tolerance (so it can never pair), else ''."""
    if other.first_ns is None or t_ns < other.first_ns - tolerance_ns:
        return "before"
    if other.ended and t_ns > other.last_ns + tolerance_ns:
        return "after"
    return ""


# ------------------------------------------------------------------------------------------------------ outputs


def _same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file: equal once links are resolved, or one inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then only the resolved paths could have matched
        return False


def check_output_paths(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None],
                       frames_dir: str | os.PathLike = "") -> None:
    """Refuse, before anything is opened, an output that would be written over one of its inputs.

    The output and every file it is written through (partial, remux, sidecar) are compared with each input by
    resolved path and by inode, so another spelling, a symlink or a hard link of an input is caught too; an input
    inside ``frames_dir`` would be overwritten by the frame PNGs.

    Args:
        out: the fused video path.
        inputs: ``{"ir": path, "vis": path}`` (None or '' entries are skipped).
        frames_dir: the folder the fused frames are also written to ('' = none).

    Raises:
        ValueError: one line naming the output and the input.
    """
    out = Path(out)
    written = [*work_paths(out), _sidecar(out), _sidecar(out).with_suffix(".tmp"), _old(out)]
    for stream, path in inputs.items():
        if not path:
            continue
        path = Path(path)
        hit = next((w for w in written if _same_file(w, path)), None)
        if hit is not None:
            through = "" if hit == out else f" (through its temporary file {hit.name})"
            raise ValueError(f"output {out} would overwrite the {_NAMES[stream]} input {path}{through}; "
                             f"choose another --out")
        if frames_dir and any(_same_file(Path(frames_dir), p) for p in (path, *path.resolve().parents)):
            raise ValueError(f"replay.frames_dir {frames_dir} would overwrite the {_NAMES[stream]} input {path}; "
                             f"choose another folder")


# ------------------------------------------------------------------------------------------------------ resume


def _fingerprint(cfg: Any, ir: _Input, vis: _Input) -> dict[str, Any]:
    """What must be unchanged for a partial output to be continued: inputs (size, mtime) and fusing settings."""
    def stat(path: str) -> list[int]:
        st = Path(path).stat()
        return [st.st_size, st.st_mtime_ns] if Path(path).is_file() else [0, st.st_mtime_ns]

    conf = cfg.to_dict()
    return {"ir": [ir.cfg.path, *stat(ir.cfg.path)], "vis": [vis.cfg.path, *stat(vis.cfg.path)],
            "ir_resize": ir.cfg.resize, "sync": conf["sync"], "align": conf["align"], "fuse": conf["fuse"],
            "post": conf["post"], "codec": [cfg.replay.codec, cfg.replay.crf, cfg.replay.preset]}


def _sidecar(out: Path) -> Path:
    return partial_path(out).with_name(partial_path(out).name + ".json")


def _old(out: Path) -> Path:
    """Where a resumed run keeps the interrupted run's partial file while it takes its frames over."""
    return partial_path(out).with_name(partial_path(out).name + ".old")


def _resume_source(out: Path, fingerprint: dict[str, Any], pacing: str) -> Iterator | None:
    """Decoded frames of the partial output to take over, or None (with the reason logged) to start over."""
    partial, sidecar = partial_path(out), _sidecar(out)
    if not partial.exists():
        log.warning("nothing to resume for %s (no %s); starting from the beginning", out, partial.name)
        return None
    if pacing != "fast":
        log.warning("cannot resume %s: realtime pacing drops frames differently on every run; starting over", out)
        return None
    try:
        saved = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        log.warning("cannot resume %s: its sidecar %s is missing or unreadable; starting over", out, sidecar.name)
        return None
    changed = [k for k in fingerprint if saved.get("fingerprint", {}).get(k) != json.loads(json.dumps(fingerprint[k]))]
    if changed:
        log.warning("cannot resume %s: %s changed since the interrupted run; starting over", out, ", ".join(changed))
        return None
    try:
        with av.open(str(partial)) as container:
            container.streams.video[0]
    except (OSError, av.FFmpegError, IndexError) as exc:
        log.warning("cannot resume %s: its partial file does not decode (%s); starting over", out, _why(exc))
        return None
    old = _old(out)
    os.replace(partial, old)
    log.info("resuming %s: re-encoding the frames of the interrupted run, then fusing the rest", out)
    return _consume(old)


def _consume(path: Path) -> Iterator[tuple[Fraction, np.ndarray]]:
    """Decoded frames of ``path``; the file is deleted when the iterator ends or is closed (the new partial output
    holds every frame taken over by then)."""
    try:
        yield from decode_frames(path)
    finally:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ the loop


class _Clock:
    """Per-stage durations (ns) for the summary."""

    def __init__(self) -> None:
        self.ns: dict[str, list[int]] = {s: [] for s in STAGES}
        self._t = 0

    def start(self) -> None:
        self._t = time.perf_counter_ns()

    def lap(self, stage: str) -> float:
        """Record the time since the last start/lap under ``stage``; returns it in ms."""
        now = time.perf_counter_ns()
        self.ns[stage].append(now - self._t)
        self._t = now
        return self.ns[stage][-1] / 1e6

    def table(self, wall_s: float) -> dict[str, dict[str, float]]:
        out = {}
        for stage, samples in self.ns.items():
            if samples:
                ms = np.asarray(samples, np.float64) / 1e6
                out[stage] = {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
                              "total_s": float(ms.sum() / 1e3), "share": float(ms.sum() / 1e3 / max(wall_s, 1e-9))}
        return out


def run_replay(cfg: Any, *, ir_path: str | os.PathLike | None = None, vis_path: str | os.PathLike | None = None,
               out_path: str | os.PathLike | None = None, resume: bool | None = None,
               fuser_factory: Callable[[Any, Any], Any] | None = None) -> ReplaySummary:
    """Fuse every pair of a recorded IR/visible input into one video.

    Args:
        cfg: PipelineConfig; uses ``ir``/``vis`` (paths, ``ir.resize``), ``sync``, ``align``, ``fuse``, ``post``,
            ``publish`` and ``replay``.
        ir_path, vis_path: override ``ir.path``/``vis.path``: a video file, a folder of numbered frames, or one
            ``.mcap`` recording (then ``vis_path`` may be omitted).
        out_path: override ``replay.out``.
        resume: override ``replay.resume``.
        fuser_factory: builds the fuser instead of ``build_fuser`` (same arguments), e.g. one that keeps a model
            loaded across the pairs of a batch; it must give a fuser without any earlier video's state.

    Returns:
        The summary (also logged as one block).

    Raises:
        FileNotFoundError, ValueError: bad input or output path, before any work (one line).
        ReplayError: the run stopped early (truncated input, write error, size mismatch, Ctrl-C); the partial
            output is kept for ``resume`` and ``.summary`` says how far it got.
    """
    rcfg = cfg.replay
    out = Path(out_path or rcfg.out)
    if not str(out_path or rcfg.out):
        raise ValueError("no output: pass --out PATH or set replay.out in the config")
    resume = rcfg.resume if resume is None else resume
    if vis_path is None and ir_path is not None and _kind(Path(ir_path)) == "mcap":
        vis_path = ir_path
    check_output_paths(out, {"ir": _input_path(cfg.ir, ir_path), "vis": _input_path(cfg.vis, vis_path)},
                       rcfg.frames_dir)
    ir, vis = _resolve("ir", cfg.ir, ir_path), _resolve("vis", cfg.vis, vis_path)
    if (ir.cfg.kind == "mcap") != (vis.cfg.kind == "mcap"):
        raise ValueError(f"a recording holds both streams: pass the same .mcap as IR and visible input "
                         f"(got {ir.cfg.path} and {vis.cfg.path})")
    container_format(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {out.parent}")
    try:  # a real write: os.access says yes to root on read-only mounts and special folders
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as exc:
        raise PermissionError(f"output folder is not writable: {out.parent} ({exc.strerror})") from None
    summary = ReplaySummary(ir=ir.cfg.path, vis=vis.cfg.path, out=str(out))
    if resume and out.exists() and not partial_path(out).exists():
        log.info("%s is already complete; nothing to resume", out)
        summary.complete = True
        return summary
    fingerprint = _fingerprint(cfg, ir, vis)
    reuse = _resume_source(out, fingerprint, rcfg.pacing) if resume else None
    # the values used (inputs, output, resume), as the output's metadata records them
    used = dataclasses.replace(cfg, ir=ir.cfg, vis=vis.cfg, replay=dataclasses.replace(rcfg, out=str(out),
                                                                                      resume=resume))
    with _sigterm_interrupts():
        try:
            return _Replay(used, ir, vis, out, fingerprint, reuse, summary).run(fuser_factory)
        except _Terminated:  # before the loop began or after it ended: the partial output is kept as it is
            raise ReplayError(f"replay stopped: {_TERMINATED}; {_resume_hint(out)}", summary,
                              interrupted=True) from None


class _Replay:
    """State of one replay run (kept out of run_replay so the loop below reads in data-flow order)."""

    def __init__(self, cfg: Any, ir: _Input, vis: _Input, out: Path, fingerprint: dict[str, Any],
                 reuse: Iterator | None, summary: ReplaySummary):
        self.cfg, self.ir, self.vis, self.out, self.fingerprint = cfg, ir, vis, out, fingerprint
        self.reuse, self.summary = reuse, summary
        self.clock = _Clock()
        self.writer: VideoWriter | None = None
        self.t0_vis: int | None = None  # first visible capture time (recordings, folders)
        self.last_pts: int | None = None
        self.last_t: dict[str, int] = {}  # capture time of the last frame read per stream, ns
        self.readers: list[_Reader] = []

    def _pts(self, vis: Frame) -> int:
        """Output pts of a pair: the visible frame's pts in the visible input's time base."""
        tb = self.vis.time_base
        t = vis.t_capture_ns if self.vis.cfg.kind == "file" else vis.t_capture_ns - self.t0_vis
        return round(Fraction(t, 1_000_000_000) / tb)

    def _open_writer(self, vis_img: np.ndarray) -> None:
        h, w = vis_img.shape[:2]
        tags = {"comment": json.dumps({"streamfuse_config": self.cfg.to_dict()})}
        if self.vis.cfg.kind != "file":
            tags["streamfuse_t0_ns"] = str(self.t0_vis)
        rcfg = self.cfg.replay
        self.writer = VideoWriter(self.out, codec=rcfg.codec, crf=rcfg.crf, preset=rcfg.preset,
                                  time_base=self.vis.time_base, rate=self.vis.rate, width=w, height=h, metadata=tags)
        self.summary.encoder = self.writer.encoder
        self._save_sidecar("running")

    def _save_sidecar(self, state: str) -> None:
        """What ``resume`` needs to trust the partial output: the fingerprint, and how far the run got."""
        path = _sidecar(self.out)
        tmp = path.with_suffix(".tmp")  # replaced in one step: a kill never leaves half a sidecar
        try:
            tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "state": state,
                                       "written": self.writer.count, "last_pts": self.last_pts}))
            os.replace(tmp, path)
        except OSError as exc:
            raise RuntimeError(f"cannot write {path}: {exc.strerror}") from None

    def _open_readers(self, opened: list) -> list[_Reader]:
        """Open the inputs (appended to ``opened`` for closing) and start their decoder threads."""
        wait_ns, busy_ns = self.clock.ns["decode"], self.clock.ns["decode_thread"]
        if self.ir.cfg.kind == "mcap" and self.cfg.replay.pacing == "fast":
            sources = {"recording": _RecordedOrder(self.vis.cfg.path)}
            opened.append(sources["recording"])
        else:
            sources = {}
            for inp in (self.ir, self.vis):
                sources[inp.stream] = open_source(inp.stream, inp.cfg)
                opened.append(sources[inp.stream])
                sources[inp.stream].open()
        self.readers = [_Reader(name, src, wait_ns, busy_ns) for name, src in sources.items()]
        return self.readers

    def run(self, fuser_factory: Callable[[Any, Any], Any] | None = None) -> ReplaySummary:
        from tqdm import tqdm

        from streamfuse.align import LevelStabilizer
        from streamfuse.fusers import build_fuser
        from streamfuse.postprocess import TemporalDenoiser, restore_colour, vis_luma
        from streamfuse.sync import Pairer

        cfg, rcfg, s = self.cfg, self.cfg.replay, self.summary
        # Synchronous OT refresh: a background one would make which LUT a frame gets depend on timing.
        fuser = (fuser_factory or build_fuser)(cfg.fuse, dataclasses.replace(cfg.align, background=False))
        pairer = Pairer(cfg.sync)
        denoise = TemporalDenoiser(cfg.post)
        stabilize = LevelStabilizer(cfg.align.stabilize)
        frames_dir = Path(rcfg.frames_dir) if rcfg.frames_dir else None
        if frames_dir:
            frames_dir.mkdir(parents=True, exist_ok=True)
        publisher = None
        if rcfg.publish:
            from streamfuse.publish import Publisher

            publisher = Publisher(cfg.publish)
        opened: list = []
        bar = tqdm(total=self.vis.expected, unit="frame", desc=f"replay {self.out.name}",
                   disable=None if rcfg.progress else True)
        realtime = rcfg.pacing == "realtime"
        tolerance_ns = round((cfg.sync.hold_ms if cfg.sync.mode == "latest" else cfg.sync.slop_ms) * 1e6)
        wall0_ns, t_first = time.perf_counter_ns(), None
        try:
            readers = self._open_readers(opened)
            # a recording read in recorded order is one reader: its streams' spans are known only at its end
            by_stream = {r.name: r for r in readers}

            def pairs() -> Iterator[FramePair]:
                nonlocal t_first
                for frame, next_same in _merged(readers):
                    s.frames[frame.stream] += 1
                    self.last_t[frame.stream] = frame.t_capture_ns
                    if frame.stream == "vis":
                        bar.update(1)
                        self.t0_vis = frame.t_capture_ns if self.t0_vis is None else self.t0_vis
                    other = by_stream.get(_OTHER[frame.stream])
                    side = _outside(frame.t_capture_ns, other, tolerance_ns) if other is not None else ""
                    if side:
                        s.outside[frame.stream][side] += 1
                        continue
                    if realtime:  # 0. pacing: release at the recorded time; a frame already overtaken is dropped
                        t_first = frame.t_capture_ns if t_first is None else t_first
                        due = frame.t_capture_ns - t_first - (time.perf_counter_ns() - wall0_ns)
                        if due > 0:
                            time.sleep(due / 1e9)
                        elif next_same is not None and next_same.t_capture_ns - t_first <= \
                                time.perf_counter_ns() - wall0_ns:
                            s.dropped[frame.stream] += 1
                            continue
                    self.clock.start()
                    done = pairer.push(frame)  # 1. pair
                    self.clock.lap("pair")
                    yield from done
                self.clock.start()
                done = pairer.flush()
                self.clock.lap("pair")
                yield from done

            for pair in pairs():
                s.pairs += 1
                self.clock.start()
                vis_img = pair.vis.image
                if self.writer is None:
                    pair.ir_at_vis_size(self.ir.cfg.resize)  # refuse a size mismatch before any output exists
                    self._open_writer(vis_img)
                pts = self._pts(pair.vis)
                if self.last_pts is not None and pts <= self.last_pts:
                    pts = self.last_pts + 1  # latest mode can pair one visible frame twice: keep pts increasing
                taken = self._take_over(pts)
                if taken is None:  # 2. fuse, 3. postprocess
                    # the live loop's calls, so a deterministic fuser gives the live run's frames
                    fused_y = fuser.fuse(stabilize(pair.ir_at_vis_size(self.ir.cfg.resize)), vis_luma(vis_img),
                                         stream=cfg.publish.topic)
                    timings = {"fuse": self.clock.lap("fuse")}
                    image = restore_colour(denoise(fused_y), vis_img, cfg.post)
                    timings["postprocess"] = self.clock.lap("postprocess")
                    s.fused += 1
                else:
                    image = taken
                    s.reused += 1
                self.writer.write(image, pts)  # 4. encode
                self.last_pts = pts
                png = frames_dir / f"{s.written:06d}.png" if frames_dir else None
                if png and not (taken is not None and png.exists()):  # resume: keep the lossless PNGs already there
                    if not cv2.imwrite(str(png), image):
                        raise RuntimeError(f"cannot write frame {s.written} to {frames_dir}")
                s.written += 1
                if taken is None:
                    timings["encode"] = self.clock.lap("encode")
                if publisher is not None and taken is None:  # 5. publish
                    publisher.send_fused(FusedFrame(pair, image, fuser.name, fuser.version, time.time_ns(), timings))
                    self.clock.lap("publish")
            for r in readers:
                if r.error:  # the source's message says where it stopped
                    s.stopped = f"{r.name} input ended early: {r.error}"
            empty = [inp for inp in (self.ir, self.vis) if s.frames[inp.stream] == 0]
            if not s.stopped and empty:
                s.stopped = f"the {_NAMES[empty[0].stream]} input {empty[0].cfg.path} has no frames"
            if not s.stopped and s.written == 0:
                s.stopped = "no pairs formed (do the IR and visible times overlap? see sync.slop_ms)"
            s.stopped = s.stopped or self._truncation()
        except KeyboardInterrupt as exc:
            s.stopped = _TERMINATED if isinstance(exc, _Terminated) else _INTERRUPTED
        except (RuntimeError, ValueError, OSError) as exc:
            s.stopped = " ".join(str(exc).split()) or type(exc).__name__
        finally:
            bar.close()
            for reader in self.readers:
                reader.stop()  # before its source closes
            for src in opened:
                src.close()
            if publisher is not None:
                publisher.close()
        return self._finish(pairer.stats(), (time.perf_counter_ns() - wall0_ns) / 1e9)

    def _take_over(self, pts: int) -> np.ndarray | None:
        """The partial output's frame for this pts when resuming, else None (then the pair is fused)."""
        if self.reuse is None:
            return None
        item = next(self.reuse, None)
        t_pair = pts * self.vis.time_base
        if item is not None and abs(item[0] - t_pair) <= Fraction(1, 1000) + self.vis.time_base / 2:
            return item[1]
        if item is None:
            log.info("resume: took over %d frames; fusing from pts %d", self.summary.reused, pts)
        else:
            log.warning("resume: the partial output has a frame at %.3f s where the inputs give %.3f s; fusing "
                        "from here", float(item[0]), float(t_pair))
        self.reuse.close()
        self.reuse = None
        return None

    def _unequal_note(self) -> str:
        """What inputs of different spans did: which one started later or ended first, and the frames left unpaired."""
        notes = []
        for stream, other in _OTHER.items():
            before, after = self.summary.outside[stream]["before"], self.summary.outside[stream]["after"]
            if before:
                notes.append(f"the {_NAMES[other]} input starts later: {before} {_NAMES[stream]} frames before its "
                             f"first frame are unpaired")
            if after:
                notes.append(f"the {_NAMES[other]} input ended first (after {self.summary.frames[other]} frames): "
                             f"{after} {_NAMES[stream]} frames after its end are unpaired")
        return "; ".join(notes)

    def _truncation(self) -> str:
        """Why a video input that ended without error is shorter than its container says, or ''.

        The file source itself checks the frame count where the container states one (MP4); Matroska states
        only a duration, so a cut .mkv is caught here by its last frame ending well before that duration.
        """
        for inp in (self.ir, self.vis):
            n, last = self.summary.frames[inp.stream], self.last_t.get(inp.stream)
            if inp.cfg.kind != "file":
                continue
            if inp.expected and n < inp.expected:
                return f"{inp.stream} input {inp.cfg.path} ended after {n} of {inp.expected} frames (truncated?)"
            if inp.end_s and last is not None and last / 1e9 + 1.5 / float(inp.rate) < inp.end_s:
                return (f"{inp.stream} input {inp.cfg.path} ended at {last / 1e9:.3f} s after {n} frames but "
                        f"lasts {inp.end_s:.3f} s (truncated?)")
        return ""

    def _finish(self, stats: dict, wall_s: float) -> ReplaySummary:
        s = self.summary
        for stream in ("ir", "vis"):
            s.unpaired[stream] = stats[stream]["unpaired"] + sum(s.outside[stream].values())
            s.dropped[stream] += stats[stream]["dropped"]
        s.note = self._unequal_note()
        if s.note:
            log.warning("%s", s.note)
        s.wall_s = wall_s
        if self.writer is not None:
            self.clock.ns["encode_thread"] = self.writer.busy_ns
        s.fps = s.written / max(wall_s, 1e-9)
        s.stages = self.clock.table(wall_s)
        if self.reuse is not None:
            self.reuse.close()
        if not s.stopped:
            try:
                self.writer.commit()
            except RuntimeError as exc:  # the encoder's last frames or the index did not fit (disk full)
                s.stopped = str(exc)
        if s.stopped:
            if self.writer is not None:
                self.writer.abort()
                try:
                    self._save_sidecar(s.stopped)
                except RuntimeError as exc:
                    log.warning("%s", exc)
                where = f"{s.written} frames kept in {self.writer.partial}; {_resume_hint(self.out)}"
            else:
                where = "no output written"
            log.info("%s", s.format())
            raise ReplayError(f"replay stopped: {s.stopped}; {where}", s,
                              interrupted=s.stopped in (_INTERRUPTED, _TERMINATED))
        _sidecar(self.out).unlink(missing_ok=True)
        s.complete = True
        log.info("%s", s.format())
        return s


def _resume_hint(out: Path) -> str:
    """How to continue an interrupted replay of ``out``."""
    return f"run again with --resume (same --out {out}) to continue"


# ------------------------------------------------------------------------------------------------------ batches


def find_pairs(list_or_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Recorded pairs to replay: a text file of ``IR VIS`` lines (relative paths are relative to the file; ``#``
    starts a comment), or a folder with ``ir/`` and ``vi/`` (or ``vis/``) subfolders of same-named videos."""
    src = Path(list_or_dir)
    if src.is_dir():
        vis_dir = next((src / d for d in ("vi", "vis") if (src / d).is_dir()), None)
        if not (src / "ir").is_dir() or vis_dir is None:
            raise ValueError(f"{src} must hold ir/ and vi/ (or vis/) subfolders of same-named videos")
        pairs = [(p, vis_dir / p.name) for p in sorted((src / "ir").iterdir())
                 if p.suffix.lower() in _VIDEO_EXTS | {".mcap"}]
        missing = [str(v) for _, v in pairs if not v.exists()]
        if missing:
            raise ValueError(f"visible videos missing for: {', '.join(missing)}")
        return pairs
    if not src.is_file():
        raise FileNotFoundError(f"pair list not found: {src}")
    pairs = []
    for n, line in enumerate(src.read_text().splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{src}:{n}: expected 'IR_PATH VIS_PATH', got {line.strip()!r}")
        pairs.append(tuple(p if p.is_absolute() else src.parent / p for p in map(Path, parts)))
    return pairs
