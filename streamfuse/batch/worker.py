"""One batch worker's work: a pair replayed with the worker's loaded models and thread budget."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

import av

import streamfuse
from streamfuse.atomic_write import partial_path
from streamfuse.batch.jobs import PairJob, PairResult
from streamfuse.errors import one_line
from streamfuse.replay import ReplayError, run_replay
from streamfuse.replay.resume import frames_held

__all__ = ["Models", "replay_pair", "worker_cfg", "FOUND_COMPLETE"]

# the reason of a pair whose output was complete when its turn came, though not when the batch began
FOUND_COMPLETE = "complete when its turn came: another run finished it"


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


class Models:
    """The models one worker has loaded, kept across its pairs (keyed by the settings that build them)."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def fuser(self, cfg: Any) -> Any:
        """A fuser for one more video of PipelineConfig ``cfg``: the model stays loaded; OT plans and latent noise
        start afresh per video."""
        from streamfuse.processor import config_fuser

        if cfg.fuse.name != "hclfuse":
            return config_fuser(cfg)  # baselines load nothing: a fresh one cannot carry any video's state
        from streamfuse.model.fuser import HCLFuser

        key = repr((cfg.hclfuse, cfg.engine, cfg.align))  # frozen dataclasses: the repr is the value
        if key not in self._loaded:
            self._loaded[key] = config_fuser(cfg)
        loaded = self._loaded[key]
        return HCLFuser(loaded.net, loaded.engine, cfg.align, loaded.seed, loaded.version)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _wait_policy() -> str:
    return "late" if streamfuse.LATE_WAIT_POLICY else os.environ.get("OMP_WAIT_POLICY", "")


def frames_dir_of(cfg: Any, job: PairJob) -> Path:
    """A pair's own frames folder in ``replay.frames_dir``, named as its video."""
    return Path(cfg.replay.frames_dir) / job.out.stem


def replay_pair(cfg: Any, job: PairJob, *, resume: bool, models: Models,
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
    if cfg.replay.frames_dir:
        cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, frames_dir=str(frames_dir_of(cfg, job))))
    fused = 0  # by this run: not the frames a resume takes over, nor a partial output found whole and only finished

    def counted(n: int) -> None:
        nonlocal fused
        fused += n
        report(n)

    t0 = time.perf_counter()
    try:
        # a pair never started has nothing to resume: started afresh without the single replay's warning that says so
        summary = run_replay(cfg, ir_path=job.ir, vis_path=job.vis, out_path=job.out,
                             resume=resume and partial_path(job.out).exists(),
                             fuser_factory=lambda used: _Counted(models.fuser(used), counted))
    except ReplayError as exc:
        summary = exc.summary
        # the batch says how to continue (--resume of the whole batch), not the single replay's --out
        result.status, result.reason = "interrupted" if exc.interrupted else "failed", exc.message
        result.stop = summary.stopped if exc.interrupted and summary is not None else ""
    except (OSError, RuntimeError, ValueError, av.FFmpegError) as exc:  # av's: some derive from none of the three
        summary = None
        result.status, result.reason = "failed", one_line(exc)
    if summary is not None:
        result.frames_in, result.frames_out, result.late_stop = dict(summary.frames), summary.written, summary.late_stop
        if summary.complete and not summary.written:  # complete before (its frames moved in now): the frames it holds
            result.frames_out = frames_held(job.out)
    result.wall_s, result.fused = time.perf_counter() - t0, fused
    if summary is not None and summary.found_complete:  # another run (a second batch on these outputs) fused it
        result.status, result.reason = "skipped", FOUND_COMPLETE
    else:  # the rate of a pair this run fused
        result.fps = fused / max(result.wall_s, 1e-9)
    return result


def worker_cfg(cfg: Any, threads: int) -> Any:
    """The config a worker of ``threads`` CPUs runs: torch's and FFmpeg's "every core" (0) become its own CPUs, and a
    one-CPU worker decodes and encodes in its loop's thread (``replay.overlap`` false), so it keeps one core busy,
    not the 1.6 cores its decode and encode threads took beside the fuser."""
    engine = cfg.engine if cfg.engine.threads else dataclasses.replace(cfg.engine, threads=threads)
    replay = cfg.replay if cfg.replay.codec_threads else dataclasses.replace(cfg.replay, codec_threads=threads)
    replay = dataclasses.replace(replay, overlap=replay.overlap and threads > 1)
    return dataclasses.replace(cfg, engine=engine, replay=replay)
