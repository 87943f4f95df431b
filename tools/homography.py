"""Find ``register.homography``, the matrix that puts an IR camera's pixels on the visible camera's, from points
matched by hand: the same scene points (the corners of a heated board, a lamp, a window's corners) read off one IR
frame and one visible frame taken together, as ``IR_X,IR_Y=VIS_X,VIS_Y`` in each camera's own pixels. Four points fix
the matrix; more, spread over the frame and at the distance the rig works at, give a least-squares fit whose error
says how well one plane stands for the scene (cameras close together, a scene far away).

    python tools/homography.py 102,88=215,170 530,92=1100,180 520,400=1090,820 110,395=230,810 \\
        --ir ir.png --vis vis.png --overlay check.png

prints the ``register:`` section to put in the config, and with --ir, --vis and --overlay writes the visible frame
with the warped IR frame's edges drawn in red over it: look at it before trusting the matrix.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

# where the package is not installed, this checkout's: its import names the dependencies this Python lacks, in the
# one line of `python -m streamfuse`. No origin: only a folder that an uninstall left (numba's cache files in it)
if getattr(importlib.util.find_spec("streamfuse"), "origin", None) is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))
import streamfuse  # noqa: E402,F401  (first: a missing dependency then says which environment to use)
from streamfuse.cli import leave, quiet_interrupt, stoppable  # noqa: E402
from streamfuse.errors import printable  # noqa: E402

PROG = Path(__file__).name  # how every line of the tool begins, as its usage errors do
quiet_interrupt(PROG)  # a Ctrl-C while the imports below load (numpy, torch) is one line

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from streamfuse.atomic_write import write_png  # noqa: E402
from streamfuse.bitdepth import To8Bit, read_8bit  # noqa: E402
from streamfuse.cli.args import HelpFormatter, Parser, path_arg  # noqa: E402
from streamfuse.frames import Frame, FramePair  # noqa: E402
from streamfuse.register import RegisterConfig, Registration  # noqa: E402

_POOR_FIT_PX = 3.0  # an RMS error above this many visible pixels: the points do not lie on one plane, or are misread


def point_pair(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """``IR_X,IR_Y=VIS_X,VIS_Y`` -> ((IR_X, IR_Y), (VIS_X, VIS_Y)) (argparse type)."""
    try:
        ir, vis = text.split("=")
        (x, y), (u, v) = (tuple(float(c) for c in side.split(",")) for side in (ir, vis))
        if not np.isfinite([x, y, u, v]).all():  # nan, inf: "three of them on one line" said the fit
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not IR_X,IR_Y=VIS_X,VIS_Y (e.g. 102,88=215,170)") from None
    return (x, y), (u, v)


def fit(pairs: list[tuple[tuple[float, float], tuple[float, float]]]) -> tuple[np.ndarray, float]:
    """The homography (IR -> visible, normalised to 1 in its corner) of the point pairs, and its RMS error in visible
    pixels. Raises ValueError (one line) when the points cannot fix one."""
    if len(pairs) < 4:
        raise ValueError(f"{len(pairs)} point pairs: a homography needs at least 4")
    ir = np.array([p[0] for p in pairs], np.float64)
    vis = np.array([p[1] for p in pairs], np.float64)
    matrix, _ = cv2.findHomography(ir, vis, 0)  # least squares over every pair: the user chose each one
    if matrix is None or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-12:
        raise ValueError("the points do not fix a homography (three of them on one line, or a point given twice?)")
    matrix /= matrix[2, 2]
    error = cv2.perspectiveTransform(ir[None], matrix)[0] - vis
    return matrix, float(np.sqrt((error ** 2).sum(1).mean()))


def overlay(cfg: RegisterConfig, ir_path: Path, vis_path: Path) -> np.ndarray:
    """The visible frame with the edges of the IR frame, registered as the pipeline registers it, in red."""
    # read as every still is (one line for a missing, truncated or corrupt file; 16 bits brought to 8)
    ir = read_8bit(ir_path, To8Bit(ir=True), cv2.IMREAD_GRAYSCALE)
    vis = read_8bit(vis_path, To8Bit(ir=False), cv2.IMREAD_COLOR)
    warped = Registration(cfg)(FramePair(Frame("ir", 0, 0, ir), Frame("vis", 0, 0, vis)))
    out = vis.copy()
    out[cv2.Canny(warped, 50, 150) > 0] = (0, 0, 255)
    return out


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("points", nargs="+", type=point_pair, help="IR_X,IR_Y=VIS_X,VIS_Y, at least four")
    p.add_argument("--ir", type=path_arg, help="the IR frame the points were read off (for --overlay)")
    p.add_argument("--vis", type=path_arg, help="the visible frame the points were read off (for --overlay)")
    p.add_argument("--overlay", type=path_arg,
                   help="write the visible frame with the warped IR edges in red here (PNG)")
    args = p.parse_args(argv)
    if args.overlay and not (args.ir and args.vis):
        p.error("--overlay needs --ir and --vis")
    if args.overlay and args.overlay.suffix.lower() != ".png":
        p.error(f"--overlay {args.overlay}: the overlay is written as a PNG; give a name ending in .png")
    if args.overlay and args.overlay.exists() and any(f.exists() and os.path.samefile(args.overlay, f)
                                                      for f in (args.ir, args.vis)):
        p.error(f"--overlay {args.overlay} is one of the input frames: give another file (an input is never written)")
    try:
        matrix, rms = fit(args.points)
        cfg = RegisterConfig(homography=tuple(matrix.ravel()))  # what the config will check
        if args.overlay:
            write_png(args.overlay, overlay(cfg, args.ir, args.vis))
    except (ValueError, RuntimeError) as exc:
        sys.exit(f"{PROG}: error: {printable(exc)}")
    numbers = ", ".join(f"{v:.9g}" for v in matrix.ravel())
    print(f"register:\n  homography: [{numbers}]  # {len(args.points)} points, RMS error {rms:.2f} visible px")
    if rms > _POOR_FIT_PX:
        print(f"{PROG}: the points fit one plane only to {rms:.1f} px: check them, or the scene is too near for "
              f"one matrix", file=sys.stderr)


if __name__ == "__main__":
    leave(stoppable(main, PROG, "tools"))
