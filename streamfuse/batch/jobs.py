"""The pairs of a batch and what became of them: PairJob, PairResult, BatchSummary, find_jobs."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import av

from streamfuse.atomic_write import partial_path
from streamfuse.replay import check_output_paths, find_pairs

__all__ = ["PairJob", "PairResult", "BatchSummary", "find_jobs", "is_complete", "changed_settings"]


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
    status: Literal["done", "skipped", "failed", "interrupted", "not started"]
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
        not_started = f", {self.count('not started')} not started" if self.count("not started") else ""
        lines.append(f"{len(self.results)} pairs: {self.count('done')} done, {self.count('skipped')} skipped "
                     f"(complete), {len(self.failed)} failed{not_started}; {frames} frames out in {self.wall_s:.1f} s "
                     f"({frames / max(self.wall_s, 1e-9):.1f} frames/s)")
        return "\n".join(lines)


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


# the sections that decide a fused video's frames; paths, threads and progress bars do not
_IMAGE_SECTIONS = ("sync", "stabilize", "align", "fuse", "hclfuse", "baseline", "post")


def changed_settings(out: Path, cfg: Any) -> list[str]:
    """The settings (``section.key``) that ``cfg`` gives otherwise than the config recorded in the complete output
    ``out`` was made with; empty when they agree or the output records none."""
    try:
        with av.open(str(out)) as container:
            tags = {k.lower(): v for k, v in container.metadata.items()}  # Matroska writes COMMENT
            made = json.loads(tags.get("comment", "{}")).get("streamfuse_config", {})
    except (OSError, av.FFmpegError, ValueError, AttributeError):
        return []
    now = cfg.to_dict()
    return [f"{section}.{key}" for section in _IMAGE_SECTIONS if isinstance(made.get(section), dict)
            for key, value in now.get(section, {}).items() if made[section].get(key, value) != value]


def is_complete(out: Path) -> bool:
    """A finished output: the final file exists and no partial one (a replay renames it into place last)."""
    return out.exists() and not partial_path(out).exists()
