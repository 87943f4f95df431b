"""Write evaluation pairs from paired videos: frames start, start + every, ... of each IR/visible video pair.

Frames past the end of a clip are skipped (a clip with none of them is an error). The model card's held-out set:
frames 40, 100, 160, ... (at most 8 per clip) of the paired `videos/m3svd` clips, which training never reads (it reads
the `sequences/` frame folders):

    python tools/extract_pairs.py ../shared/data/videos/m3svd runs/m3svd_pairs

VIDEOS holds ``ir/<clip>.<ext>`` and ``vi/<clip>.<ext>``; OUT gets ``ir/<clip>_<frame>.png`` (grey) and
``vi/<clip>_<frame>.png`` (colour), ready for ``python -m streamfuse evaluate`` and ``tools/ablate.py --ir --vis``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import streamfuse  # noqa: F401  (first: a missing dependency then says which environment to use)
except ModuleNotFoundError as exc:  # a Python without the package
    sys.exit(f"{exc.name} is not installed for {sys.executable}; run `make venv` once and use .venv/bin/python")

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402


def frames_at(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """The decoded frames (BGR uint8) of ``path`` whose 0-based index is in ``wanted``."""
    found = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="bgr24")
            if len(found) == len(wanted):
                break
    return found


def extract(videos: Path, out: Path, start: int, every: int, count: int) -> int:
    """Write the pairs; returns how many. Raises ValueError (one line) on a missing or short video."""
    wanted = {start + k * every for k in range(count)}
    clips = sorted(p for p in (videos / "ir").glob("*") if p.is_file())
    if not clips:
        raise ValueError(f"no videos under {videos / 'ir'}")
    for sub in ("ir", "vi"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    n = 0
    for ir_path in clips:
        vis_path = next((videos / "vi").glob(ir_path.stem + ".*"), None)
        if vis_path is None:
            raise ValueError(f"no visible video for {ir_path.name} under {videos / 'vi'}")
        ir, vis = frames_at(ir_path, wanted), frames_at(vis_path, wanted)
        both = sorted(set(ir) & set(vis))
        if not both:
            raise ValueError(f"{ir_path.stem}: frame {start} is past the end of the IR or visible video")
        for i in both:
            cv2.imwrite(str(out / "ir" / f"{ir_path.stem}_{i:05d}.png"), cv2.cvtColor(ir[i], cv2.COLOR_BGR2GRAY))
            cv2.imwrite(str(out / "vi" / f"{ir_path.stem}_{i:05d}.png"), vis[i])
            n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", type=Path, help="folder with ir/ and vi/ videos of the same names")
    p.add_argument("out", type=Path, help="output folder (ir/ and vi/ PNGs)")
    p.add_argument("--start", type=int, default=40, help="first frame index")
    p.add_argument("--every", type=int, default=60, help="frame step")
    p.add_argument("--count", type=int, default=8, help="at most this many frames per clip")
    args = p.parse_args(argv)
    try:
        n = extract(args.videos, args.out, args.start, args.every, args.count)
    except (ValueError, OSError, av.error.FFmpegError) as exc:
        sys.exit(f"extract_pairs: {exc}")
    print(f"{n} pairs written to {args.out}")


if __name__ == "__main__":
    main()
