"""Folders of numbered image files as a source (``kind: folder``): frames timed by their numbers, or by their order
where the names are not frame numbers (time stamps, no numbers)."""

from __future__ import annotations

import re
from fractions import Fraction
from collections.abc import Iterable
from pathlib import Path
from statistics import median

from streamfuse.bitdepth import IMAGE_SUFFIXES, is_image_name, read_8bit
from streamfuse.capture.sources import BaseSource, SourceError
from streamfuse.errors import io_reason
from streamfuse.frames import Frame
from streamfuse.registry import register

__all__ = ["FolderSource", "play_order", "frame_files"]


def frame_files(folder: Path, what: str) -> list[Path]:
    """The image files of ``folder``; ``ValueError`` (one line, ``what`` naming the folder) for one that cannot be
    looked at (a link to nothing, a symlink loop), found now rather than when its frame's turn fails the run."""
    files = [p for p in folder.iterdir() if is_image_name(p)]
    for path in files:
        try:
            path.stat()
        except OSError as exc:
            raise ValueError(f"{what} {folder}: {path.name} cannot be read ({io_reason(exc)})") from None
    return files


def _number_key(path: Path) -> tuple[int, str]:
    """Sort key: the last integer in the file stem (``frame_0012.png`` -> 12), then the name."""
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


def _time_key(path: Path) -> tuple[tuple[Fraction, ...], str]:
    """Sort key of names that are not frame numbers: every number in the stem, a decimal one whole (time stamps
    ``1700000000.966667`` before ``1700000001.000000``, which their last digits alone would put last), then the name."""
    return tuple(Fraction(n) for n in re.findall(r"\d+(?:\.\d+)?", path.stem)), path.name


# the usual step between frame numbers of a folder that lost frames (3 in 4 at most); time stamps step by tens (ms at
# up to 100 frames/s) or more (us, ns), and timed as frames they would pair nothing
_FRAME_STEP = 4


def play_order(files: Iterable[Path]) -> tuple[list[Path], list[int] | None]:
    """``files`` in the order a folder source plays them, with their frame numbers where they are numbered as frames
    (the usual step between two numbers at most ``_FRAME_STEP``); None where they are timed by position (no numbers,
    repeated ones, time stamps), in time order as their numbers read whole."""
    files = sorted(files, key=_number_key)
    numbers = [_number_key(p)[0] for p in files]
    steps = [b - a for a, b in zip(numbers, numbers[1:])]
    frames = len(set(numbers)) == len(numbers) and min(numbers, default=-1) >= 0
    if frames and (not steps or median(steps) <= _FRAME_STEP):
        return files, numbers
    return sorted(files, key=_time_key), None


@register("source", "folder")
class FolderSource(BaseSource):
    """Numbered image files sorted numerically. Numbered as frames are (the usual step between two numbers at most
    ``_FRAME_STEP``: a folder that lost frames, even most of them), frame ``n`` has ``t = n / fps``, so a missing
    frame leaves a gap in time (its partner then goes unpaired, and is counted) instead of moving every later frame
    onto the other stream's previous one; otherwise (no numbers, repeated ones, time stamps) file ``i`` in that order
    has ``t = i / fps``. A loop goes on after the last."""

    def _open(self) -> None:
        folder = Path(self.cfg.path)
        if not self.cfg.path or not folder.is_dir():
            raise SourceError(f"{self.section}: image folder not found: {self.cfg.path!r}")
        try:
            self._files, numbers = play_order(frame_files(folder, "image folder"))
        except ValueError as exc:
            raise SourceError(f"{self.section}: {exc}") from None
        if not self._files:
            raise SourceError(f"{self.section}: no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        self._numbers = numbers if numbers is not None else list(range(len(self._files)))
        self._span = self._numbers[-1] - self._numbers[0] + 1  # a loop's next lap follows its last frame

    def _read(self) -> Frame | None:
        lap, index = divmod(self._seq, len(self._files))
        if lap and not self.cfg.loop:
            return None
        try:
            image = read_8bit(self._files[index], self._8bit)  # a bad pixel type names the file
        except ValueError as exc:
            raise SourceError(f"{self.section}: {exc}") from None
        t_ns = self._t_ns(self._seq)
        if index == 0:  # passes begun (``skip`` steps over whole ones by ``_seq``)
            self._begin_pass(t_ns)
        self._pace(t_ns)
        return self._frame(t_ns, self._convert(image))

    def _t_ns(self, seq: int) -> int:
        """The time of the frame ``seq`` plays, ns: by its number, each pass one span after the one before."""
        lap, index = divmod(seq, len(self._files))
        return round((self._numbers[index] + lap * self._span) * 1e9 / self.cfg.fps)

    def _skip_passes(self, passes: int, seq_step: int, t_step_ns: int) -> None:
        before = self._t_ns(self._seq)
        super()._skip_passes(passes, seq_step, t_step_ns)
        # its times follow _seq, one own span a pass: the rest of a pass's step is the wait for a longer looped input
        self._passes.held_ns += passes * t_step_ns - (self._t_ns(self._seq) - before)
