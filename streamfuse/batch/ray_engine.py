"""The Ray engine: one Ray task per pair, bounded submission, workers that keep their models, frames reported back."""

from __future__ import annotations

import functools
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from streamfuse.batch.jobs import PairJob, PairResult
from streamfuse.batch.worker import Models, replay_pair, worker_cfg

__all__ = ["RayEngine", "bounded"]

_REPORT_S = 0.25  # a worker reports its fused frames to the progress bar at most this often


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
    """The Ray task of one pair (runs in a worker process)."""
    global _MODELS
    if _MODELS is None:
        import cv2

        cv2.setNumThreads(threads)  # OpenCV would start a thread per core of the node, not per worker
        _MODELS = Models()
    report = _Batched(lambda n: progress.add.remote(n))
    try:
        return replay_pair(cfg, job, resume=resume, models=_MODELS, report=report)
    finally:
        report.flush()


class _Progress:
    """Ray actor that adds up the frames the workers report; the driver takes the count to update its bar."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


@dataclass
class RayEngine:
    """One Ray task per pair.

    Args:
        workers: pairs run at once (on a local Ray, also the CPUs it gets: ``workers * threads``).
        threads: CPUs per worker (``num_cpus`` of a task; see :func:`worker_cfg`).
        gpus: GPUs per worker (``num_gpus``; fractions share a GPU); 0 on CPU-only clusters.
        address: a running cluster to join (``ray.init(address=...)``); empty: start a local Ray.
        retries: runs again of a pair whose worker died (Ray ``max_retries``).
    """

    workers: int = 2
    threads: int = 1
    gpus: float = 0.0
    address: str = ""
    retries: int = 3
    _progress: tuple[str, Any] | None = field(default=None, init=False, repr=False)  # (Ray's address, the actor)

    def __post_init__(self) -> None:
        for name, value, low in (("workers", self.workers, 1), ("threads", self.threads, 1),
                                 ("gpus", self.gpus, 0), ("retries", self.retries, 0)):
            if value < low:
                raise ValueError(f"ray engine: {name} must be >= {low}, got {value}")

    def run(self, cfg: Any, jobs: Iterable[PairJob], *, resume: bool,
            frames: Callable[[int], None]) -> Iterator[PairResult]:
        import ray

        started = not ray.is_initialized()
        previous = None
        try:
            if started:
                self._init(ray)  # inside the try: a Ctrl-C while Ray starts still shuts it down
            if threading.current_thread() is threading.main_thread():
                # SIGTERM stops the batch as Ctrl-C does (tasks cancelled, partials kept); Ray's own handler, set by
                # ray.init, would crash the driver and leave its workers writing
                previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
            yield from self._schedule(ray, worker_cfg(cfg, self.threads), jobs, resume, frames)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if started:
                ray.shutdown()  # also after a Ctrl-C during ray.init, which may have started some of Ray's processes

    def _init(self, ray: Any) -> None:
        # A worker imports this module (so streamfuse, which sets OMP_WAIT_POLICY) before anything imports torch.
        if self.address:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address)
            except (ConnectionError, RuntimeError) as exc:
                raise ValueError(f"cannot join the Ray cluster at {self.address}: {exc}") from None
        else:
            ray.init(num_cpus=self.workers * self.threads, num_gpus=None if self.gpus else 0, include_dashboard=False)

    def _progress_actor(self, ray: Any) -> Any:
        """The frames counter, kept for the next batch on the same Ray: starting an actor's process each time would
        take CPU from the first pairs (and the actor ends when its last handle goes)."""
        address = ray.get_runtime_context().gcs_address
        if self._progress is None or self._progress[0] != address:
            self._progress = (address, _remote(ray)["progress"].remote())
        return self._progress[1]

    def _schedule(self, ray: Any, cfg: Any, jobs: Iterable[PairJob], resume: bool,
                  frames: Callable[[int], None]) -> Iterator[PairResult]:
        progress = self._progress_actor(ray)
        task = _remote(ray)["replay"].options(num_cpus=self.threads, num_gpus=self.gpus, max_retries=self.retries,
                                        retry_exceptions=False)
        cfg_ref = ray.put(cfg)
        running: dict[Any, PairJob] = {}
        try:
            for ref, job, value in bounded(jobs, lambda job: task.remote(cfg_ref, job, resume, self.threads, progress),
                                           lambda refs: _wait_one(ray, refs, progress, frames), 2 * self.workers,
                                           running):
                yield value if isinstance(value, PairResult) else _lost(job, value, self.retries)
        except KeyboardInterrupt:
            for ref in running:
                ray.cancel(ref)  # raises KeyboardInterrupt in the task: the replay keeps a resumable partial
            ray.wait(list(running), num_returns=len(running), timeout=10)
            raise
        frames(_take(ray, progress))


def _take(ray: Any, progress: Any) -> int:
    """Frames fused since the last call, for the bar; 0 once the counter's process is gone (it must not cost
    pairs)."""
    try:
        return ray.get(progress.take.remote())
    except ray.exceptions.RayError:
        return 0


def _check_reachable(address: str) -> None:
    """Refuse a ``HOST:PORT`` nothing listens on in one line (Ray itself retries for minutes); other forms such as
    ``auto`` or ``ray://...`` are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "/" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


@functools.cache
def _remote(ray: Any) -> dict[str, Any]:
    """The Ray task and actor, made once: a worker loads a remote function once, and every new one again (~0.3 s)."""
    return {"replay": ray.remote(_ray_replay), "progress": ray.remote(num_cpus=0)(_Progress)}


def _wait_one(ray: Any, refs: list, progress: Any, frames: Callable[[int], None]) -> tuple[Any, Any]:
    """The first task of ``refs`` to finish and its value (or the Ray error that ended it); updates the frames bar
    while waiting."""
    while True:
        done, _ = ray.wait(refs, num_returns=1, timeout=0.5)
        frames(_take(ray, progress))
        if done:
            try:
                return done[0], ray.get(done[0])
            except ray.exceptions.RayError as exc:
                return done[0], exc


def _lost(job: PairJob, exc: Exception, retries: int) -> PairResult:
    """The result of a pair whose task Ray gave up on (its worker died ``retries + 1`` times)."""
    why = " ".join(str(exc).split("\n", 1)[0].split()) or type(exc).__name__
    return PairResult(str(job.out), "failed", reason=f"worker lost {retries + 1} times ({type(exc).__name__}: {why}); "
                                                     f"run again with --resume")


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
