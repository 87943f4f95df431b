"""A looped file only touched while it plays (its time changed, not its bytes) plays on; one copied over with another
of the same size (``cp``: the same inode and size) is still told, and its new bytes played once they have settled;
one renamed over it (``mv``) is another file, and the open one plays on whole."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
from helpers_clock import SleptClock
from test_video_sources import write_noise

from streamfuse.capture import copied_over
from streamfuse.capture.copied_over import _BLOCK, _SAMPLES, file_mark, settle
from streamfuse.capture.sources import SourceConfig, SourceError, open_source


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


def _past_status_time(folder: Path, ctime_ns: int) -> None:
    """Wait until a file's status change time (its ctime, set from a clock that ticks every few ms) would pass
    ``ctime_ns``, so that a change made next shows in it."""
    probe, deadline = folder / "probe", time.monotonic() + 10
    while time.monotonic() < deadline:
        probe.write_bytes(b"")
        if os.stat(probe).st_ctime_ns > ctime_ns:
            return
    raise AssertionError("the status change time did not move for 10 s")


def test_a_looped_file_only_touched_plays_on(tmp_path: Path) -> None:
    # taken as copied over: the rest of its pass skipped and counted lost
    clip = tmp_path / "clip.avi"
    images = write_noise(clip, 40, seed=1, codec="rawvideo")
    st = os.stat(clip)
    played, said, skipped = _play(clip, lambda: os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9)))
    assert (said, skipped) == ([], 0)
    assert all(np.array_equal(image, images[i % 40]) for i, image in enumerate(played))


@pytest.mark.parametrize("copy", ["cp", "cp -p"])
def test_a_looped_file_copied_over_with_one_of_its_size_is_told(tmp_path: Path, copy: str) -> None:
    # `cp -p`, the new file given the old one's time: not told, the rest of the pass played from the new bytes
    clip, new = tmp_path / "clip.avi", tmp_path / "new.avi"
    write_noise(clip, 40, seed=1, codec="rawvideo")
    fresh = write_noise(new, 40, seed=2, codec="rawvideo")
    assert os.path.getsize(new) == os.path.getsize(clip)
    st = os.stat(clip)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    _past_status_time(tmp_path, st.st_ctime_ns)

    def copied() -> None:  # as cp: the same inode, rewritten; as cp -p: its time then set to the new file's
        (shutil.copyfile if copy == "cp" else shutil.copy2)(new, clip)
        assert os.stat(clip).st_ino == st.st_ino and (os.stat(clip).st_mtime_ns == st.st_mtime_ns) == (copy != "cp")

    played, said, skipped = _play(clip, copied)
    assert said == [f"vis: {clip}: the file changed while it played (copied over?) after frame 10 (t=0.360 s): its "
                    f"last 30 frames are lost; its next pass plays the new file"] and skipped == 30
    assert all(np.array_equal(image, fresh[i % 40]) for i, image in enumerate(played[10:]))


@pytest.mark.parametrize("settled", ["whole", "corrupt"])
def test_a_looped_file_rewritten_in_place_between_its_sampled_blocks_plays_on_where_it_settles_whole(
        tmp_path: Path, monkeypatch, settled):
    # its size and sampled blocks the same, it was taken as only touched: the source ended on a "corrupt video" line;
    # left corrupt, it cannot be told from a corrupt file only touched, and ends on that line as such a file does
    import streamfuse.capture.copied_over

    clip = tmp_path / "clip.mkv"
    images, whole = write_noise(clip, 120, seed=1), clip.read_bytes()
    sampled = [i * (len(whole) - _BLOCK) // (_SAMPLES - 1) for i in range(_SAMPLES)]
    start, end = sampled[51] + _BLOCK, sampled[52]  # late in the file, in frames not read yet, between two blocks
    mark = file_mark(str(clip))

    def rewrite(data: bytes) -> None:  # in place, as a writer that keeps the inode and size
        with open(clip, "r+b") as f:
            f.write(data)
        st = os.stat(clip)
        os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    def rewritten_whole(path, wait) -> None:  # the writer done while it settles: the bytes decode again
        if settled == "whole":
            rewrite(whole)
        settle(path, wait)

    monkeypatch.setattr(streamfuse.capture.copied_over, "settle", rewritten_whole)
    src = open_source("vis", SourceConfig(kind="file", path=str(clip), realtime=False, loop=True))
    said: list[str] = []
    src.warn = said.append
    played = []
    corrupt = pytest.raises(SourceError, match="truncated or corrupt video")
    with src, corrupt if settled == "corrupt" else contextlib.nullcontext():
        played += [src.read() for _ in range(10)]
        rewrite(whole[:start] + bytes(b ^ 0xFF for b in whole[start:end]) + whole[end:])
        assert file_mark(str(clip))[2:] != mark[2:] and file_mark(str(clip))[3] == mark[3]  # its blocks the same
        while len(played) < 300:
            played.append(src.read())
    if settled == "whole":
        assert len(said) == 1 and said[0].startswith(f"vis: {clip}: the file changed while it played (copied over?) ")
        assert 0 < src.skipped < 30 and len(played) == 300
    else:
        assert said == [] and src.skipped == 0 and 90 < len(played) < 120
    expected = images[:120 - src.skipped] + images * 3  # its first pass up to the loss, then the file again
    assert all(np.array_equal(f.image, image) for f, image in zip(played, expected))


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
    assert path.stat().st_size == 3001 and waits == [0.5] * 4  # the wait after the last write saw it unchanged


def test_a_stop_while_a_copy_settles_ends_the_wait_at_once(tmp_path: Path) -> None:
    path, waits = tmp_path / "clip.mkv", []
    shutil.copyfile(__file__, path)
    settle(str(path), lambda s: waits.append(s) or True)
    assert len(waits) == 1


def test_a_copy_that_never_stops_changing_is_waited_for_30_s_then_opened(tmp_path: Path, monkeypatch) -> None:
    path, clock = tmp_path / "clip.mkv", SleptClock()
    path.write_bytes(b"x")
    monkeypatch.setattr(copied_over, "time", clock)

    def wait(s: float) -> bool:
        assert clock.monotonic() < 60, "still waiting after a minute"
        clock.sleep(s)
        with open(path, "ab") as f:
            f.write(b"x")
        return False

    settle(str(path), wait)
    assert clock.monotonic() == 30.0


def test_a_file_gone_while_it_settles_is_waited_for_until_it_is_back_and_unchanged(tmp_path: Path) -> None:
    path, waits = tmp_path / "clip.mkv", []

    def wait(s: float) -> bool:  # gone for the first wait: removed before its copy, written whole during the second
        waits.append(s)
        if len(waits) == 2:
            path.write_bytes(b"x" * 1000)
        return False

    settle(str(path), wait)
    assert len(waits) == 3


def test_a_looped_file_copied_over_plays_the_new_file_once_the_copy_is_whole(tmp_path: Path) -> None:
    # told while cp still writes it: opened then, its frames after the part written were lost
    clip, new = tmp_path / "clip.avi", tmp_path / "new.avi"
    write_noise(clip, 40, seed=1, codec="rawvideo")
    fresh = write_noise(new, 40, seed=2, codec="rawvideo")
    data, waits = new.read_bytes(), []

    class CopyGoesOn:  # the producer's stop flag, its waits taken while the copy writes its second half
        def wait(self, s: float) -> bool:
            waits.append(s)
            if len(waits) == 1:
                with open(clip, "r+b") as f:
                    f.seek(len(data) // 2)
                    f.write(data[len(data) // 2:])
            return False

    def half_copied() -> None:
        with open(clip, "r+b") as f:  # as cp: the same inode, rewritten from its start
            f.write(data[:len(data) // 2])

    src = open_source("vis", SourceConfig(kind="file", path=str(clip), realtime=False, loop=True))
    src.warn, src.stop_event = (lambda line: None), CopyGoesOn()
    with src:
        played = [src.read().image for _ in range(10)]
        half_copied()
        played += [src.read().image for _ in range(60)]
    assert all(np.array_equal(image, fresh[i % 40]) for i, image in enumerate(played[10:]))
    assert waits == [0.5, 0.5] and src.skipped == 30


def _write_mpeg4(path: Path, n: int, seed: int) -> None:
    """n frames of 160x120 noise (``seed``) in MPEG-4 Part 2, a codec whose decoder fails on damaged bytes itself
    (FFV1's slice checksums fail before its decoder does)."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 160, 120, "yuv420p", 10_000_000
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (120, 160, 3), np.uint8), format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _damaged_and_touched(clip: Path, at: int, size: int) -> tuple[list[str], int]:
    """``size`` bytes of ``clip`` at ``at`` flipped, its time changed after its first frame as it loops: the "copied
    over?" lines said, and the frames played after the change until its source ended on its error (as it must)."""
    data = bytearray(clip.read_bytes())
    data[at:at + size] = bytes(b ^ 0xFF for b in data[at:at + size])
    clip.write_bytes(bytes(data))
    src = open_source("vis", SourceConfig(kind="file", path=str(clip), realtime=False, loop=True))
    said: list[str] = []
    src.warn = said.append
    played = 0
    with src, pytest.raises(SourceError, match="decoding stopped after frame"):
        src.read()
        st = os.stat(clip)
        os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        while played < 200:
            src.read()
            played += 1
    return [line for line in said if "copied over?" in line], played


# its sampled blocks cover the file whole (up to 256 KiB), or not
@pytest.mark.parametrize(("codec", "frames"), [("ffv1", 20), ("ffv1", 60), ("mpeg4", 30)])
def test_a_corrupt_looped_file_only_touched_ends_in_its_corrupt_video_line(tmp_path: Path, codec, frames) -> None:
    # its time changed, its size and sampled blocks not: the decoder's error was taken for a copy's, said as "copied
    # over?", and the file played once more before ending; now the file, settled, holds the packet that failed
    clip = tmp_path / "clip.mkv"
    (_write_mpeg4 if codec == "mpeg4" else write_noise)(clip, frames, seed=1)
    size = clip.stat().st_size
    assert (size <= _SAMPLES * _BLOCK) == (frames == 20)  # every byte in a sampled block, or not
    copied, played = _damaged_and_touched(clip, size * 3 // 4, 64)
    assert copied == [] and played < frames


@pytest.mark.parametrize("ext", [".avi", ".nut"])
def test_a_looped_file_only_touched_with_a_damaged_frame_header_ends_in_its_own_error(tmp_path: Path, ext) -> None:
    # no packet's decoder failed (AVI: the demuxer skips the frame, and the pass ends a frame short of the length
    # announced; NUT: a packet of the wrong size, which the decoder refuses as an invalid argument), and the error
    # after the touch was taken for a copy's, said as "copied over?", the file played once more before ending
    clip = tmp_path / f"clip{ext}"
    write_noise(clip, 60, seed=1, codec="rawvideo")
    assert clip.stat().st_size > _SAMPLES * _BLOCK
    with av.open(str(clip)) as container:
        at = [p.pos for p in container.demux(container.streams.video[0]) if p.size][30] - 4  # its header's last bytes
    copied, played = _damaged_and_touched(clip, at, 4)
    assert copied == [] and played < 60
