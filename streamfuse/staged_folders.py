"""Output folders that receive a run's files only when it ends well: an evaluation's table and montage, its saved
fused images. A failed or interrupted run then leaves none of them (no partial folder that the next run would refuse
as holding images, nor an empty one it made), and two runs given one folder never mix: the second is refused while
the first holds the folder's lock (:mod:`streamfuse.output_lock`)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from streamfuse.output_lock import output_lock

__all__ = ["staged_folders"]


@contextlib.contextmanager
def staged_folders(finals: list[Path]) -> Iterator[list[Path]]:
    """Hold each of ``finals``' locks and yield an empty staging folder for each (beside it, hidden); when the block
    ends without an error, move every file written there into its final folder (made if needed; a file of the same
    name there is replaced). On an error the staging folders, and any parent folder made for the locks that is left
    empty, are removed. ``FileExistsError`` (one line) while another run holds one of the folders."""
    made = _make_parents(finals)
    try:
        with contextlib.ExitStack() as stack:
            staging = []
            for final in finals:
                stack.enter_context(output_lock(final))
                staging.append(Path(stack.enter_context(tempfile.TemporaryDirectory(dir=final.parent,
                                                                                    prefix=f".{final.name}."))))
            yield staging
            for final, folder in zip(finals, staging):
                final.mkdir(exist_ok=True)
                for path in sorted(folder.iterdir()):
                    path.replace(final / path.name)
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # not empty: another run's or a user's files went there meanwhile
                folder.rmdir()
        raise


def _make_parents(finals: list[Path]) -> list[Path]:
    """Make the parent folders of ``finals`` that are missing; returns those made, outermost first."""
    made: list[Path] = []
    for final in finals:
        missing = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir(exist_ok=True)
            made.append(folder)
    return made
