"""Outputs reach the disk before they take their final name, so a power loss never leaves a final name over bytes
the disk had not written yet."""

from __future__ import annotations

import errno
import os
import re
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from streamfuse.atomic_write import (WriterThread, final_path, partial_path, say_unsynced, whole_png, write_file,
                                     write_png)
from streamfuse.frames import Frame
from streamfuse.recording import RecordConfig, Recorder
from streamfuse.recover import recover
from streamfuse.replay.resume import _write_sidecar, sidecar_path
from streamfuse.train.loop import _atomic
from streamfuse.train.settings_file import EXTENDING, SETTINGS, settle
from streamfuse.video import VideoWriter, work_paths


@pytest.mark.parametrize("name", ["rig0.mcap", "rig0_0004.mcap", "out.mp4", ".hidden.nut", "a.partial"])
def test_final_path_reads_back_the_temporary_name(name):
    assert final_path(partial_path(Path("runs") / name)) == Path("runs") / name


@pytest.mark.parametrize("name", ["rig0.mcap", "rig0.mcap.partial", ".rig0.mcap", ".partial", "..partial",
                                  "...partial", "....partial"])
def test_final_path_of_a_name_no_output_is_written_under_is_none(name):
    assert final_path(Path("runs") / name) is None


@pytest.fixture
def disk_events(monkeypatch) -> list[tuple[str, ...]]:
    """What reached the disk (fsync of a file or folder, by its path) and each rename or hard link, in order."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src, dst) -> None:
        real_replace(src, dst)
        events.append(("replace", str(src), str(dst)))

    def link(src, dst) -> None:
        real_link(src, dst)
        events.append(("link", str(src), str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    return events


def _renamed_durably(events: list[tuple[str, ...]], src: Path, dst: Path) -> bool:
    """``src`` was flushed to the disk just before it took the name ``dst`` (a rename, or a hard link where nothing
    may be written over), and the name just after."""
    for rename in (("replace", str(src), str(dst)), ("link", str(src), str(dst))):
        if rename in events:
            i = events.index(rename)
            return i > 0 and events[i - 1:i + 2] == [("fsync", str(src)), rename, ("fsync", str(dst.parent))]
    return False


def test_a_table_or_image_reaches_the_disk_before_its_rename(tmp_path, disk_events):
    out = tmp_path.resolve() / "table.csv"
    write_file(out, b"a,b\n1,2\n")
    [partial] = [Path(e[1]) for e in disk_events if e[0] == "replace" and e[2] == str(out)]
    assert re.fullmatch(r"\.table\.csv\.[0-9a-f]{8}\.partial", partial.name) and partial.parent == out.parent
    assert _renamed_durably(disk_events, partial, out) and out.read_bytes() == b"a,b\n1,2\n"


def test_a_fused_video_reaches_the_disk_before_its_rename(tmp_path, disk_events):
    out = tmp_path.resolve() / "fused.mkv"
    w = VideoWriter(out, codec="ffv1", crf=0, time_base=Fraction(1, 1000), rate=Fraction(25), width=32, height=24)
    for i in range(3):
        w.write(np.full((24, 32, 3), 40 * i, np.uint8), 40 * i)
    w.commit()
    assert _renamed_durably(disk_events, work_paths(out)[2], out)


def test_a_recording_reaches_the_disk_every_flush_s_and_before_its_rename(tmp_path, disk_events, monkeypatch):
    out = tmp_path.resolve() / "rig.mcap"
    synced, spied = threading.Event(), os.fsync  # the fixture's fsync, which notes each one
    monkeypatch.setattr(os, "fsync", lambda fd: (spied(fd), synced.set()))
    with Recorder(RecordConfig(path=str(out), chunk_mb=256, flush_s=0.05)) as rec:
        rec.write(Frame("ir", 0, 1, np.zeros((24, 32), np.uint8)))
        assert synced.wait(60)  # no frame for flush_s: the chunk goes out, to the disk and not only to the OS
        assert ("fsync", str(partial_path(out))) in disk_events
    assert _renamed_durably(disk_events, partial_path(out), out)


def test_a_disk_slow_to_sync_holds_up_no_recorded_frame(tmp_path, monkeypatch):
    """An SD card that takes its time over an fsync: the recorder goes on writing frames out to the OS meanwhile,
    so none is left out of the recording for a full queue."""
    syncing, release, real_fsync = threading.Event(), threading.Event(), os.fsync

    def slow_fsync(fd: int) -> None:
        syncing.set()
        release.wait(60)
        real_fsync(fd)

    written, real_flushed = threading.Event(), Recorder._flushed

    def flushed(self) -> None:
        real_flushed(self)
        if sum(self._written.values()) == 200:
            written.set()

    monkeypatch.setattr(os, "fsync", slow_fsync)
    monkeypatch.setattr(Recorder, "_flushed", flushed)
    frame = np.zeros((256, 256), np.uint8)  # 64 KiB: each fills a chunk, which is written out and synced
    with Recorder(RecordConfig(path=str(tmp_path / "rig.mcap"), chunk_mb=0.0625, compression="none"),
                  queue_size=256) as rec:
        try:
            rec.write(Frame("ir", 0, 1, frame))
            assert syncing.wait(60)  # the first sync is under way, and stays so
            for i in range(1, 200):
                rec.write(Frame("ir", i, 1 + i, frame))
            assert written.wait(60), f"{sum(rec._written.values())} of 200 frames written out while the sync waited"
        finally:
            release.set()
    assert rec.dropped == {"ir": 0, "vis": 0} and rec.counts["ir"] == 200


def test_a_recovered_recording_reaches_the_disk_before_its_rename(tmp_path, disk_events):
    out = tmp_path.resolve() / "rig.mcap"
    rec = Recorder(RecordConfig(path=str(out), chunk_mb=0.0625, compression="none"))
    for i in range(3):  # 64 KiB frames: each fills a chunk, which goes to the file
        rec.write(Frame("ir", i, 1 + i, np.zeros((256, 256), np.uint8)))
    rec.abort()  # a run that was killed: its recording keeps the temporary name
    recover(partial_path(out))
    assert _renamed_durably(disk_events, partial_path(partial_path(out)), out)


def test_a_png_cut_short_is_not_taken_for_a_whole_one(tmp_path):
    # a resumed replay keeps the frames folder's whole PNGs: one cut by a power loss, kept, would stand for a frame
    # that is half grey
    path = write_png(tmp_path / "000001.png", np.full((48, 64, 3), 90, np.uint8))
    assert whole_png(path)
    data = path.read_bytes()
    for end in (len(data) - 1, len(data) // 2, 4):
        path.write_bytes(data[:end])
        assert not whole_png(path), end
    path.write_bytes(data[:-12] + bytes(12))  # its size kept, its end zeros: the blocks the disk never got
    assert not whole_png(path)
    assert not whole_png(tmp_path / "missing.png")


def test_a_writer_thread_handles_nothing_after_its_first_failure(tmp_path):
    # a video writer that went on after a failed frame would make a file with a hole in it that looks whole; the
    # frames queued behind the failure are left unhandled, and the failure is raised
    started, release, handled = threading.Event(), threading.Event(), []

    def handle(item: int) -> None:
        if item == 0:
            started.set()
            assert release.wait(30)
        if item == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        handled.append(item)

    writer = WriterThread("test writer", handle, "writing frames", maxsize=8)
    writer.put(0)
    assert started.wait(30)  # the thread holds item 0: the next ones queue behind it, no error yet
    for item in (1, 2, 3):
        writer.put(item)
    release.set()
    with pytest.raises(RuntimeError, match="^writing frames failed: No space left on device"):
        writer.join()
    assert handled == [0]


def test_a_new_file_on_a_filesystem_without_hard_links_still_replaces_none(tmp_path, disk_events, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path.resolve() / "shot.png"
    assert write_file(out, b"first", new=True) == out
    assert disk_events[-1] == ("fsync", str(out.parent))  # the rename reached the disk
    assert write_file(out, b"second", new=True) == out.with_name("shot-2.png")
    assert out.read_bytes() == b"first" and out.with_name("shot-2.png").read_bytes() == b"second"
    dangling = out.with_name("gone.png")  # a link whose target is gone is taken too: not written over
    dangling.symlink_to(tmp_path / "nowhere.png")
    assert write_file(dangling, b"third", new=True) == out.with_name("gone-2.png")
    assert dangling.is_symlink() and os.readlink(dangling) == str(tmp_path / "nowhere.png")


def test_a_finished_recording_takes_its_name_on_a_filesystem_without_hard_links(tmp_path, disk_events, monkeypatch):
    """A recording's end renames it without writing over a file that took its name meanwhile; where there are no
    hard links, that rename leaves no temporary name to remove (removing it failed the recording's end)."""
    from streamfuse.atomic_write import durable_rename_new

    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path.resolve() / "rig.mcap"
    partial_path(out).write_bytes(b"the frames")
    durable_rename_new(partial_path(out), out)
    assert out.read_bytes() == b"the frames" and not partial_path(out).exists()
    assert _renamed_durably(disk_events, partial_path(out), out)
    partial_path(out).write_bytes(b"another run's frames")  # the name is taken now: refused, its frames kept
    with pytest.raises(FileExistsError):
        durable_rename_new(partial_path(out), out)
    assert out.read_bytes() == b"the frames" and partial_path(out).read_bytes() == b"another run's frames"


def test_a_new_file_takes_the_next_name_past_a_folder_a_fifo_or_a_link(tmp_path):
    # subscribe --save into a folder holding one of these under a frame's name: a folder stopped the run, a FIFO
    # blocked it for good (opened for writing, with no reader), a link to /dev/null swallowed the frame
    folder, fifo, link = (tmp_path / f"{name}.png" for name in ("folder", "fifo", "link"))
    folder.mkdir()
    os.mkfifo(fifo)
    link.symlink_to(os.devnull)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that a write into the FIFO fails the test, not hangs it
    try:
        for taken in (folder, fifo, link):
            assert write_file(taken, b"frame", new=True) == taken.with_name(f"{taken.stem}-2.png")
            assert taken.with_name(f"{taken.stem}-2.png").read_bytes() == b"frame"
        assert os.read(reader, 16) == b""  # nothing went into the FIFO
    finally:
        os.close(reader)
    assert folder.is_dir() and link.is_symlink() and os.readlink(link) == os.devnull


def test_a_temporary_file_of_another_writer_is_never_written_into(tmp_path, monkeypatch):
    """Two writers of one name draw their temporary names at random: one drawn twice is drawn again, not shared."""
    import secrets

    drawn = iter(["0badcafe", "5eed1234"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(drawn))
    theirs = tmp_path / ".table.csv.0badcafe.partial"
    theirs.write_bytes(b"another writer's table, half written")
    write_file(tmp_path / "table.csv", b"a,b\n")
    assert theirs.read_bytes() == b"another writer's table, half written"
    assert (tmp_path / "table.csv").read_bytes() == b"a,b\n"


def test_a_writer_thread_times_each_item_and_offers_without_waiting(tmp_path):
    started, release = threading.Event(), threading.Event()

    def handle(item: int) -> None:
        if item == 0:
            started.set()
            assert release.wait(30)

    writer = WriterThread("test writer", handle, "writing frames", maxsize=1)
    writer.put(0)
    assert started.wait(30)  # the thread holds item 0; the queue has room for one more
    assert writer.offer(1) is True and writer.offer(2) is False  # full: the caller counts the loss
    release.set()
    writer.join()
    assert len(writer.busy_ns) == 2  # one handling time per item
    untimed = WriterThread("test writer", handle, "writing frames", maxsize=1, threaded=False, timed=False)
    untimed.put(1)
    assert len(untimed.busy_ns) == 0  # a live run's: nobody reads them


def test_a_writer_thread_keeps_a_bounded_sample_of_its_times(monkeypatch):
    monkeypatch.setattr("streamfuse.stage_samples.KEPT", 50)
    writer = WriterThread("test writer", lambda item: None, "writing frames", maxsize=1, threaded=False)
    for item in range(300):  # a replay's encoder, timed at every frame of a long recording
        writer.put(item)
    assert len(writer.busy_ns) == 300 and len(writer.busy_ns.kept()) == 50


def test_a_writer_thread_s_idle_call_stops_with_its_first_failure():
    """The idle call (a recording's periodic flush) is handling too: after the first failure it runs no more."""
    from helpers_zmq import wait_until

    idled, waits = [], []

    def handle(item: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer = WriterThread("test writer", handle, "writing frames", maxsize=4, idle=(0.001, lambda: idled.append(1)))
    get = writer._queue.get
    writer._queue.get = lambda *args, **kwargs: waits.append(1) or get(*args, **kwargs)  # counts its idle periods
    wait_until(lambda: idled, "an idle call")
    writer.put(0)
    wait_until(lambda: writer.error is not None, "the failure")
    calls, periods = len(idled), len(waits)  # the thread set the error: every idle call before it is counted
    wait_until(lambda: len(waits) > periods + 3, "idle periods after the failure")
    assert len(idled) == calls
    with pytest.raises(RuntimeError, match="^writing frames failed: No space left on device"):
        writer.join()


@pytest.mark.parametrize("threaded", [True, False], ids=["threaded", "in_caller"])
def test_a_writer_thread_s_failure_is_raised_by_the_next_put_or_offer(threaded: bool):
    from helpers_zmq import wait_until

    def handle(item: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer = WriterThread("test writer", handle, "writing frames", maxsize=4, threaded=threaded)
    if threaded:
        writer.put(0)
        wait_until(lambda: writer.error is not None, "the failure")
    else:
        with pytest.raises(RuntimeError, match="^writing frames failed: No space left on device"):
            writer.put(0)  # handled in the caller: its failure is raised at once
    for call in (writer.offer, writer.put):
        with pytest.raises(RuntimeError, match="^writing frames failed: No space left on device"):
            call(1)
    with pytest.raises(RuntimeError):
        writer.join()


def test_a_failed_sync_is_raised_by_the_next_request(tmp_path, monkeypatch):
    from helpers_zmq import wait_until

    from streamfuse.atomic_write import BackgroundSync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    with open(tmp_path / "rig.mcap", "wb") as f:
        sync = BackgroundSync(f.fileno(), "test sync")
        sync.request()
        wait_until(lambda: sync.error is not None, "the failed sync")
        with pytest.raises(OSError, match="Input/output error"):
            sync.request()
        sync.close()


def _folder_sync_refused(monkeypatch, folder: Path, refusal: str | int) -> None:
    """``os.open`` of ``folder`` refused (``"open"``), or its fsync failing with errno ``refusal``."""
    real_open, real_fsync, folders = os.open, os.fsync, set()

    def opening(path, flags, *args):
        if Path(path) == folder and refusal == "open":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        fd = real_open(path, flags, *args)
        if Path(path) == folder:
            folders.add(fd)
        return fd

    def fsync(fd: int) -> None:
        if fd in folders:
            folders.discard(fd)  # closed after its sync: its number goes to the next file opened
            raise OSError(refusal, os.strerror(refusal))
        real_fsync(fd)

    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("refusal", ["open", errno.EINVAL, errno.ENOTSUP, errno.EBADF],
                         ids=["open", "EINVAL", "ENOTSUP", "EBADF"])
def test_a_folder_that_cannot_be_synced_keeps_its_rename_as_its_filesystem_does(tmp_path, monkeypatch, refusal):
    """Some network and FUSE filesystems refuse a folder's fsync, or opening a folder at all: the file is written."""
    tmp_path = tmp_path.resolve()  # the folder write_file syncs
    _folder_sync_refused(monkeypatch, tmp_path, refusal)
    write_file(tmp_path / "table.csv", b"a,b\n")
    assert (tmp_path / "table.csv").read_bytes() == b"a,b\n"


def _fused_video(out: Path) -> None:
    w = VideoWriter(out, codec="ffv1", crf=0, time_base=Fraction(1, 1000), rate=Fraction(25), width=32, height=24)
    w.write(np.zeros((24, 32, 3), np.uint8), 0)
    w.commit()


def _checkpoint(out: Path) -> None:
    _atomic(out, lambda tmp: tmp.write_bytes(b"weights"))


def _settings(out: Path) -> None:
    (out.parent / EXTENDING).write_text("lr: 0.001\n")
    settle(out.parent)


def _sidecar(out: Path) -> None:
    _write_sidecar(out.with_name("fused.mkv"), b"{}")


_WRITERS = {  # each writer of an output through durable_replace or write_file, and the name it writes
    "write_file": (lambda out: write_file(out, b"a,b\n"), "table.csv"),
    "write_file new": (lambda out: write_file(out, b"a,b\n", new=True), "table.csv"),
    "write_png": (lambda out: write_png(out, np.zeros((2, 2), np.uint8)), "frame.png"),
    "fused video": (_fused_video, "fused.mkv"),
    "checkpoint": (_checkpoint, "weights.pt"),
    "training settings": (_settings, SETTINGS),
    "resume sidecar": (_sidecar, sidecar_path(Path("fused.mkv")).name),
}


@pytest.mark.parametrize("writer", list(_WRITERS))
def test_an_output_whose_folder_sync_fails_after_its_rename_is_kept_and_said_to_be_there(tmp_path, monkeypatch,
                                                                                          caplog, writer):
    """It was reported as not written (a user would delete or rerun a good output), though it had its name, whole."""
    write, name = _WRITERS[writer]
    tmp_path = tmp_path.resolve()  # the folder the writers sync
    out = tmp_path / name
    _folder_sync_refused(monkeypatch, tmp_path, errno.EIO)
    write(out)
    assert out.stat().st_size > 0 and not [p for p in tmp_path.iterdir() if p.name.endswith((".partial", ".tmp"))]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{out} is written whole, but its folder could not be synced after it took its name (Input/output error): a "
        f"power loss may yet lose that name (the later files of that folder are counted at the end)"]


def test_a_folder_whose_sync_fails_is_said_once_and_its_later_files_counted(tmp_path, monkeypatch, caplog):
    # one warning a file: subscribe --save, a replay's frames_dir, flooded the log with one line a frame
    tmp_path = tmp_path.resolve()
    _folder_sync_refused(monkeypatch, tmp_path, errno.EIO)
    for _ in range(5):
        write_png(tmp_path / "fused.png", np.zeros((2, 2), np.uint8), new=True)
    say_unsynced()
    say_unsynced()  # said once
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{tmp_path / 'fused.png'} is written whole, but its folder could not be synced after it took its name "
        f"(Input/output error): a power loss may yet lose that name (the later files of that folder are counted at "
        f"the end)",
        f"4 more files written whole in {tmp_path} after the first one said, whose folder's sync failed too: a power "
        f"loss may yet lose their names"]
    assert len(list(tmp_path.glob("fused*.png"))) == 5
