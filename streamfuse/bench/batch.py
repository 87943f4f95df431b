"""Batch replay throughput: the Ray engine with N single-CPU workers against 1 worker on the same pairs, side by side
in one run, and one worker's frames/s against a single replay of the same pair with the same thread count.

It writes PAIRS copies of a synthetic H.264 pair (the replay benchmark's), replays them with the local engine, then
on a local Ray with 1 and with N workers (one CPU each: one torch/OpenMP thread, one OpenCV thread, and one thread
for each FFmpeg decoder and for x264, ``replay.codec_threads=1``), each after a warm-up pair (one per worker) so
that process start, imports and the kernels' compilation are not timed. The single replay gets the same settings,
so all runs compare like with like, and a warm-up replay before it (the kernels' compilation into their cache);
being a fresh process, it still pays its own start and imports, which are in the cores it kept busy (its own
user + system CPU over its wall time, its process's alone), printed with it. The load average is printed before
and after each run: on a shared machine a ratio is only as good as the load was steady. Needs Ray
(``pip install 'streamfuse[ray]'``).
Run: ``python -m streamfuse bench batch --pairs 6 --workers 2``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamfuse.bench import parse_size
from streamfuse.bench.replay import synthetic_pair  # the same synthetic pair as the replay benchmark
from streamfuse.cli.args import DefaultsFormatter, Parser, config_error, int_at_least
from streamfuse.errors import printable
from streamfuse.signals import said_last

_PROG = "streamfuse bench batch"  # as its usage errors and every command's own lines start
__all__ = ["main"]

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}


def _load() -> str:
    return "{:.2f}".format(os.getloadavg()[0])


def _pairs(folder: Path, n: int, frames: int, width: int, height: int, prefix: str = "p") -> Path:
    """``folder/ir`` and ``folder/vi`` with ``n`` hard links of one synthetic pair."""
    folder.mkdir()
    ir, vis = synthetic_pair(folder, frames, width, height)
    for sub, src in (("ir", ir), ("vi", vis)):
        (folder / sub).mkdir()
        for i in range(n):
            os.link(src, folder / sub / f"{prefix}{i}.mp4")
    return folder


def _batch(cfg, src: Path, out: Path, engine) -> dict:
    """One timed batch run: frames/s, wall s, each pair's frames/s, the load average before and after."""
    from streamfuse.batch import find_jobs, run_batch

    before = _load()
    summary = run_batch(cfg, find_jobs(src, out), engine)
    if summary.failed:
        raise SystemExit(f"{_PROG}: error: {printable(summary.failed[0].out)}: {printable(summary.failed[0].reason)}")
    frames = sum(r.frames_out for r in summary.results)
    return {"frames": frames, "wall": summary.wall_s, "fps": frames / summary.wall_s,
            "pair_fps": [r.fps for r in summary.results], "load": f"{before} -> {_load()}"}


def _local(cfg, src: Path, warm: Path, out: Path) -> dict:
    """A timed batch on the local engine, after a warm-up pair: this process's first replay imports the stages and
    compiles their kernels (the first of 60-frame pairs ran at half the frames/s of the next)."""
    from streamfuse.batch import LocalEngine, find_jobs, run_batch

    engine = LocalEngine()
    run_batch(cfg, find_jobs(warm, out / "warm")[:1], engine)
    return _batch(cfg, src, out / "timed", engine)


def _ray(cfg, src: Path, warm: Path, out: Path, workers: int) -> dict:
    """A timed batch on a local Ray of ``workers`` single-CPU workers (whatever ``$RAY_ADDRESS`` says), after a
    warm-up pair per worker."""
    from streamfuse.batch import RayEngine, find_jobs, run_batch

    engine = RayEngine(workers=workers, threads=1, address="")
    with engine.session():
        run_batch(cfg, find_jobs(warm, out / "warm"), engine)
        return _batch(cfg, src, out / "timed", engine)


def _own_run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float]:
    """Run ``cmd`` with its stderr in ``log``: its exit status, and the CPU seconds (user + system) of it and the
    children it reaped, and its wall seconds. Its own rusage (``wait4``), not all of this process's reaped children's
    over the window: a Ray process or another child reaped meanwhile would be counted as the replay's cores."""
    t0 = time.monotonic()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # a Ctrl-C mid-run: the replay is not left running
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return proc.returncode, usage.ru_utime + usage.ru_stime, time.monotonic() - t0


def _single_replay(args: argparse.Namespace, overrides: list[str], warm: tuple[Path, Path], pair: tuple[Path, Path],
                   out: Path) -> tuple[float, float]:
    """Frames/s that a single replay (``python -m streamfuse replay``, what ``run_stream.py --out`` runs) reports
    for one pair, run with one OpenMP and one OpenCV thread, and the cores it kept busy: its user + system CPU
    seconds over its wall seconds, start and imports included, as ``/usr/bin/time`` gives them. A replay of the
    ``warm`` pair runs first, untimed, as the engines' warm-up pairs do: the first replay after an install compiles
    the numba kernels into their cache and reads torch from the disk; the timed one is a fresh process all the same,
    paying its own imports."""
    env = {**os.environ, **ONE_THREAD}
    found = None
    for (ir, vis), name in ((warm, "warm"), (pair, out.name)):
        cmd = [sys.executable, "-m", "streamfuse", "replay", "--config", args.config, "--ir", str(ir), "--vis",
               str(vis), "--out", str(out.with_name(name + out.suffix)), *[a for o in overrides for a in ("--set", o)]]
        log = out.with_name(name + ".log")
        rc, cpu, wall = _own_run(cmd, env, log)
        stderr = log.read_text(errors="replace")
        found = re.search(r"wall [\d.]+ s, ([\d.]+) frames/s", stderr)
        if rc != 0 or found is None:
            raise SystemExit(f"{_PROG}: error: the single replay failed (rc {rc}): "
                             f"{printable(stderr.strip()[-500:])}")
    return float(found.group(1)), cpu / wall


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = Parser(prog="python -m streamfuse bench batch", description=__doc__,
                    formatter_class=DefaultsFormatter)
    parser.add_argument("--pairs", type=int_at_least(1), default=6, help="pairs in the batch")
    parser.add_argument("--workers", type=int_at_least(2), default=2, help="Ray workers compared with 1")
    parser.add_argument("--frames", type=int_at_least(1), default=150, help="frames per pair")
    parser.add_argument("--size", type=parse_size, default="640x480", help="WIDTHxHEIGHT of the synthetic pair")
    parser.add_argument("--config", default="replay", help="replay config: a shipped name or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=["fuse.name=max"],
                        metavar="STAGE.KEY=VALUE", help="override a config value (repeatable)")
    args = parser.parse_args(argv)
    if args.workers > args.pairs:  # the extra workers would have no pair: the row would name workers that never ran
        parser.error(f"--workers {args.workers} with --pairs {args.pairs}: at most {args.pairs} workers have a pair at "
                     f"once")
    if importlib.util.find_spec("ray") is None:
        raise SystemExit(f"{_PROG}: error: needs Ray: pip install 'streamfuse[ray]'")
    os.environ.update(ONE_THREAD)  # this process (local engine) and the Ray it starts
    import cv2

    from streamfuse.batch import BatchInterrupted
    from streamfuse.config import ConfigError, load_config
    from streamfuse.configs import resolve

    cv2.setNumThreads(1)
    overrides = ["engine.threads=1", "replay.codec_threads=1", "replay.overlap=false", "replay.progress=false",
                 *args.overrides]  # one thread everywhere: decode and encode in the loop, as a 1-CPU worker runs
    try:
        cfg = load_config(resolve(args.config), overrides)
    except ConfigError as exc:
        raise SystemExit(config_error(_PROG, exc)) from None
    except (ValueError, OSError) as exc:
        raise SystemExit(f"{_PROG}: error: {printable(exc)}") from None
    width, height = args.size
    try:
        with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
            tmp = Path(tmp)
            src = _pairs(tmp / "src", args.pairs, args.frames, width, height)
            warm = _pairs(tmp / "warm", args.workers, 10, width, height, prefix="w")
            print(f"{args.pairs} pairs of {args.frames} frames at {width}x{height}, {' '.join(overrides)}; "
                  f"{os.cpu_count()} cores; load average (1 min) {_load()}")
            rows = {"local engine, 1 worker": _local(cfg, src, warm, tmp / "local")}
            for n in (1, args.workers):
                rows[f"ray, {n} worker{'s' * (n > 1)}"] = _ray(cfg, src, warm, tmp / f"ray{n}", n)
            single_fps, cores = _single_replay(args, overrides, (warm / "ir" / "w0.mp4", warm / "vi" / "w0.mp4"),
                                               (src / "ir" / "p0.mp4", src / "vi" / "p0.mp4"), tmp / "p0.mp4")
    except BatchInterrupted as exc:  # its signal named, as every benchmark's stop line names it
        raise SystemExit(said_last(f"{_PROG}: {exc.stop}", 130)) from None
    print(f"{'run':<24}{'frames':>8}{'wall s':>9}{'frames/s':>10}  load before -> after")
    for name, r in rows.items():
        print(f"{name:<24}{r['frames']:>8}{r['wall']:>9.2f}{r['fps']:>10.1f}  {r['load']}")
    one, many = rows["ray, 1 worker"], rows[f"ray, {args.workers} workers"]
    print(f"ray {args.workers} workers vs 1: {many['fps'] / one['fps']:.2f}x")
    worker = statistics.median(one["pair_fps"])
    print(f"one ray worker: {worker:.1f} frames/s (median of its pairs); a single replay of the same pair with "
          f"one thread, after a warm-up replay: {single_fps:.1f} frames/s, {cores:.2f} cores busy (its own user + "
          f"sys / wall, start and imports included); ratio {worker / single_fps:.2f}")
