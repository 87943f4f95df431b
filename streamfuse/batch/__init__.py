"""Batch replay: many recorded IR/visible pairs, one fused video each, on this machine or on a Ray cluster.

Every pair is one :func:`streamfuse.replay.run_replay` call, in one process from its first frame to its last, so
a video's temporal state (OT plans, stabilizer, denoiser) stays in one place and an encoded stream is never split;
outputs, pts, the ``.partial`` name and ``resume`` follow the single replay's rules. Engines:

- ``local`` (default, no Ray needed): the pairs one after another in this process.
- ``ray``: one Ray task per pair, ``threads`` CPUs (and ``gpus`` GPUs) each; Ray reuses a worker process for
  later tasks, and a worker keeps its loaded model for them. At most two tasks per worker are queued, so the
  driver's memory does not grow with the number of pairs. A worker that dies (SIGKILL, SIGTERM, out of memory,
  node lost) has its pair run again from the start on another worker (``retries``); a pair that fails by itself
  (corrupt, missing, mismatched input) is not retried and fails alone with its one-line reason.

Only the user's Ctrl-C or SIGTERM to the driver (this process) stops a batch: the running pairs keep resumable
partial outputs, and :func:`run_batch` raises :class:`BatchInterrupted`, whose summary lists the pairs done,
failed, interrupted and not started; ``resume`` finishes the batch.

A worker of either engine runs a pair on ``threads`` CPUs (default 1): torch's threads (``engine.threads``) and
FFmpeg's decoder and encoder threads (``replay.codec_threads``) left at 0 ("FFmpeg's or torch's choice", which is
every core) become ``threads``, so that workers side by side do not each start a thread per core.

Outputs already complete (the final file exists and no ``.partial`` does) are skipped by the driver, before any
work is sent; one another run (a second batch on the same outputs) completes while this batch runs is skipped at its
turn, a row saying so and its frames not counted as this batch's (a Ray pair run again after its worker was lost as it
finished the output is this batch's: done), a batch stopped before that turn too: the engine says which outputs it
fused frames into; without ``resume``, a pair whose partial output is there fails and keeps
it, as a single replay refuses it. Progress: one bar for pairs, one for fused frames (reported by the workers).

Modules: ``jobs`` (the pairs and their results), ``worker`` (one pair on a worker), ``local`` (the local engine and
the driver :func:`run_batch`), ``ray_engine``, ``ray_progress`` (its frames counter) and ``ray_join`` (a cluster's
address checked before joining it).
"""

from streamfuse.batch.jobs import BatchInterrupted, BatchSummary, PairJob, PairResult, find_jobs
from streamfuse.batch.local import Engine, LocalEngine, run_batch
from streamfuse.batch.ray_engine import RayEngine, bounded
from streamfuse.batch.worker import worker_cfg

__all__ = ["PairJob", "PairResult", "BatchSummary", "BatchInterrupted", "Engine", "LocalEngine", "RayEngine",
           "find_jobs", "run_batch", "worker_cfg", "bounded"]
