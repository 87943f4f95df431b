"""The live pipeline, written in data-flow order: capture -> pair -> the frame processor (stabilise, align and fuse,
temporal filter, colour) -> publish.

The per-frame stages are :class:`streamfuse.processor.FrameProcessor`'s, the same object replay and evaluation run.
The live loop never blocks on a slow part: producers write into newest-wins shared-memory rings, the loop drains
what has arrived and fuses only the newest pair (older pairs are counted as ``stale``), and the publisher drops
instead of waiting. Offline replay lives in ``streamfuse.replay`` and runs the same processor with no-drop semantics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import threading
import time

from streamfuse.atomic_write import partial_path
from streamfuse.capture import ProducerEvent, Producers, start_producers
from streamfuse.capture.producer_process import end_start, start_servers
from streamfuse.checks import ConfigError
from streamfuse.config import PipelineConfig
from streamfuse.device import tune_malloc
from streamfuse.frames import STREAM_NAMES, Frame, FramePair, FusedFrame
from streamfuse.fusers import Fuser
from streamfuse.live_checks import refuse_unstartable
from streamfuse.processor import FrameProcessor, Processed
from streamfuse.publish import Publisher
from streamfuse.recording import Recorder
from streamfuse.signals import STOP_SIGNALS, handled, stopping, unclaimed
from streamfuse.sync import Pairer
from streamfuse.telemetry import Telemetry, format_stats

__all__ = ["run", "run_live", "RunFailed"]

log = logging.getLogger("streamfuse.pipeline")


class RunFailed(RuntimeError):
    """A live run ended by an error (a source failing for good, a pair that cannot be fused): the one-line reason,
    and the run's final telemetry ``snapshot`` (logged and published as at every other ending)."""

    def __init__(self, message: str, snapshot: dict) -> None:
        super().__init__(message)
        self.snapshot = snapshot


def run(cfg: PipelineConfig, *, duration_s: float = 0.0, ir_path: str | None = None, vis_path: str | None = None,
        out_path: str | None = None, resume: bool | None = None) -> int:
    """Run live, or replay when an output file is given (``--out`` or ``replay.out``); returns the exit code."""
    if out_path or cfg.replay.out:
        from streamfuse.replay import run_replay

        if duration_s:
            given = "--out" if out_path else "--out from replay.out"
            raise ConfigError(f"--duration is for live runs: a replay ({given}) fuses its inputs to their end")

        if cfg.record is not None:  # one config may serve the rig's live runs and their replays
            log.warning("%s: record.path=%s is for live runs: a replay writes only its output (--out)",
                        cfg.origin("record"), cfg.record.path)
        summary = run_replay(cfg, ir_path=ir_path, vis_path=vis_path, out_path=out_path, resume=resume)
        return 0 if summary.complete else 1
    if ir_path or vis_path or resume:
        given = "--resume is" if resume and not (ir_path or vis_path) else "--ir/--vis are"
        raise ConfigError(f"{given} for replay: also give --out (or set replay.out in the config)")
    snap = run_live(cfg, duration_s=duration_s)
    return 1 if snap["counters"].get("record_failed") else 0  # the run went on; a script must still notice the loss


def _as_json(cfg: PipelineConfig) -> str:
    """The config as JSON, which is YAML: the logged line copied into a file is the config again (Python's repr was
    not: ``record: None``)."""
    return json.dumps({k: v for k, v in cfg.to_dict().items() if v is not None})


def run_live(cfg: PipelineConfig, *, duration_s: float = 0.0, stop: threading.Event | None = None) -> dict:
    """Capture, fuse and publish until ``stop`` is set, Ctrl-C/SIGTERM/SIGHUP, ``duration_s`` (0 = none; counted from
    the first fused frame, so that the model's load and the capture's start take none of it, or from the capture's
    start where none is fused by then) or the sources end.
    Capture runs in processes that start by importing the program's main module, as multiprocessing's do: a program
    calls this under ``if __name__ == "__main__":``.

    A stop signal whose handler is Python's default ends the run alike at any moment, the model still loading or the
    capture starting: taken for the call (in the main thread) and given back after it. A program's own handler is
    kept, and sets ``stop``.

    A recording (``record:``) that fails stops alone: fusion and publishing go on, and the final snapshot says so
    (``record_failed``). A replay's ``publish.wait_ms`` is left unused, said in one line: live, nothing waits.

    Returns:
        The final telemetry snapshot (also logged and published on the stats topic).

    Raises:
        ConfigError, SourceError, RuntimeError: before anything starts, in the line ``python -m streamfuse run``
            prints: :func:`~streamfuse.live_checks.refuse_unstartable`'s refusals.
        RuntimeError: called as such a process imports the main module (the call not under that guard).
        RunFailed: a source failed for good (restart off, or it never opened) or a pair could not be fused (an IR
            frame of another size with ``resize: error``, say), once the run has ended as any other does (the frames
            before it fused and recorded, the recording finished, the final snapshot logged and published).
    """
    _refuse_in_bootstrap()
    refuse_unstartable(cfg)  # before the publisher binds and any process starts
    cfg = _never_waiting(cfg)
    stop, started = stop or threading.Event(), threading.Event()
    with handled(stopping(stop, started), unclaimed(STOP_SIGNALS)):
        return _live(cfg, duration_s, stop, started)


def _live(cfg: PipelineConfig, duration_s: float, stop: threading.Event, started: threading.Event) -> dict:
    """``run_live``'s body, under its stop handlers (which raise until ``started`` is set)."""
    log.info("config %s: %s", cfg.source_file, _as_json(cfg))
    frame_ids = {"ir": cfg.ir.frame_id, "vis": cfg.vis.frame_id}
    tel = Telemetry(cfg.telemetry)
    for name in ("published", "publish_dropped", "stale"):  # in every snapshot, 0 until something happens
        tel.set(name, 0)
    pairer = Pairer(cfg.sync)
    try:
        pub, processor = _started(cfg, frame_ids, started)
    except KeyboardInterrupt:
        if not stop.is_set():  # not one of this run's stops
            raise
        snap = tel.snapshot()  # stopped before the capture started: its end as any run's, nothing counted
        log.info("final: %s", format_stats(snap))
        return snap
    fuser = processor.fuser
    failure, timed_from_fused = "", False  # duration_s counts from the first fused frame, the capture's start till then
    with pub, _recorder(cfg, frame_ids) as rec, start_producers(cfg.ir, cfg.vis) as producers:
        deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")  # sources that never pair end
        while not (stop.is_set() or failure) and time.monotonic() < deadline:
            # 1. capture: what arrived since the last turn (a brief wait if nothing has), up to a source's failure
            frames, failure = _drain(producers, stop, deadline)
            if frames is None:
                break  # every source has ended for good
            # 2. pair by capture time; a live rig wants the freshest pair, older ones are stale
            pairs = []
            for frame in frames:
                if frame.t_mono_ns:  # acquired live: a file's or a recording's frames have no acquisition time here
                    tel.record(f"capture.{frame.stream}", (time.monotonic_ns() - frame.t_mono_ns) / 1e6)
                if rec is not None:
                    rec.write(frame)
                pairs += pairer.push(frame)
            if pairs:  # 3. fuse the freshest pair, 4. publish it
                tel.count("stale", len(pairs) - 1)
                unfused = _fuse(processor, pub, tel, pairs[-1])
                failure = failure or unfused  # a source's failure came first
                if duration_s > 0 and not timed_from_fused:
                    deadline, timed_from_fused = time.monotonic() + duration_s, True
            _report(tel, pub, pairer, producers, fuser, rec, final=False)
        failure = _flush(pairer, processor, pub, tel, failure)
        capture = producers.stats()  # as the loop ended: not the frames overwritten while the recording finishes
        producers.stop()  # now: a producer still opening is killed, said in a line, before the final stats (the last)
        if rec is not None:  # before the final report
            _end_recording(rec, capture, failure)
        snap = _report(tel, pub, pairer, producers, fuser, rec, final=True, capture=capture)
    _log_recording_failure(rec)
    if failure:
        raise RunFailed(failure, snap)
    return snap


def _refuse_in_bootstrap() -> None:
    """RuntimeError when a process runs the program's main module as it starts (multiprocessing's own test); a
    capture process exits instead, which ends the run (restarted, it would only run the call again, for ever)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        line = "run_live was called while a capture process imported the program's main module: call it under " \
               "`if __name__ == \"__main__\":`"
        end_start(line)
        raise RuntimeError(line)


def _never_waiting(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` without ``publish.wait_ms``, a replay's lossless back-pressure, said in one line where it is given: live,
    a stalled subscriber would hold the fusion loop up to that long a frame."""
    if not cfg.publish.wait_ms:
        return cfg
    log.warning("%s: publish.wait_ms=%d is for replay: a live run never waits for a subscriber (publish.nodrop "
                "alone refuses and counts the frames a full queue cannot take)", cfg.origin("publish"),
                cfg.publish.wait_ms)
    return dataclasses.replace(cfg, publish=dataclasses.replace(cfg.publish, wait_ms=0))


def _started(cfg: PipelineConfig, frame_ids: dict[str, str],
             started: threading.Event) -> tuple[Publisher, FrameProcessor]:
    """The run's publisher, bound first (an endpoint another run holds is refused at once, not after the model's load
    with the producers started), then its frame processor, the model loaded and announced in the stats, and the
    producers' servers; ``started`` set once all are (a stop raised before it closes the publisher)."""
    pub = Publisher(cfg.publish, None, frame_ids, cfg.vis.capture_clock)
    try:
        tune_malloc()  # whatever the fuser: a frame's arrays, a few MB, were mapped and page-faulted in at every frame
        processor = FrameProcessor.from_config(cfg)
        fuser = processor.fuser
        log.info("fuser %s %s", fuser.name, fuser.version)
        if cfg.vis.kind in ("synthetic", "camera"):  # sources whose frame size is the configured one (a camera's)
            fuser.warm_up(cfg.vis.height, cfg.vis.width)
        pub.stats_extra["fuser"] = _fuser_info(cfg, fuser)
        start_servers()  # before the publisher's shared memory: they must outlive a hangup, which stops the run
        started.set()
    except BaseException:
        pub.close()
        raise
    return pub, processor


def _recorder(cfg: PipelineConfig, frame_ids: dict[str, str]) -> contextlib.AbstractContextManager:
    """The run's recorder, made once the publisher is up (a taken port fails the run before any file is made)."""
    return Recorder(cfg.record, frame_ids) if cfg.record else contextlib.nullcontext()


def _end_recording(rec: Recorder, stats: dict[str, dict], failure: str) -> None:
    """Finish the recording; one of a run that failed before a source delivered its first frame (a wrong path, a
    file that is no video) is discarded instead: a few frames of the other source, which would block the rerun."""
    silent = [name for name, counters in stats.items() if counters["delivered"] == 0]
    if not (failure and silent):
        rec.close({name: counters["dropped"] for name, counters in stats.items()})
        return
    rec.discard()
    dropped = "".join(f" ({count} {STREAM_NAMES[name]} frame{'s' * (count != 1)} dropped)"
                      for name, count in rec.counts.items() if count)
    log.warning("no recording kept in %s: the run failed before the %s source delivered a frame%s; the corrected "
                "run can record there", rec.path, STREAM_NAMES[silent[0]], dropped)


def _log_recording_failure(rec: Recorder | None) -> None:
    """At the end of a run whose recording failed: what was kept of it, and how to finish it."""
    if rec is not None and rec.error is not None and not any(rec.counts.values()):
        log.error("recording failed: %s was not completed (%s) and no frame reached it; nothing of it is kept, the "
                  "rerun can record there", rec.file, rec.error)
    elif rec is not None and rec.finished and rec.file.exists() and not partial_path(rec.file).exists():
        log.error("recording failed: %s is whole and has its name, but its folder could not be synced after it took "
                  "it (%s): a power loss may yet lose that name; copy it elsewhere", rec.file, rec.error)
    elif rec is not None and rec.error is not None and rec.file != rec.path and rec.file.exists():
        log.error("recording failed: it stopped after %s (%s); it and the parts before it are complete, and a replay "
                  "of the set reads them", rec.file, rec.error)
    elif rec is not None and rec.error is not None and not partial_path(rec.file).exists():
        log.error("recording failed: %s was not completed (%s), and nothing of it is kept: %s is gone (its folder "
                  "removed or renamed while the run recorded)", rec.file, rec.error, partial_path(rec.file))
    elif rec is not None and rec.finished:
        log.error("recording failed: %s was not given its name (%s); it holds %d IR and %d visible frames, whole: "
                  "rename it to %s", partial_path(rec.file), rec.error, rec.counts["ir"], rec.counts["vis"], rec.file)
    elif rec is not None and rec.error is not None:
        log.error("recording failed: %s was not completed (%s); what was recorded until then is kept in %s "
                  "(`python -m streamfuse recover` makes a finished recording of it)", rec.file, rec.error,
                  partial_path(rec.file))


def _fuse(processor: FrameProcessor, pub: Publisher, tel: Telemetry, pair: FramePair) -> str:
    """Fuse ``pair`` and publish it; the run's failure in one line when it cannot be fused, else ""."""
    t0 = time.perf_counter_ns()
    try:
        # the frame processor: IR level stabilization, OT alignment and fusion, temporal filter, colour; the image
        # is built in the publisher's loaned buffer (a shared-memory slot while a same-host consumer reads the
        # pool), so publishing it copies nothing
        processed = processor(pair, pub.loan(processor.output_shape(pair)))
    except (OSError, RuntimeError, ValueError) as exc:
        log.debug("fusing failed", exc_info=True)
        return str(exc)
    if processor.denoise.nonfinite:  # a fuser's output with a NaN or infinite pixel (clipped, NaN as black)
        tel.set("nonfinite", processor.denoise.nonfinite)
    _publish(pub, tel, pair, processed, processor.fuser, t0)  # never blocks on a subscriber
    return ""


def _flush(pairer: Pairer, processor: FrameProcessor, pub: Publisher, tel: Telemetry, failure: str) -> str:
    """The run's end: the frames still queued that the end pairs (one waiting for a nearer partner) are fused, the
    freshest as at every turn, as a replay of the same input fuses them (unless the run failed); the others count as
    unpaired. Returns the run's failure."""
    tail = pairer.flush()
    if not tail or failure:
        tel.count("stale", len(tail))
        return failure
    tel.count("stale", len(tail) - 1)
    return _fuse(processor, pub, tel, tail[-1])


def _fuser_info(cfg: PipelineConfig, fuser: Fuser) -> dict:
    """What the publisher announces of the fuser: name, version and, for hclfuse, the sampler and its K as run."""
    info = {"name": fuser.name, "version": fuser.version}
    if cfg.fuse.name == "hclfuse":  # the student's own step count unless the teacher samples
        info.update(sampler=cfg.hclfuse.sampler, steps=fuser.net.steps)
    return info


def _publish(pub: Publisher, tel: Telemetry, pair: FramePair, processed: Processed, fuser: Fuser, t0: int) -> None:
    """Send one fused frame (and the previews when a viewer wants them) and record its stage times."""
    t_sent = time.perf_counter_ns()
    timings = {"pair": (t0 - pair.t_paired_ns) / 1e6, **processed.timings}
    fused = FusedFrame(pair, processed.image, fuser.name, fuser.version, time.time_ns(), timings)
    tel.count("published" if pub.send_fused(fused) else "publish_dropped")
    if pub.shm_busy:  # frames same-host readers never got: they held every slot of the pool
        tel.set("publish_shm_busy", pub.shm_busy)
    if pub.peers_cut:  # consumers cut for flooding the publisher with subscriptions
        tel.set("publish_peers_cut", pub.peers_cut)
    timings["publish"] = (time.perf_counter_ns() - t_sent) / 1e6
    if pub.previews_wanted():  # a viewer asked for the IR and visible previews; off otherwise
        pub.send_previews(fused)
    for stage, ms in timings.items():
        tel.record(stage, ms)
    if pair.ir.t_mono_ns and pair.vis.t_mono_ns:  # both acquired live
        newer, older = max(pair.ir.t_mono_ns, pair.vis.t_mono_ns), min(pair.ir.t_mono_ns, pair.vis.t_mono_ns)
        tel.record("end_to_end", (time.monotonic_ns() - newer) / 1e6)
        tel.record("pair_offset", (newer - older) / 1e6)  # the older frame's wait for its partner, or its hold


_OPENING_WAIT_S = 15.0  # a run that fails waits this long for a source still opening to deliver or fail too


def _drain(producers: Producers, stop: threading.Event | None = None,
           deadline: float = float("inf")) -> tuple[list[Frame] | None, str]:
    """Frames that arrived since the last call (waiting up to 0.1 s for the first), None once all sources ended; and
    the run's failure in one line once a source failed for good (restart off, or it never opened), else "" (see
    ``_failure``; ``deadline``: the run's end, monotonic s).

    A source that is restarting is only logged by the producer set, and the other source keeps going.
    """
    frames: list[Frame] = []
    item = producers.get(timeout=0.1)
    while item is not None:
        if isinstance(item, ProducerEvent):
            if item.kind == "error" and not item.restarting:
                return frames, _failure(producers, item.message, frames, stop, deadline)
        else:
            frames.append(item)
        item = producers.get(timeout=0)
    return (None if producers.done and not frames else frames), ""


def _failure(producers: Producers, first: str, frames: list[Frame], stop: threading.Event | None = None,
             deadline: float = float("inf")) -> str:
    """The run's failure in one line: ``first``, and another source's if it fails too before its first frame (two
    wrong paths are both named, not one per try); a source still opening is waited for up to ``_OPENING_WAIT_S``,
    unless ``stop`` is set meanwhile (Ctrl-C, SIGTERM: the run ends within 2 s, not after the wait) or the run's
    ``deadline`` (its ``--duration``) comes first.
    The frames still queued are added to ``frames``: paired, recorded and counted as any other, not lost."""
    errors = [first]
    deadline = min(deadline, time.monotonic() + _OPENING_WAIT_S)
    while True:
        opening = any(s["delivered"] == 0 and s["state"] != "ended" for s in producers.stats().values())
        waiting = opening and time.monotonic() < deadline and not (stop is not None and stop.is_set())
        item = producers.get(timeout=0.05 if waiting else 0)
        if isinstance(item, ProducerEvent):
            if item.kind == "error" and not item.restarting:
                errors.append(item.message)
        elif item is not None:
            frames.append(item)
        elif not waiting:
            return "; ".join(errors)


def _report(tel: Telemetry, pub: Publisher, pairer: Pairer, producers: Producers, fuser: Fuser,
            rec: Recorder | None, *, final: bool, capture: dict | None = None) -> dict:
    """Every ``interval_s`` (and at exit): gather counters, log one line, publish on the stats topic; ``capture``:
    the producers' counters to report instead of their current ones."""
    if not (final or tel.due()):
        return {}
    for key, value in pairer.stats().items():
        if isinstance(value, dict):  # a source's counters (Pairer.stats), each logged as COUNTER.SOURCE
            for name, count in value.items():
                tel.set(f"{name}.{key}", count)
        else:
            tel.set(key, value)
    for source, counters in (capture or producers.stats()).items():
        for name in ("dropped", "skipped", "restarts", "stalls"):
            tel.set(f"capture_{name}.{source}", counters[name])
    for name, value in fuser.stats().items():
        tel.set(name, value)
    if rec is not None:
        for source, count in rec.dropped.items():
            tel.set(f"record_dropped.{source}", count)
        tel.set("record_failed", int(rec.error is not None))
    snap = tel.snapshot()
    log.info("%s%s", "final: " if final else "", format_stats(snap))
    pub.send_stats(snap)
    return snap
