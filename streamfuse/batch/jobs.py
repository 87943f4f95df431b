"""The pairs of a batch and what became of them: PairJob, PairResult, BatchSummary, find_jobs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamfuse.atomic_write import final_path
from streamfuse.capture.bag_folder import is_bag_folder, is_storage
from streamfuse.capture.rosbag2_compression import is_compressed
from streamfuse.errors import printable
from streamfuse.part_set import later_part, set_name
from streamfuse.replay import ListedPair, check_output_paths, find_pairs
from streamfuse.replay.outputs import check_outside_folders
from streamfuse.video import container_format

log = logging.getLogger(__name__)

__all__ = ["PairJob", "PairResult", "BatchSummary", "BatchInterrupted", "find_jobs"]


@dataclass(frozen=True)
class PairJob:
    """One pair to replay: IR and visible inputs (the same ``.mcap`` for a recording) and the output path."""

    ir: Path
    vis: Path
    out: Path


@dataclass
class PairResult:
    """What became of one pair. ``frames_in`` counts frames read per input; ``frames_out`` frames in the output.

    ``status``: "done"; "skipped" (complete before the batch, or, its reason saying so, when its turn came: another
    run fused it, and its ``frames_out`` are not this run's); "failed" (its own fault: bad input, write error; the
    reason says which); and, when the user stopped the batch (Ctrl-C, SIGTERM), "interrupted" (its partial output is
    kept: ``resume`` continues it) or "not started".
    """

    out: str
    status: Literal["done", "skipped", "failed", "interrupted", "not started"]
    frames_in: dict[str, int] = field(default_factory=lambda: {"ir": 0, "vis": 0})
    frames_out: int = 0
    fps: float = 0.0  # frames this run fused into the output per wall second of this pair
    fused: int | None = None  # frames this run fused (a worker's count); None, a result the driver made: its frames out
    wall_s: float = 0.0
    reason: str = ""  # one line, for failed and interrupted pairs, and skipped ones found complete at their turn
    worker: str = ""  # host:pid that ran the pair
    wait_policy: str = ""  # the worker's OMP_WAIT_POLICY; "late" when torch was imported before streamfuse
    late_stop: int = 0  # a stop signal that came as the output took its name (ReplaySummary.late_stop)
    stop: str = ""  # what interrupted it, ``interrupted (SIGTERM)``, as its replay says it


@dataclass
class BatchSummary:
    """Every pair's result and the batch's wall time (s)."""

    results: list[PairResult]
    wall_s: float

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[PairResult]:
        """The pairs that failed by their own fault (not those a Ctrl-C stopped)."""
        return [r for r in self.results if r.status == "failed"]

    @property
    def stopped(self) -> list[PairResult]:
        """The pairs the user's Ctrl-C or SIGTERM left unfinished (interrupted or not started)."""
        return [r for r in self.results if r.status in ("interrupted", "not started")]

    def format(self) -> str:
        """The summary table: a row per pair run (those complete before the batch are only counted), then the
        totals."""
        ran = [r for r in self.results if r.status != "skipped" or r.reason]
        names = [printable(Path(r.out).name) for r in ran]  # a name's escape sequence would draw on the terminal
        width = max([len(n) for n in names] + [4])
        lines = [f"{'pair':<{width}}  {'status':<11}{'ir in':>7}{'vis in':>7}{'out':>7}{'fps':>8}  worker"]
        lines += [f"{name:<{width}}  {r.status:<11}{r.frames_in['ir']:>7}{r.frames_in['vis']:>7}"
                  f"{r.frames_out:>7}{r.fps:>8.1f}  {r.worker}" for name, r in zip(names, ran)]
        # out: in the outputs done; the frames a failed or stopped pair fused (in its partial output) count in the rate;
        # those of an output another run completed meanwhile (skipped) in neither, nor those a resume took over whole
        frames = sum(r.frames_out for r in ran if r.status == "done")
        unfinished = sum(r.frames_out for r in ran if r.status not in ("done", "skipped"))
        rate = sum(r.frames_out if r.fused is None else r.fused for r in ran if r.status != "skipped")
        stopped = "".join(f", {self.count(s)} {s}" for s in ("interrupted", "not started") if self.count(s))
        lines.append(f"{len(self.results)} pairs: {self.count('done')} done, {self.count('skipped')} skipped "
                     f"(complete), {len(self.failed)} failed{stopped}; {frames} frames out"
                     + (f" ({unfinished} more fused by pairs that did not finish)" if unfinished else "")
                     + f" in {self.wall_s:.1f} s ({rate / max(self.wall_s, 1e-9):.1f} frames/s)")
        return "\n".join(lines)


class BatchInterrupted(KeyboardInterrupt):
    """The user stopped the batch (Ctrl-C, SIGTERM); ``summary`` says what became of every pair, ``stop`` which
    signal stopped it (``interrupted (SIGTERM)``, ``interrupted (Ctrl-C)``)."""

    def __init__(self, summary: BatchSummary, stop: str) -> None:
        super().__init__(f"batch {stop}")
        self.summary, self.stop = summary, stop


def find_jobs(src: str | os.PathLike, out_dir: str | os.PathLike, *, ext: str = ".mp4", codec: str = "h264",
              frames_dir: str | os.PathLike = "") -> list[PairJob]:
    """The pairs of ``src`` with their outputs ``out_dir/<name><ext>`` (a list file's output name, a split recording's
    set name, else the IR file's name without its extension), checked before any work.

    Args:
        src: a pair list file or a folder with ``ir/`` and ``vi/`` (see :func:`streamfuse.replay.find_pairs`),
            a recording, or a folder of ``.mcap`` recordings, ``.db3`` and ROS 1 ``.bag`` bags and bag folders (each
            holds both streams; a bag folder is one pair, however many files it was split into).
        out_dir: output folder (created by :func:`run_batch`).
        ext: output container extension.
        codec: ``replay.codec`` (the container must hold it).
        frames_dir: ``replay.frames_dir`` (checked against the inputs too).

    Raises:
        FileNotFoundError, ValueError: one line, when the list is bad or empty, ``out_dir`` or ``frames_dir`` is a
            file or inside an input folder (``ir/``, ``vi/``, a bag folder), ``ext`` no known container or one that
            cannot hold ``codec``, an output would overwrite an input (its own pair's or another's) or two pairs share
            an output.
    """
    src, out_dir = Path(src).absolute(), Path(out_dir).absolute()  # a cluster's workers run in other folders
    if src.is_dir() and not (src / "ir").is_dir():
        recordings = _recordings(src)
    else:
        recordings = [src] if is_storage(src) else []
        if why := _unfinished(src):
            raise ValueError(f"{src} is {why}")
    pairs = _named(recordings) or find_pairs(src)
    if not pairs:
        raise ValueError(f"no pairs to replay in {src}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is a file")
    _check_out_dir_outside_inputs(out_dir, src, pairs, frames_dir)
    if frames_dir and Path(frames_dir).exists() and not Path(frames_dir).is_dir():  # every pair would fail on it
        raise ValueError(f"replay.frames_dir {frames_dir} is a file, not a folder (each pair's frames go to a folder "
                         f"of their own inside it)")
    # a list that names a pair twice (spelt alike or not: ir/a.mp4, ir/../ir/a.mp4): one replay of it, said
    # (named by a third word that is its IR file's name or without one: the same output)
    once: dict[tuple, ListedPair] = {}
    for pair in pairs:
        once.setdefault((pair.ir.resolve(), pair.vis.resolve(), "" if pair.name == _stem(pair.ir) else pair.name), pair)
    if len(once) < len(pairs):
        repeats = len(pairs) - len(once)
        log.warning("%s names %s more than once; each is replayed once", src,
                    "a pair" if repeats == 1 else f"{repeats} pairs")
        pairs = list(once.values())
    jobs = [PairJob(ir, vis, out_dir / f"{name or _stem(ir)}{ext}") for ir, vis, name in pairs]
    container_format(jobs[0].out, codec)  # every pair's output has this extension
    for job in jobs:
        check_output_paths(job.out, {"ir": job.ir, "vis": job.vis}, frames_dir)
    shared = [out for out, n in Counter(job.out for job in jobs).items() if n > 1]
    if shared:
        if any(name and out_dir / f"{name}{ext}" == shared[0] for _, _, name in pairs):  # the list named it so
            raise ValueError(f"two pairs would write {shared[0]}: an output name {src} gives (a third word) is "
                             f"another pair's output too; give each pair a name of its own")
        raise ValueError(f"two pairs would write {shared[0]} (IR files of one name, their extensions aside): name "
                         f"their outputs in a pair list (a third word, 'IR VIS NAME')")
    _check_outputs_are_no_inputs(jobs)
    return jobs


def _named(recordings: list[Path]) -> list[ListedPair]:
    """A pair per recording, a split one's output named after its set (``rig0_0000.mcap`` -> ``rig0``), unless another
    recording there has that name (``rig0.mcap``): that output is its own, so the set's keeps its first part's name."""
    stems = {_stem(path): path for path in recordings}
    pairs = []
    for path in recordings:
        name = set_name(path) if path.is_file() else None
        if name in stems:
            log.warning("%s: its output is named after this first part, not after its set (%s), as %s there is", path,
                        name, stems[name].name)
        pairs.append(ListedPair(path, path, name if name and name not in stems else ""))
    return pairs


def _stem(path: Path) -> str:
    """A file's name without its extension, a compressed bag's two (``robot_0.db3.zstd`` -> ``robot_0``); a bag
    folder's name."""
    if path.is_dir():
        return path.name
    return Path(path.stem).stem if is_compressed(path) else path.stem


def _recordings(folder: Path) -> list[Path]:
    """The recordings and bags of a folder: its ``.mcap``, ``.db3`` and ``.bag`` files (and zstd-compressed
    ``.mcap.zstd`` and ``.db3.zstd`` ones), and the bag folders in it (those with a ``metadata.yaml``, each one
    recording however many files it was split into)."""
    if is_bag_folder(folder):  # the folder is a bag itself
        return [folder]
    entries = sorted(folder.iterdir())
    for entry in entries:  # unfinished recordings: not replayed, but not passed over in silence either
        if why := _unfinished(entry):
            log.warning("%s: %s; not replayed", entry, why)
    # hidden ones are none: a Mac's "._NAME.mcap" (its metadata, copied onto a drive beside NAME.mcap) failed a pair;
    # a split recording is replayed once, from its first part
    return [entry for entry in entries if entry.name[0] != "." and not later_part(entry)
            and (is_bag_folder(entry) or (entry.is_file() and is_storage(entry)))]


def _unfinished(path: Path) -> str:
    """Why ``path`` is a recording that did not end (a killed live run's, a ROS 1 bag still recorded or cut short);
    '' when it is not one."""
    final = final_path(path)
    if final is not None and final.name.endswith(".mcap"):
        if final.exists():  # recovered (the cut one is left): that is read
            return ""
        return ("a recording cut short (a killed run, or a write error such as a full disk): `python -m streamfuse "
                "recover FILE` finishes it")
    if path.name.endswith(".bag.active"):
        return ("a ROS 1 bag still being recorded, or cut short: replay it alone once it is complete (`python -m "
                "streamfuse replay --ir FILE --out OUT`)")
    return ""


def _check_out_dir_outside_inputs(out_dir: Path, src: Path, pairs: list[ListedPair],
                                  frames_dir: str | os.PathLike) -> None:
    """Refuse an output folder (or ``frames_dir``) that is, or is inside, a pairs folder's ``ir/``, ``vi/`` or
    ``vis/``, there or not (a later run would list its outputs among the inputs) or a folder input (a bag folder, a
    folder of frames): it would write among inputs. Beside them (``src/fused``) is where users keep outputs: nothing
    lists it."""
    # vi/ and vis/ missing too: a later run reads a new vi/ as the visible folder, before the vis/ there was
    folders = [src / d for d in ("ir", "vi", "vis") if (src / "ir").is_dir()]
    folders += [path for pair in pairs for path in (pair.ir, pair.vis) if path.is_dir()]
    check_outside_folders(out_dir, folders, "output folder", "an --out")
    if frames_dir:
        check_outside_folders(Path(frames_dir), folders, "replay.frames_dir", "a folder")


def _check_outputs_are_no_inputs(jobs: list[PairJob]) -> None:
    """Refuse a pair's output that is another pair's input, by path or by inode (a link); each pair's own inputs are
    checked by :func:`check_output_paths`."""
    inputs: dict[Any, Path] = {}
    for path in {p for job in jobs for p in (job.ir, job.vis)}:
        inputs[path.resolve()] = path
        with contextlib.suppress(OSError):  # a missing input fails its pair alone, later
            inputs[_inode(path)] = path
    for job in jobs:
        hit = inputs.get(job.out.resolve()) or (inputs.get(_inode(job.out)) if job.out.exists() else None)
        if hit is not None:
            raise ValueError(f"output {job.out} would overwrite {hit}, an input of another pair; choose another --out")


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino
