"""``python -m streamfuse run`` and ``replay``: run a pipeline, live (capture -> fuse -> publish) or offline replay.

Live:    python -m streamfuse run --config demo
Replay:  python -m streamfuse replay --config replay --ir IR.mp4 --vis VIS.mp4 --out fused.mp4
--config takes a shipped config's name (demo, rig, replay, eval) or the path of a YAML file. Any config value can be
overridden: --set hclfuse.sampler=teacher --set hclfuse.steps=4 --set engine.device=cpu
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import shutil
import sys

from streamfuse import log_queue
from streamfuse.checks import ConfigError
from streamfuse.cli.args import Parser, command_name, config_error, path_arg, seconds
from streamfuse.errors import limit_reached, printable
from streamfuse.signals import Terminated, ignore_stops, interrupted, said_last

__all__ = ["main", "replay_main", "exit_now"]


def _parser(prog: str, *, replay: bool) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=not replay, default="replay" if replay else None, metavar="NAME|FILE",
                        help="a shipped config (demo, rig, replay, eval) or a YAML file"
                             + ("; default: replay (every frame, as fast as possible)" if replay else ""))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a config value (repeatable)")
    if not replay:
        parser.add_argument("--duration", type=seconds, default=0.0,
                            help="live: stop after this many seconds of fused frames, counted from the first one (the "
                                 "model's load and the cameras' start not counted; from the capture's start where "
                                 "none is fused by then; 0 = until Ctrl-C)")
    parser.add_argument("--ir", type=_path_text,
                        help="replay: IR video, frame folder or recording (overrides the config)")
    parser.add_argument("--vis", type=_path_text, help="replay: visible video or frame folder (overrides the config)")
    parser.add_argument("--out", required=replay, type=_path_text,
                        help="replay: fused video to write (overrides replay.out); makes this a replay run")
    parser.add_argument("--resume", action="store_true", help="replay: continue an interrupted replay of --out")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _path_text(text: str) -> str:
    """An argparse ``type``: a path as given; an empty one (an unset shell variable) is refused by its option's name,
    not taken for a missing option (``--out ''`` said 'also give --out')."""
    path_arg(text)
    return text


def main(argv: list[str] | None = None, *, prog: str = "python -m streamfuse run", replay: bool = False) -> int:
    """Run a pipeline from the command line; returns the exit status (a bad config or input: one line, 1 or 2)."""
    args = _parser(prog, replay=replay).parse_args(argv)
    said = command_name(prog)  # as its usage errors begin
    log_queue.install(logging.DEBUG if args.verbose else logging.INFO,
                      "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    out = args.out  # what makes this a replay: --out, or its config's replay.out once that is read
    try:
        from streamfuse.config import load_config  # with the stages' modules (OpenCV, PyAV, ZeroMQ): half a second
        from streamfuse.configs import resolve

        cfg = load_config(resolve(args.config), args.overrides)  # before the pipeline's imports: fails in a blink
        out = out or cfg.replay.out
        from streamfuse.pipeline import run

        return run(cfg, duration_s=getattr(args, "duration", 0.0), ir_path=args.ir, vis_path=args.vis,
                   out_path=args.out, resume=args.resume or None)
    except ConfigError as exc:
        log_queue.flush()
        return config_error(said, exc)
    except KeyboardInterrupt as exc:  # before the run's own handlers (imports, loading the model): nothing to keep
        log_queue.flush()
        # as stoppable's; as later, SIGTERM and SIGHUP end a live run with 0
        return said_last(f"{said}: {interrupted(exc)}", 0 if isinstance(exc, Terminated) and not out else 130)
    except (OSError, RuntimeError, ValueError) as exc:
        # Every stage raises these with one line that says what and where; a stack trace would bury it.
        logging.getLogger("streamfuse").debug("failure", exc_info=True)
        log_queue.flush()  # the reason comes last, after the final stats
        if getattr(exc, "interrupted", False):  # a replay the user stopped (Ctrl-C, SIGTERM): no error, exit 130
            return said_last(f"{said}: {printable(exc)}", 130)
        return said_last(f"{said}: error: {printable(exc)}{limit_reached(exc)}", 1)
    except (ImportError, MemoryError) as exc:  # under a memory limit (ulimit -v, systemd's LimitAS=): a library that
        # cannot be mapped ("failed to map segment from shared object"), an allocation refused
        logging.getLogger("streamfuse").debug("failure", exc_info=True)
        log_queue.flush()
        what = "out of memory" if isinstance(exc, MemoryError) else "cannot load a library"
        return said_last(f"{said}: error: {what}: {printable(exc) or 'no memory left'} (is the process's memory "
                         "limit, ulimit -v, too low?)", 1)


def replay_main(argv: list[str] | None = None) -> int:
    """``replay``: the same options as ``run`` with ``--out`` required (every frame, nothing dropped)."""
    return main(argv, prog="python -m streamfuse replay", replay=True)


def exit_now(code: int) -> None:
    """Leave at once after a run: everything is closed, unlinked and logged by now.

    What remains is interpreter teardown (torch, numba, OpenMP and ZeroMQ threads), which took seconds under load;
    flushing and leaving keeps Ctrl-C/SIGTERM within 2 s of the process being gone; one sent again meanwhile is
    ignored (:func:`~streamfuse.signals.ignore_stops`), so the status stays the run's.
    """
    ignore_stops()
    log_queue.flush()
    with contextlib.suppress(OSError):  # a terminal that hung up (EIO): nothing can be said there any more
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    # multiprocessing's folder (the forkserver's socket) is removed by its exit handler, which os._exit skips: every
    # live run left a /tmp/pymp-* folder behind
    if (mp_temp := multiprocessing.process.current_process()._config.get("tempdir")) is not None:
        shutil.rmtree(mp_temp, ignore_errors=True)
    os._exit(code)
