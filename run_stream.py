"""Run a streamfuse pipeline: live capture -> fuse -> publish, or offline replay of a recorded pair.

Live:    python run_stream.py --config configs/demo.yaml
Replay:  python run_stream.py --config configs/replay.yaml --ir IR.mp4 --vis VIS.mp4 --out fused.mp4
Any config value can be overridden: --set fuse.steps=2 --set fuse.device=cpu
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="live: stop after this many seconds (0 = until Ctrl-C)")
    parser.add_argument("--ir", help="replay: IR video, frame folder or recording (overrides the config)")
    parser.add_argument("--vis", help="replay: visible video or frame folder (overrides the config)")
    parser.add_argument("--out", help="replay: fused video to write (overrides replay.out); makes this a replay run")
    parser.add_argument("--resume", action="store_true", help="replay: continue an interrupted replay of --out")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from streamfuse.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)  # before the pipeline's imports: a bad key fails in a blink
        from streamfuse.pipeline import run

        return run(cfg, duration_s=args.duration, ir_path=args.ir, vis_path=args.vis, out_path=args.out,
                   resume=args.resume or None)
    except ConfigError as exc:
        print(f"streamfuse: config error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as exc:
        # Every stage raises these with one line that says what and where; a stack trace would bury it.
        logging.getLogger("streamfuse").debug("failure", exc_info=True)
        print(f"streamfuse: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    code = main()
    # Everything is closed, unlinked and logged by now; what remains is interpreter teardown (torch, numba, OpenMP
    # and ZeroMQ threads), which took seconds under load. Flush and leave, so Ctrl-C/SIGTERM exits within 2 s.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
