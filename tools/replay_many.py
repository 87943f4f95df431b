"""Replay many recorded IR/visible pairs, one fused video each, here or on a Ray cluster; complete outputs are skipped.

LIST_OR_DIR is a text file of "IR_PATH VIS_PATH [OUTPUT_NAME]" lines (relative to the file; '#' comments), a folder
with ir/ and vi/ (or vis/) subfolders of same-named videos, or a folder of .mcap recordings, .db3 bags and bag folders
(a bag folder, with its metadata.yaml, one pair however many files it was split into). Each output is
OUT/<IR name><ext> (OUT/<OUTPUT_NAME><ext>; a split recording's OUT/<set name><ext>), written as the single replay
writes it (.partial until complete, --resume continues; a partial output without --resume fails its pair). A failing
pair is reported without stopping the others; a summary table follows (one line when every output was already
complete); the exit status is 1 when any failed. Ctrl-C or SIGTERM stops the batch (partial outputs kept: run the
same command with --resume to finish it): exit status 130.
--engine local (default) runs the pairs one after another here; --engine ray runs one Ray task per pair on a local
Ray (--workers, --threads) or on a cluster (--address); it needs `pip install streamfuse[ray]`.
Run: ``.venv/bin/python tools/replay_many.py LIST_OR_DIR --out DIR``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# where the package is not installed, this checkout's: its import names the dependencies this Python lacks, in the
# one line of `python -m streamfuse`. No origin: only a folder that an uninstall left (numba's cache files in it)
if getattr(importlib.util.find_spec("streamfuse"), "origin", None) is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))
import streamfuse  # noqa: E402,F401  (first: a missing dependency then says which environment to use)

from streamfuse.cli import leave, say_stopped, stoppable  # noqa: E402
from streamfuse.cli.args import DefaultsFormatter, Parser, int_at_least, path_arg, time_span  # noqa: E402
from streamfuse.errors import printable  # noqa: E402
from streamfuse.log_queue import install_direct  # noqa: E402

if TYPE_CHECKING:
    from streamfuse.batch import BatchSummary

PROG = Path(__file__).name  # how every line of the tool begins, as its usage errors do


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=DefaultsFormatter)
    parser.add_argument("pairs", metavar="LIST_OR_DIR", type=path_arg,
                        help="pair list file, folder with ir/ and vi/, or of .mcap/.db3")
    parser.add_argument("--out", required=True, type=path_arg, help="output folder")
    parser.add_argument("--config", default="replay", help="replay config: a shipped name or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--ext", default=".mp4", help="output container extension")
    parser.add_argument("--resume", action="store_true", help="continue interrupted outputs from their partial files")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="where the pairs run")
    parser.add_argument("--workers", type=int_at_least(1), default=2, help="ray: pairs run at once")
    parser.add_argument("--threads", type=int_at_least(1), default=1,
                        help="CPUs per worker: torch's and FFmpeg's threads where engine.threads or "
                             "replay.codec_threads is 0 (ray: also each task's num_cpus)")
    parser.add_argument("--gpus", type=time_span("GPUs"), default=0.0,
                        help="ray: GPUs per worker (fractions share one)")
    parser.add_argument("--address", default=None,
                        help="ray: cluster to join (default: $RAY_ADDRESS when set, else start a local Ray)")
    parser.add_argument("--retries", type=int_at_least(0), default=3,
                        help="ray: runs again of a pair whose worker died")
    args = parser.parse_args(argv)
    install_direct(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s",
                   datefmt="%H:%M:%S")

    if args.engine == "ray" and importlib.util.find_spec("ray") is None:
        print(f"{PROG}: error: --engine ray needs Ray: pip install 'streamfuse[ray]'", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except KeyboardInterrupt as exc:  # before the batch began (config, pair list): nothing written
        say_stopped(PROG, exc)
        return 130


def _run(args: argparse.Namespace) -> int:
    """Run the batch, print its table and say what failed or is left to do; the exit status."""
    from streamfuse.batch import BatchInterrupted, LocalEngine, RayEngine, find_jobs, run_batch
    from streamfuse.cli.args import config_error
    from streamfuse.config import ConfigError, load_config
    from streamfuse.configs import resolve

    try:
        cfg = load_config(resolve(args.config), args.overrides)
        jobs = find_jobs(args.pairs, args.out, ext=args.ext, codec=cfg.replay.codec,
                         frames_dir=cfg.replay.frames_dir)
        engine = LocalEngine(threads=args.threads) if args.engine == "local" else RayEngine(
            workers=args.workers, threads=args.threads, gpus=args.gpus, retries=args.retries,
            **({} if args.address is None else {"address": args.address}))
        summary, stop = run_batch(cfg, jobs, engine, resume=args.resume), ""
    except ConfigError as exc:
        return config_error(PROG, exc)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: {printable(exc)}", file=sys.stderr)
        return 2
    except BatchInterrupted as exc:
        summary, stop = exc.summary, exc.stop
    if all(r.status == "skipped" and not r.reason for r in summary.results):  # the table would list no pair
        print(f"{PROG}: all {len(summary.results)} pairs already complete in {args.out}; nothing to do")
        return 0
    print(summary.format())
    for result in summary.failed:
        print(f"{PROG}: FAILED {printable(result.out)}: {printable(result.reason)}", file=sys.stderr)
    if summary.stopped:
        print(f"{PROG}: {stop} before the end: {_finished(summary)}, {summary.count('interrupted')} interrupted "
              f"(partial outputs kept), {summary.count('not started')} not started; run the same command again with "
              f"--resume to finish", file=sys.stderr)
    elif stop:  # as the last pair ended: nothing left to do, but a stop all the same, as its status says
        print(f"{PROG}: {stop} as the batch ended, every pair finished: {_finished(summary)}", file=sys.stderr)
    return 130 if stop else 1 if summary.failed else 0


def _finished(summary: BatchSummary) -> str:
    """What a stopped batch finished: the pairs done, and those already complete or failed where there are any."""
    said = [f"{summary.count('done')} done"]
    said += [f"{n} {what}" for n, what in ((summary.count("skipped"), "already complete"),
                                           (len(summary.failed), "failed")) if n]
    return ", ".join(said)


if __name__ == "__main__":
    leave(stoppable(main, PROG, "replay"))  # a stop before the batch's own handlers: 130
