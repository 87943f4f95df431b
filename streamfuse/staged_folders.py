"""Output folders that receive a run's files only when it ends well: an evaluation's table and montage, its saved
fused images. A failed or interrupted run then leaves none of them (no partial folder that the next run would refuse
as holding images, nor an empty one it made), and two runs given one folder never mix: the second is refused while
the first holds the folder's lock (:mod:`streamfuse.output_lock`). The lock and the staging folder lie inside the
output folder, so that one whose parent this user cannot write (a mounted volume), or on another filesystem than its
parent, works as before."""

from __future__ import annotations

import contextlib
import errno
import tempfile
from collections.abc import Iterator
from pathlib import Path

from streamfuse.errors import io_reason
from streamfuse.output_lock import output_lock

__all__ = ["staged_folders"]


@contextlib.contextmanager
def staged_folders(finals: list[Path]) -> Iterator[list[Path]]:
    """Make each of ``finals`` (and its missing parents), hold its lock and yield an empty staging folder inside it
    (hidden); when the block ends without an error, move every file written there into its final folder (a file of
    the same name there is replaced). On an error the staging folders go, and so does every folder made here that is
    left empty. ``FileExistsError`` (one line) while another run holds one of the folders."""
    made: list[Path] = []
    try:
        with contextlib.ExitStack() as stack:
            staging = []
            for final in finals:
                _make(final, made)
                stack.enter_context(output_lock(final, inside=True))
                staging.append(Path(stack.enter_context(tempfile.TemporaryDirectory(dir=final, prefix=".staging."))))
            yield staging
            for final, folder in zip(finals, staging):
                for path in sorted(folder.iterdir()):
                    path.replace(final / path.name)
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # not empty: another run's or a user's files went there meanwhile
                folder.rmdir()
        raise


def _make(folder: Path, made: list[Path]) -> None:
    """Make ``folder`` and its missing parents, adding each to ``made`` (outermost first); OSError (one line) naming
    the folder that cannot be made."""
    for p in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
        try:
            p.mkdir(exist_ok=True)
        except OSError as exc:  # ENOENT in a folder that exists: a filesystem that makes no files (/proc)
            why = "it takes no new files" if exc.errno == errno.ENOENT and p.parent.is_dir() else io_reason(exc)
            raise OSError(f"cannot make output folder {p}: {why}") from None
        made.append(p)
