"""The local engine (the pairs one after another in this process) and the driver that runs a batch on an engine."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from streamfuse.atomic_write import partial_path
from streamfuse.batch.jobs import BatchInterrupted, BatchSummary, PairJob, PairResult
from streamfuse.batch.worker import FOUND_COMPLETE, Models, frames_dir_of, replay_pair, worker_cfg
from streamfuse.config import absolute_paths
from streamfuse.errors import io_reason
from streamfuse.replay.frames_dir import STAGING
from streamfuse.replay.outputs import check_existing_output, check_no_partial, is_complete
from streamfuse.replay.resume import frames_held
from streamfuse.signals import TERMINATE, handled, interrupted, raise_terminated

__all__ = ["Engine", "LocalEngine", "run_batch"]

log = logging.getLogger(__name__)


class Engine(Protocol):
    """Runs pairs and yields their results as they finish; ``frames(n, out)`` says ``n`` more frames fused into the
    output ``out`` (the frames bar, and which outputs this batch wrote). The user's Ctrl-C or SIGTERM stops it: it
    yields the results of the pairs it stopped, then returns (or raises KeyboardInterrupt)."""

    def run(self, cfg: Any, jobs: Iterable[PairJob], *, resume: bool,
            frames: Callable[[int, str], None]) -> Iterator[PairResult]:
        ...


@dataclass
class LocalEngine:
    """The pairs one after another in this process; Ctrl-C or SIGTERM stops the current pair (its partial output is
    kept) and the batch.

    Args:
        threads: CPUs of the one worker (see :func:`worker_cfg`).
    """

    threads: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"local engine: threads must be >= 1, got {self.threads}")

    def run(self, cfg: Any, jobs: Iterable[PairJob], *, resume: bool,
            frames: Callable[[int, str], None]) -> Iterator[PairResult]:
        models = Models()  # one per batch run: the model is loaded once, for the first pair that needs it
        cfg = worker_cfg(cfg, self.threads)
        for job in jobs:
            result = replay_pair(cfg, job, resume=resume, models=models,
                                 report=lambda n, out=str(job.out): frames(n, out))
            yield result
            if result.late_stop:  # held while the pair's output took its name: it stops the batch now
                signal.raise_signal(result.late_stop)
            if result.status == "interrupted":
                return


def run_batch(cfg: Any, jobs: list[PairJob], engine: Engine | None = None, *, resume: bool = False) -> BatchSummary:
    """Replay ``jobs`` on ``engine`` (default: :class:`LocalEngine`); complete outputs are skipped.

    Args:
        cfg: PipelineConfig; ``replay.progress`` switches the pairs and frames bars (shown on a terminal).
        jobs: from :func:`find_jobs` (outputs checked against the inputs).
        engine: where the pairs run.
        resume: continue interrupted outputs from their partial files.

    Returns:
        Every pair's result, in the order they finished (first those whose output existed: skipped, or failed when
        that output is no video or, without ``resume``, a partial one).

    Raises:
        BatchInterrupted: Ctrl-C or SIGTERM stopped the batch; its ``summary`` lists every pair, those left unfinished
            last ("interrupted" with a partial output to resume, or "not started").
    """
    from tqdm import tqdm

    engine = engine or LocalEngine()
    t0 = time.perf_counter()
    before = {job: _done_before(job, cfg, resume) for job in jobs}
    results = [result for result in before.values() if result is not None]
    todo = [job for job, result in before.items() if result is None]
    quiet = None if cfg.replay.progress else True  # None: tqdm shows the bars on a terminal only
    # paths as this folder names them: a cluster's workers run in other folders
    work_cfg = absolute_paths(dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, progress=False)))
    stop = ""  # the stop that ended the batch early, as its last line names it
    fused: set[str] = set()  # the outputs the engine fused frames into: this batch's, not another run's
    # SIGTERM and SIGHUP stop the batch as Ctrl-C does (a replay and the Ray driver set their own meanwhile)
    with _output_folders({job.out.parent for job in todo}), handled(raise_terminated, TERMINATE), \
            tqdm(total=len(jobs), initial=len(results), unit="pair", desc="pairs", position=0,
                 disable=quiet) as pairs, \
            tqdm(unit="frame", desc="frames", position=1, disable=quiet) as frames:
        try:
            if todo:  # else no engine to start (a Ray takes seconds)
                def fused_into(n: int, out: str) -> None:
                    frames.update(n)
                    fused.add(out)

                with contextlib.closing(engine.run(work_cfg, todo, resume=resume, frames=fused_into)) as ran:
                    for result in ran:
                        results.append(result)
                        pairs.update(1)
                        _log(result)
        except KeyboardInterrupt as exc:  # between two pairs, or while the engine starts or winds down
            stop = interrupted(exc)
    stop = stop or next((r.stop for r in results if r.stop), "")  # else a stop inside a pair: its replay names it
    # a pair stopped before its first frame was written (while the model loaded, say) has nothing to resume
    results = [PairResult(r.out, "not started") if r.status == "interrupted" and not partial_path(r.out).exists()
               else r for r in results]
    finished = {r.out for r in results}
    results += [_unfinished(job, cfg, str(job.out) in fused) for job in todo if str(job.out) not in finished]
    summary = BatchSummary(results, time.perf_counter() - t0)
    if stop or summary.stopped:
        raise BatchInterrupted(summary, stop or "interrupted")
    return summary


@contextlib.contextmanager
def _output_folders(folders: set[Path]) -> Iterator[None]:
    """The outputs' folders, made before the engine starts (so that one that cannot be made is said at once); those
    it made that are still empty when the batch ends are removed (an engine that failed to start, a batch stopped
    before its first output)."""
    made: list[Path] = []
    try:
        for folder in folders:
            missing = [parent for parent in (folder, *folder.parents) if not parent.exists()]
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OSError(f"cannot make output folder {folder}: {io_reason(exc)}") from None
            made += missing
        yield
    finally:
        for folder in sorted(set(made), key=lambda path: len(path.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty: an output, or another program's file
                folder.rmdir()


def _done_before(job: PairJob, cfg: Any, resume: bool) -> PairResult | None:
    """The result of a pair whose output is not to be written, or None (run it): skipped when complete; failed when
    that output is no video or another program's (left as it is: not ours to write over, nor to pass off as
    complete), was made from other inputs, or, without ``resume``, is an interrupted replay's partial output (as a
    single replay refuses it)."""
    try:
        if not is_complete(job.out):
            if not resume:
                check_no_partial(job.out)
            return None
        check_existing_output(job.out, cfg, (job.ir, job.vis), resume=True)
    except FileExistsError as exc:
        return _failed(job.out, str(exc))
    if _staged(cfg, job):
        return None  # killed between its video's rename and its frames' move: its replay moves them in
    return PairResult(str(job.out), "skipped")


def _staged(cfg: Any, job: PairJob) -> Path | None:
    """The folder of the pair's frames still staged (not yet moved in beside its video), or None."""
    staged = frames_dir_of(cfg, job) / STAGING if cfg.replay.frames_dir else None
    return staged if staged is not None and staged.exists() else None


def _failed(out: Path, reason: str) -> PairResult:
    result = PairResult(str(out), "failed", reason=reason)
    _log(result)
    return result


def _log(result: PairResult) -> None:
    if result.status == "failed":
        log.error("%s: %s", result.out, result.reason)
    elif result.status == "interrupted" or result.reason:  # or skipped, found complete at its turn
        log.warning("%s: %s", result.out, result.reason)


def _unfinished(job: PairJob, cfg: Any, fused: bool) -> PairResult:
    """A pair the batch stopped before it returned a result: one whose replay had just completed it is done, once its
    frames are moved in (``fused``: the engine fused frames into it); one complete all the same, another run's
    (a second batch on these outputs), is skipped as found complete at its turn."""
    if is_complete(job.out):
        if staged := _staged(cfg, job):  # stopped between the video's rename and the frames' move
            return PairResult(str(job.out), "interrupted", reason=f"stopped before its frames moved in from {staged}")
        if not fused:
            result = PairResult(str(job.out), "skipped", frames_out=frames_held(job.out), reason=FOUND_COMPLETE)
            _log(result)
            return result
        return PairResult(str(job.out), "done", frames_out=frames_held(job.out))  # what was read is not known here
    partial = partial_path(job.out)
    if partial.exists():
        return PairResult(str(job.out), "interrupted", frames_out=frames_held(partial),
                          reason=f"stopped; partial output kept in {partial}")
    return PairResult(str(job.out), "not started")
