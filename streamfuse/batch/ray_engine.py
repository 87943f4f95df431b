"""The Ray engine: one Ray task per pair, bounded submission, workers that keep their models, frames reported back."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from streamfuse.atomic_write import partial_path
from streamfuse.batch.jobs import PairJob, PairResult
from streamfuse.batch.ray_join import check_cluster
from streamfuse.batch.ray_progress import Progress, fused_in_this_batch
from streamfuse.batch.worker import Models, replay_pair, worker_cfg
from streamfuse.errors import one_line
from streamfuse.replay.resume import frames_held
from streamfuse.signals import HANGUP, Terminated, blocked, handled, stopped_by

__all__ = ["RayEngine", "bounded"]

log = logging.getLogger(__name__)

_REPORT_S = 0.25  # a worker reports its fused frames to the progress bar at most this often
_WAIT_S = 0.25  # longest wait inside Ray (its waits hold Python's signal handlers until they return)
_CANCEL_S = 10.0  # after a Ctrl-C, how long the running pairs get to keep their partial outputs
_HUNG_S = 60.0  # a local Ray start still going after this long is taken for hung (one took 13-21 s on 2 busy cores)


class _Batched:
    """Adds up frame reports and passes them on at most every ``_REPORT_S`` (a Ray call per frame costs time)."""

    def __init__(self, send: Callable[[int], None]):
        self._send, self._n, self._t = send, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        self._n += n
        if time.monotonic() - self._t >= _REPORT_S:
            self.flush()

    def flush(self) -> None:
        if self._n:
            self._send(self._n)
        self._n, self._t = 0, time.monotonic()


_MODELS: Models | None = None  # a Ray worker process's loaded models, kept for the later tasks it runs


def _ray_replay(cfg: Any, job: PairJob, resume: bool, threads: int, progress: Any) -> PairResult:
    """The Ray task of one pair (runs in a worker process, in its main thread)."""
    global _MODELS
    if _MODELS is None:
        import cv2

        cv2.setNumThreads(threads)  # OpenCV would start a thread per core of the node, not per worker
        _MODELS = Models()
    report = _Batched(lambda n: progress.add.remote(n, str(job.out)))
    cancelled: list[int] = []

    def cancel(signum: int, frame: Any) -> None:
        cancelled.append(signum)
        raise Terminated("interrupted (the batch was stopped)")  # whichever signal the driver had, not a Ctrl-C here

    # ray.cancel (the driver's Ctrl-C or SIGTERM) raises KeyboardInterrupt through the SIGINT handler
    previous = signal.signal(signal.SIGINT, cancel)
    try:
        result = replay_pair(cfg, job, resume=resume, models=_MODELS, report=report)
    finally:
        signal.signal(signal.SIGINT, previous)
        report.flush()
    if result.status == "skipped" and fused_in_this_batch(progress, str(job.out)):
        result.status, result.reason = "done", ""  # a retry: this batch's worker lost as it finished the pair fused it
    if not cancelled and (result.status == "interrupted" or result.late_stop == signal.SIGTERM):
        # A SIGTERM to this worker (node shutdown, `kill PID`), not the user's: the replay kept its partial output
        # (or, stopped as its output took its name, ended it complete); now the worker exits through Ray's own SIGTERM
        # handler, so Ray runs the pair again as for a killed worker (a complete one is then done at once).
        signal.raise_signal(signal.SIGTERM)
    return result


@dataclass
class RayEngine:
    """One Ray task per pair.

    Args:
        workers: pairs run at once (on a local Ray, also the CPUs it gets: ``workers * threads``).
        threads: CPUs per worker (``num_cpus`` of a task; see :func:`worker_cfg`).
        gpus: GPUs per worker (``num_gpus``; fractions share a GPU); 0 on CPU-only clusters.
        address: a running cluster to join (``ray.init(address=...)``); empty: ``$RAY_ADDRESS`` when set (as in a
            job ``ray job submit`` started), else start a local Ray.
        retries: runs again of a pair whose worker died (Ray ``max_retries``).
    """

    workers: int = 2
    threads: int = 1
    gpus: float = 0.0
    address: str = field(default_factory=lambda: os.environ.get("RAY_ADDRESS", ""))
    retries: int = 3
    _progress: tuple[str, Any] | None = field(default=None, init=False, repr=False)  # (Ray's address, the actor)

    def __post_init__(self) -> None:
        for name, value, low in (("workers", self.workers, 1), ("threads", self.threads, 1),
                                 ("gpus", self.gpus, 0), ("retries", self.retries, 0)):
            if not low <= value < math.inf:  # NaN too
                raise ValueError(f"ray engine: {name} must be a finite number >= {low}, got {value}")

    def run(self, cfg: Any, jobs: Iterable[PairJob], *, resume: bool,
            frames: Callable[[int, str], None]) -> Iterator[PairResult]:
        """Yield each pair's result as it ends. Ctrl-C or SIGTERM to this process (the driver) stops the batch: the
        running pairs are cancelled (their replays keep resumable partial outputs), the results they return are
        yielded, and then what that signal raises (:func:`stopped_by`). A worker killed in any other way has its pair
        run again (``retries``)."""
        import ray

        stop = _StopEvent()
        with self.session(stop):
            with _stop_on_signals(stop):
                running = yield from self._schedule(ray, worker_cfg(cfg, self.threads), jobs, resume, frames, stop)
            # Ctrl-C and SIGTERM act again while the running pairs wind down: a second one stops waiting for them
            yield from _wind_down(ray, running, lambda: _report(ray, self._progress_actor(ray), frames))
        if stop.is_set():  # the batch's last line names the signal, which its workers never saw
            raise stopped_by(stop.signum)

    @contextlib.contextmanager
    def session(self, stop: _StopEvent | None = None) -> Iterator[None]:
        """Ray for the batches run inside (a benchmark's warm-up and timed runs on the same workers): started as
        ``run`` starts it unless one is up already, then shut down, both whole. A Ctrl-C or SIGTERM while it starts
        sets ``stop``; without one, it raises what that signal raises (see :func:`stopped_by`) once Ray is up."""
        import ray

        started, stopped = not ray.is_initialized(), stop or _StopEvent()
        try:
            if started:
                self._start(ray, stopped)
                self._check_fits(ray)
            if stop is None and stopped.is_set():
                raise stopped_by(stopped.signum)
            yield
        finally:
            if started:
                with _stop_on_signals(_StopEvent()):  # whole: stopped half-way, it leaves Ray's processes running
                    ray.shutdown()

    def _start(self, ray: Any, stop: _StopEvent) -> None:
        """ray.init, never cut half-way by Ctrl-C or SIGTERM when it starts a local Ray: they set ``stop`` and the
        batch stops once Ray has started, so that ray.shutdown knows every process to stop. A local Ray cut half-way
        left its raylet's agents running for minutes, or this process crashing at exit (its core worker half made).
        A local start past ``_HUNG_S`` is taken for hung (one whose GCS did not answer retried it for minutes,
        deaf to both): a second stop then ends it at once. Joining a cluster starts no process here, and Ray retries
        one that does not answer for ever: there a second Ctrl-C stops it at once, and so does a SIGTERM (Ray's own
        handler)."""
        if self.address:
            say, patience = "stopping once joined to the Ray cluster; Ctrl-C again to stop at once", 0.0
        else:
            say = (f"stopping once Ray has started (stopped half-way, it would leave its processes running); a start "
                   f"still going {_HUNG_S:.0f} s after it began is taken for hung: Ctrl-C again then stops at once")
            patience = _HUNG_S
        # joining keeps Ray's SIGTERM handler, which exits at once: a service manager's stop ends a join that hangs
        keep_sigterm = contextlib.nullcontext() if self.address else _batch_keeps_sigterm(ray)
        try:
            with _stop_on_signals(stop, say=say, again_after=patience), keep_sigterm:
                self._init(ray)
        except SystemExit as exc:
            if exc.code == signal.SIGTERM:  # the exit of a SIGTERM handler that a Ray set after all
                raise stopped_by(signal.SIGTERM) from None
            raise

    def _init(self, ray: Any) -> None:
        # A worker imports this module (so streamfuse, which sets OMP_WAIT_POLICY) before anything imports torch.
        if self.address:
            check_cluster(ray, self.address)
            try:
                ray.init(address=self.address)
            except (ConnectionError, RuntimeError) as exc:
                raise ValueError(f"cannot join the Ray cluster at {self.address}: {exc}") from None
        else:
            # "local" whatever $RAY_ADDRESS says (ray.init reads it too): `--address ''` starts one where it is set.
            # A terminal's hangup is the driver's to act on (it cancels the pairs, which keep their counts, and shuts
            # Ray down): Ray's processes, its workers too, start with it blocked; one that comes meanwhile then stops
            # the batch once Ray is up.
            with blocked(HANGUP):
                try:
                    ray.init(address="local", num_cpus=self.workers * self.threads, num_gpus=None if self.gpus else 0,
                             include_dashboard=False)
                except (ConnectionError, RuntimeError) as exc:  # its GCS or raylet did not come up: a traceback
                    raise ValueError(f"cannot start a local Ray: {one_line(exc)}") from None

    def _check_fits(self, ray: Any) -> None:
        """Refuse (one line) a worker no node of a local Ray can hold, which Ray would wait for for ever (a line of
        its autoscaler every half minute); warn of one on a cluster, where such a node may join."""
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if not any(r.get("CPU", 0) >= self.threads and r.get("GPU", 0) >= self.gpus for r in nodes):
            most = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes), default=(0, 0))
            ask = (f"the {self.threads} CPUs and {self.gpus:g} GPUs a worker asks for (--threads, --gpus; the largest "
                   f"has {most[0]:g} CPUs, {most[1]:g} GPUs)")
            if not self.address:  # no other node can join a local Ray: its pairs would wait for ever
                raise ValueError(f"this machine's Ray has no node with {ask}")
            log.warning("no node of the Ray cluster has %s: the pairs wait until one joins (an autoscaler may start "
                        "one)", ask)

    def _progress_actor(self, ray: Any) -> Any:
        """The frames counter, kept for the next batch on the same Ray: starting an actor's process each time would
        take CPU from the first pairs (and the actor ends when its last handle goes)."""
        address = ray.get_runtime_context().gcs_address
        if self._progress is None or self._progress[0] != address:
            self._progress = (address, _remote(ray)["progress"].remote())
        return self._progress[1]

    def _schedule(self, ray: Any, cfg: Any, jobs: Iterable[PairJob], resume: bool,
                  frames: Callable[[int, str], None], stop: threading.Event) -> Iterator[PairResult]:
        """Yield the pairs' results until all have ended or ``stop`` is set; return the pairs still running then."""
        if stop.is_set():  # while Ray started
            return {}
        progress = self._progress_actor(ray)
        with contextlib.suppress(ray.exceptions.RayError):  # a lost counter costs no pair (see _report)
            ray.get(progress.reset.remote())  # kept from an earlier batch on this Ray: its outputs are not this one's
        task = _remote(ray)["replay"].options(num_cpus=self.threads, num_gpus=self.gpus, max_retries=self.retries,
                                        retry_exceptions=False)
        cfg_ref = ray.put(cfg)
        running: dict[Any, PairJob] = {}

        def submit(job: PairJob) -> Any:
            if stop.is_set():
                raise _Stopped
            return task.remote(cfg_ref, job, resume, self.threads, progress)

        try:
            for ref, job, value in bounded(jobs, submit, lambda refs: _wait_one(ray, refs, progress, frames, stop),
                                           2 * self.workers, running):
                yield value if isinstance(value, PairResult) else _lost(ray, job, value, self.retries)
        except _Stopped:
            if running:
                log.warning("stopping: cancelling the %d pairs given to Ray, running or queued (partial outputs are "
                            "kept)", len(running))
            return running
        _report(ray, progress, frames)
        return {}


class _StopEvent(threading.Event):
    """Set by the first Ctrl-C or SIGTERM (see :func:`_stop_on_signals`), which it keeps: the line that ends the run
    names it."""

    signum: int = signal.SIGINT


class _Stopped(Exception):
    """The driver was asked to stop (Ctrl-C or SIGTERM)."""


@contextlib.contextmanager
def _stop_on_signals(stop: _StopEvent, *, say: str = "", again_after: float = math.inf) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop`` instead of raising (logging ``say``, when given), so the driver stops where it
    waits, never half-way through a Ray call; a second one, once ``again_after`` seconds have passed since the block
    began, raises what that signal raises (for a wait that may not end by itself). Main thread only (elsewhere they
    are the main thread's business)."""
    began = time.monotonic()

    def note(signum: int, frame: Any) -> None:
        if stop.is_set() and time.monotonic() - began >= again_after:
            raise stopped_by(signum)
        if say:
            log.warning(say)
        if not stop.is_set():
            stop.signum = signum
        stop.set()

    with handled(note):
        yield


@contextlib.contextmanager
def _batch_keeps_sigterm(ray: Any) -> Iterator[None]:
    """Inside the block, ray.init keeps the batch's SIGTERM handler: it sets its own before it starts anything, one
    that exits (SystemExit) wherever init is, which cut a local Ray half-way as a second Ctrl-C did."""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    set_handler = getattr(utils, "set_sigterm_handler", None)
    if set_handler is None:  # a Ray without it: the exit of its handler is taken for the user's stop (see _start)
        yield
        return
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = set_handler


def _wind_down(ray: Any, running: dict[Any, PairJob], report: Callable[[], None]) -> Iterator[PairResult]:
    """Cancel the pairs still running after a stop; ``report`` the frames they fused meanwhile (the outputs they fused
    into are this batch's, whether or not their results come back); yield the results they return (the batch counts
    the others)."""
    if not running:
        return
    for ref in running:
        ray.cancel(ref)  # raises KeyboardInterrupt in the task: the replay keeps a resumable partial
    ready, waiting, deadline = [], list(running), time.monotonic() + _CANCEL_S
    while waiting and time.monotonic() < deadline:  # in short waits: Python takes a second Ctrl-C only between them
        done, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=_WAIT_S)
        ready += done
    report()
    for ref in ready:
        try:
            yield ray.get(ref)
        except ray.exceptions.RayError:  # cancelled before it began, or cut outside the replay
            continue


def _report(ray: Any, progress: Any, frames: Callable[[int, str], None]) -> None:
    """Pass on the frames fused per output since the last call; none once the counter's process is gone (it must not
    cost pairs)."""
    try:
        counts = ray.get(progress.take.remote())
    except ray.exceptions.RayError:
        return
    for out, n in counts.items():
        frames(n, out)


@functools.cache
def _remote(ray: Any) -> dict[str, Any]:
    """The Ray task and actor, made once: a worker loads a remote function once, and every new one again (~0.3 s)."""
    return {"replay": ray.remote(_ray_replay), "progress": ray.remote(num_cpus=0)(Progress)}


def _wait_one(ray: Any, refs: list, progress: Any, frames: Callable[[int, str], None],
              stop: threading.Event) -> tuple[Any, Any]:
    """The first task of ``refs`` to finish and its value (or the Ray error that ended it); updates the frames bar
    while waiting; raises _Stopped once ``stop`` is set."""
    while True:
        done, _ = ray.wait(refs, num_returns=1, timeout=0.5)
        _report(ray, progress, frames)
        if done:
            try:
                return done[0], ray.get(done[0])
            except ray.exceptions.RayError as exc:
                return done[0], exc
        if stop.is_set():
            raise _Stopped


def _lost(ray: Any, job: PairJob, exc: Exception, retries: int) -> PairResult:
    """The result of a pair whose task ended in a Ray error: an exception of its own (not retried: it would meet it
    again), or its worker lost for good (died more than ``retries`` times, or its node or raylet gone)."""
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
        return PairResult(str(job.out), "failed", reason=one_line(exc.cause, typed=True))
    # the frames it fused are kept in its partial output (where this driver reaches the outputs' storage)
    return PairResult(str(job.out), "failed", frames_out=frames_held(partial_path(job.out)),
                      reason=f"its worker was lost ({one_line(exc, typed=True)}; Ray runs a pair again up to {retries} "
                             f"times); run again with --resume")


def bounded(jobs: Iterable[PairJob], submit: Callable[[PairJob], Any], wait_one: Callable[[list], tuple[Any, Any]],
            limit: int, running: dict[Any, PairJob] | None = None) -> Iterator[tuple[Any, PairJob, Any]]:
    """Submit ``jobs`` (read lazily) keeping at most ``limit`` running; yield ``(handle, job, value)`` as each ends.

    Args:
        jobs: pairs to run; never read further than ``limit`` ahead of the finished ones.
        submit: starts a job, returns its handle.
        wait_one: takes the running handles, blocks until one ends, returns ``(handle, value)``.
        limit: most jobs running at once (back-pressure: the driver holds that many handles, whatever the batch size).
        running: ``{handle: job}`` of the running jobs, kept up to date (the caller cancels them on Ctrl-C).
    """
    running = {} if running is None else running
    queued = iter(jobs)
    for job in queued:
        running[submit(job)] = job
        while len(running) >= limit:
            handle, value = wait_one(list(running))
            yield handle, running.pop(handle), value
    while running:
        handle, value = wait_one(list(running))
        yield handle, running.pop(handle), value
