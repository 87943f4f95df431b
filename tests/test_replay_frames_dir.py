"""A replay's frames folder (``replay.frames_dir``): the PNGs of a run that stops stay staged (hidden) for its resume,
never in a folder that looks complete; a second run given the folder is refused, whether it runs at the same time,
resumes nothing or is another output's; the frames move in only with the complete video."""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_replay import _StopAt, counted_encodes, full_disk_remux, interrupted_replay, make_cfg, write_video

import streamfuse.atomic_write
import streamfuse.processor
from streamfuse.atomic_write import partial_path
from streamfuse.replay import ReplayError, run_replay
from streamfuse.video import VideoWriter, decode_frames

pytestmark = pytest.mark.timeout(120)

N = 12


@pytest.fixture
def pair(tmp_path):
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, N, 25, grey=True)
    write_video(vis, N, 25)
    return ir, vis


def _cfg(frames):
    return make_cfg(replay={"codec": "ffv1", "frames_dir": str(frames)})


def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def test_a_stopped_run_stages_its_frames_and_the_resume_moves_them_in(tmp_path, pair):
    """A replay stopped at frame 7 left 000000..000006.png in the folder, which looked like a complete run's."""
    ir, vis = pair
    run_replay(_cfg(tmp_path / "ref"), ir_path=ir, vis_path=vis, out_path=tmp_path / "ref.mkv")
    frames, out = tmp_path / "new" / "frames", tmp_path / "o.mkv"
    err = interrupted_replay(_cfg(frames), ir, vis, out, stop=8)
    assert f"; 7 of its frames staged in {frames / '.partial'}" in str(err) and "\n" not in str(err)
    assert _pngs(frames) == [] and _pngs(frames / ".partial") == [f"{i:06d}.png" for i in range(7)]
    summary = run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 7
    assert sorted(p.name for p in frames.iterdir()) == _pngs(tmp_path / "ref") == [f"{i:06d}.png" for i in range(N)]
    for name in _pngs(frames):
        np.testing.assert_array_equal(cv2.imread(str(frames / name)), cv2.imread(str(tmp_path / "ref" / name)))


def test_a_run_stopped_before_its_first_frame_leaves_no_folder_it_made(tmp_path, pair):
    ir, vis = pair
    err = interrupted_replay(_cfg(tmp_path / "new" / "frames"), ir, vis, tmp_path / "o.mkv", stop=1)
    assert "no output written" in str(err) and "staged" not in str(err)
    assert not (tmp_path / "new").exists()


def test_resume_with_nothing_to_resume_is_refused_over_an_earlier_runs_frames(tmp_path, pair):
    """``--resume`` skipped the folder's check, and the run wrote its PNGs over another run's."""
    ir, vis = pair
    frames = tmp_path / "frames"
    run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=tmp_path / "a.mkv")
    before = {p.name: p.read_bytes() for p in frames.glob("*.png")}
    with pytest.raises(ValueError, match=f"^replay.frames_dir {re.escape(str(frames))} already holds the frames of "
                                         f"an earlier run; choose an empty folder$"):
        run_replay(make_cfg(replay={"frames_dir": str(frames)}), ir_path=ir, vis_path=vis,
                   out_path=tmp_path / "b.mkv", resume=True)
    assert {p.name: p.read_bytes() for p in frames.glob("*.png")} == before
    assert not list(tmp_path.glob("*b.mkv*"))


def test_a_second_run_into_the_folder_while_the_first_runs_is_refused(tmp_path, pair):
    """Two replays given one frames folder both ended "complete", their frames mixed in it."""
    ir, vis = pair
    frames, second = tmp_path / "frames", []

    def run_second():
        with pytest.raises(FileExistsError) as err:
            run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=tmp_path / "b.mkv")
        second.append(str(err.value))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(streamfuse.processor, "config_fuser", lambda *a: _StopAt(5, then=run_second))
        assert run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=tmp_path / "a.mkv").complete
    assert len(second) == 1 and second[0].startswith(f"replay.frames_dir {frames} is being written by another run (")
    assert _pngs(frames) == [f"{i:06d}.png" for i in range(N)] and not list(tmp_path.glob("*b.mkv*"))


def test_another_outputs_staged_frames_are_refused_until_it_is_resumed(tmp_path, pair):
    ir, vis = pair
    frames = tmp_path / "frames"
    interrupted_replay(_cfg(frames), ir, vis, tmp_path / "a.mkv", stop=5)
    with pytest.raises(FileExistsError, match=f"holds the frames of an interrupted replay of {tmp_path / 'a.mkv'}; "
                                              f"--resume that one first, or delete {frames / '.partial'}$"):
        run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=tmp_path / "b.mkv")
    assert _pngs(frames / ".partial") == [f"{i:06d}.png" for i in range(4)]
    assert run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=tmp_path / "a.mkv", resume=True).complete
    assert _pngs(frames) == [f"{i:06d}.png" for i in range(N)] and not (frames / ".partial").exists()


def test_a_complete_output_given_the_folder_leaves_another_outputs_staged_frames_for_its_resume(tmp_path, pair):
    """A resume that finds its output already complete has nothing to move in: the frames staged in the folder by
    another output's interrupted replay stay staged, and that one's resume finishes them."""
    ir, vis = pair
    frames = tmp_path / "frames"
    assert run_replay(_cfg(tmp_path / "b_frames"), ir_path=ir, vis_path=vis, out_path=tmp_path / "b.mkv").complete
    interrupted_replay(_cfg(frames), ir, vis, tmp_path / "a.mkv", stop=5)
    assert run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=tmp_path / "b.mkv", resume=True).complete
    assert _pngs(frames) == [] and _pngs(frames / ".partial") == [f"{i:06d}.png" for i in range(4)]
    assert run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=tmp_path / "a.mkv", resume=True).complete
    assert _pngs(frames) == [f"{i:06d}.png" for i in range(N)] and not (frames / ".partial").exists()


def test_frames_left_staged_beside_a_complete_video_are_moved_in_by_the_resume(tmp_path, pair):
    """A run killed between its video's rename and its frames' move: ``--resume`` finds the video complete and
    finishes the frames."""
    ir, vis = pair
    frames, out = tmp_path / "frames", tmp_path / "a.mkv"
    run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=out)
    (frames / ".partial").mkdir()
    (frames / ".partial" / "output").write_text(f"{out}\n")
    for png in frames.glob("*.png"):
        png.replace(frames / ".partial" / png.name)
    assert run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=out, resume=True).complete
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(N)]


def test_starting_over_drops_the_staged_frames_of_the_same_output(tmp_path, pair):
    """A caller's ``resume=False`` (a batch retrying a lost worker's pair) starts the frames over with the video."""
    ir, vis = pair
    frames, out = tmp_path / "frames", tmp_path / "a.mkv"
    interrupted_replay(_cfg(frames), ir, vis, out, stop=5)
    (frames / ".partial" / "000010.png").write_bytes(b"a frame the new run never writes")
    assert run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=out, resume=False).complete
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(N)]
    assert cv2.imread(str(frames / "000010.png")) is not None


def test_a_resume_keeps_the_lossless_pngs_of_the_frames_it_takes_over(tmp_path, pair):
    """The frames a resume takes over come back decoded from a lossy video: their PNGs stay the first run's."""
    ir, vis = pair
    frames, out = tmp_path / "frames", tmp_path / "o.mkv"
    cfg = make_cfg(replay={"codec": "h264", "crf": 35, "frames_dir": str(frames)})  # lossy on purpose
    interrupted_replay(cfg, ir, vis, out, stop=8)
    staged = {p.name: cv2.imread(str(p)) for p in (frames / ".partial").glob("*.png")}
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == len(staged) == 7
    for name, image in staged.items():
        np.testing.assert_array_equal(cv2.imread(str(frames / name)), image)


def test_a_staging_folder_left_without_its_output_named_is_started_afresh_by_the_resume(tmp_path, pair):
    """A kill between making ``.partial`` and naming the output in it: a resume that kept that folder never named the
    output in it either, so the frames it staged before stopping again belonged to no run."""
    ir, vis = pair
    frames, out = tmp_path / "frames", tmp_path / "o.mkv"
    interrupted_replay(_cfg(frames), ir, vis, out, stop=5)
    shutil.rmtree(frames / ".partial")
    (frames / ".partial").mkdir()
    resuming = make_cfg(replay={"codec": "ffv1", "frames_dir": str(frames), "resume": True})
    err = interrupted_replay(resuming, ir, vis, out, stop=3)
    assert err.summary.reused == 4 and _pngs(frames / ".partial") == [f"{i:06d}.png" for i in range(6)]
    assert (frames / ".partial" / "output").read_text() == f"{out.absolute()}\n"


def test_a_resume_with_no_video_to_continue_starts_its_staged_frames_over_too(tmp_path, pair):
    """The interrupted run's video deleted to start over, ``--resume`` left on: its frames start over with the video,
    and a staged frame no new run writes is not moved in with them."""
    ir, vis = pair
    frames, out = tmp_path / "frames", tmp_path / "o.mkv"
    interrupted_replay(_cfg(frames), ir, vis, out, stop=5)
    partial_path(out).unlink()
    (frames / ".partial" / f"{N:06d}.png").write_bytes(b"a frame the new run never writes")
    resuming = make_cfg(replay={"codec": "ffv1", "frames_dir": str(frames), "resume": True})
    assert run_replay(resuming, ir_path=ir, vis_path=vis, out_path=out).complete
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(N)]


def test_a_frames_dir_that_is_a_file_or_lies_under_one_is_refused_before_any_work(tmp_path, pair):
    """A file where the folder goes, or where one of its parents goes, is one line naming it; no video is begun."""
    ir, vis = pair
    taken = tmp_path / "taken"
    taken.write_text("a user's file")
    with pytest.raises(ValueError, match=f"^replay.frames_dir {re.escape(str(taken))} is a file, not a folder$"):
        run_replay(_cfg(taken), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv")
    under = taken / "frames"
    with pytest.raises(ValueError, match=f"^replay.frames_dir {re.escape(str(under))} cannot be written: "
                                         f"{re.escape(str(taken))} is a file$"):
        run_replay(_cfg(under), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv")
    assert taken.read_text() == "a user's file" and not list(tmp_path.glob("*o.mkv*"))


def test_ctrl_c_while_a_resume_checks_its_partial_output_leaves_no_folder_it_made(tmp_path, pair, monkeypatch):
    """Ctrl-C before the replay's loop (a long partial output being read for its resume) removes the frames folders
    it made, as a stop in the loop does."""
    from streamfuse.replay import loop

    ir, vis = pair

    def pressed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.TakeOver, "open", pressed)
    with pytest.raises(KeyboardInterrupt):
        run_replay(_cfg(tmp_path / "new" / "frames"), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv",
                   resume=True)
    assert not (tmp_path / "new").exists()


def test_staged_frames_given_as_an_input_of_a_replay_into_their_own_frames_folder_are_refused_and_kept(tmp_path,
                                                                                                   pair):
    """A stopped run's staged PNGs replayed as the visible input, with the folder holding them as the frames folder
    (whose staging a replay deletes when it starts afresh): an input inside the frames folder is refused before any
    work, the staged frames left whole."""
    ir, vis = pair
    frames = tmp_path / "frames"
    interrupted_replay(_cfg(frames), ir, vis, tmp_path / "o.mkv", stop=8)
    staged = _pngs(frames / ".partial")
    with pytest.raises(ValueError, match=f"^replay.frames_dir {re.escape(str(frames))} would overwrite the visible "
                                         f"input {re.escape(str(frames / '.partial'))}; choose another folder$"):
        run_replay(_cfg(frames), ir_path=ir, vis_path=frames / ".partial",
                   out_path=tmp_path / "p.mkv")
    assert _pngs(frames / ".partial") == staged and len(staged) == 7


def test_the_resume_of_a_run_named_by_a_relative_out_continues_its_staged_frames_given_the_absolute_one(
        tmp_path, pair, monkeypatch):
    """The staged frames record their video by its absolute path: a resume spelling --out otherwise (from another
    folder, or absolute) is the same output, not another one's interrupted replay."""
    ir, vis = pair
    monkeypatch.chdir(tmp_path)
    interrupted_replay(_cfg("frames"), ir, vis, "o.mkv", stop=8)
    summary = run_replay(_cfg(tmp_path / "frames"), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv", resume=True)
    assert summary.complete and summary.reused == 7 and len(_pngs(tmp_path / "frames")) == N


def test_an_output_named_by_bytes_that_are_not_utf8_stages_its_frames_and_resumes(tmp_path, pair):
    # the staging folder names its output in a file, written as text: such a name stopped the replay at its first
    # frame ("'utf-8' codec can't encode characters ...: surrogates not allowed"; any non-ASCII name under LC_ALL=C)
    ir, vis = pair
    frames, out = tmp_path / "fr\udcff" / "frames", tmp_path / "o\udcff\udcfe.mkv"
    err = interrupted_replay(_cfg(frames), ir, vis, out, stop=4)
    assert "; 3 of its frames staged in" in str(err)
    summary = run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 3 and _pngs(frames) == [f"{i:06d}.png" for i in range(N)]


def _cut_at_the_final_remux(monkeypatch: pytest.MonkeyPatch, ir: Path, vis: Path, frames: Path, out: Path) -> Callable:
    """A replay to ``out`` and ``frames`` that a full disk stopped in its final remux, every frame encoded and staged;
    the disk stays full (returns the real remux, to put back)."""
    real_remux = VideoWriter._remux
    monkeypatch.setattr(VideoWriter, "_remux", full_disk_remux)
    with pytest.raises(ReplayError, match=rf"No space left on device; {N} frames kept in .*; {N} of its frames staged"):
        run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=out)
    return real_remux


def test_a_resume_after_a_full_disk_cut_the_final_remux_remuxes_the_frames_and_moves_in_the_pngs(tmp_path, pair,
                                                                                                monkeypatch):
    # with a frames folder, every frame was decoded from the partial file and encoded again, as a plain --out's was
    ir, vis = pair
    frames, out = tmp_path / "frames", tmp_path / "o.mkv"
    real_remux = _cut_at_the_final_remux(monkeypatch, ir, vis, frames, out)
    encoded = counted_encodes(monkeypatch)
    with pytest.raises(ReplayError, match=rf"No space left on device; {N} frames kept in "):
        run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=out, resume=True)  # the disk still full
    assert _pngs(frames) == [] and len(_pngs(frames / ".partial")) == N
    kept = list(decode_frames(partial_path(out)))
    monkeypatch.setattr(VideoWriter, "_remux", real_remux)
    summary = run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.written == N and not encoded
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(kept, decode_frames(out), strict=True))
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(N)]
    for i, (_, image) in enumerate(kept):
        np.testing.assert_array_equal(cv2.imread(str(frames / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED), image)


def test_a_resume_after_a_full_disk_cut_the_final_remux_stages_again_a_frame_gone_from_the_staging(tmp_path, pair,
                                                                                                  monkeypatch):
    # the remux of the frames already encoded is taken only where every frame is staged whole: one gone from the
    # staging meanwhile would be missing from the frames folder of a replay said complete
    ir, vis = pair
    frames, out = tmp_path / "frames", tmp_path / "o.mkv"
    real_remux = _cut_at_the_final_remux(monkeypatch, ir, vis, frames, out)
    (frames / ".partial" / "000002.png").unlink()
    monkeypatch.setattr(VideoWriter, "_remux", real_remux)
    summary = run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.written == N
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(N)]
    kept = dict(enumerate(image for _, image in decode_frames(out)))
    np.testing.assert_array_equal(cv2.imread(str(frames / "000002.png"), cv2.IMREAD_UNCHANGED), kept[2])


def test_a_frames_folder_that_cannot_be_made_is_one_line_and_leaves_no_folder(tmp_path, pair):
    # a name over the system's 255 bytes (or a folder the OS makes no folders in, /proc) failed with Python's own
    # "[Errno 36] File name too long: '...'", and left the parents it had made
    ir, vis = pair
    frames = tmp_path / "new" / ("f" * 300)
    with pytest.raises(ValueError) as info:
        run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv")
    assert str(info.value) == f"replay.frames_dir {frames} cannot be made: File name too long"
    assert not (tmp_path / "new").exists() and not (tmp_path / "o.mkv").exists()


def test_a_library_replay_whose_frames_folder_cannot_be_synced_counts_its_files_as_it_returns(tmp_path, pair, caplog,
                                                                                                monkeypatch):
    """The count was said at the command's end only: a program calling run_replay heard of the first file alone."""
    ir, vis = pair
    frames = tmp_path / "frames"

    def refused(folder):
        if folder.name == ".partial":
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(streamfuse.atomic_write, "_sync_folder", refused)
    with caplog.at_level("WARNING", logger="streamfuse.atomic_write"):
        assert run_replay(_cfg(frames), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv").complete
    assert caplog.messages[-1] == (f"{N - 1} more files written whole in {frames / '.partial'} after the first one "
                                   "said, whose folder's sync failed too: a power loss may yet lose their names")
