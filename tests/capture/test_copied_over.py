"""A looped file only touched while it plays (its time changed, not its bytes) plays on; one copied over with another
of the same size (``cp``: the same inode and size) is still told."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from test_video_sources import write_noise

from streamfuse.capture.sources import SourceConfig, open_source


def _play(clip: Path, change) -> tuple[list[np.ndarray], list[str], int]:
    """The images of 10 frames of looped ``clip``, ``change()`` done, then 60 more; the lines said; frames skipped."""
    src = open_source("vis", SourceConfig(kind="file", path=str(clip), realtime=False, loop=True))
    said: list[str] = []
    src.warn = said.append
    with src:
        images = [src.read().image for _ in range(10)]
        change()
        images += [src.read().image for _ in range(60)]
    return images, said, src.skipped


def test_a_looped_file_only_touched_plays_on(tmp_path: Path) -> None:
    # taken as copied over: the rest of its pass skipped and counted lost
    clip = tmp_path / "clip.avi"
    images = write_noise(clip, 40, seed=1, codec="rawvideo")
    st = os.stat(clip)
    played, said, skipped = _play(clip, lambda: os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9)))
    assert (said, skipped) == ([], 0)
    assert all(np.array_equal(image, images[i % 40]) for i, image in enumerate(played))


def test_a_looped_file_copied_over_with_one_of_its_size_is_told(tmp_path: Path) -> None:
    clip, new = tmp_path / "clip.avi", tmp_path / "new.avi"
    write_noise(clip, 40, seed=1, codec="rawvideo")
    fresh = write_noise(new, 40, seed=2, codec="rawvideo")
    assert os.path.getsize(new) == os.path.getsize(clip)
    played, said, skipped = _play(clip, lambda: shutil.copyfile(new, clip))  # as cp: the same inode, rewritten
    assert said == [f"vis: {clip}: the file changed while it played (copied over?) after frame 10 (t=0.360 s): its "
                    f"last 30 frames are lost; its next pass plays the new file"] and skipped == 30
    assert all(np.array_equal(image, fresh[i % 40]) for i, image in enumerate(played[10:]))
