"""What runs in a producer process: the body that reads one Source into its ShmRing, the stop flag it watches, and
how the process is started, its ring first checked to fit (see ``producer`` for the supervising side).

Children are forked from a server process that has already imported this module (``forkserver``, where the
platform has it), so a restart costs no interpreter start-up or imports. They ignore SIGINT, SIGTERM and SIGHUP (the
parent handles them and stops them; a SIGTERM sent to the whole process group, as ``timeout`` and systemd send it, or
a terminal's hangup, would otherwise end them first and read as producers dying) and exit when the parent dies. The
server and multiprocessing's resource tracker run with SIGTERM and SIGHUP blocked for the same reason, and SIGINT
too: the server ignores it, but gives a child it forks Python's Ctrl-C back, which a Ctrl-C before the producer's
body ignores it would end it with.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import sys
import time
from multiprocessing import forkserver, resource_tracker, spawn
from typing import Any

from streamfuse.capture.mp_folder import own_folder
from streamfuse.capture.shm_ring import ShmRing
from streamfuse.capture.shm_space import ShmFull, free_bytes
from streamfuse.capture.sources import Source, SourceConfig, SourceError, open_source
from streamfuse.errors import one_line, redact
from streamfuse.shm_owners import SHM_DIR, process_alive
from streamfuse.signals import HANGUP, STOP_SIGNALS, blocked

__all__ = ["StopFlag", "check_rings_fit", "produce", "process_context", "start_servers", "start_process",
           "end_start", "describe_exit", "how_it_ended", "failed_to_start", "MAIN_RAN_AGAIN"]

_QUIET = "streamfuse.capture.fork_server_quiet"  # imported by the fork server alone, so by the producers it forks
# the exit of a producer whose start ran the program's main module, which began the run again: final, as a restart
# would only do the same
MAIN_RAN_AGAIN = 3


def process_context() -> Any:
    """``forkserver`` with the producer body preloaded where the platform has it (a restart forks an already-imported
    process: no interpreter start-up and no imports of numpy, OpenCV and PyAV on the way back); ``spawn`` elsewhere."""
    start_servers()
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def start_servers() -> None:
    """Start multiprocessing's resource tracker and, where used, the fork server (this module preloaded) with SIGTERM
    and SIGHUP blocked, which they keep through exec (a group's SIGTERM ended the fork server, and the producers
    then read as dead), and SIGINT, which the producers it forks keep blocked until their body ignores it (a Ctrl-C
    as one started ended it, read as dying in the program's main module); here those signals are held, not lost, and
    delivered once the servers run. A run calls it before its first shared memory, which would start the tracker
    otherwise."""
    held = {signal.SIGINT, signal.SIGTERM, *HANGUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        own_folder()  # the fork server's socket goes there: a folder a later start can remove if this run is killed
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, held)  # the tracker's start unblocks SIGTERM when it is done
        if "forkserver" in mp.get_all_start_methods():
            forkserver.set_forkserver_preload([__name__, _QUIET])
            forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def check_rings_fit(cfgs: dict[str, SourceConfig], slots: int) -> None:
    """Refuse capture rings of ``slots`` frames a source that do not fit the free shared memory: such a segment is
    created without complaint and the first write past the end kills the producer with SIGBUS."""
    if (free := free_bytes()) is None:
        return
    need = {name: cfg.ring_bytes(slots) for name, cfg in cfgs.items()}
    if sum(need.values()) > free:
        sizes = ", ".join(f"{n} {cfg.width}x{cfg.height}" for n, cfg in cfgs.items())
        raise ValueError(f"capture rings need {sum(need.values()) / 2**20:.0f} MiB of shared memory ({sizes}, "
                         f"{slots} slots each) but {SHM_DIR} has {free / 2**20:.0f} MiB free: lower width/height, "
                         f"or give {SHM_DIR} more room (docker: --shm-size)")


class StopFlag:
    """A process-shared stop flag that a killed process cannot wedge.

    ``multiprocessing.Event`` is built on a Condition: a child SIGKILLed inside ``Event.wait`` leaves a sleeper
    count behind and the next ``Event.set`` waits for it forever. A lock-free shared byte polled every 20 ms
    has no such state.
    """

    _POLL_S = 0.02

    def __init__(self, ctx: Any) -> None:
        self._flag = ctx.RawValue("b", 0)
        self._owner_pid = os.getpid()
        self._orphaned = False  # the consumer found gone (for good: its pid may be another process's later)
        self._look_at = 0.0  # monotonic time of the next look at the consumer

    def set(self) -> None:
        self._flag.value = 1

    def is_set(self) -> bool:
        """True once set, and in a child also once the consumer has died (so no producer outlives it). Asked by
        pid: a forked producer's parent is the fork server, which lives as long as any of its children. The pid is
        asked (syscalls and a /proc read) once each ``_POLL_S`` at most, however often a producer checks the flag."""
        if self._flag.value or self._orphaned:
            return True
        if (now := time.monotonic()) < self._look_at:
            return False
        self._look_at = now + self._POLL_S
        self._orphaned = os.getpid() != self._owner_pid and not process_alive(self._owner_pid)
        return self._orphaned

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s, returning early (True) once the flag is set."""
        deadline = time.monotonic() + timeout
        while not self.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, self._POLL_S))
        return True


class _PacingStop:
    """The stop flag as a source's sleeps see it: each sleep first posts its end (monotonic ns) in ``beat[2]``, so the
    parent does not take a source waiting for its next frame's time (realtime pacing) for a hung one."""

    def __init__(self, stop: StopFlag, beat: Any) -> None:
        self._stop, self._beat = stop, beat

    def is_set(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float) -> bool:
        self._beat[2] = time.monotonic_ns() + round(timeout * 1e9)
        return self._stop.wait(timeout)


def _count(beat: Any, slot: int) -> None:
    beat[slot] += 1


def _skip(source: Source, n: int) -> None:
    """Discard ``n`` frames; through the source's own ``skip`` when it has one (no realtime pacing there)."""
    if n and hasattr(source, "skip"):
        source.skip(n)
        return
    for _ in range(n):
        if source.read() is None:
            return


def produce(section: str, cfg: SourceConfig, ring: ShmRing, conn: Any, stop: StopFlag,
             resume: tuple[int, int, int], beat: Any, pace: Any = None) -> None:
    """Child process body: open the source, skip/renumber for a resume, write frames until stop or the end.

    ``beat`` (shared int64 x 6): frames written, the source's frame interval in ns (set at each frame), the end
    of the source's current pacing sleep (monotonic ns), the packets it skipped as undecodable (``skipped``), the
    steps its open has made (a synthetic scene's build, seconds for a large one: not the silence of a hung open), and 1
    once this body runs (see :func:`failed_to_start`).
    ``pace`` (shared int64 x 2, kept across a source's processes): where a realtime source's time line started.
    """
    beat[5] = 1
    for sig in STOP_SIGNALS:  # the parent's to handle: it stops this process
        signal.signal(sig, signal.SIG_IGN)
    seq_start, skip, t_offset_ns = resume
    source = None
    try:
        source = open_source(section, cfg)
        source.stop_event = _PacingStop(stop, beat)
        source.warn = lambda line: conn.send(("warn", redact(line)))  # what it corrects and goes on with: logged
        source.pace_origin, source.pace_shift_ns = pace, t_offset_ns  # a restart keeps the realtime time line
        source.progress = lambda: _count(beat, 4)
        with source:
            _skip(source, skip)  # resume a replayable source after the last frame delivered
            n = 0
            while not stop.is_set():
                frame = source.read()
                beat[3] = getattr(source, "skipped", 0)
                if frame is None:
                    conn.send(("eos", f"{section}: end of stream ({redact(f'{cfg.kind} {cfg.path}'.strip())})"))
                    return
                # the frames a late source passed over keep their numbers: a restart skips them, as those delivered
                frame.seq = seq_start + n + getattr(source, "passed", 0)
                frame.t_capture_ns += t_offset_ns
                # before the write: the parent may see the frame before anything after it; at every frame, as a file
                # whose times stand still goes at its declared rate from the frame that shows it
                beat[1] = getattr(source, "frame_interval_ns", round(1e9 / cfg.fps))
                if not ring.write(frame, stop):
                    return
                beat[0] += 1
                n += 1
    except SourceError as exc:
        conn.send(("unreachable" if exc.unreachable else "error", str(exc)))
        sys.exit(1)
    except ShmFull as exc:  # frames that outgrew the ring, and no room for a bigger one: said as the source's end
        conn.send(("error", str(exc)))
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001  process boundary: any crash becomes one reported line
        conn.send(("error", f"{section}: producer crashed: {one_line(exc, typed=True)}"))
        sys.exit(1)
    finally:
        beat[3] = getattr(source, "skipped", 0)  # also those skipped just before an error ended the source
        ring.close()
        conn.close()


def start_process(ctx: Any, section: str, cfg: SourceConfig, ring: ShmRing, stop: StopFlag,
                  resume: tuple[int, int, int], beat: Any, pace: Any = None) -> tuple[Any, Any]:
    """Start the producer process of one source; returns it and the read end of its message pipe."""
    conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=produce, name=f"streamfuse-{section}", daemon=True,
                       args=(section, cfg, ring, child_conn, stop, resume, beat, pace))
    try:
        # Ctrl-C held, not ignored, meanwhile: a child started here inherits it blocked, so that none prints a traceback
        # in its start-up, and the run still acts on one that came (an ignored one was lost: the run went on)
        with blocked((signal.SIGINT,)):
            start_servers()  # a fork server that died (kill -9, the OOM killer) is made again as the first was, not
            proc.start()  # by multiprocessing's start, which leaves SIGTERM and SIGHUP to end the new one again
    except EOFError:  # the fork server died without the new process's number: its fork refused (EAGAIN), or killed
        conn.close()
        child_conn.close()
        raise OSError(errno.EAGAIN, f"cannot start the {section} producer process: its fork server could not make it "
                                    "(is the process limit, ulimit -u, reached?)") from None
    child_conn.close()  # our copy: a dead child then reads as EOF instead of a hang
    return proc, conn


def end_start(line: str) -> None:
    """In a producer still starting (forked by the fork server, or spawned where the platform has none, importing the
    program's main module): ``line`` on stderr and the exit :data:`MAIN_RAN_AGAIN`; in any other process, nothing."""
    quiet = sys.modules.get(_QUIET)  # imported elsewhere too (a test run's doctests import every module): not forked
    if quiet is not None and quiet.SERVER_PID != os.getpid() or _spawning():
        sys.stderr.write(f"streamfuse producer: {line}\n")  # whole: print's two writes let the other one's run in
        os._exit(MAIN_RAN_AGAIN)


def _spawning() -> bool:
    """Whether multiprocessing's start of a spawned process runs beneath this call (no fork server hook there to say
    an error in one line: the main module's error was a traceback)."""
    frame = sys._getframe(1)
    # private: multiprocessing's start of a spawned child (CPython 3.8-3.13); renamed, the misuse reported here ends
    # in an AttributeError's traceback instead of its one line
    while frame is not None and frame.f_code is not spawn._main.__code__:
        frame = frame.f_back
    return frame is not None


def failed_to_start(proc: Any, beat: Any) -> bool:
    """Whether a producer process exited by itself before its body ran: in its start, the program's main module run
    in it (:data:`MAIN_RAN_AGAIN`, or an error there), which each restart would run again; not one killed, nor one whose
    fork server was lost (255)."""
    return proc.exitcode is not None and 0 < proc.exitcode != 255 and not beat[5]


def describe_exit(code: int | None) -> str:
    """A producer process's exit code in words."""
    if code == MAIN_RAN_AGAIN:
        return "exited as it started: the program's main module, which it imports, called run_live again"
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def how_it_ended(proc: Any, beat: Any = None) -> str:
    """How a producer process that multiprocessing sees ended went, in words (``beat``: its own, to tell one that
    failed as it started). One whose fork server died (kill -9, the OOM killer) reads as exited with 255 while it runs
    on, orphaned, beside the producer started next (a camera held twice): it is killed here."""
    if beat is not None and failed_to_start(proc, beat) and proc.exitcode != MAIN_RAN_AGAIN:
        return f"died: exited with code {proc.exitcode} as it started, in the program's main module, which it imports"
    # only 255 says its fork server was lost; any other code was reported by a server that reaped it, whose number
    # may be another process's by now
    if proc.exitcode != 255 or not process_alive(proc.pid):
        return f"died: {describe_exit(proc.exitcode)}"
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except OSError:  # gone meanwhile, or its number already another user's process
        return f"died: {describe_exit(proc.exitcode)}"
    return "lost its fork server (it ran on, orphaned); killed it"
