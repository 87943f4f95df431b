"""The local engine (the pairs one after another in this process) and the driver that runs a batch on an engine."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from streamfuse.batch.jobs import BatchSummary, PairJob, PairResult, changed_settings, is_complete
from streamfuse.batch.worker import Models, replay_pair, worker_cfg

__all__ = ["Engine", "LocalEngine", "run_batch"]

log = logging.getLogger(__name__)


class Engine(Protocol):
    """Runs pairs and yields their results as they finish; ``frames(n)`` advances the frames bar."""

    def run(self, cfg: Any, jobs: Iterable[PairJob], *, resume: bool,
            frames: Callable[[int], None]) -> Iterator[PairResult]:
        ...


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
        models = Models()  # one per batch run: the model is loaded once, for the first pair that needs it
        cfg = worker_cfg(cfg, self.threads)
        for job in jobs:
            result = replay_pair(cfg, job, resume=resume, models=models, report=frames)
            yield result
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
        Every pair's result, in the order they finished (skipped pairs first, those an interruption left not
        started last).
    """
    from tqdm import tqdm

    engine = engine or LocalEngine()
    t0 = time.perf_counter()
    results = [PairResult(str(job.out), "skipped") for job in jobs if is_complete(job.out)]
    for result in results:
        changed = changed_settings(Path(result.out), cfg)
        if changed:
            log.warning("%s is complete and skipped, but was made with other settings (%s); delete it to replay it "
                        "with these", result.out, ", ".join(changed))
    todo = [job for job in jobs if not is_complete(job.out)]
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
    finished = {r.out for r in results}  # an interrupted batch stops before the rest
    results += [PairResult(str(job.out), "not started") for job in todo if str(job.out) not in finished]
    return BatchSummary(results, time.perf_counter() - t0)
