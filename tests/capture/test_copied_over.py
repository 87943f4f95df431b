"""A looped file only touched while it plays (its time changed, not its bytes) plays on; one copied over with another
of the same size (``cp``: the same inode and size) is still told, and its new bytes played once they have settled;
one renamed over it (``mv``) is another file, and the open one plays on whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from test_video_sources import write_noise

from streamfuse.capture.copied_over import settle
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


def test_a_looped_file_renamed_over_plays_its_pass_whole_then_the_new_file(tmp_path: Path) -> None:
    clip, new = tmp_path / "clip.mkv", tmp_path / "new.mkv"
    old, fresh = write_noise(clip, 30, seed=1), write_noise(new, 20, seed=2)
    played, said, skipped = _play(clip, lambda: new.rename(clip))  # as mv: another file, the open one left whole
    assert (said, skipped) == ([], 0)
    assert all(np.array_equal(image, old[i]) for i, image in enumerate(played[:30]))
    assert all(np.array_equal(image, fresh[i % 20]) for i, image in enumerate(played[30:]))


def test_a_looped_file_copied_over_before_its_first_frame_counts_its_whole_pass_lost(tmp_path: Path) -> None:
    clip, new = tmp_path / "clip.mkv", tmp_path / "new.mkv"
    write_noise(clip, 30, seed=1)
    fresh = write_noise(new, 20, seed=2)
    with open_source("vis", SourceConfig(kind="file", path=str(clip), realtime=False, loop=True)) as src:
        src.warn = lambda line: None
        shutil.copyfile(new, clip)
        frames = [src.read() for _ in range(20)]
    assert src.skipped == 30  # counted into the run's telemetry (capture_skipped)
    assert all(np.array_equal(f.image, fresh[i]) for i, f in enumerate(frames))
    assert frames[0].t_capture_ns == 30 * 40_000_000  # where the lost pass would have ended


def test_a_copy_still_being_written_is_waited_for_until_it_stops_changing(tmp_path: Path) -> None:
    # the new file was opened while cp still wrote it: cut short, its frames after the cut lost
    path, waits = tmp_path / "clip.mkv", []
    path.write_bytes(b"x")

    def wait(s: float) -> bool:  # each wait of the first three sees the copy write on
        waits.append(s)
        if len(waits) <= 3:
            with open(path, "ab") as f:
                f.write(b"x" * 1000)
        return False

    settle(str(path), wait)
    assert path.stat().st_size == 3001 and len(waits) == 4  # the wait after the last write saw it unchanged


def test_a_stop_while_a_copy_settles_ends_the_wait_at_once(tmp_path: Path) -> None:
    path, waits = tmp_path / "clip.mkv", []
    shutil.copyfile(__file__, path)
    settle(str(path), lambda s: waits.append(s) or True)
    assert len(waits) == 1
