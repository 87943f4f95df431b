"""Write evaluation pairs from paired videos: frames start, start + every, ... of each IR/visible video pair.

Frames past the end of a clip are skipped (a clip with none of them is an error); a video that fails to decode or
decodes fewer frames than its container announces (truncated) is an error, and a failed run writes no pairs. The
model card's held-out set: frames 40, 100, 160, ... (at most 8 per clip) of the paired `videos/m3svd` clips, which
training never reads (it reads the `sequences/` frame folders):

    python tools/extract_pairs.py ../shared/data/videos/m3svd runs/m3svd_pairs

VIDEOS holds ``ir/<clip>.<ext>`` and ``vi/<clip>.<ext>`` (one video of each name in each, the two of one frame size);
OUT gets ``ir/<clip>_<frame>.png`` (grey) and ``vi/<clip>_<frame>.png`` (colour), ready for ``python -m streamfuse
evaluate`` and ``tools/ablate.py --ir --vis``.
An OUT that already holds pairs is refused (they would mix with this run's): choose an empty or new folder. So is a
second run into an OUT that one is writing (a lock in each of its folders).
"""

from __future__ import annotations

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

import av  # noqa: E402
import numpy as np  # noqa: E402

from streamfuse.atomic_write import write_png  # noqa: E402
from streamfuse.bitdepth import To8Bit, deep_grey  # noqa: E402
from streamfuse.cli.args import HelpFormatter, Parser, int_at_least, path_arg  # noqa: E402
from streamfuse.eval_report import check_outputs  # noqa: E402
from streamfuse.staged_folders import staged_folders  # noqa: E402
from streamfuse.video import LENIENT_TAGS, upright  # noqa: E402


def frames_at(path: Path, wanted: range, ir: bool = False) -> dict[int, np.ndarray]:
    """The decoded frames (BGR uint8) of ``path`` whose 0-based index is in ``wanted``; with ``ir``, grey frames as
    replay reads them (a video deeper than 8 bits on the clip's scale, :mod:`streamfuse.bitdepth`).

    Decodes to the end, so that a truncated file (a cut faststart MP4 still announces every frame) is not taken for a
    short one. Raises ValueError (one line naming the file) when a packet fails to decode or fewer frames decode than
    the container announces (0 = unknown, as in Matroska).
    """
    found, decoded, depth = {}, 0, To8Bit(ir=True)
    try:
        with av.open(str(path), **LENIENT_TAGS) as container:  # a Latin-1 title: read, as replay reads it
            stream = container.streams.video[0]
            announced = stream.frames  # read while open: PyAV 19 refuses a closed container's streams
            for frame in container.decode(stream):
                if ir and deep_grey(frame.format):  # every frame: the scale is the first frame's that has one
                    image = depth(frame.to_ndarray(format="gray16le"))
                elif decoded in wanted:  # IR decoded grey, as replay decodes it (through BGR it came 1-2 levels off)
                    image = frame.to_ndarray(format="gray" if ir else "bgr24")
                if decoded in wanted:
                    found[decoded] = upright(frame, image)  # as replay reads it
                decoded += 1
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path}: cannot decode ({exc})") from None
    if decoded < announced:
        raise ValueError(f"{path}: truncated or damaged, {decoded} of the {announced} frames its container "
                         "announces decode")
    return found


def _partner(ir_path: Path, vis_dir: Path) -> Path:
    """The visible video of IR video ``ir_path``: the one file under ``vis_dir`` of the same stem (``cam.mp4`` for
    ``cam.mkv``, never ``cam.old.mp4``). ValueError (one line) when there is none or more than one."""
    found = sorted(p for p in vis_dir.iterdir() if p.stem == ir_path.stem and p.is_file())
    if not found:
        raise ValueError(f"no visible video for {ir_path.name} under {vis_dir}")
    if len(found) > 1:
        raise ValueError(f"{ir_path.name} has {len(found)} visible videos under {vis_dir} "
                         f"({', '.join(p.name for p in found)}); keep one")
    return found[0]


def _clips(videos: Path) -> list[tuple[Path, Path]]:
    """The (IR, visible) video pairs under ``videos``, by IR name; ValueError (one line) on a missing partner, or two
    IR videos of one stem (their pairs would be written over each other)."""
    if (videos / "ir").resolve() == (videos / "vi").resolve():
        raise ValueError(f"{videos}: ir/ and vi/ are one folder (each IR video would be its own visible one)")
    # hidden files are none: a Mac's "._NAME.mp4" (its metadata, copied onto a drive beside NAME.mp4)
    clips = sorted(p for p in (videos / "ir").glob("*") if p.is_file() and not p.name.startswith("."))
    if not clips:
        raise ValueError(f"no videos under {videos / 'ir'}")
    stems = [p.stem for p in clips]
    if twice := sorted({s for s in stems if stems.count(s) > 1}):
        raise ValueError(f"{videos / 'ir'} holds two videos named {twice[0]} (of different extensions); keep one")
    return [(ir, _partner(ir, videos / "vi")) for ir in clips]


def _write_clip(ir_path: Path, vis_path: Path, wanted: range, ir_dir: Path, vi_dir: Path) -> int:
    """Write one clip's pairs to ``ir_dir`` and ``vi_dir``; returns how many. ValueError (one line) when no wanted frame
    is in both videos, or their frames differ in size (not registered)."""
    ir, vis = frames_at(ir_path, wanted, ir=True), frames_at(vis_path, wanted)
    both = sorted(set(ir) & set(vis))
    if not both:
        raise ValueError(f"{ir_path.stem}: frame {wanted.start} is past the end of the IR or visible video")
    (ih, iw), (vh, vw) = ir[both[0]].shape[:2], vis[both[0]].shape[:2]
    if (ih, iw) != (vh, vw):
        raise ValueError(f"{ir_path.stem}: the IR video is {iw}x{ih} and the visible {vw}x{vh}; the pairs must be "
                         "registered frames of one size")
    for i in both:
        write_png(ir_dir / f"{ir_path.stem}_{i:05d}.png", ir[i])
        write_png(vi_dir / f"{ir_path.stem}_{i:05d}.png", vis[i])
    return len(both)


def extract(videos: Path, out: Path, start: int, every: int, count: int) -> int:
    """Write the pairs; returns how many. Raises ValueError (one line) on a missing, short or truncated video,
    FileExistsError while another run writes into ``out``.

    The pairs are staged in ``out``'s ir/ and vi/ and moved into place once every clip is done
    (:mod:`streamfuse.staged_folders`), so a failed run leaves no pairs behind; an ``out`` that already holds pairs is
    refused before any work, and so is a second run into it while this one works (its lock).
    """
    wanted = range(start, start + every * count, every)  # a range: a count of 10**22 is no set of 10**22 numbers
    clips = _clips(videos)
    check_outputs({"videos": videos}, {"output folder": out})
    with staged_folders([out / "ir", out / "vi"]) as (ir_stage, vi_stage):
        for sub in ("ir", "vi"):  # an earlier run's pairs would mix with these, and same-named ones be written over
            if any(not p.name.startswith(".") for p in (out / sub).iterdir()):
                raise ValueError(f"output folder {out} already holds pairs in {sub}/; choose an empty or new folder")
        return sum(_write_clip(ir_path, vis_path, wanted, ir_stage, vi_stage) for ir_path, vis_path in clips)


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("videos", type=path_arg, help="folder with ir/ and vi/ videos of the same names")
    p.add_argument("out", type=path_arg, help="output folder (ir/ and vi/ PNGs)")
    p.add_argument("--start", type=int_at_least(0), default=40, help="first frame index")
    p.add_argument("--every", type=int_at_least(1), default=60, help="frame step")
    p.add_argument("--count", type=int_at_least(1), default=8, help="at most this many frames per clip")
    args = p.parse_args(argv)
    try:
        n = extract(args.videos, args.out, args.start, args.every, args.count)
    except (ValueError, OSError, RuntimeError, av.error.FFmpegError) as exc:
        sys.exit(f"{PROG}: error: {printable(exc)}")
    except KeyboardInterrupt as exc:  # the pairs go to a temporary folder, removed on the way out: none is left
        say_stopped(PROG, exc)
        raise SystemExit(130) from None
    print(f"{n} pairs written to {args.out}")


if __name__ == "__main__":
    leave(stoppable(main, PROG, "tools"))
