"""How far a resumed replay's frames are from an uninterrupted run's: replays the inputs (``--ir``, and ``--vis``
unless ``--ir`` is a recording holding both) once whole and once stopped by a Ctrl-C (SIGINT) as soon as its output
holds ``--stop-at`` frames and then resumed (``--resume``), both with the same config and lossless FFV1 (or the codec
``--set replay.codec=...`` names), and prints the frame the run stopped at and the grey-level difference (largest and
mean over the pixels) of the frames before that point and after it. The stages with a history restart at a resume
point, so the frames after it may differ; with H.264 the frames before it were decoded and encoded again.

Example: ``python tools/resume_check.py --ir ../shared/data/videos/m3svd/ir/0117_1605.mp4
--vis ../shared/data/videos/m3svd/vi/0117_1605.mp4 --stop-at 216``
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

# where the package is not installed, this checkout's: its import names the dependencies this Python lacks, in the
# one line of `python -m streamfuse`. No origin: only a folder that an uninstall left (numba's cache files in it)
if getattr(importlib.util.find_spec("streamfuse"), "origin", None) is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))
import streamfuse  # noqa: E402,F401  (first: a missing dependency then says which environment to use)
from streamfuse.cli import leave, quiet_interrupt, say_stopped, stoppable  # noqa: E402

PROG = Path(__file__).name  # how every line of the tool begins, as its usage errors do
quiet_interrupt(PROG)  # a Ctrl-C while the imports below load (numpy, PyAV) is one line

import av  # noqa: E402
import numpy as np  # noqa: E402

from streamfuse.atomic_write import partial_path  # noqa: E402
from streamfuse.cli.args import DefaultsFormatter, Parser, int_at_least, path_arg  # noqa: E402
from streamfuse.errors import printable  # noqa: E402
from streamfuse.eval_report import check_outputs  # noqa: E402
from streamfuse.video import decode_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INTERRUPTED = 130  # a replay's exit status when a Ctrl-C stopped it
POLL_S = 0.05


def _replay(args: argparse.Namespace, out: Path, *extra: str) -> list[str]:
    inputs = ["--ir", str(args.ir)] + (["--vis", str(args.vis)] if args.vis else [])
    overrides = [a for o in ["replay.codec=ffv1", *args.overrides] for a in ("--set", o)]
    return [sys.executable, "-m", "streamfuse", "replay", "--config", args.config, *inputs, "--out", str(out),
            *overrides, *extra]


def _failed(proc: subprocess.CompletedProcess | subprocess.Popen, what: str, err: str) -> SystemExit:
    last = (err.strip().splitlines() or ["no output"])[-1]
    return SystemExit(f"{PROG}: error: the {what} replay ended with status {proc.returncode}: {last}")


def _written(path: Path) -> int:
    """Frames a replay has written so far to its growing output: its packets, counted without decoding them."""
    count = 0
    try:
        with av.open(str(path)) as container:
            for packet in container.demux(video=0):
                count += packet.size > 0
    except (OSError, av.FFmpegError):  # not there yet, its header not yet written, or its last packet cut
        pass
    return count


def _interrupted(args: argparse.Namespace, out: Path) -> int:
    """Frames on disk after a replay to ``out`` was stopped once it held ``args.stop_at`` frames."""
    proc = subprocess.Popen(_replay(args, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and _written(partial_path(out)) < args.stop_at:
        time.sleep(POLL_S)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate()[1]
    if proc.returncode == 0:
        raise SystemExit(f"{PROG}: error: the replay finished before it was stopped: give a smaller --stop-at")
    if proc.returncode != INTERRUPTED:
        raise _failed(proc, "interrupted", err)
    return sum(1 for _ in decode_frames(partial_path(out)))


def _difference(whole: Path, resumed: Path, held: int) -> tuple[list[int], list[float], int]:
    """Largest and mean grey-level difference of the frames before ``held`` and after, and the frames compared."""
    largest, total, pixels, frames = [0, 0], [0.0, 0.0], [0, 0], 0
    for frames, ((_, a), (_, b)) in enumerate(zip(decode_frames(whole), decode_frames(resumed), strict=True), 1):
        diff = np.abs(a.astype(np.int16) - b)
        part = int(frames > held)
        largest[part], total[part] = max(largest[part], int(diff.max())), total[part] + float(diff.sum())
        pixels[part] += diff.size
    return largest, [t / max(1, n) for t, n in zip(total, pixels)], frames


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=DefaultsFormatter)
    p.add_argument("--ir", type=path_arg, required=True, help="IR input (or a recording holding both streams)")
    p.add_argument("--vis", type=path_arg, help="visible input")
    p.add_argument("--stop-at", type=int_at_least(1), default=200, help="frames written before the Ctrl-C")
    p.add_argument("--config", default="replay", help="replay config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="stage.key=value",
                   help="dotted override of the config; repeatable")
    p.add_argument("--out", type=path_arg, default=REPO / "out" / "resume_check", help="folder of the two outputs")
    args = p.parse_args(argv)
    whole, resumed = args.out / "whole.mkv", args.out / "resumed.mkv"
    try:  # the outputs are removed before the first replay: an input among them would go with them
        check_outputs({"--ir": args.ir, "--vis": args.vis}, {"--out": args.out},
                      {"the uninterrupted run's output": whole, "the resumed run's output": resumed,
                       "the resumed run's partial output": partial_path(resumed)})
        args.out.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"{PROG}: error: {printable(exc)}") from None
    try:
        for path in (whole, resumed, partial_path(resumed)):
            path.unlink(missing_ok=True)
        run = subprocess.run(_replay(args, whole), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if run.returncode:
            raise _failed(run, "uninterrupted", run.stderr)
        held = _interrupted(args, resumed)
        run = subprocess.run(_replay(args, resumed, "--resume"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        if run.returncode:
            raise _failed(run, "resumed", run.stderr)
        largest, mean, frames = _difference(whole, resumed, held)
    except ValueError:  # zip(strict=True): one output ended before the other
        raise SystemExit(f"{PROG}: error: the resumed output and the uninterrupted one differ in length") from None
    except KeyboardInterrupt as exc:
        say_stopped(PROG, exc)
        raise SystemExit(130) from None
    print(f"stopped at frame {held} of {frames}; grey levels from the uninterrupted run's frames, largest / mean: "
          f"before it {largest[0]} / {mean[0]:.4f}, after it {largest[1]} / {mean[1]:.4f}")


if __name__ == "__main__":
    leave(stoppable(main, PROG, "tools"))
