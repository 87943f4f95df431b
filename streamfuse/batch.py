"""Batch replay: many recorded IR/visible pairs, one fused video each, on this machine or on a Ray cluster.

Every pair is one :func:`streamfuse.replay.run_replay` call, in one process from its first frame to its last, so
a video's temporal state (OT plans, stabilizer, denoiser) stays in one place and an encoded stream is never split;
outputs, pts, the ``.partial`` name and ``resume`` follow the single replay's rules. Engines:

- ``local`` (default, no Ray needed): the pairs one after another in this process.
- ``ray``: one Ray task per pair, ``threads`` CPUs (and ``gpus`` GPUs) each; Ray reuses a worker process for
  later tasks, and a worker keeps its loaded model for them. At most two tasks per worker are queued, so the
  driver's memory does not grow with the number of pairs. A worker that dies (killed, out of memory, node lost)
  has its pair run again from the start on another worker (``retries``); a pair that fails by itself (corrupt,
  missing, mismatched input) is not retried and fails alone with its one-line reason.

A worker of either engine runs a pair on ``threads`` CPUs (default 1): torch's threads (``fuse.threads``) and
FFmpeg's decoder and encoder threads (``replay.codec_threads``) left at 0 ("FFmpeg's or torch's choice", which is
every core) become ``threads``, so that workers side by side do not each start a thread per core.

Outputs already complete (the final file exists and no ``.partial`` does) are skipped by the driver, before any
work is sent. Progress: one bar for pairs, one for fused frames (reported by the workers).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol

import streamfuse
from streamfuse.atomic_write import partial_path
from streamfuse.replay import ReplayError, check_output_paths, find_pairs, run_replay

__all__ = ["PairJob", "PairResult", "BatchSummary", "Engine", "LocalEngine", "RayEngine", "find_jobs", "run_batch",
           "worker_cfg", "ENGINES"]

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
_REPORT_S = 0.25  # a worker reports its fused frames to the progress bar at most this often


@dataclass(frozen=True)
class PairJob:
    """One pair to replay: IR and visible inputs (the same ``.mcap`` for a recording) and the output path."""

    ir: Path
    vis: Path
    out: Path


@dataclass
class PairResult:
    """What became of one pair. ``frames_in`` counts frames read per input; ``frames_out`` frames in the output."""

    out: str
    status: Literal["done", "skipped", "failed", "interrupted"]
    frames_in: dict[str, int] = field(default_factory=lambda: {"ir": 0, "vis": 0})
    frames_out: int = 0
    fps: float = 0.0  # output frames per wall second of this pair
    wall_s: float = 0.0
    reason: str = ""  # one line, for failed and interrupted pairs
    worker: str = ""  # host:pid that ran the pair
    wait_policy: str = ""  # the worker's OMP_WAIT_POLICY; "late" when torch was imported before streamfuse


@dataclass
class BatchSummary:
    """Every pair's result and the batch's wall time (s)."""

    results: list[PairResult]
    wall_s: float

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[PairResult]:
        return [r for r in self.results if r.status in ("failed", "interrupted")]

    def format(self) -> str:
        """The summary table: a row per pair run (skipped pairs are only counted), then the totals."""
        ran = [r for r in self.results if r.status != "skipped"]
        width = max([len(Path(r.out).name) for r in ran] + [4])
        lines = [f"{'pair':<{width}}  {'status':<11}{'ir in':>7}{'vis in':>7}{'out':>7}{'fps':>8}  worker"]
        lines += [f"{Path(r.out).name:<{width}}  {r.status:<11}{r.frames_in['ir']:>7}{r.frames_in['vis']:>7}"
                  f"{r.frames_out:>7}{r.fps:>8.1f}  {r.worker}" for r in ran]
        frames = sum(r.frames_out for r in ran)
        lines.append(f"{len(self.results)} pairs: {self.count('done')} done, {self.count('skipped')} skipped "
                     f"(complete), {len(self.failed)} failed; {frames} frames out in {self.wall_s:.1f} s "
                     f"({frames / max(self.wall_s, 1e-9):.1f} frames/s)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ inputs


def find_jobs(src: str | os.PathLike, out_dir: str | os.PathLike, *, ext: str = ".mp4",
              frames_dir: str | os.PathLike = "") -> list[PairJob]:
    """The pairs of ``src`` with their outputs ``out_dir/<IR name stem><ext>``, checked before any work.

    Args:
        src: a pair list file or a folder with ``ir/`` and ``vi/`` (see :func:`streamfuse.replay.find_pairs`),
            or a folder of ``.mcap`` recordings (each holds both streams).
        out_dir: output folder (created by :func:`run_batch`).
        ext: output container extension.
        frames_dir: ``replay.frames_dir`` (checked against the inputs too).

    Raises:
        FileNotFoundError, ValueError: one line, when the list is bad, an output would overwrite an input or two
            pairs share an output.
    """
    src, out_dir = Path(src), Path(out_dir)
    recordings = sorted(src.glob("*.mcap")) if src.is_dir() and not (src / "ir").is_dir() else []
    pairs = [(p, p) for p in recordings] or find_pairs(src)
    jobs = [PairJob(Path(ir), Path(vis), out_dir / f"{Path(ir).stem}{ext}") for ir, vis in pairs]
    for job in jobs:
        check_output_paths(job.out, {"ir": job.ir, "vis": job.vis}, frames_dir)
    shared = [out for out, n in Counter(job.out for job in jobs).items() if n > 1]
    if shared:
        raise ValueError(f"two pairs would write {shared[0]} (same IR file name); rename one of the IR files")
    return jobs


def _complete(out: Path) -> bool:
    """A finished output: the final file exists and no partial one (a replay renames it into place last)."""
    return out.exists() and not partial_path(out).exists()


# ------------------------------------------------------------------------------------------------------ workers


class _Counted:
    """A fuser that reports each fused frame (for the frames bar); everything else is the wrapped fuser's."""

    def __init__(self, fuser: Any, report: Callable[[int], None]):
        self._fuser, self._report = fuser, report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fuser, name)

    def fuse(self, *args: Any, **kwargs: Any) -> Any:
        out = self._fuser.fuse(*args, **kwargs)
        self._report(1)
        return out


class _Models:
    """The models one worker has loaded, kept across its pairs (keyed by the fuse and align settings)."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def fuser(self, fuse: Any, align: Any) -> Any:
        """A fuser for one more video: the model stays loaded; OT plans and latent noise start afresh per video."""
        from streamfuse.fusers import build_fuser

        if fuse.name != "hclfuse":
            return build_fuser(fuse, align)  # baselines load nothing: a fresh one cannot carry any video's state
        from streamfuse.model.fuser import HCLFuser

        key = repr((fuse, align))  # frozen dataclasses: the repr is the value
        if key not in self._loaded:
            self._loaded[key] = build_fuser(fuse, align)
        loaded = self._loaded[key]
        return HCLFuser(loaded.net, loaded.engine, align, loaded.seed, loaded.version)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _wait_policy() -> str:
    return "late" if streamfuse.LATE_WAIT_POLICY else os.environ.get("OMP_WAIT_POLICY", "")


def replay_pair(cfg: Any, job: PairJob, *, resume: bool, models: _Models,
                report: Callable[[int], None] = lambda n: None) -> PairResult:
    """Replay one pair with this worker's models; a failure becomes the result's one-line reason.

    Args:
        cfg: PipelineConfig (its ``replay.progress`` should be off: the batch shows its own bars).
        job: the pair and its output.
        resume: continue an interrupted output from its partial file.
        models: this worker's loaded models.
        report: called with the number of frames fused since the last call.
    """
    result = PairResult(str(job.out), "done", worker=_worker_name(), wait_policy=_wait_policy())
    t0 = time.perf_counter()
    try:
        summary = run_replay(cfg, ir_path=job.ir, vis_path=job.vis, out_path=job.out, resume=resume,
                             fuser_factory=lambda fuse, align: _Counted(models.fuser(fuse, align), report))
    except ReplayError as exc:
        summary = exc.summary
        result.status, result.reason = "interrupted" if exc.interrupted else "failed", str(exc)
    except (OSError, RuntimeError, ValueError) as exc:
        summary = None
        result.status, result.reason = "failed", " ".join(str(exc).split()) or type(exc).__name__
    if summary is not None:
        result.frames_in, result.frames_out = dict(summary.frames), summary.written
    result.wall_s = time.perf_counter() - t0
    result.fps = result.frames_out / max(result.wall_s, 1e-9)
    return result


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


# ------------------------------------------------------------------------------------------------------ engines


class Engine(Protocol):
    """Runs pairs and yields their results as they finish; ``frames(n)`` advances the frames bar."""

    def run(self, cfg: Any, jobs: Iterable[PairJob], *, resume: bool,
            frames: Callable[[int], None]) -> Iterator[PairResult]:
        ...


def worker_cfg(cfg: Any, threads: int) -> Any:
    """The config a worker of ``threads`` CPUs runs: torch's and FFmpeg's "every core" (0) become its own CPUs."""
    fuse = cfg.fuse if cfg.fuse.threads else dataclasses.replace(cfg.fuse, threads=threads)
    replay = cfg.replay if cfg.replay.codec_threads else dataclasses.replace(cfg.replay, codec_threads=threads)
    return dataclasses.replace(cfg, fuse=fuse, replay=replay)


@dataclass
class LocalEngine:
    """The pairs one after another in this process; Ctrl-C or SIGTERM stops the batch after the current pair.

    Args:
        threads: CPUs of the one worker (see :func:`worker_cfg`).
    """

    threads: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"local engine: threads must be >= 1, got {self.threads}")

    def run(self, cfg: Any, jobs: Iterable[PairJob], *, resume: bool,
            frames: Callable[[int], None]) -> Iterator[PairResult]:
        models = _Models()  # one per batch run: the model is loaded once, for the first pair that needs it
        cfg = worker_cfg(cfg, self.threads)
        for job in jobs:
            result = replay_pair(cfg, job, resume=resume, models=models, report=frames)
            yield result
            if result.status == "interrupted":
                return


_MODELS: _Models | None = None  # a Ray worker process's loaded models, kept for the later tasks it runs


def _ray_replay(cfg: Any, job: PairJob, resume: bool, threads: int, progress: Any) -> PairResult:
    """The Ray task of one pair (runs in a worker process)."""
    global _MODELS
    if _MODELS is None:
        import cv2

        cv2.setNumThreads(threads)  # OpenCV would start a thread per core of the node, not per worker
        _MODELS = _Models()
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
        if started:
            self._init(ray)
        try:
            yield from self._schedule(ray, worker_cfg(cfg, self.threads), jobs, resume, frames)
        finally:
            if started:
                ray.shutdown()

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
        frames(ray.get(progress.take.remote()))


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
        frames(ray.get(progress.take.remote()))
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


# ------------------------------------------------------------------------------------------------------ driver


def run_batch(cfg: Any, jobs: list[PairJob], engine: Engine | None = None, *, resume: bool = False) -> BatchSummary:
    """Replay ``jobs`` on ``engine`` (default: :class:`LocalEngine`); complete outputs are skipped.

    Args:
        cfg: PipelineConfig; ``replay.progress`` switches the pairs and frames bars (shown on a terminal).
        jobs: from :func:`find_jobs` (outputs checked against the inputs).
        engine: where the pairs run.
        resume: continue interrupted outputs from their partial files.

    Returns:
        Every pair's result, in the order they finished (skipped pairs first).
    """
    from tqdm import tqdm

    engine = engine or LocalEngine()
    t0 = time.perf_counter()
    results = [PairResult(str(job.out), "skipped") for job in jobs if _complete(job.out)]
    todo = [job for job in jobs if not _complete(job.out)]
    for folder in {job.out.parent for job in todo}:
        folder.mkdir(parents=True, exist_ok=True)
    quiet = None if cfg.replay.progress else True  # None: tqdm shows the bars on a terminal only
    work_cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, progress=False))
    with tqdm(total=len(jobs), initial=len(results), unit="pair", desc="pairs", position=0, disable=quiet) as pairs, \
            tqdm(unit="frame", desc="frames", position=1, disable=quiet) as frames:
        for result in engine.run(work_cfg, todo, resume=resume, frames=frames.update):
            results.append(result)
            pairs.update(1)
            if result.status in ("failed", "interrupted"):
                log.error("%s: %s", result.out, result.reason)
    return BatchSummary(results, time.perf_counter() - t0)
