"""The replay loop, in data-flow order: decode -> pair -> fuse -> postprocess -> encode (-> publish).

:func:`run_replay` checks every path, decides whether to resume and runs one :class:`_Replay` over the pair; the
package docstring gives the rules (pacing, pts, unequal inputs, partial output, resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import av
import numpy as np

from streamfuse.atomic_write import partial_path, say_unsynced
from streamfuse.capture.sources import open_source
from streamfuse.errors import io_reason, one_line, printable
from streamfuse.frames import STREAM_NAMES, FramePair, FusedFrame, SizeMismatch
from streamfuse.log_queue import BLOCK
from streamfuse.output_lock import output_lock
from streamfuse.replay.fingerprints import changed_while_read, fingerprint
from streamfuse.replay.frame_times import FrameTimes, pts_step
from streamfuse.replay.frames_dir import FramesDir
from streamfuse.replay.inputs import (Input, Pacing, Reader, RecordedOrder, check_pair, input_kind, input_path,
                                      merged, no_pairs, on_topic, outside, resolve, size_changed)
from streamfuse.replay.order_lag import OrderLag
from streamfuse.replay.outputs import check_existing_output, check_output_folder, check_output_paths
from streamfuse.replay.publishing import closed_on_failure, open_publisher, wait_subscriber
from streamfuse.replay.resume import (TakeOver, frames_held, nothing_kept, resume_hint, save_sidecar, sidecar_path,
                                     taken_over_path)
from streamfuse.replay.summary import ReplayError, ReplaySummary, StageClock
from streamfuse.signals import TERMINATE, deferred, handled, interrupted, raise_terminated, told_if_long
from streamfuse.sync import OTHER, Pairer
from streamfuse.video import LET_GO, VideoWriter, work_paths

__all__ = ["run_replay"]

log = logging.getLogger(__name__)


def run_replay(cfg: Any, *, ir_path: str | os.PathLike | None = None, vis_path: str | os.PathLike | None = None,
               out_path: str | os.PathLike | None = None, resume: bool | None = None,
               fuser_factory: Callable[[Any], Any] | None = None) -> ReplaySummary:
    """Fuse every pair of a recorded IR/visible input into one video.

    Args:
        cfg: PipelineConfig; uses ``ir``/``vis`` (paths, ``ir.resize``), ``sync``, the fusing sections
            (``stabilize``, ``align``, ``fuse``, ``hclfuse``, ``engine``, ``baseline``), ``post``, ``publish`` and
            ``replay``.
        ir_path, vis_path: override ``ir.path``/``vis.path``: a video file, a folder of numbered frames, or one
            ``.mcap`` recording (then ``vis_path`` may be omitted).
        out_path: override ``replay.out``.
        resume: override ``replay.resume``: True continues an interrupted replay's partial output, False starts over
            from it (a batch retrying a lost worker's pair does); left to ``replay.resume`` (None), a partial output
            is refused unless that is true, so that a forgotten ``--resume`` costs no frames.
        fuser_factory: builds the fuser from the PipelineConfig instead of ``streamfuse.processor.config_fuser``,
            e.g. one that keeps a model loaded across the pairs of a batch; it must give a fuser without any earlier
            video's state.

    Returns:
        The summary (also logged as one block); after it, a warning counts the files written whole whose folder
        could not be synced, past the first of each folder (:func:`~streamfuse.atomic_write.say_unsynced`).

    Raises:
        OSError (FileNotFoundError, PermissionError, IsADirectoryError, FileExistsError), ValueError: bad input or
            output path, or an output that exists (complete, no video, partial as above, or being written by
            another run: :mod:`streamfuse.output_lock`), before any work (one line).
        ReplayError: the run stopped early (truncated input, inputs whose times never meet, an FFmpeg, write or
            fuser error, size mismatch, Ctrl-C); the partial output is kept for ``resume`` and ``.summary`` says how
            far it got.
    """
    out, ir, vis = _check_paths(cfg, ir_path, vis_path, out_path)
    try:  # until the output is finished or kept: a second run is refused, not let into it or its frames folder
        with output_lock(out), FramesDir.held(cfg.replay.frames_dir, out) as frames:
            return _run_locked(cfg, ir, vis, out, frames, resume, fuser_factory)
    finally:  # a program calling this (a batch's worker) has no command's end to say them at
        say_unsynced()


def _run_locked(cfg: Any, ir: Input, vis: Input, out: Path, frames: FramesDir | None, resume: bool | None,
                fuser_factory: Callable[[Any], Any] | None) -> ReplaySummary:
    rcfg = cfg.replay
    restart = resume is False  # a caller's False (not the config's) starts over from a partial output
    resume = rcfg.resume if resume is None else resume
    summary = ReplaySummary(ir=ir.cfg.path, vis=vis.cfg.path, out=str(out))
    if check_existing_output(out, cfg, (ir.cfg.path, vis.cfg.path), resume=resume, restart=restart):
        log.info("%s is already complete; nothing to do", out)
        summary.complete, summary.found_complete = True, frames is None or not frames.ours()
        if frames is not None and not summary.found_complete:  # staged by a run killed before it moved them in
            frames.publish()
        return summary
    prints = fingerprint(cfg, ir, vis)
    take_over = TakeOver.open(out, prints, rcfg.pacing, vis.time_base) if resume else None
    if frames is not None:
        frames.start(continuing=take_over is not None)
    if take_over is not None and (written := take_over.finish_whole(rcfg.codec, vis.rate, frames)):
        if frames is not None:
            frames.publish()
        summary.complete, summary.written = True, written
        return summary
    # the values used (inputs, output, resume), as the output's metadata records them
    used = dataclasses.replace(cfg, ir=ir.cfg, vis=vis.cfg, replay=dataclasses.replace(rcfg, out=str(out),
                                                                                      resume=resume))
    with handled(raise_terminated, TERMINATE):
        try:
            return _Replay(used, ir, vis, out, prints, take_over, frames, summary).run(fuser_factory)
        except KeyboardInterrupt as exc:  # before the loop began (model loading): a partial output is kept as it is
            hint = resume_hint(out, rcfg.pacing) if partial_path(out).exists() else ""
            summary.stopped = interrupted(exc)  # which stop: a batch's last line names it
            raise ReplayError(f"replay stopped: {summary.stopped}", summary, interrupted=True, hint=hint) from None


def _check_paths(cfg: Any, ir_path: str | os.PathLike | None, vis_path: str | os.PathLike | None,
                 out_path: str | os.PathLike | None) -> tuple[Path, Input, Input]:
    """The output path and the resolved inputs, all checked before any work (one-line errors)."""
    rcfg = cfg.replay
    out = Path(out_path or rcfg.out)
    if not str(out_path or rcfg.out):
        raise ValueError("no output: pass --out PATH or set replay.out in the config")
    if vis_path is None and ir_path is not None and input_kind(Path(ir_path)) == "mcap":
        vis_path = ir_path
    check_output_paths(out, {"ir": input_path(cfg.ir, ir_path), "vis": input_path(cfg.vis, vis_path)},
                       rcfg.frames_dir)
    ir, vis = (resolve(s, section, path, rcfg.codec_threads)
               for s, section, path in (("ir", cfg.ir, ir_path), ("vis", cfg.vis, vis_path)))
    check_pair(ir, vis)
    check_output_folder(out, rcfg.codec)
    return out, ir, vis


class _Replay:
    """State of one replay run (kept out of run_replay so the loop below reads in data-flow order)."""

    def __init__(self, cfg: Any, ir: Input, vis: Input, out: Path, prints: dict[str, Any],
                 take_over: TakeOver | None, frames: FramesDir | None, summary: ReplaySummary):
        self.cfg, self.ir, self.vis, self.out, self.fingerprint = cfg, ir, vis, out, prints
        self.take_over, self.frames, self.summary = take_over, frames, summary
        self.clock = StageClock()
        self.writer: VideoWriter | None = None
        self.publisher: Any = None
        self.input_fault = False  # stopped by a truncated, corrupt or empty input (no --resume hint then)
        self.periods = {inp.stream: round(1e9 / inp.rate) for inp in (ir, vis)}  # frame intervals, ns
        self.times = FrameTimes(vis, self.periods["vis"], cfg.sync.tolerance_ns, pts_step(out, vis.time_base))
        self.readers: list[Reader] = []
        self.lag: OrderLag | None = None  # a recording read in its recorded order: how late each topic came

    def run(self, fuser_factory: Callable[[Any], Any] | None = None) -> ReplaySummary:
        from tqdm import tqdm

        # imported here: importing the replay package (config loading does) must not load the processor's stages
        from streamfuse.processor import FrameProcessor

        rcfg, s = self.cfg.replay, self.summary
        # Synchronous OT refresh: a background one would make which LUT a frame gets depend on timing.
        used = dataclasses.replace(self.cfg, align=dataclasses.replace(self.cfg.align, background=False))
        self.publisher = open_publisher(self.cfg, self.vis.cfg.capture_clock)  # a taken endpoint: said at once
        with closed_on_failure(self.publisher):  # the model's load (seconds) comes after the publisher's bind
            processor = FrameProcessor.from_config(used, fuser_factory(used) if fuser_factory else None)
        # a recording's frames outside the other's span told at the end, by their time line
        pairer = Pairer(self.cfg.sync, on_left=self.times.left_pairer)
        opened: list = []
        bar = tqdm(total=self.vis.expected, unit="frame", desc=f"replay {printable(self.out.name)}",
                   disable=None if rcfg.progress else True)
        wall0_ns = time.perf_counter_ns()
        try:
            wait_subscriber(self.publisher, self.cfg)
            readers = self._open_readers(opened)
            for pair, line_ns in self._pairs(readers, pairer, bar):
                self._emit(pair, line_ns, processor)
            s.stopped = self._stop_reason(readers)
            self.input_fault = bool(s.stopped)  # a bad input: running again meets it again
        except KeyboardInterrupt as exc:
            s.stopped = interrupted(exc)
        except (RuntimeError, ValueError, OSError, av.FFmpegError) as exc:  # av's: some derive from none of the three
            s.stopped = _reason(exc)
            self.input_fault |= isinstance(exc, SizeMismatch)  # ir.resize: error; a resumed run would meet it again
        finally:
            bar.close()
            decoding = [r.source for r in self.readers if not r.stop()]  # left open: not freed under their threads
            for src in opened:
                if not any(src is busy for busy in decoding):
                    src.close()
            if self.publisher is not None:
                self.publisher.close()
        return self._finish(pairer, (time.perf_counter_ns() - wall0_ns) / 1e9)

    def _open_readers(self, opened: list) -> list[Reader]:
        """Open the inputs (appended to ``opened`` for closing) and start their decoder threads."""
        wait_ns, busy_ns = self.clock.ns["decode"], self.clock.ns["decode_thread"]
        if self.ir.cfg.kind == "mcap" and self.cfg.replay.pacing == "fast":
            sources = {"recording": RecordedOrder(self.ir, self.vis)}
            self.lag = OrderLag(self.cfg.sync)
            opened.append(sources["recording"])
        else:
            sources = {}
            for inp in (self.ir, self.vis):
                sources[inp.stream] = open_source(inp.stream, inp.cfg)
                opened.append(sources[inp.stream])
                sources[inp.stream].open()
        paths = {"ir": self.ir.cfg.path, "vis": self.vis.cfg.path, "recording": self.vis.cfg.path}
        self.readers = [Reader(name, src, paths[name], wait_ns, busy_ns, self.periods,
                               threaded=self.cfg.replay.overlap) for name, src in sources.items()]
        for reader in self.readers:  # held first: a Ctrl-C as a thread starts must find it to stop before the close
            reader.start()
        self.clock.threads["decode_thread"] = len(self.readers) if self.cfg.replay.overlap else 1  # else in turns
        return self.readers

    def _pairs(self, readers: list[Reader], pairer: Any, bar: Any) -> Iterator[tuple[FramePair, int]]:
        """0. read (frames merged by capture time; those outside the other input's span counted unpaired;
        realtime pacing), 1. pair (flushed at the end); each pair with its visible frame's time line."""
        s, tolerance_ns = self.summary, self.cfg.sync.tolerance_ns
        pacing = Pacing() if self.cfg.replay.pacing == "realtime" else None
        # a recording read in recorded order is one reader, its streams' spans known at its end (``take_pairer``)
        by_stream = {r.name: r for r in readers}
        for frame, t_ns, next_ns in merged(readers):
            s.frames[frame.stream] += 1
            if self.lag is not None:
                self.lag.read(frame, t_ns)
            self.times.read(frame, t_ns)
            if frame.stream == "vis":
                bar.update(1)
            other = by_stream.get(OTHER[frame.stream])
            side = outside(t_ns, other, tolerance_ns) if other is not None else ""
            if side:
                s.outside[frame.stream][side] += 1
                continue
            if pacing is not None and pacing.drop(t_ns, next_ns):
                s.dropped[frame.stream] += 1
                continue
            self.clock.start()
            done = [(pair, self.times.line(pair.vis)) for pair in pairer.push(frame)]  # before forget lets it go
            self.times.forget(pairer)
            self.clock.lap("pair")
            yield from done
        self.clock.start()
        done = [(pair, self.times.line(pair.vis)) for pair in pairer.flush()]
        self.times.forget(pairer)
        self.clock.lap("pair")
        yield from done

    def _emit(self, pair: FramePair, line_ns: int, processor: Any) -> None:
        """One output frame per pair: 2.-3. fused (or taken over), 4. encoded (its time: ``line_ns``), 5. published."""
        s = self.summary
        s.pairs += 1
        self.clock.start()
        if self.writer is None:
            processor.register(pair)  # refuse a size mismatch (ir.resize: error) before any output exists
            self._open_writer(pair.vis.image)
        elif pair.vis.image.shape[:2] != self.writer.size:  # a bad input: a resumed run would meet it again
            self.input_fault = True
            raise ValueError(size_changed(self.vis, pair.vis, self.writer.size, s.written))
        pts = self.times.pts(pair.vis, line_ns)
        taken = self.take_over.frame_at(pts) if self.take_over is not None else None
        if taken is None:  # the live loop's processor, so a deterministic fuser gives the live run's frames
            processed = processor(pair)
            image, timings = processed.image, self.clock.add(processed.timings)
            s.fused, s.nonfinite = s.fused + 1, processor.denoise.nonfinite  # as the live run's stats count them
        else:
            image, timings = taken, None
            s.reused += 1
        self.writer.write(image, pts)
        self.times.last_pts = pts
        if self.frames is not None:
            self.frames.write(s.written, image, resumed=taken is not None)
        s.written += 1
        if timings is not None:
            timings["encode"] = self.clock.lap("encode")
            if self.publisher is not None:
                sent = self.publisher.send_fused(FusedFrame(pair, image, processor.fuser.name,
                                                            processor.fuser.version, time.time_ns(), timings))
                s.published, s.publish_refused = s.published + sent, s.publish_refused + (not sent)
                self.clock.lap("publish")

    def _open_writer(self, vis_img: np.ndarray) -> None:
        h, w = vis_img.shape[:2]
        tags = {"comment": json.dumps({"streamfuse_config": self.cfg.to_dict()}),
                **({"streamfuse_t0_ns": str(self.times.t0_vis)} if self.vis.cfg.kind != "file" else {})}
        rcfg = self.cfg.replay
        if self.take_over is not None:
            self.take_over.start()  # moved aside only now, as the new output takes its name
        else:  # starting over writes over the partial output; a file a killed resume left aside goes with it
            taken_over_path(self.out).unlink(missing_ok=True)
        self.writer = VideoWriter(self.out, codec=rcfg.codec, crf=rcfg.crf, preset=rcfg.preset,
                                  time_base=self.vis.time_base, rate=self.vis.rate, width=w, height=h, metadata=tags,
                                  threads=rcfg.codec_threads, threaded=rcfg.overlap)
        self.summary.encoder = self.writer.encoder
        self._save_sidecar("running")

    def _save_sidecar(self, state: str, held: int | None = None) -> None:
        """``held``: the frames in the partial file, where a stop or a full disk left out some given to the writer."""
        save_sidecar(self.out, self.fingerprint, state, self.writer.count if held is None else held,
                     self.times.last_pts, encoded=self.writer.metadata if self.writer.encoded else None)

    def _stop_reason(self, readers: list[Reader]) -> str:
        """Why a loop that ran to the end of its inputs is still not complete, or ''."""
        s, stopped = self.summary, ""
        for r in readers:
            if r.error:  # the source's message says where it stopped; a file source also checks the container's end
                stopped = f"{r.name} input ended early: {r.error}"
        empty = [inp for inp in (self.ir, self.vis) if s.frames[inp.stream] == 0]
        if not stopped and empty:
            stopped = f"the {STREAM_NAMES[empty[0].stream]} input {empty[0].cfg.path} has no frames{on_topic(empty[0])}"
        if not stopped and s.written == 0:
            stopped = no_pairs((self.ir, self.vis), *self.times.ends(), self.cfg.sync)  # both have frames here
        return stopped or changed_while_read(self.fingerprint)

    def _finish(self, pairer: Pairer, wall_s: float) -> ReplaySummary:
        s = self.summary
        self.times.left.end()
        s.take_pairer(pairer, self.times.left)
        lag = self.lag.note(s.dropped, self.cfg.sync.queue_size) if self.lag is not None else ""
        # an input that failed did not end: its error says where
        s.note = "" if s.stopped else "; ".join(note for note in (s.unequal_note(), lag) if note)
        if s.note:
            log.warning("%s", s.note)
        s.wall_s = wall_s
        if self.writer is not None:
            self.clock.ns["encode_thread"] = self.writer.busy_ns
        s.fps = s.written / max(wall_s, 1e-9)
        s.stages = self.clock.table(wall_s)
        if self.take_over is not None and not s.stopped:
            self.take_over.end()
        stops = 1
        if not s.stopped:
            try:
                self.writer.seal()
                with deferred() as stops:  # from the rename on the output is complete: a stop is the caller's
                    summary = self._complete()
                summary.late_stop = stops[0] if stops else 0
                return summary
            except (RuntimeError, OSError, av.FFmpegError) as exc:  # disk full, output folder gone or replaced
                s.stopped = _reason(exc)
                work_paths(self.out)[2].unlink(missing_ok=True)  # a complete copy under a temporary name
            except KeyboardInterrupt as exc:  # while the encoder flushes or the file is remuxed: resumable as ever
                s.stopped, stops = interrupted(exc), 1 if self.writer.encoded else 2  # a second cut the flush short
        self._keep_partial(stops)

    def _complete(self) -> ReplaySummary:
        """Give the output its name and remove the run's work files."""
        self.writer.commit()
        taken_over_path(self.out).unlink(missing_ok=True)  # the interrupted run's frames are all in the output now
        sidecar_path(self.out).unlink(missing_ok=True)
        if self.frames is not None:
            self.frames.publish()
        self.summary.complete = True
        log.info("%s", self.summary.format(), extra=BLOCK)
        return self.summary

    def _keep_partial(self, stops: int = 1) -> NoReturn:
        """Close the output under its temporary name with its sidecar, and raise ReplayError saying where it is;
        ``stops``: the stop signals that came, where they stopped it."""
        s = self.summary
        by_user = s.stopped.startswith("interrupted (")  # a stop signal, whose second one cuts the wait short
        if self.writer is not None:
            until = f"the encoder has written the frames it holds into {self.writer.partial}"
            with told_if_long(until, stops=stops, cut=LET_GO if stops == 1 else "at once") if by_user else \
                    contextlib.nullcontext():
                self.writer.abort()
        # a resumed run puts the interrupted run's file back when it holds more frames: resuming again loses none
        restored = self.take_over is not None and self.take_over.settle()
        kept = not restored and self.writer is not None and self.writer.partial.exists()
        if kept:
            held = frames_held(self.writer.partial)  # a full disk took the encoder's last frames, or a second stop
            try:
                self._save_sidecar(s.stopped, held)
            except RuntimeError as exc:
                log.warning("%s", exc)
            where = f"{held} frames kept in {self.writer.partial}"
            if held < s.written:  # H.264 writes frames ahead of ones shown before them: a gap may come before the end
                where += (f" (of {s.written} fused; the rest did not reach the disk, and a resume takes over only the "
                          "frames shown before the first one missing)")
            hint = "" if self.input_fault else resume_hint(self.out, self.cfg.replay.pacing)
        elif restored:
            where = f"the interrupted run's frames kept in {partial_path(self.out)}"
            hint = "" if self.input_fault else resume_hint(self.out, self.cfg.replay.pacing)
        else:
            if self.writer is not None:  # its sidecar; one of an earlier run's partial output stays
                sidecar_path(self.out).unlink(missing_ok=True)
            where = nothing_kept(self.writer.partial, self.writer.count) if self.writer else "no output written"
            hint = ""
        if self.frames is not None and (staged := self.frames.kept()):
            where += f"; {staged} of its frames staged in {self.frames.staging}"
        if self.out.exists():  # the final name still holds an earlier run's output: say it is not this one
            where += f"; {self.out} is an earlier run's output, left as it was"
        if any(s.frames.values()):  # a table of zeros says nothing the one line does not
            log.info("%s", s.format(), extra=BLOCK)
        raise ReplayError(f"replay stopped: {s.stopped}; {where}", s, interrupted=by_user, hint=hint)


def _reason(exc: Exception) -> str:
    """One line saying why the run stopped; a PyAV error as FFmpeg words it, with the file it names, if any."""
    if isinstance(exc, av.FFmpegError):
        return f"FFmpeg: {io_reason(exc)}" + (f" ({exc.filename})" if exc.filename else "")
    return one_line(exc)
