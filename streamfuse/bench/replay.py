"""Replay throughput: fused frames/s and each stage's share of wall time (decode, pair, fuse, postprocess, encode).

Without --ir/--vis it writes a synthetic 640x480 IR/visible pair (H.264) to a temporary folder first. Every
frame is decoded, paired, fused, colour-restored and encoded exactly as ``python -m streamfuse replay`` does, so
the shares say whether decoding or encoding ever limits a replay compared with fusion.
Example: ``python -m streamfuse bench replay --fuser max,hclfuse``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

from streamfuse.bench import parse_size
from streamfuse.checks import override_keys
from streamfuse.cli.args import DefaultsFormatter, Parser, config_error, given, int_at_least
from streamfuse.errors import printable
from streamfuse.log_queue import install_direct
from streamfuse.signals import finished_first, said_last

_PROG = "streamfuse bench replay"  # as its usage errors and every command's own lines start
__all__ = ["main", "synthetic_pair"]

_WHOLE = ("(the whole replay once the model is loaded: opening, the first OT solve and the encoder's start weigh on a "
          "short clip)")


def synthetic_pair(folder: Path, frames: int, width: int, height: int) -> tuple[Path, Path]:
    """``folder/ir.mp4`` and ``folder/vis.mp4``: ``frames`` of the synthetic rig's scene at 30 fps, H.264."""
    from streamfuse.capture.synthetic import SyntheticScene
    from streamfuse.video import VideoWriter

    scene = SyntheticScene(width, height, seed=7)
    paths = []
    for stream in ("ir", "vis"):
        path = folder / f"{stream}.mp4"
        w = VideoWriter(path, codec="h264", crf=18, time_base=Fraction(1, 15360), rate=Fraction(30), width=width,
                        height=height)
        for i in range(frames):
            t_ns = i * 1_000_000_000 // 30
            w.write(scene.render_ir(t_ns) if stream == "ir" else scene.render_vis(t_ns), i * 512)
        w.commit()
        paths.append(path)
    return paths[0], paths[1]


def _set_here(override: str) -> bool:
    """Whether ``override`` sets what the benchmark sets itself: the fuser, the codec, the progress bar."""
    keys = override_keys(override)
    return keys[0] == "fuse" or keys in (["replay", "codec"], ["replay", "progress"])


def _parser() -> Parser:
    """The command line of ``bench replay``."""
    parser = Parser(prog="python -m streamfuse bench replay", description=__doc__,
                    formatter_class=DefaultsFormatter)
    parser.add_argument("--fuser", default="max,hclfuse", help="comma-separated fusers to compare")
    parser.add_argument("--frames", type=int_at_least(1), default=150, help="synthetic clip length")
    parser.add_argument("--size", type=parse_size, default="640x480", help="synthetic frame size WxH")
    parser.add_argument("--ir", help="IR video to replay instead of the synthetic clip")
    parser.add_argument("--vis", help="visible video to replay instead of the synthetic clip")
    parser.add_argument("--codec", default="h264", choices=["h264", "ffv1"], help="output codec")
    parser.add_argument("--config", default="replay", metavar="NAME|FILE",
                        help="replay config: a shipped name or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a config value (repeatable), e.g. engine.device=cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print each fuser's replay frames/s and stage shares; one that cannot run is a line on stderr and exit 1."""
    parser = _parser()
    args = parser.parse_args(argv)
    install_direct(logging.WARNING)
    if bool(args.ir) != bool(args.vis):
        parser.error("give both --ir and --vis, or neither (a synthetic pair)")
    if args.ir and (synthetic := given(parser, argv, ("frames", "size"))):
        parser.error(f"--{min(synthetic)} is the synthetic clip's: --ir and --vis are replayed whole")
    if taken := next((o for o in args.overrides if _set_here(o)), None):  # a --set of them would be passed over
        parser.error(f"--set {taken}: the fuser is --fuser, the codec --codec (progress stays off)")
    for what, path in (("IR", args.ir), ("visible", args.vis)):
        if path and not Path(path).is_file():
            raise SystemExit(f"{_PROG}: error: {what} video not found: {printable(path)}")

    from streamfuse.config import ConfigError, load_config
    from streamfuse.configs import resolve
    from streamfuse.replay import run_replay
    from streamfuse.replay.summary import each_thread

    fixed = [f"replay.codec={args.codec}", "replay.progress=false"]
    try:  # every config first: a bad --config, --set or --fuser is one line before any work
        configs = {name: load_config(resolve(args.config), [*args.overrides, f"fuse.name={name}", *fixed])
                   for name in args.fuser.split(",")}
    except ConfigError as exc:
        raise SystemExit(config_error(_PROG, exc)) from None
    except (ValueError, OSError) as exc:
        raise SystemExit(f"{_PROG}: error: {printable(exc)}") from None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.ir and args.vis:
            ir, vis = Path(args.ir), Path(args.vis)
        else:
            ir, vis = synthetic_pair(tmp, args.frames, *args.size)
        print(f"replay of {printable(ir.name)} + {printable(vis.name)}, output {args.codec}")
        failed = 0
        for name, cfg in configs.items():
            out = tmp / f"out_{name}.{'mkv' if args.codec == 'ffv1' else 'mp4'}"
            try:
                s = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
            except (OSError, ValueError, RuntimeError, ImportError) as exc:  # e.g. model weights not built yet
                if getattr(exc, "interrupted", False):  # Ctrl-C or SIGTERM stops the bench, its temporary output gone
                    return said_last(f"{_PROG}: {printable(name)} {printable(exc.message.partition(';')[0])}", 130)
                with finished_first():  # a stop meanwhile is acted on once the line is whole, not in its middle
                    print(f"{_PROG}: error: {printable(name)} not run: {printable(exc)}", file=sys.stderr)
                failed += 1
                continue
            shares = "  ".join(f"{k} {v['share']:.0%}{each_thread(v)} ({v['median_ms']:.1f} ms)"
                               for k, v in s.stages.items())
            # decode and encode run on their own threads: they limit the replay only as long as the loop waits on them
            io = sum(s.stages.get(k, {}).get("share", 0.0) for k in ("decode", "encode"))
            fuse = s.stages.get("fuse", {}).get("share", 0.0)
            verdict = "decode/encode IS the bottleneck" if io > fuse else "fusion is the bottleneck"
            print(f"  {name:<10} {s.written} frames in {s.wall_s:.2f} s = {s.fps:.1f} frames/s {_WHOLE}, load average "
                  f"{os.getloadavg()[0]:.2f}\n    {shares}\n"
                  f"    loop waits on decode+encode {io:.0%} vs fuse {fuse:.0%}: {verdict}")
    return 1 if failed else 0
