"""The replay's frames folder (``replay.frames_dir``): every fused frame also as a lossless ``NNNNNN.png``.

The PNGs are written into a hidden staging folder inside it, ``.partial``, which records the fused video it belongs
to, and move in only when the replay completes: a run that stops never leaves a folder that looks complete, and
``--resume`` continues the staged frames of the run it continues. The run holds the folder's lock
(:mod:`streamfuse.output_lock`, inside the folder) from its checks to its end, so a second replay given the same
folder is refused instead of mixing its frames into the first one's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from streamfuse.atomic_write import whole_png, write_png
from streamfuse.errors import io_reason
from streamfuse.eval_report import check_outputs
from streamfuse.output_lock import output_lock

__all__ = ["FramesDir", "STAGING"]

STAGING = ".partial"
_OWNER = "output"  # in the staging folder: the absolute path of the fused video whose frames it holds
_FRAME = "[0-9][0-9][0-9][0-9][0-9][0-9].png"


class FramesDir:
    """One replay's frames folder; :meth:`held` makes and locks it, :meth:`start` checks and prepares it."""

    def __init__(self, folder: Path, out: Path) -> None:
        self.folder, self.staging = folder, folder / STAGING
        self._out = str(out.absolute())

    @classmethod
    @contextlib.contextmanager
    def held(cls, folder: str | os.PathLike, out: Path) -> Iterator[FramesDir | None]:
        """The frames folder of output ``out`` (None when ``folder`` is ''), made with its missing parents and
        locked for the block. Folders made here that the block leaves empty are removed when it fails.

        Raises:
            ValueError: ``folder`` is a file, or cannot be made or written (one line).
            FileExistsError: another run holds it.
        """
        if not folder:
            yield None
            return
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"replay.frames_dir {folder} is a file, not a folder")
        check_outputs({}, {"replay.frames_dir": folder})  # a file in its way, a folder this user cannot write
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            for path in reversed(missing):
                path.mkdir(exist_ok=True)
        except OSError as exc:  # a name too long, a folder the OS makes no folders in (/proc): said as the others are
            _remove_empty(missing)
            raise ValueError(f"replay.frames_dir {folder} cannot be made: {io_reason(exc)}") from None
        try:
            with output_lock(folder, inside=True, label=f"replay.frames_dir {folder}"):
                yield cls(folder, out)
        except BaseException:
            _remove_empty(missing)
            raise

    def owner(self) -> str:
        """The fused video whose frames are staged here ('' when none are)."""
        try:
            return os.fsdecode((self.staging / _OWNER).read_bytes()).strip()  # a name's bytes as they are
        except (FileNotFoundError, NotADirectoryError):
            return ""

    def ours(self) -> bool:
        """Whether the staged frames are this output's."""
        return self.owner() == self._out

    def start(self, continuing: bool) -> None:
        """Refuse a folder that holds an earlier run's frames, or the staged frames of another output's interrupted
        replay; keep this output's staged frames when ``continuing`` its interrupted run, else start them afresh.

        Raises:
            ValueError, FileExistsError: one line naming the folder and how to go on.
        """
        if any(self.folder.glob(_FRAME)):
            raise ValueError(f"replay.frames_dir {self.folder} already holds the frames of an earlier run; choose an "
                             f"empty folder")
        owner = self.owner()
        if owner and owner != self._out:
            raise FileExistsError(f"replay.frames_dir {self.folder} holds the frames of an interrupted replay of "
                                  f"{owner}; --resume that one first, or delete {self.staging}")
        if self.staging.exists() and not (continuing and owner):
            shutil.rmtree(self.staging)

    def write(self, index: int, image: np.ndarray, resumed: bool) -> None:
        """Stage frame ``index``; a resumed run keeps the lossless PNG already there (unless cut short)."""
        if not self.staging.exists():  # made with the first frame: a run stopped before it leaves none
            self.staging.mkdir()
            (self.staging / _OWNER).write_bytes(os.fsencode(self._out) + b"\n")
        png = self.staging / f"{index:06d}.png"
        if not (resumed and whole_png(png)):
            write_png(png, image)  # through a temporary name: a kill leaves no PNG cut short

    def holds(self, count: int) -> bool:
        """Whether frames 0 .. ``count - 1`` are all staged whole (a run that wrote every frame)."""
        return self.ours() and all(whole_png(self.staging / f"{i:06d}.png") for i in range(count))

    def publish(self) -> None:
        """Move the staged frames into the folder (the replay is complete) and remove the staging folder."""
        for png in sorted(self.staging.glob(_FRAME)):
            png.replace(self.folder / png.name)
        shutil.rmtree(self.staging, ignore_errors=True)  # none: a replay with no frame ends with an error first

    def kept(self) -> int:
        """After a stop: how many frames stay staged for ``--resume``; the staging folder goes when none do."""
        count = sum(1 for _ in self.staging.glob(_FRAME))
        if not count:
            shutil.rmtree(self.staging, ignore_errors=True)
        return count


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (innermost first) that hold nothing."""
    for path in folders:
        with contextlib.suppress(OSError):  # not empty: frames kept for a resume, or a user's files
            path.rmdir()
