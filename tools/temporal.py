"""Temporal stability of a fuser on frame sequences: flicker ratio per clip, and a static-input check.

For each clip folder under SEQ_ROOT (``<clip>/ir/*.png`` and ``<clip>/vi/*.png``, numbered frames) the fuser runs
over the frames in order as one stream, between the IR level stabilizer and the post stage's temporal denoiser as the
pipeline runs them (a --config method's ``stabilize`` and ``post`` sections; --stabilize and --denoise for
--fuser methods); the flicker ratio is mean |F_t - F_{t-1}| / mean |V_t - V_{t-1}| (visible Y). With the denoiser
on, "filter lag" is how far its output strays from the unfiltered fused frames (mean and 99.9th percentile of
|difference| in grey levels, over all clips): removed noise, and the trail it leaves on moving content.
Goal: at most 1.1. "flow warp" is the motion-compensated measure (streamfuse.metrics.flow_warp_error: mean
|F_t - warp(F_{t-1})| in grey levels with DIS optical flow from the visible frames, over pixels whose forward-backward
flow agrees), mean over clips; the visible input's own value is printed first for scale. The static check fuses the
same pair repeatedly and reports whether every output is identical.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import streamfuse  # noqa: F401  (first: a missing dependency then says which environment to use)
except ModuleNotFoundError as exc:  # a Python without the package
    sys.exit(f"{exc.name} is not installed for {sys.executable}; run `make venv` once and use .venv/bin/python")

import numpy as np  # noqa: E402

from streamfuse.evaluation import config_method, find_pairs, fuser_method, read_grey  # noqa: E402
from streamfuse.metrics import flow_warp_error, temporal_ratio  # noqa: E402
from streamfuse.postprocess import PostConfig  # noqa: E402
from streamfuse.processor import FrameProcessor, still_pair  # noqa: E402
from streamfuse.stabilize import StabilizeConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("seq_root", nargs="?", default=str(REPO.parent / "shared/data/sequences"),
                        help="folder of clips, each with ir/ and vi/ numbered frames")
    parser.add_argument("--fuser", action="append", default=[],
                        help="NAME[:key=value,...] (repeatable); hclfuse when no --fuser or --config is given")
    parser.add_argument("--config", action="append", default=[], help="pipeline config whose fuser to run")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override of the fuser's sections (fuse, hclfuse, engine, baseline, align)")
    parser.add_argument("--static", type=int, default=5, help="repeats of one pair for the static-input check")
    parser.add_argument("--stabilize", type=float, default=0.0, help="stabilize.strength for --fuser methods (0 = off)")
    parser.add_argument("--denoise", type=float, default=0.0, help="post.denoise for --fuser methods (0 = off)")
    parser.add_argument("--denoise-threshold", type=float, default=PostConfig.denoise_threshold,
                        help="post.denoise_threshold for --fuser methods")
    args = parser.parse_args()
    clips = sorted(p for p in Path(args.seq_root).iterdir() if (p / "ir").is_dir()) if Path(args.seq_root).is_dir() \
        else []
    if not clips:
        sys.exit(f"temporal: no clips with ir/ and vi/ folders under {args.seq_root}")
    default = [] if args.config else ["hclfuse"]  # hclfuse only when no method is named
    try:
        fuser_post = PostConfig(denoise=args.denoise, denoise_threshold=args.denoise_threshold)
        methods = [fuser_method(s, args.overrides) for s in args.fuser or default]
        methods += [config_method(c, args.overrides) for c in args.config]
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"temporal: {exc}")
    frames = {clip.name: [(read_grey(ir), read_grey(vi)) for _, ir, vi in find_pairs(clip / "ir", clip / "vi")]
              for clip in clips}  # read once, fused by every method
    visible = np.mean([flow_warp_error(*[[vi for _, vi in pairs]] * 2) for pairs in frames.values()])
    print(f"visible input: flow warp error {visible:.2f} grey levels (mean over clips)")
    print(f"| method | stabilize / denoise | {' | '.join(frames)} | mean | flow warp | filter lag mean / p99.9"
          " | static identical |")
    print(f"|---|---|{'---|' * len(frames)}---|---|---|---|")
    for method in methods:
        post = method.config.post if method.config is not None else fuser_post
        level = method.config.stabilize if method.config is not None else StabilizeConfig(args.stabilize)
        ratios, warp, lag = [], [], []
        for name, pairs in frames.items():  # each clip one stream through the pipeline's frame processor
            processor = FrameProcessor(method.fuser, stream=name, stabilize=level, post=post)
            outs = [processor(still_pair(ir, vi, k)) for k, (ir, vi) in enumerate(pairs)]
            fused = [o.filtered_y for o in outs]
            ratios.append(temporal_ratio(fused, [vi for _, vi in pairs]))
            warp.append(flow_warp_error(fused, [vi for _, vi in pairs]))
            lag += [np.abs(o.filtered_y - o.fused_y).ravel() for o in outs[1:]]
        lag = np.concatenate(lag)
        processor = FrameProcessor(method.fuser, stream="static", stabilize=level, post=post)
        outs = [processor(still_pair(*pairs[0], k)).filtered_y for k in range(args.static)]
        static = all(np.array_equal(outs[0], o) for o in outs[1:])
        cells = " | ".join(f"{r:.3f}" for r in ratios)
        print(f"| {method.name} | {level.strength:g} / {post.denoise:g}, {post.denoise_threshold:g} | {cells}"
              f" | {np.mean(ratios):.3f} | {np.mean(warp):.2f} |"
              f" {lag.mean():.2f} / {np.percentile(lag, 99.9):.1f} | {'yes' if static else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
