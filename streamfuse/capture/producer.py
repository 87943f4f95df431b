"""Producer processes: each Source runs in an OS process of its own and writes into a ShmRing.

The consumer (the pipeline's process) calls :meth:`Producers.get`, which returns frames copied out of the rings,
oldest capture time first, or :class:`ProducerEvent` lines when a producer ends or fails. Supervision runs inside
``get`` (no threads): a producer that dies (device lost, crash, SIGKILL) is reported in one log line and one event,
and restarted with exponential back-off when its config says ``restart``. Not retried (final, and said by its event
alone: the consumer stops on it and reports it, once): a source that never delivered a frame (a wrong path or
password: a configuration error; a camera not there yet is waited for), and a file, folder or recording that
reported an error (a corrupt file fails at the same frame again). A file, folder or recording restarted after a
crash resumes after the last frame delivered, so no frame comes twice; a live source continues its sequence numbers.

Typical use (the pipeline's loop)::

    with start_producers(cfg.ir, cfg.vis) as producers:
        while not producers.done:
            item = producers.get(timeout=0.1)
            if isinstance(item, Frame):
                pairs = pairer.push(item)
            elif isinstance(item, ProducerEvent) and not item.restarting:
                ...  # this source is finished (eos, or an error: item.message is its one line, not logged)

The rings are ``latest`` rings (newest wins, overwritten frames counted as drops) and ``get`` returns whatever is
available, oldest first: this is the live path. Offline replay reads its inputs in its own process, every frame
and in order (``streamfuse.replay.inputs``).

Stalls: a producer that stays silent (no frame written, its ring empty, no realtime pacing sleep under way, no step
of a long open such as a large synthetic scene's build; an FFmpeg open that hangs makes none) for longer than its
frame interval times ``stall_factor``, never under ``STALL_FLOOR_S`` (or, before its first frame, ``FIRST_FRAME_S``)
is reported in one line and counted (``stalls`` in :meth:`Producers.stats`), killed and restarted like a dead one.
Only the time this supervisor's process was running counts, read on a clock of its own timed apart from the live
loop's rounds: a host stalled as a whole silenced it too, and a slow fusion loop does not (``stall``).

The processes themselves (forked from a preloaded server, SIGINT and SIGTERM ignored, gone with their parent) are
``producer_process``'s. They stop within ``timeout`` seconds of :meth:`Producers.stop` (else they are killed). A start
frees the shared memory of runs that were killed as a whole (``shm_ring.remove_stale_rings``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from streamfuse.capture.producer_process import (StopFlag, check_rings_fit, failed_to_start, how_it_ended,
                                                  process_context, start_process)
from streamfuse.capture.shm_ring import ShmRing, named_semaphore, remove_stale_rings
from streamfuse.capture.stall import WatchClock, allowance
from streamfuse.capture.sources import SourceConfig
from streamfuse.capture.time_line import left, new_pass, pace_lines
from streamfuse.frames import Frame

__all__ = ["ProducerEvent", "Producers", "start_producers"]

log = logging.getLogger(__name__)

_STABLE_S = 5.0  # a producer that ran this long resets the back-off, as a file's end does (doubled: a short clip's
# passes fell more than 5 s behind the other source's time line, and never paired again)
_SLOTS = 3  # ring slots per source: a live consumer wants the newest frame, not a backlog
_KILL_WAIT_S = 0.5  # a stalled producer killed: how long to wait for it before the next supervision round
_BACKOFF_MAX_S = 8.0  # largest restart delay, s (doubled from backoff_s per consecutive failure)
STOP_S = 1.3  # the producers' part of a run's 2 s stop (README), their kill included: the rest took up to 0.6 s
_SUPERVISE_S = 0.02  # the live loop calls get several times a frame; exits, restarts and stalls need no finer look


@dataclass(frozen=True)
class ProducerEvent:
    """A producer ended or failed (one line, logged by the producer set, except a final error: the consumer says it).

    Args:
        stream: section name (``"ir"`` or ``"vis"``).
        kind: ``eos`` (end of stream) or ``error`` (source error, crash or death).
        message: one line: what and where.
        restarting: True when a new producer starts after a back-off; False when this source is finished.
    """

    stream: str
    kind: Literal["eos", "error"]
    message: str
    restarting: bool = False


@dataclass
class _Worker:
    """Parent-side state of one source across its producer processes."""

    section: str
    cfg: SourceConfig
    proc: Any = None
    ring: ShmRing | None = None
    conn: Any = None
    beat: Any = None  # the current process's shared (frames written, interval ns, pacing until ns, packets skipped,
    # steps of its source's open, begun)
    pace: Any = field(default_factory=lambda: [0, 0, 0, 0])  # shared: its realtime time line (``time_line``)
    beats_seen: int = 0
    heard_at: float = 0.0  # watch-clock s: the current process last showed progress
    stalled: bool = False  # the current silence has been reported
    stall_line: str | None = None  # why the current process was killed (live stall)
    stalls: int = 0
    message: tuple[str, str] | None = None  # last ("eos"|"error"|"unreachable", line) sent by the current process
    pending: deque = field(default_factory=deque)  # frames rescued from a dead producer's ring
    state: Literal["running", "waiting", "ended"] = "running"
    final: ProducerEvent | None = None  # returned once the worker's frames are all delivered
    restart_at: float = 0.0
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    delivered: int = 0
    dropped_retired: int = 0
    skipped_retired: int = 0  # undecodable packets skipped by the previous processes
    last_seq: int = -1  # newest frame seen (delivered or rescued into pending)
    last_t: int | None = None
    prev_t: int | None = None
    pass_first_seq: int = 0  # first seq of the current pass over a replayable source
    pass_first_t: int | None = None
    pass_offset: int = 0  # t offset applied in the current pass
    resume: tuple[int, int, int] = (0, 0, 0)  # (first seq, frames to skip, t offset ns) for the next process
    seq_at_start: int = 0  # first seq of the current process: a later seq seen means it made progress


class Producers:
    """The running producer set; build it with :func:`start_producers`.

    Args:
        cfgs: section name -> SourceConfig.
        slots: ring slots per source (default 3).
        backoff_s: first restart delay, s; doubles per consecutive failure, up to ``_BACKOFF_MAX_S``.
    """

    def __init__(self, cfgs: dict[str, SourceConfig], *, slots: int | None = None, backoff_s: float = 0.1) -> None:
        self._slots, self._backoff = slots or _SLOTS, (backoff_s, _BACKOFF_MAX_S)
        self._ctx = process_context()
        paces = pace_lines(self._ctx, cfgs)  # where realtime pacing began, kept across restarts (time_line)
        self._workers = {name: _Worker(name, cfg, pace=paces[name]) for name, cfg in cfgs.items()}
        check_rings_fit(cfgs, self._slots)
        if removed := remove_stale_rings():
            log.info("freed %d shared-memory objects left by killed runs: %s", len(removed), " ".join(removed))
        self._stop = StopFlag(self._ctx)
        self._bell = named_semaphore(self._ctx)  # released on every frame written by any producer
        self._events: deque[ProducerEvent] = deque()
        self._stopped = False
        self._supervise_at = 0.0  # monotonic s: the next supervision round is due
        self._watch = WatchClock()  # producers' silence, timed apart from the live loop's rounds
        try:
            self._watch.start()
            for w in self._workers.values():
                self._spawn(w, (0, 0, 0))
        except BaseException:
            self.stop()  # leave nothing running when a later start fails
            raise

    # -- process management ----------------------------------------------------------------------------------------

    def _spawn(self, w: _Worker, resume: tuple[int, int, int]) -> None:
        w.ring = ShmRing(w.section, self._slots, w.cfg.ring_bytes(1), "latest", ctx=self._ctx, data_bell=self._bell)
        w.beat = self._ctx.RawArray("q", 6)
        w.proc, w.conn = start_process(self._ctx, w.section, w.cfg, w.ring, self._stop, resume, w.beat, w.pace)
        w.message, w.state, w.started_at, w.seq_at_start = None, "running", time.monotonic(), resume[0]
        w.beats_seen, w.heard_at, w.stalled, w.stall_line = 0, self._watch.seconds, False, None

    def _retire(self, w: _Worker) -> None:
        """Rescue the frames a finished producer left in its ring, then free the ring and the pipe."""
        if w.ring is not None:
            while (frame := w.ring.try_read()) is not None:
                w.pending.append(frame)
                self._see(w, frame)
            w.dropped_retired += max(0, w.ring.stats()["dropped"])
            w.skipped_retired += w.beat[3]
        self._release(w)

    @staticmethod
    def _release(w: _Worker) -> None:
        """Free the ring and the pipe of ``w``'s current producer (idempotent)."""
        if w.ring is not None:
            w.ring.close()
            w.ring = None
        if w.conn is not None:
            w.conn.close()
            w.conn = None

    def _poll_messages(self, w: _Worker) -> None:
        """Log what the producer corrected and went on with (``warn``); keep its last ``eos``/``error`` line."""
        try:
            while w.conn is not None and w.conn.poll():
                kind, line = w.conn.recv()
                if kind == "warn":
                    log.warning("%s", line)
                else:
                    w.message = (kind, line)
        except (EOFError, OSError):
            pass  # the child closed its end or died: whatever it sent has been read

    def _resume_point(self, w: _Worker, at_end: bool) -> tuple[int, int, int]:
        """(first seq, source frames to skip, t offset ns) for the next producer of ``w``."""
        seq = w.last_seq + 1
        if not w.cfg.replayable:
            return seq, 0, 0
        if at_end:  # a new pass starts one frame period after the last frame (paced: ``time_line.new_pass``)
            period = w.last_t - w.prev_t if w.prev_t is not None else round(1e9 / w.cfg.fps)
            raw_first = w.pass_first_t - w.pass_offset
            w.pass_offset, w.pass_first_seq, w.pass_first_t = w.last_t + period - raw_first, seq, None
            new_pass(w.pace, [other.pace for other in self._workers.values() if other is not w])
            return seq, 0, w.pass_offset
        return seq, seq - w.pass_first_seq, w.pass_offset

    def _on_exit(self, w: _Worker) -> None:
        self._poll_messages(w)
        reported = w.message is not None and w.stall_line is None  # the source itself said what went wrong
        ended = how_it_ended(w.proc, w.beat)  # one its fork server's death left running is killed
        if w.stall_line is not None:
            kind, line = "error", w.stall_line
        else:
            kind, line = w.message or ("error", f"{w.section}: producer (pid {w.proc.pid}) {ended}")
        w.proc.join(0.1)
        self._retire(w)
        at_end, waiting = kind == "eos", kind == "unreachable"  # waiting: a camera not up (yet), worth it
        kind = "error" if waiting else kind
        progressed = w.last_seq >= w.seq_at_start
        # Not worth a restart: a process that failed as it started, a source that reported an error before it ever
        # delivered a frame (wrong path, password: a configuration error), or a replayable one that reported an error or
        # made no progress again after a restart (it would fail at the same frame again). One killed or hung before its
        # first frame restarts, and a camera not there yet (booting, its link still down, not enumerated) is waited for.
        hopeless = failed_to_start(w.proc, w.beat) or not at_end and not waiting and (
            (reported and w.restarts == 0 and not progressed) or (
                w.cfg.replayable and (reported or (w.restarts > 0 and not progressed))))
        left(w.pace, w.section, for_good=not w.cfg.restart or hopeless)  # the others on its time line wait no more
        if not w.cfg.restart or hopeless:
            w.state, w.final = "ended", ProducerEvent(w.section, kind, line)
            if at_end:  # a final error is not logged: the consumer stops on its event and says it, once
                log.info("%s", line)
            return
        stable = time.monotonic() - w.started_at >= _STABLE_S or (at_end and w.cfg.replayable and progressed)
        w.failures = 1 if stable else w.failures + 1
        delay = min(self._backoff[0] * 2 ** (w.failures - 1), self._backoff[1])
        w.state, w.restart_at = "waiting", time.monotonic() + delay
        w.resume = self._resume_point(w, at_end)
        # a file's end is news; a camera's or a stream's is a fault (unplugged, the sender gone)
        (log.info if at_end and w.cfg.replayable else log.warning)("%s; restarting in %.1f s", line, delay)
        self._events.append(ProducerEvent(w.section, kind, line, restarting=True))

    def _supervise(self) -> None:
        if self._stopped:
            return
        for w in self._workers.values():
            if w.state == "running":
                self._poll_messages(w)
                if w.proc.is_alive():
                    self._check_stall(w)
                if not w.proc.is_alive():
                    self._on_exit(w)
            elif w.state == "waiting" and time.monotonic() >= w.restart_at:
                w.restarts += 1
                self._spawn(w, w.resume)

    def _check_stall(self, w: _Worker) -> None:
        """Report a producer silent (while this supervisor ran) for longer than ``stall.allowance`` and kill it so
        that it restarts. Unread frames in its ring, a source's realtime pacing (a recording with a gap in its
        timestamps), and the steps of an open that takes long (``progress``) are not silence."""
        silent_s = self._watch.seconds - w.heard_at
        paced = w.beat[2] > time.monotonic_ns()  # waiting for its next frame's time on purpose is not silence
        beats = w.beat[0] + w.beat[4]  # a frame written, or a step of an open that builds for long (not hung in it)
        if beats != w.beats_seen or self._head_time(w) is not None or paced:
            w.beats_seen, w.stalled, w.heard_at = beats, False, self._watch.seconds
            return
        if w.stalled or not w.cfg.stall_factor:
            return
        # A frame of this process already delivered counts as its first, even if it was frozen before its counter
        interval_s = w.beat[1] / 1e9 if w.beat[0] or w.last_seq >= w.seq_at_start else 0.0
        limit, expected = allowance(interval_s, w.cfg.stall_factor)
        if silent_s <= limit:
            return
        w.stalled, w.stalls = True, w.stalls + 1
        line = f"{w.section}: producer (pid {w.proc.pid}) stalled: no frame for {silent_s:.2f} s (expected {expected})"
        w.stall_line = f"{line}; killed it"
        w.proc.kill()
        w.proc.join(_KILL_WAIT_S)

    # -- consumer side ---------------------------------------------------------------------------------------------

    def _head_time(self, w: _Worker) -> int | None:
        if w.pending:
            return w.pending[0].t_capture_ns
        return w.ring.peek_time() if w.ring is not None else None

    @staticmethod
    def _see(w: _Worker, frame: Frame) -> None:
        """Note the newest frame of ``w`` (delivered or rescued): where a restarted producer resumes."""
        if frame.seq > w.last_seq:
            w.prev_t, w.last_t, w.last_seq = w.last_t, frame.t_capture_ns, frame.seq
            if w.pass_first_t is None:
                w.pass_first_t = frame.t_capture_ns

    def _deliver(self, w: _Worker) -> Frame | None:
        frame = w.pending.popleft() if w.pending else w.ring.try_read()
        if frame is None:
            return None
        w.delivered += 1
        self._see(w, frame)
        return frame

    def _next(self) -> Frame | ProducerEvent | None:
        if self._events:
            return self._events.popleft()
        heads = {name: self._head_time(w) for name, w in self._workers.items()}
        for name, w in self._workers.items():
            if w.final is not None and heads[name] is None and w.ring is None:
                event, w.final = w.final, None
                return event
        ready = {name: t for name, t in heads.items() if t is not None}
        if not ready:
            return None
        return self._deliver(self._workers[min(ready, key=ready.get)])

    @property
    def done(self) -> bool:
        """True when every source has ended and every frame and event has been returned by :meth:`get`."""
        return not self._events and all(w.state == "ended" and w.final is None and not w.pending
                                        for w in self._workers.values())

    def get(self, timeout: float | None = 0.1) -> Frame | ProducerEvent | None:
        """The next frame (oldest capture time first) or event; None after ``timeout`` s or when :attr:`done`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            now = time.monotonic()
            if now >= self._supervise_at:  # a few syscalls a source: once per _SUPERVISE_S, not at every call
                self._supervise_at = now + _SUPERVISE_S
                self._supervise()
            item = self._next()
            if item is not None:
                return item
            remaining = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if remaining <= 0:
                return None
            self._bell.acquire(timeout=remaining)  # woken by any producer's write; restarts are checked each 50 ms
        return None

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per source: ``delivered``, ``dropped`` (overwritten in latest rings), ``queued`` (unread in the ring),
        ``skipped`` (undecodable packets of a stream), ``restarts``, ``stalls``, ``state``, ``pid``."""
        out = {}
        for name, w in self._workers.items():
            ring = w.ring.stats() if w.ring is not None else {"dropped": 0, "unread": 0}
            out[name] = {"delivered": w.delivered, "dropped": w.dropped_retired + max(0, ring["dropped"]),
                         "queued": max(0, ring["unread"]), "restarts": w.restarts, "stalls": w.stalls,
                         "skipped": w.skipped_retired + (w.beat[3] if w.ring is not None else 0),
                         "state": w.state, "pid": w.proc.pid if w.proc is not None and w.proc.is_alive() else None}
        return out

    def shm_names(self) -> list[str]:
        """Names of the shared-memory segments in use now (for diagnostics and leak checks)."""
        return [w.ring.name for w in self._workers.values() if w.ring is not None]

    def pids(self) -> dict[str, int | None]:
        """Current producer process id per source (None when not running)."""
        return {name: s["pid"] for name, s in self.stats().items()}

    def stop(self, timeout: float = STOP_S) -> None:
        """Stop every producer within ``timeout`` s (stragglers, which ignore SIGTERM, killed); free the rings."""
        if self._stopped:
            return
        self._stopped = True
        self._watch.stop()
        self._stop.set()
        deadline = time.monotonic() + timeout
        workers = [w for w in self._workers.values() if w.proc is not None]
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic() - 0.2))  # keep 0.2 s for the kills
        stragglers = [w for w in workers if w.proc.is_alive()]
        for w in stragglers:  # one with no frame yet is inside its source's open (FFmpeg's), which no stop reaches
            opening = not (w.beat[0] or w.last_seq >= w.seq_at_start)  # (its count follows a frame's write)
            log.log(logging.INFO if opening else logging.WARNING, "producer %s (pid %d) %s; killing it",
                    w.proc.name, w.proc.pid, "still opening its source" if opening else "did not stop in time")
            w.proc.kill()
        for w in stragglers:  # killed together, reaped within the one bound (each its own 0.2 s went past it)
            w.proc.join(max(0.0, deadline - time.monotonic()))
        for w in self._workers.values():
            self._release(w)

    def __enter__(self) -> Producers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_producers(ir_cfg: SourceConfig, vis_cfg: SourceConfig, *, slots: int | None = None,
                    backoff_s: float = 0.1) -> Producers:
    """Start one producer process per source (sections ``"ir"`` and ``"vis"``).

    Args:
        ir_cfg: the ``ir`` section.
        vis_cfg: the ``vis`` section.
        slots: ring slots per source (default 3).
        backoff_s: first restart delay, s (doubles per consecutive failure, up to ``_BACKOFF_MAX_S``).

    Returns:
        The running :class:`Producers`; use it as a context manager or call ``stop()``.
    """
    return Producers({"ir": ir_cfg, "vis": vis_cfg}, slots=slots, backoff_s=backoff_s)
