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

import numpy as np  # noqa: E402

from streamfuse.bitdepth import To8Bit  # noqa: E402
from streamfuse.capture.image_folder import play_order  # noqa: E402
from streamfuse.checks import ConfigError  # noqa: E402
from streamfuse.cli.args import (DefaultsFormatter, Parser, config_error, config_value, data_dir,  # noqa: E402
                                 int_at_least, path_arg)
from streamfuse.eval_pairs import find_pairs, image_files, read_grey  # noqa: E402
from streamfuse.evaluation import Method, config_method, fused_dir_method, fuser_method  # noqa: E402
from streamfuse.metrics import average_gradient, flow_warp_error, temporal_ratio  # noqa: E402
from streamfuse.postprocess import PostConfig  # noqa: E402
from streamfuse.processor import FrameProcessor, still_pair  # noqa: E402
from streamfuse.stabilize import StabilizeConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def fused_frames(folder: Path, name: str, stems: list[str], shape: tuple[int, int]) -> list[np.ndarray]:
    """Another method's fused Y frames of one clip, ``folder/<stem>.<ext>`` in ``stems``' order.

    Raises:
        FileNotFoundError: the folder or a frame is missing.
        ValueError: a frame is unreadable or not ``shape``.
    """
    files = image_files(folder, f"fused ({name})")
    missing = [s for s in stems if s not in files]
    if missing:
        raise FileNotFoundError(f"{folder}: no fused frame {missing[0]} ({len(missing)} of {len(stems)} missing)")
    frames = [read_grey(files[s]) for s in stems]
    for s, frame in zip(stems, frames, strict=True):
        _check_clip_size(files[s], frame, shape, "fused frame")
    return frames


def _check_clip_size(path: Path, frame: np.ndarray, shape: tuple[int, ...], what: str = "frame") -> None:
    """ValueError naming ``path`` when ``frame`` is not the clip's size, ``shape``."""
    if frame.shape != shape:
        raise ValueError(f"{path}: {what} is {frame.shape[1]}x{frame.shape[0]}, the clip's is {shape[1]}x{shape[0]}")


def in_play_order(pairs: list[tuple[str, Path, Path]]) -> list[tuple[str, Path, Path]]:
    """A clip's pairs in the order a folder source plays its IR frames (``9.png`` before ``10.png``): by name as text,
    frame 10 came between 1 and 2 where the names have no leading zeros."""
    by_ir = {ir: pair for pair in pairs for ir in [pair[1]]}
    return [by_ir[ir] for ir in play_order(by_ir)[0]]


def clip_frames(pairs: list[tuple[str, Path, Path]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """A clip's ``(IR, visible Y)`` frames in order.

    Raises:
        ValueError: a clip of one frame or of visible frames that do not change (no change to measure against) or a
            frame whose size is not the clip's first IR frame's (one line naming the frame).
    """
    if len(pairs) < 2:
        raise ValueError(f"{pairs[0][1].parent.parent}: one IR/visible frame pair; a clip needs at least two")
    ir8 = To8Bit(ir=True)  # one for the clip: 16-bit IR frames keep one scale, so the level does not jump
    frames = [(read_grey(ir, ir8), read_grey(vi)) for _, ir, vi in pairs]
    if all(np.array_equal(frames[0][1], vi) for _, vi in frames):
        raise ValueError(f"{pairs[0][2].parent}: the visible frames do not change, and the flicker ratio is the fused "
                         "frames' change relative to theirs")
    shape = frames[0][0].shape
    for (_, *paths), pair in zip(pairs, frames, strict=True):
        for path, frame in zip(paths, pair, strict=True):
            _check_clip_size(path, frame, shape)
    return frames


def row(name: str, levels: str, ratios: list[float], warp: list[float], sharpness: list[float], rest: str) -> str:
    """One table row: per-clip flicker ratios, their mean, the mean flow warp error and AG, then ``rest``."""
    cells = " | ".join(f"{r:.3f}" for r in ratios)
    return (f"| {name} | {levels} | {cells} | {np.mean(ratios):.3f} | {np.mean(warp):.2f} | {np.mean(sharpness):.2f}"
            f" | {rest} |")


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


def load(args: argparse.Namespace) -> tuple[dict, dict, list, PostConfig, StabilizeConfig]:
    """Every clip's frames (read once, fused by every method), the --fused methods' frames, the fuser methods, and
    the post and stabilize settings of --fuser methods. Raises ValueError or FileNotFoundError (one line)."""
    clips = sorted(p for p in Path(args.seq_root).iterdir() if (p / "ir").is_dir()) if Path(args.seq_root).is_dir() \
        else []
    if not clips:
        raise FileNotFoundError(f"no clips with ir/ and vi/ folders under {args.seq_root}")
    default = [] if args.config or args.fused else ["hclfuse"]  # hclfuse only when no method is named
    fuser_post = PostConfig(denoise=args.denoise, denoise_threshold=args.denoise_threshold)
    fuser_level = StabilizeConfig(args.stabilize)
    others = [fused_dir_method(s) for s in args.fused]
    methods = [fuser_method(s, args.overrides) for s in args.fuser or default]
    methods += [config_method(c, args.overrides) for c in args.config]
    names = [m.name for m in others + methods]
    if twice := sorted({n for n in names if names.count(n) > 1}):  # their rows would be one (--fused) or two alike
        raise ValueError(f"two methods named {twice[0]}: name them apart (NAME=DIR for --fused, a config file's name)")
    listed = {clip.name: in_play_order(find_pairs(clip / "ir", clip / "vi")) for clip in clips}  # (stem, IR, vi)
    frames = {name: clip_frames(pairs) for name, pairs in listed.items()}
    outputs = {m.name: {name: fused_frames(m.fused_dir / name, m.name, [s for s, _, _ in listed[name]],
                                           pairs[0][1].shape) for name, pairs in frames.items()} for m in others}
    return frames, outputs, methods, fuser_post, fuser_level


def _processor(method: Method, stream: str, level: StabilizeConfig, post: PostConfig) -> FrameProcessor:
    """The frame processor of a method on ``stream``: a config method's own (its registration too), else the fuser
    with ``level`` and ``post``."""
    if method.config is not None:
        return FrameProcessor.from_config(method.config, method.fuser, stream=stream)
    return FrameProcessor(method.fuser, stream=stream, stabilize=level, post=post)


def report(frames: dict, outputs: dict, methods: list, fuser_post: PostConfig, fuser_level: StabilizeConfig,
           static_repeats: int) -> None:
    """Print the flicker table (--fused rows, then each method's) and the per-clip flow warp table."""
    visible = [[vi for _, vi in pairs] for pairs in frames.values()]
    warps = {"visible input": [flow_warp_error(v, v) for v in visible]}  # per clip, printed after the main table
    print(f"visible input: flow warp error {np.mean(warps['visible input']):.2f} grey levels, AG"
          f" {np.mean([average_gradient(f) for v in visible for f in v]):.2f} (means over clips, frames)")
    print(f"| method | stabilize / denoise | {' | '.join(frames)} | mean | flow warp | AG | filter lag mean / p99.9"
          " | static identical |")
    print(f"|---|---|{'---|' * len(frames)}---|---|---|---|---|")
    for name, clip_outputs in outputs.items():
        ratios = [temporal_ratio(clip_outputs[c], v) for c, v in zip(frames, visible, strict=True)]
        warp = [flow_warp_error(clip_outputs[c], v) for c, v in zip(frames, visible, strict=True)]
        sharpness = [average_gradient(f) for out in clip_outputs.values() for f in out]
        warps[name] = warp
        print(row(name, "-", ratios, warp, sharpness, "- | -"), flush=True)
    for method in methods:
        post = method.config.post if method.config is not None else fuser_post
        level = method.config.stabilize if method.config is not None else fuser_level
        ratios, warp, sharpness, lag = [], [], [], []
        for (name, pairs), vis in zip(frames.items(), visible, strict=True):  # each clip one stream, as it runs live
            processor = _processor(method, name, level, post)
            outs = [processor(still_pair(ir, vi, k)) for k, (ir, vi) in enumerate(pairs)]
            fused = [o.filtered_y for o in outs]
            ratios.append(temporal_ratio(fused, vis))
            warp.append(flow_warp_error(fused, vis))
            sharpness += [average_gradient(f) for f in fused]
            lag += [np.abs(o.filtered_y - o.fused_y).ravel() for o in outs[1:]]
        lag = np.concatenate(lag)
        warps[method.name] = warp
        processor = _processor(method, "static", level, post)
        outs = [processor(still_pair(*pairs[0], k)).filtered_y for k in range(static_repeats)]
        static = all(np.array_equal(outs[0], o) for o in outs[1:])
        print(row(method.name, f"{level.strength:g} / {post.denoise:g}, {post.denoise_threshold:g}", ratios, warp,
                  sharpness, f"{lag.mean():.2f} / {np.percentile(lag, 99.9):.1f} | {'yes' if static else 'NO'}"),
              flush=True)
    print(f"\nflow warp error per clip (grey levels)\n| method | {' | '.join(frames)} | mean |\n"
          f"|---|{'---|' * len(frames)}---|")
    for name, warp in warps.items():
        print(f"| {name} | {' | '.join(f'{w:.2f}' for w in warp)} | {np.mean(warp):.2f} |")


def main() -> None:
    args = parse_args()
    try:
        report(*load(args), args.static)
    except ConfigError as exc:
        raise SystemExit(config_error(PROG, exc)) from None
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"{PROG}: error: {printable(exc)}")
    except KeyboardInterrupt as exc:  # the tables go to stdout as they are made: nothing is left half-written
        say_stopped(PROG, exc)
        raise SystemExit(130) from None


if __name__ == "__main__":
    leave(stoppable(main, PROG, "tools"))
