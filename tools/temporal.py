"""Temporal stability of a fuser on frame sequences: flicker ratio per clip, and a static-input check.

For each clip folder under SEQ_ROOT (``<clip>/ir/*.png`` and ``<clip>/vi/*.png``, numbered frames) the fuser runs
over the frames in order as one stream, between the IR level stabilizer and the post stage's temporal denoiser as the
pipeline runs them (a --config method's ``stabilize`` and ``post`` sections; --stabilize and --denoise for
--fuser methods). --fused rows score another method's fused frames, ``DIR/<clip>/<frame>`` under the clip's frame
names (any image format; Y is scored), with the same code. The flicker ratio is mean |F_t - F_{t-1}| / mean
|V_t - V_{t-1}| (visible Y). With the denoiser on, "filter lag" is how far its output strays from the unfiltered
fused frames (mean and 99.9th percentile of |difference| in grey levels, over all clips): removed noise, and the trail
it leaves on moving content. Goal: at most 1.1. "flow warp" is the motion-compensated measure
(streamfuse.metrics.flow_warp_error: mean |F_t - warp(F_{t-1})| in grey levels with DIS optical flow from the visible
frames, over pixels whose forward-backward flow agrees), mean over clips. Both measures grow with the sharpness of the
moving edges, so AG (the mean average gradient of the fused frames) is printed beside them; the visible input's own
flow warp and AG come first, for scale; a second table gives the flow warp clip by clip. The static check fuses the
same pair repeatedly and reports whether every output is identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

# where the package is not installed, this checkout's: its import names the dependencies this Python lacks, in the
# one line of `python -m streamfuse`. No origin: only a folder that an uninstall left (numba's cache files in it)
if getattr(importlib.util.find_spec("streamfuse"), "origin", None) is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))
import streamfuse  # noqa: E402,F401  (first: a missing dependency then says which environment to use)
from streamfuse.cli import leave, quiet_interrupt, say_stopped, stoppable  # noqa: E402
from streamfuse.errors import printable  # noqa: E402

PROG = Path(__file__).name  # how every line of the tool begins, as its usage errors do
quiet_interrupt(PROG)  # a Ctrl-C while the imports below load (numpy, torch) is one line

from streamfuse.checks import ConfigError  # noqa: E402
from streamfuse.cli.args import (DefaultsFormatter, Parser, config_error, config_value, data_dir,  # noqa: E402
                                 int_at_least, path_arg)
from streamfuse.postprocess import PostConfig  # noqa: E402
from streamfuse.stabilize import StabilizeConfig  # noqa: E402
from streamfuse.temporal_eval import load, report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = Parser(description=__doc__, formatter_class=DefaultsFormatter)
    parser.add_argument("seq_root", nargs="?", type=path_arg, default=data_dir(REPO.parent) / "sequences",
                        help="folder of clips, each with ir/ and vi/ numbered frames; default: sequences/ of the "
                             "shared data folder (STREAMFUSE_DATA, else beside the repository)")
    parser.add_argument("--fuser", action="append", default=[],
                        help="NAME[:key=value,...] (repeatable); hclfuse when no --fuser or --config is given")
    parser.add_argument("--config", action="append", default=[], help="pipeline config whose fuser to run")
    parser.add_argument("--fused", action="append", default=[], metavar="[NAME=]DIR",
                        help="another method's fused frames, DIR/<clip>/<frame> (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override of the fuser's sections (fuse, hclfuse, engine, baseline, align)")
    parser.add_argument("--static", type=int_at_least(2), default=5,
                        help="repeats of one pair for the static-input check")
    parser.add_argument("--stabilize", type=config_value(StabilizeConfig, "strength", float), default=0.0,
                        help="stabilize.strength for --fuser methods (0 = off)")
    parser.add_argument("--denoise", type=config_value(PostConfig, "denoise", float), default=0.0,
                        help="post.denoise for --fuser methods (0 = off)")
    parser.add_argument("--denoise-threshold",
                        type=config_value(PostConfig, "denoise_threshold", float, zero_is_off=False),
                        default=PostConfig.denoise_threshold,
                        help="post.denoise_threshold for --fuser methods")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:
        report(*load(args.seq_root, fusers=args.fuser, configs=args.config, fused=args.fused, overrides=args.overrides,
                     stabilize=args.stabilize, denoise=args.denoise, denoise_threshold=args.denoise_threshold),
               args.static)
    except ConfigError as exc:
        raise SystemExit(config_error(PROG, exc)) from None
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"{PROG}: error: {printable(exc)}")
    except KeyboardInterrupt as exc:  # the tables go to stdout as they are made: nothing is left half-written
        say_stopped(PROG, exc)
        raise SystemExit(130) from None


if __name__ == "__main__":
    leave(stoppable(main, PROG, "tools"))
