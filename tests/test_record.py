"""Recorder -> MCAP -> read_recording / the ``mcap`` source round trips, and the fused-video writer."""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import logging
import os
import re
import signal
import struct
import threading
import time
import types
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers_threads import Watch

from streamfuse.atomic_write import partial_path
from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceConfig, SourceError, open_source
from streamfuse.frames import Frame
from streamfuse.recording import RecordConfig, Recorder, encode_image
from streamfuse.ffv1_crc import ffv1_slice_crcs
from streamfuse.signals import raise_terminated
from streamfuse.video import VideoWriter, container_format, decode_frames, read_tags, work_paths

T0 = 1_700_000_000_123_456_789  # an epoch capture time, ns


def _frames(rng: np.random.Generator, n: int = 6) -> list[Frame]:
    """Live-like arrivals: IR (grey, 25 fps) arrives late, so the list is not in capture-time order."""
    out = []
    for i in range(n):
        out.append(Frame("vis", i, T0 + i * 33_333_333, rng.integers(0, 256, (24, 33, 3), np.uint8)))
        out.append(Frame("ir", i, T0 + i * 40_000_000 - 15_000_000, rng.integers(0, 256, (24, 33), np.uint8)))
    return out


def test_record_round_trip_keeps_order_seq_times_and_pixels(tmp_path, rng):
    frames = _frames(rng)
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path), chunk_mb=0.0625)) as rec:
        for f in frames:
            rec.write(f)
        assert partial_path(path).exists() and not path.exists()  # only the temporary name while recording
    assert path.exists() and not partial_path(path).exists()
    got = list(read_recording(path))
    assert [(f.stream, f.seq, f.t_capture_ns) for f in got] == [(f.stream, f.seq, f.t_capture_ns) for f in frames]
    for a, b in zip(frames, got):
        np.testing.assert_array_equal(a.image, b.image)
    assert {f.t_mono_ns for f in got} == {0}  # not acquired live: no capture latency is measured on them


def _readable(path: Path) -> int:
    """Image messages a replay or ``recover`` would find in a recording that is still being written (or was cut)."""
    from streamfuse.capture.mcap_source import read_messages

    read = 0
    with contextlib.suppress(SourceError):
        for _ in read_messages(path):
            read += 1
    return read


def test_a_recording_keeps_no_per_frame_bookkeeping_that_grows_for_as_long_as_the_run(tmp_path, rng):
    # its writer thread kept each frame's handling time, which nothing reads: a live run that records grew by that list
    # for as long as it ran (3.4 kB/s of the demo's, a robot recording for a week 1.3 GB)
    with Recorder(RecordConfig(path=str(tmp_path / "rig.mcap"))) as rec:
        for frame in _frames(rng, 6):
            rec.write(frame)
    assert rec.counts == {"ir": 6, "vis": 6} and len(rec._worker.busy_ns) == 0  # every frame written, none timed


def test_a_chunk_far_from_full_reaches_the_disk_within_flush_s(tmp_path, rng, monkeypatch):
    """A kill loses at most ``flush_s`` of the recording: with no frame coming for that long, the writer writes the
    chunk out to the OS (which keeps it through a kill of the process), though it is far below ``chunk_mb``."""
    flushed, real = threading.Event(), Recorder._flushed
    monkeypatch.setattr(Recorder, "_flushed", lambda self: (real(self), flushed.set()))
    frames, path = _frames(rng, 3), tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path), chunk_mb=256, flush_s=0.05)) as rec:
        for f in frames:
            rec.write(f)
        while True:  # each flush sets the event: cleared before each look, so none is missed
            flushed.clear()
            if _readable(partial_path(path)) == len(frames):
                break
            assert flushed.wait(60), f"{_readable(partial_path(path))} of {len(frames)} frames on disk"
    assert [(f.stream, f.seq) for f in read_recording(path)] == [(f.stream, f.seq) for f in frames]


def test_a_chunk_far_from_full_reaches_the_disk_within_flush_s_of_its_first_frame_while_frames_keep_coming(
        tmp_path, rng, monkeypatch):
    """flush_s is counted from the chunk's first frame, not from the last: frames coming steadily, each sooner than
    flush_s after the one before, still have the chunk written out by then (the writer is never idle that long)."""
    import streamfuse.recording as recording

    ticks = iter(range(0, 10**6, 1000))  # the writer's clock: each frame 1000 s after the one before
    monkeypatch.setattr(recording, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))
    flushed, real = threading.Event(), Recorder._flushed
    monkeypatch.setattr(Recorder, "_flushed", lambda self: (real(self), flushed.set()))
    frames, path = [f for f in _frames(rng, 5) if f.stream == "vis"], tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path), chunk_mb=256, flush_s=3600)) as rec:
        for f in frames:  # at 0, 1000, ... 4000 s: the fifth comes 3600 s or more after the first
            rec.write(f)
        assert flushed.wait(30), "the chunk was not written out 3600 s after its first frame"
        assert _readable(partial_path(path)) == len(frames)


def test_a_disk_slower_than_the_cameras_costs_recorded_frames_not_the_live_loop(tmp_path, rng, monkeypatch, caplog):
    """With the writer stuck on one frame and its queue full, write() returns at once and counts the frame it
    leaves out; the file holds the rest and the log says what it lacks."""
    started, release = threading.Event(), threading.Event()
    real_append = Recorder._append

    def slow_append(self, frame):
        started.set()
        assert release.wait(30)
        real_append(self, frame)

    monkeypatch.setattr(Recorder, "_append", slow_append)
    frames = [f for f in _frames(rng, 2) if f.stream == "vis"]  # two frames of one stream
    path = tmp_path / "rig.mcap"
    with caplog.at_level(logging.WARNING), Recorder(RecordConfig(path=str(path)), queue_size=1) as rec:
        rec.write(frames[0])
        assert started.wait(30)  # the writer holds frame 0; the queue has room for one more
        rec.write(frames[1])
        rec.write(Frame("ir", 0, T0, frames[0].image[..., 0]))  # queue full: left out, and write() did not block
        assert rec.counts == {"ir": 0, "vis": 2} and rec.dropped == {"ir": 1, "vis": 0}
        release.set()
    assert [(f.stream, f.seq) for f in read_recording(path)] == [("vis", 0), ("vis", 1)]
    assert "lacks 1 IR and 0 visible frames" in caplog.text


def _fail_after(monkeypatch, n: int, failed: threading.Event) -> None:
    """The recorder's disk fills up after ``n`` frames: the next ones raise ENOSPC as a real full disk does."""
    real_append, calls = Recorder._append, []

    def append(self, frame):
        calls.append(frame)
        if len(calls) > n:
            failed.set()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_append(self, frame)

    monkeypatch.setattr(Recorder, "_append", append)


def _recorded_prefix(path: Path) -> list[Frame]:
    """The frames a partial recording holds (read up to its last complete chunk)."""
    got = []
    with contextlib.suppress(SourceError):
        got.extend(read_recording(path))
    return got


def test_a_full_disk_stops_the_recording_not_the_caller(tmp_path, rng, monkeypatch, caplog):
    """write() never raises after the failure; one ERROR line names the file and the reason; every frame not
    recorded (the failed one, those queued behind it, those given later) is counted; close() keeps the .partial."""
    failed = threading.Event()
    _fail_after(monkeypatch, 4, failed)
    frames = [Frame("vis", i, T0 + i, rng.integers(0, 256, (120, 160, 3), np.uint8)) for i in range(8)]
    path = tmp_path / "rig.mcap"
    given = len(frames)
    with caplog.at_level(logging.WARNING), Recorder(RecordConfig(path=str(path), chunk_mb=0.0625)) as rec:
        for f in frames:
            rec.write(f)
        assert failed.wait(30)
        deadline = time.monotonic() + 30
        while rec.error is None and time.monotonic() < deadline:  # until write() meets the writer's error
            rec.write(Frame("ir", given, T0 + given, frames[0].image[..., 0]))
            given += 1
        assert rec.error == f"writing recording {partial_path(path)} failed: No space left on device"
        rec.write(Frame("ir", given, T0 + given, frames[0].image[..., 0]))  # after the failure: counted, no raise
        given += 1
    assert rec.counts == {"ir": 0, "vis": 4}
    assert rec.dropped == {"ir": given - len(frames), "vis": len(frames) - 4}
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert errors[0].getMessage().startswith(f"recording stopped: {rec.error}")
    assert not path.exists() and partial_path(path).exists()  # never renamed to look complete
    got = _recorded_prefix(partial_path(path))
    assert len(got) == 4  # every frame counted as recorded reads back
    for a, b in zip(frames, got):
        np.testing.assert_array_equal(a.image, b.image)


def test_frames_left_out_for_a_slow_disk_stay_counted_when_the_disk_then_fills(tmp_path, rng, monkeypatch):
    """A slow disk first (a frame left out, the queue full), then a full one: the end's count of frames the recording
    lacks keeps both, or the run's report would hide the first loss behind the second."""
    started, release = threading.Event(), threading.Event()

    def stuck_then_full(self, frame):
        started.set()
        assert release.wait(30)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Recorder, "_append", stuck_then_full)
    frames = [Frame("vis", i, T0 + i, rng.integers(0, 256, (4, 5, 3), np.uint8)) for i in range(3)]
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path)), queue_size=1) as rec:
        rec.write(frames[0])
        assert started.wait(30)  # the writer holds frame 0; the queue has room for frame 1
        rec.write(frames[1])
        rec.write(frames[2])  # queue full: left out
        assert rec.dropped == {"ir": 0, "vis": 1}
        release.set()  # frame 0 fails on the full disk, and nothing after it is written
    assert rec.error is not None
    assert rec.counts == {"ir": 0, "vis": 0} and rec.dropped == {"ir": 0, "vis": 3}
    assert not partial_path(path).exists()  # nothing in it to recover


def test_a_run_that_fails_after_recording_keeps_every_frame_in_its_partial_file_for_recover(tmp_path, rng):
    # the live run's error (a camera gone, a fuser failure) must not cost the recording of what came before it:
    # deleted, the raw frames that would have shown what went wrong are lost too; and the chunk still being filled
    # (up to flush_s of frames) was left unwritten, so a short run's recording read back empty
    path = tmp_path / "rig.mcap"
    frames = [Frame("vis", i, T0 + i, rng.integers(0, 256, (120, 160, 3), np.uint8)) for i in range(8)]
    with pytest.raises(RuntimeError, match="the run failed"):
        with Recorder(RecordConfig(path=str(path))) as rec:
            for f in frames:
                rec.write(f)
            raise RuntimeError("the run failed")
    assert not path.exists() and partial_path(path).exists()  # not named complete, and not deleted
    assert [f.seq for f in _recorded_prefix(partial_path(path))] == list(range(8))


class _FillingDisk(io.RawIOBase):
    """A file on a disk that fills up after ``room`` bytes: the write that does not fit raises ENOSPC."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room, self.n = f, room, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.n + len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.n += len(b)
        return self.f.write(b)

    def tell(self) -> int:
        return self.n

    def fileno(self) -> int:
        return self.f.fileno()

    def close(self) -> None:
        self.f.close()
        super().close()


def test_frames_of_the_chunk_a_full_disk_cut_count_as_dropped(tmp_path, rng, monkeypatch):
    """The disk fills while a chunk is written: that chunk's frames are lost, so they count as dropped, not recorded
    (the recorded count is what reads back)."""
    import builtins

    from streamfuse import record_parts

    monkeypatch.setattr(record_parts, "open", lambda p, mode: io.BufferedWriter(_FillingDisk(builtins.open(p, mode),
                                                                                          200_000)), raising=False)
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path), chunk_mb=0.0625, compression="none")) as rec:
        for i in range(40):  # fewer than the writer's queue: none is left out for speed
            rec.write(Frame("vis", i, T0 + i, rng.integers(0, 256, (60, 80, 3), np.uint8)))
    assert rec.error is not None and rec.counts["vis"] + rec.dropped["vis"] == 40
    assert len(_recorded_prefix(partial_path(path))) == rec.counts["vis"] > 0


def test_a_disk_full_from_its_first_byte_ends_the_recording_in_its_line_not_with_an_error_at_close(
        tmp_path, rng, monkeypatch, caplog):
    """The bytes still buffered after the write error failed again as the file closed: close raised a bare
    ``[Errno 28] No space left on device`` out of the run's end, before its final stats (a live run on a full disk)."""
    import builtins

    from streamfuse import record_parts

    monkeypatch.setattr(record_parts, "open",
                        lambda p, mode: io.BufferedWriter(_FillingDisk(builtins.open(p, mode), 0)), raising=False)
    path = tmp_path / "rig.mcap"
    with caplog.at_level(logging.ERROR), Recorder(RecordConfig(path=str(path), flush_s=0.05)) as rec:
        rec.write(Frame("vis", 0, T0, rng.integers(0, 256, (240, 320, 3), np.uint8)))  # more than a buffer holds
    assert rec.error is not None and "No space left on device" in rec.error and rec.dropped == {"ir": 0, "vis": 1}
    assert not path.exists() and not partial_path(path).exists()  # no frame reached it: nothing kept
    assert len(caplog.messages) == 1 and caplog.messages[0].startswith("recording stopped: ")


def _full_when_finishing(monkeypatch) -> None:
    from mcap.writer import Writer

    def finish(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Writer, "finish", finish)


def test_a_full_disk_when_finishing_keeps_the_partial_file_with_the_frames_that_reached_it(tmp_path, rng, monkeypatch,
                                                                                            caplog):
    _full_when_finishing(monkeypatch)
    flushed, real = threading.Event(), Recorder._flushed
    monkeypatch.setattr(Recorder, "_flushed", lambda self: (real(self), flushed.set()))
    path = tmp_path / "rig.mcap"
    with caplog.at_level(logging.ERROR), Recorder(RecordConfig(path=str(path), flush_s=0.05)) as rec:
        rec.write(Frame("vis", 0, T0, rng.integers(0, 256, (4, 5, 3), np.uint8)))
        assert flushed.wait(60)  # its chunk written out: the frame is in the file before the end
    assert rec.error == f"finishing recording {partial_path(path)} failed: No space left on device"
    assert not path.exists() and len(_recorded_prefix(partial_path(path))) == 1 == rec.counts["vis"]
    assert caplog.messages == [f"recording stopped: {rec.error}; what was written stays in that file, the run goes on "
                               "without recording"]


def test_a_recording_that_failed_before_any_frame_reached_it_keeps_nothing_and_says_so(tmp_path, rng, monkeypatch,
                                                                                       caplog):
    """A disk full from the first frame left an empty .partial file, which the end said kept "what was recorded
    until then" for `recover` (which found nothing), and which refused the rerun's record.path."""
    from streamfuse.pipeline import _log_recording_failure

    _full_when_finishing(monkeypatch)
    path = tmp_path / "runs" / "rig.mcap"
    with caplog.at_level(logging.ERROR), Recorder(RecordConfig(path=str(path))) as rec:
        rec.write(Frame("vis", 0, T0, rng.integers(0, 256, (4, 5, 3), np.uint8)))  # in the chunk that finish writes
    _log_recording_failure(rec)
    assert rec.counts == {"ir": 0, "vis": 0} and rec.dropped == {"ir": 0, "vis": 1}
    assert not (tmp_path / "runs").exists()  # neither the file nor the folder made for it
    assert caplog.messages == [
        f"recording stopped: {rec.error}; no frame had reached it, the run goes on without recording",
        f"recording failed: {path} was not completed ({rec.error}) and no frame reached it; nothing of it is kept, "
        "the rerun can record there"]
    Recorder(RecordConfig(path=str(path))).close()  # the rerun records there


def _renamed_by(rename, path: Path, rng, monkeypatch, caplog) -> tuple[Recorder, list[str]]:
    """A recording of 4 pairs to ``path`` given its final name by ``rename``; the run's end's lines."""
    import streamfuse.recording
    from streamfuse.pipeline import _log_recording_failure

    monkeypatch.setattr(streamfuse.recording, "durable_rename_new", rename)
    with Recorder(RecordConfig(path=str(path))) as rec:
        for frame in _frames(rng, 4):
            rec.write(frame)
    with caplog.at_level(logging.ERROR):
        _log_recording_failure(rec)
    return rec, caplog.messages


def test_a_recording_that_cannot_take_its_name_says_it_is_whole_and_where(tmp_path, rng, monkeypatch, caplog):
    """The folder turned read-only (or immutable) before the end: the run's end says the .partial file is the whole
    recording and to rename it, not that it was cut (recover would find nothing to do)."""
    def refused(src, dst):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    path = tmp_path / "rig.mcap"
    rec, said = _renamed_by(refused, path, rng, monkeypatch, caplog)
    assert (rec.finished, rec.error) == (True, "Operation not permitted") and not path.exists()
    assert len(list(read_recording(partial_path(path)))) == 8 == rec.counts["ir"] + rec.counts["vis"]  # whole
    assert said == [f"recording failed: {partial_path(path)} was not given its name (Operation not permitted); it "
                    f"holds 4 IR and 4 visible frames, whole: rename it to {path}"]


def test_a_recording_whose_folder_cannot_be_synced_after_its_rename_is_said_to_have_its_name(tmp_path, rng,
                                                                                          monkeypatch, caplog):
    """The rename done, the folder's sync after it failed (a failing disk): the run's end said that nothing of the
    recording was kept, its .partial file gone, while the recording lay whole under its name."""
    from streamfuse.atomic_write import durable_rename_new

    def renamed_then_failed(src, dst):
        durable_rename_new(src, dst)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    path = tmp_path / "rig.mcap"
    _, said = _renamed_by(renamed_then_failed, path, rng, monkeypatch, caplog)
    assert len(list(read_recording(path))) == 8 and not partial_path(path).exists()
    assert said == [f"recording failed: {path} is whole and has its name, but its folder could not be synced after "
                    f"it took it (Input/output error): a power loss may yet lose that name; copy it elsewhere"]


def test_a_recording_whose_folder_cannot_be_synced_right_after_its_link_keeps_one_name(tmp_path, rng, monkeypatch,
                                                                                      caplog):
    """The final name linked, the folder's sync failed before the temporary name went: both names were left on the
    one file, the run's end said to rename it, and the leftover .partial name refused a rerun's record.path."""
    import streamfuse.atomic_write
    from streamfuse.atomic_write import _sync_folder, durable_rename_new

    path = tmp_path / "rig.mcap"

    def failing(folder):
        if path.exists():  # once the final name is there
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        _sync_folder(folder)

    monkeypatch.setattr(streamfuse.atomic_write, "_sync_folder", failing)
    _, said = _renamed_by(durable_rename_new, path, rng, monkeypatch, caplog)
    assert len(list(read_recording(path))) == 8 and not partial_path(path).exists()
    assert said == [f"recording failed: {path} is whole and has its name, but its folder could not be synced after "
                    f"it took it (Input/output error): a power loss may yet lose that name; copy it elsewhere"]


def test_a_recording_never_writes_over_an_existing_file(tmp_path, rng):
    """An earlier recording, a live run's own input recording, or the partial file of a run that did not finish (an
    input video is not a .mcap name, refused by the config)."""
    for name in ("earlier.mcap", "input.mcap"):
        (tmp_path / name).write_bytes(b"keep me")
    partial_path(tmp_path / "crashed.mcap").write_bytes(b"keep me")
    for name in ("earlier.mcap", "input.mcap", "crashed.mcap"):
        with pytest.raises(RuntimeError, match=f"cannot record to .*{name}: .* exists.*; choose another record.path"):
            Recorder(RecordConfig(path=str(tmp_path / name)))
    assert [p.read_bytes() for p in sorted(tmp_path.iterdir())] == [b"keep me"] * 3
    with pytest.raises(RuntimeError, match=re.escape(f"exists (`python -m streamfuse recover "
                                                     f"{partial_path(tmp_path / 'crashed.mcap')}` finishes it)")):
        Recorder(RecordConfig(path=str(tmp_path / "crashed.mcap")))  # what is left of a killed run: finish it


def test_a_recording_makes_its_folder(tmp_path, rng):
    """``record.path=runs/rig0.mcap`` in a checkout without runs/, as train --out and replay_many --out make theirs."""
    frames = _frames(rng, 2)
    path = tmp_path / "runs" / "rig0" / "rig0.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        for f in frames:
            rec.write(f)
    assert [(f.stream, f.seq) for f in read_recording(path)] == [(f.stream, f.seq) for f in frames]


def test_a_recording_whose_folder_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "runs").write_bytes(b"keep me")
    for sub in ("", "rig0/"):
        path = tmp_path / "runs" / sub / "rig0.mcap"
        with pytest.raises(RuntimeError) as exc:
            Recorder(RecordConfig(path=str(path)))
        assert str(exc.value) == f"cannot write recording {path}: {tmp_path / 'runs'} is not a folder"
    assert [p.name for p in tmp_path.iterdir()] == ["runs"] and (tmp_path / "runs").read_bytes() == b"keep me"


def test_a_recording_that_cannot_be_created_leaves_no_folder_made_for_it(tmp_path):
    # the folders were made, then the file's name was refused (longer than the file system takes): they stayed
    path = tmp_path / "runs" / "rig0" / f"{'a' * 300}.mcap"
    with pytest.raises(RuntimeError, match=r"^cannot write recording "):
        Recorder(RecordConfig(path=str(path)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["rig0", "rig0.bag", "input.mp4"])
def test_a_recording_needs_a_name_that_reads_back_as_one(name):
    """Replay and the mcap source know a recording by its .mcap suffix: a file named otherwise would be recorded, then
    taken for a video on replay ("not a video PyAV can read")."""
    with pytest.raises(ValueError, match=r"path=.* is out of range; allowed: a \.mcap file path"):
        RecordConfig(path=name)
    assert RecordConfig(path="runs/RIG0.MCAP").path == "runs/RIG0.MCAP"
    with pytest.raises(ValueError, match=r"path='' is out of range; .* \(a record section needs one\)"):
        RecordConfig(chunk_mb=8)  # a record section with its other settings only


def test_record_schema_and_message_layout(tmp_path, rng):
    from mcap.reader import make_reader

    path = tmp_path / "rig.mcap"
    frame = Frame("vis", 7, T0, rng.integers(0, 256, (3, 5, 3), np.uint8))
    with Recorder(RecordConfig(path=str(path))) as rec:
        rec.write(frame)
    with open(path, "rb") as f:
        schema, channel, msg = next(make_reader(f).iter_messages())
    assert (schema.name, schema.encoding, channel.topic, channel.message_encoding) == \
        ("sensor_msgs/msg/Image", "ros2msg", "/vis/image", "cdr")
    assert (msg.log_time, msg.publish_time, msg.sequence) == (T0, T0, 7)
    data = msg.data
    sec, nanosec, n_id = struct.unpack_from("<iII", data, 4)
    assert sec * 1_000_000_000 + nanosec == T0
    assert data[16:16 + n_id] == b"vis_optical_frame\0"
    pos = 16 + n_id + (-(12 + n_id) % 4)
    height, width, n_enc = struct.unpack_from("<III", data, pos)
    assert (height, width, data[pos + 12:pos + 12 + n_enc]) == (3, 5, b"bgr8\0")
    pos += 12 + n_enc
    assert data[pos] == 0  # is_bigendian: the pixels are little-endian (a mono16 reader would swap them otherwise)
    pos += 1 + (-(pos + 1 - 4) % 4)
    assert struct.unpack_from("<II", data, pos) == (5 * 3, 15 * 3)  # step (bytes per row) and the data's length
    assert data[-15 * 3:] == frame.image.tobytes()


def test_a_configured_frame_id_is_the_recorded_headers(tmp_path):
    # ir.frame_id / vis.frame_id name the cameras' optical frames in the recording too (TF in Foxglove or ROS 2
    # places the images by it); a stream without one keeps <stream>_optical_frame
    from mcap.reader import make_reader

    path, img = tmp_path / "rig.mcap", np.zeros((2, 2), np.uint8)
    with Recorder(RecordConfig(path=str(path)), frame_ids={"ir": "lwir_optical", "vis": ""}) as rec:
        rec.write(Frame("ir", 0, T0, img))
        rec.write(Frame("vis", 0, T0, img))
    with open(path, "rb") as f:
        ids = {channel.topic: msg.data[16:16 + struct.unpack_from("<I", msg.data, 12)[0]]
               for _, channel, msg in make_reader(f).iter_messages()}
    assert ids == {"/ir/image": b"lwir_optical\0", "/vis/image": b"vis_optical_frame\0"}


def test_record_refuses_negative_times_and_unknown_streams(tmp_path):
    img = np.zeros((4, 4), np.uint8)
    with Recorder(RecordConfig(path=str(tmp_path / "r.mcap"))) as rec:
        with pytest.raises(ValueError, match="negative capture time"):
            rec.write(Frame("ir", 0, -1, img))
        with pytest.raises(ValueError, match="cannot record stream 'depth'"):
            rec.write(Frame("depth", 0, 0, img))
        rec.write(Frame("ir", 1, 0, img))  # the epoch itself is a time (a file source's first frame)
    assert [(f.stream, f.seq, f.t_capture_ns) for f in read_recording(tmp_path / "r.mcap")] == [("ir", 1, 0)]


def test_an_image_with_an_alpha_channel_is_refused_not_recorded_as_bgr8():
    # a BGRA frame would be written as bgr8 with four bytes a pixel: every reader would show it sheared
    with pytest.raises(ValueError, match=r"cannot record vis frame 3: image must be .* got \(4, 4, 4\) uint8"):
        encode_image(Frame("vis", 3, 0, np.zeros((4, 4, 4), np.uint8)), "vis_optical_frame")


def test_record_config_needs_a_path():
    with pytest.raises(ValueError, match="path"):
        RecordConfig()


def test_record_config_takes_its_limits_and_refuses_a_flush_s_of_zero():
    # flush_s=0 would have the writer thread spin writing out chunks of nothing
    RecordConfig(path="r.mcap", chunk_mb=256, flush_s=0.01)
    RecordConfig(path="r.mcap", chunk_mb=0.0625, flush_s=3600)
    for bad in ({"flush_s": 0}, {"flush_s": 3601}, {"chunk_mb": 257}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RecordConfig(path="r.mcap", **bad)


@pytest.mark.parametrize("compression, stored", [("zstd", "zstd"), ("none", "")])
def test_chunks_are_chunk_mb_mib_of_messages_compressed_as_configured(tmp_path, rng, compression, stored):
    # chunk_mb bounds what a kill can lose: 10 frames of 12 KiB fill a 64 KiB chunk after 6 (one chunk per frame or
    # one for all would lose far less, or far more, than configured)
    from mcap.reader import make_reader

    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path), compression=compression, chunk_mb=0.0625, flush_s=3600)) as rec:
        for i in range(10):
            rec.write(Frame("vis", i, T0 + i, rng.integers(0, 256, (64, 64, 3), np.uint8)))
    with open(path, "rb") as f:
        chunks = make_reader(f).get_summary().chunk_indexes
    assert [c.compression for c in chunks] == [stored, stored]


def test_truncated_recording_yields_complete_chunks_then_one_line_error(tmp_path, rng):
    path = tmp_path / "rig.mcap"
    rec = Recorder(RecordConfig(path=str(path), chunk_mb=0.0625))
    frames = [Frame("vis", i, T0 + i, rng.integers(0, 256, (120, 160, 3), np.uint8)) for i in range(8)]
    for f in frames:
        rec.write(f)
    rec.abort()  # a killed run: no summary, no final name
    assert not path.exists()
    cut = partial_path(path)
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size * 6 // 10])  # ... killed in the middle of a chunk
    got = []
    with pytest.raises(SourceError, match="truncated or corrupt after"):
        for f in read_recording(cut):
            got.append(f)
    assert 0 < len(got) < len(frames)
    np.testing.assert_array_equal(got[-1].image, frames[len(got) - 1].image)


def test_mcap_source_reads_one_stream_and_loops(tmp_path, rng):
    frames = _frames(rng, 3)
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        for f in frames:
            rec.write(f)
    cfg = SourceConfig(kind="mcap", path=str(path), realtime=False, loop=True)
    with open_source("ir", cfg) as src:
        got = [src.read() for _ in range(6)]
    ir = [f for f in frames if f.stream == "ir"]
    assert [f.seq for f in got] == [0, 1, 2, 3, 4, 5]
    assert [f.t_capture_ns for f in got[:3]] == [f.t_capture_ns for f in ir]
    period = ir[2].t_capture_ns - ir[1].t_capture_ns
    assert [f.t_capture_ns for f in got[3:]] == [f.t_capture_ns + 3 * period for f in ir]  # one period after the end
    np.testing.assert_array_equal(got[4].image, ir[1].image)
    with pytest.raises(SourceError, match="recording not found"):
        open_source("vis", SourceConfig(kind="mcap", path=str(tmp_path / "nope.mcap"))).open()


@pytest.mark.parametrize("step_s", [-10, 3600])
def test_a_live_run_paces_a_recording_across_a_clock_step(tmp_path, monkeypatch, step_s):
    """A recording whose rig's clock was stepped (back 10 s, forward an hour) is paced at its frame rate across the
    step: no frames released at once for good, no sleeping through the step."""
    path = tmp_path / "rig.mcap"
    period = 40_000_000
    with Recorder(RecordConfig(path=str(path)), queue_size=100) as rec:
        for i in range(20):
            t = 10**18 + i * period + (step_s * 10**9 if i >= 10 else 0)
            rec.write(Frame("ir", i, t, np.zeros((8, 8), np.uint8)))
    now = [0]  # a clock the pacing sleeps advance, so the test waits for nothing
    monkeypatch.setattr(time, "perf_counter_ns", lambda: now[0])
    monkeypatch.setattr(time, "sleep", lambda s: now.__setitem__(0, now[0] + round(s * 1e9)))
    with open_source("ir", SourceConfig(kind="mcap", path=str(path), fps=25, realtime=True)) as src:
        assert len([src.read() for _ in range(20)]) == 20
    assert now[0] == 19 * period


def _writer(path, **kw) -> VideoWriter:
    args = dict(codec="h264", crf=18, time_base=Fraction(1, 15360), rate=Fraction(30), width=32, height=24)
    return VideoWriter(path, **{**args, **kw})


def test_video_writer_ffv1_is_bit_exact_and_renames_on_commit(tmp_path, rng):
    images = [rng.integers(0, 256, (24, 33, 3), np.uint8) for _ in range(5)]
    w = _writer(tmp_path / "o.mkv", codec="ffv1", time_base=Fraction(1, 1000), width=33)
    for i, img in enumerate(images):
        w.write(img, 100 + 33 * i)
    assert not (tmp_path / "o.mkv").exists()
    w.commit()
    got = list(decode_frames(tmp_path / "o.mkv"))
    assert [t for t, _ in got] == [Fraction(100 + 33 * i, 1000) for i in range(5)]
    for img, (_, out) in zip(images, got):
        np.testing.assert_array_equal(out, img)


def test_video_writer_mp4_keeps_integer_pts_and_time_base(tmp_path):
    w = _writer(tmp_path / "o.mp4")
    pts = [700 + 512 * i for i in range(12)]
    for p in pts:
        w.write(np.full((24, 32), p % 256, np.uint8), p)
    w.commit()
    with av.open(str(tmp_path / "o.mp4")) as c:
        stream = c.streams.video[0]
        assert stream.time_base == Fraction(1, 15360)
        assert [f.pts for f in c.decode(stream)] == pts


def test_video_writer_abort_leaves_only_the_partial_name(tmp_path):
    w = _writer(tmp_path / "o.mp4")
    for i in range(3):
        w.write(np.zeros((24, 32, 3), np.uint8), i * 512)
    w.abort()
    assert not (tmp_path / "o.mp4").exists()
    assert len(list(decode_frames(partial_path(tmp_path / "o.mp4")))) == 3


class _HeldEncoder:
    """A writer's encoder thread held in its first frame until released, and its container, noting whether it was
    closed while that thread encoded (the frame is then skipped: FFmpeg must not crash the test)."""

    def __init__(self, w: VideoWriter):
        self.inside, self.release, self.left = threading.Event(), threading.Event(), threading.Event()
        self.closed_under_encoder: bool | None = None
        self._container, self._encode = w._container, w._worker._handle
        w._container, w._worker._handle = self, self._held_encode

    def _held_encode(self, item: tuple) -> None:
        self.inside.set()
        self.release.wait()
        try:
            if self.closed_under_encoder is None:
                self._encode(item)
        finally:
            self.left.set()

    def mux(self, packets: list) -> None:
        self._container.mux(packets)

    def close(self) -> None:
        if self.closed_under_encoder is None:
            self.closed_under_encoder = self.inside.is_set() and not self.left.is_set()
        self.release.set()
        assert self.left.wait(60)
        self._container.close()


def _stopped_in_seal(w: VideoWriter, main: Watch, signals: tuple[int, ...], then) -> None:
    """Send ``signals`` to the main thread as seal() waits for the encoder thread, then call ``then()`` (on a thread of
    its own); SIGTERM raises as a replay's handler does."""
    def stop_main() -> None:
        main.when_waits_in("seal", threading.Event())
        for sig in signals:  # a lower number first: Python runs a stop's handlers in that order
            signal.pthread_kill(threading.main_thread().ident, sig)
        then()

    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, raise_terminated))}
    threading.Thread(target=stop_main, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            w.seal()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="a Ctrl-C sent to the main thread")
@pytest.mark.parametrize("codec, ext", [("h264", "o.mp4"), ("ffv1", "o.mkv")])
def test_a_ctrl_c_as_seal_waits_for_the_encoder_thread_lets_it_write_every_frame(tmp_path, codec, ext, main_watch):
    """A Ctrl-C while seal() waits for the encoder thread to take the last frames: seal() stopped at once, and the
    encoder's delayed frames were lost where the stop came as it flushed them; now the file is made whole first."""
    w = _writer(tmp_path / ext, codec=codec)
    held = _HeldEncoder(w)
    for i in range(3):
        w.write(np.full((24, 32, 3), 40 * i, np.uint8), i * 512)
    assert held.inside.wait(60)
    _stopped_in_seal(w, main_watch, (signal.SIGINT,), held.release.set)
    assert w.encoded and held.closed_under_encoder is False
    w.abort()
    assert len(list(decode_frames(partial_path(tmp_path / ext)))) == 3


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="a Ctrl-C sent to the main thread")
def test_a_second_stop_as_seal_waits_for_the_encoder_thread_leaves_it_the_file_to_close(tmp_path, main_watch):
    """A second stop while seal() waits for the encoder thread: it waits no more, and the thread, which a join cut
    short leaves running, closes the file once done with the frame it encodes (closed under it, FFmpeg's codec is
    freed: a segfault), writing no other frame after the count the caller made."""
    w = _writer(tmp_path / "o.mkv", codec="ffv1")
    held = _HeldEncoder(w)
    for i in range(3):
        w.write(np.full((24, 32, 3), 40 * i, np.uint8), i * 512)
    assert held.inside.wait(60)

    # the main thread's waits for the encoder thread, seal()'s then abort()'s, told by the wait itself: the watch sees
    # nothing after a stop's handler has raised inside its hook
    waits = []
    join = w._worker.join
    w._worker.join = lambda: (waits.append(True), join())

    def release_as_main_gives_up() -> None:  # as it stops waiting (now), or as abort() waits for the thread (before)
        deadline = time.monotonic() + 60  # else released anyway: the test then fails on its counts, not hangs
        while not (w._worker.abandoned or len(waits) > 1) and time.monotonic() < deadline:
            time.sleep(0.005)
        held.release.set()

    _stopped_in_seal(w, main_watch, (signal.SIGINT, signal.SIGTERM), release_as_main_gives_up)
    w.abort()
    assert held.left.wait(60)
    w._worker.join()
    assert held.closed_under_encoder is False and not w.encoded
    assert len(list(decode_frames(partial_path(tmp_path / "o.mkv")))) == 1  # the frame it was encoding, no other


def _decoder_threads() -> int:
    """Threads of this process that FFmpeg's decoders started (it names them ``av:<codec>:...``)."""
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            count += (task / "comm").read_text().startswith("av:")
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile (before the open, or after)
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2, reason="Linux, 2+ cores")
def test_codec_threads_one_starts_no_ffmpeg_threads(tmp_path):
    w = _writer(tmp_path / "o.mp4", threads=1)
    for i in range(3):
        w.write(np.full((24, 32, 3), 40 * i, np.uint8), 512 * i)
    w.commit()
    assert w._stream.codec_context.thread_count == 1

    def decoder_threads(n: int) -> int:
        gc.collect()  # a decoder's threads end when it is collected: those of earlier decoders must not count
        before = _decoder_threads()
        cfg = SourceConfig(kind="file", path=str(tmp_path / "o.mp4"), realtime=False, decode_threads=n)
        with open_source("vis", cfg) as src:
            assert src.read() is not None
            return _decoder_threads() - before

    assert decoder_threads(1) == 0
    assert decoder_threads(0) > 0  # FFmpeg's choice, a thread per core: the count above could have seen them


@pytest.mark.parametrize("name, kw, match", [
    ("o.mp4", {"codec": "ffv1"}, r"FFV1 cannot be stored in .mp4; use .mkv, .nut or .avi$"),  # each one FFV1 takes
    ("o.mov", {"codec": "ffv1"}, "FFV1 cannot be stored"),
    ("o.avi", {"codec": "h264"}, "H.264 in .avi loses its frame times"),
    ("o.xyz", {}, "unknown container"),
    ("missing/o.mp4", {}, "output folder does not exist"),
    ("notes.txt/o.mp4", {}, "output folder is a file: .*notes.txt$"),
])
def test_video_writer_bad_outputs(tmp_path, name, kw, match):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        _writer(tmp_path / name, **kw)


def test_an_output_extension_in_capitals_picks_its_container():
    assert [container_format(Path(f"o.{ext}")) for ext in ("MP4", "Mkv", "MOV", "NUT")] == ["mp4", "matroska", "mov",
                                                                                              "nut"]


def test_a_long_tag_in_a_nut_output_reads_back_whole(tmp_path):
    # FFmpeg's NUT demuxer drops a tag value of 1 KiB or more: without the split a resolved config (~2 KB) written
    # into a .nut output would come back missing, and one split in three parts would come back garbled
    config = "\n".join(f"key{i}: \u00e9t\u00e9 {i}" for i in range(250))  # ~3 KB, two-byte characters across the cuts
    w = _writer(tmp_path / "o.nut", metadata={"comment": config, "short": "x"})
    w.write(np.zeros((24, 32, 3), np.uint8), 0)
    w.commit()
    with av.open(str(tmp_path / "o.nut")) as c:
        tags = read_tags(c)
    assert tags["comment"] == config and tags["short"] == "x"
    assert not any(k.startswith("comment_") for k in tags)


@pytest.mark.parametrize("value", ["x" + "\u00e9" * 1000, "\u20ac" * 700, ""],
                         ids=["two_byte", "three_byte", "empty"])
def test_a_nut_tag_reads_back_as_written(tmp_path, value):
    # a long one is split between characters (its 1000th byte falls inside one: a part cut there would not be UTF-8);
    # an empty one is kept, as the other containers keep it
    w = _writer(tmp_path / "o.nut", metadata={"comment": value})
    w.write(np.zeros((24, 32, 3), np.uint8), 0)
    w.commit()
    with av.open(str(tmp_path / "o.nut")) as c:
        assert read_tags(c)["comment"] == value


def test_a_matroska_outputs_tags_read_back_under_the_names_written(tmp_path):
    # Matroska stores tag names in capitals (COMMENT): looked up as written, an existing .mkv output's config is not
    # found, and replay takes its own output for another program's video
    w = _writer(tmp_path / "o.mkv", metadata={"comment": "the resolved config"})
    w.write(np.zeros((24, 32, 3), np.uint8), 0)
    w.commit()
    with av.open(str(tmp_path / "o.mkv")) as c:
        assert "COMMENT" in c.metadata and read_tags(c)["comment"] == "the resolved config"


def test_ffv1_output_stores_slice_crcs_that_catch_a_flipped_byte(tmp_path, rng):
    # the file source checks an FFV1 file's slice CRCs (FFmpeg only conceals a damaged slice): an output written
    # without them, or a check that looked at one slice only, would pass a damaged picture off as the file's
    w = _writer(tmp_path / "o.mkv", codec="ffv1", time_base=Fraction(1, 1000), width=64, height=48)
    for i in range(2):
        w.write(rng.integers(0, 256, (48, 64, 3), np.uint8), 40 * i)
    w.commit()
    with av.open(str(tmp_path / "o.mkv")) as c:
        packets = [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]
    assert len(packets) == 2 and all(ffv1_slice_crcs(p) is True for p in packets)
    for where in (10, len(packets[0]) // 2, len(packets[0]) - 20):  # the first, a middle and the last slice
        damaged = bytearray(packets[0])
        damaged[where] ^= 0x10
        assert ffv1_slice_crcs(bytes(damaged)) is False, where
    assert ffv1_slice_crcs(b"\x01\x02\x03") is None  # no footer at all


def test_video_writer_refuses_non_increasing_pts(tmp_path):
    w = _writer(tmp_path / "o.mp4")
    w.write(np.zeros((24, 32, 3), np.uint8), 10)
    with pytest.raises(ValueError, match="pts must increase"):
        w.write(np.zeros((24, 32, 3), np.uint8), 10)
    w.abort()


def test_video_writer_refuses_a_frame_of_another_size(tmp_path):
    # the encoder would rescale it silently: a replay whose input changed size says so instead
    w = _writer(tmp_path / "o.mp4")
    w.write(np.zeros((24, 32, 3), np.uint8), 0)
    with pytest.raises(ValueError, match=r"^frame 1 is 32x25, the video's frames are 32x24 \(the input changed"):
        w.write(np.zeros((25, 32, 3), np.uint8), 512)
    w.abort()


@pytest.mark.parametrize("width, height", [(33, 24), (32, 23)])
def test_h264_output_of_an_odd_size_keeps_its_size(tmp_path, width, height):
    """4:2:0 needs even sides: an odd width or height is encoded in 4:4:4, not refused by the encoder."""
    w = _writer(tmp_path / "o.mkv", width=width, height=height)
    for i in range(3):
        w.write(np.full((height, width, 3), 40 * i, np.uint8), 512 * i)
    w.commit()
    assert [image.shape for _, image in decode_frames(tmp_path / "o.mkv")] == [(height, width, 3)] * 3


def test_an_odd_size_is_refused_up_front_by_an_encoder_without_4_4_4(tmp_path, monkeypatch):
    # without libx264 (and libopenh264) H.264 falls back to mpeg4, which takes only 4:2:0
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264", "libopenh264"})
    with pytest.raises(ValueError, match="^mpeg4 needs an even frame size, got 33x24$"):
        _writer(tmp_path / "o.mkv", width=33)


def test_a_failed_remux_leaves_the_partial_file_and_no_half_written_copy(tmp_path, monkeypatch):
    def remux_to_a_full_disk(self, dst):
        dst.write_bytes(b"half a container")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(VideoWriter, "_remux", remux_to_a_full_disk)
    w = _writer(tmp_path / "o.mp4")
    w.write(np.zeros((24, 32, 3), np.uint8), 0)
    with pytest.raises(RuntimeError, match="No space left on device"):
        w.seal()
    assert [path.exists() for path in work_paths(tmp_path / "o.mp4")] == [False, True, False]


@pytest.mark.parametrize("codec, ext", [("h264", "o.mp4"), ("ffv1", "o.mkv")])
def test_partial_file_cut_anywhere_decodes_to_whole_frames_only(tmp_path, codec, ext):
    """A kill can cut the partial file anywhere: what decodes are whole frames, never a damaged one (with B-frames
    the last few may leave gaps in presentation order; resume stops taking frames over at the first gap)."""
    yy, xx = np.mgrid[0:24, 0:32]
    images = [np.dstack([(xx * 4 + yy * 2 + 9 * i) % 256] * 3).astype(np.uint8) for i in range(20)]
    w = _writer(tmp_path / ext, codec=codec)
    for i, img in enumerate(images):
        w.write(img, 700 + 512 * i)
    w.abort()
    data = partial_path(tmp_path / ext).read_bytes()
    whole = dict(decode_frames(partial_path(tmp_path / ext)))
    assert len(whole) == 20
    cut, counts = tmp_path / "cut.nut", []
    for size in range(0, len(data), max(len(data) // 60, 1)):
        cut.write_bytes(data[:size])
        got = list(decode_frames(cut))
        counts.append(len(got))
        assert [t for t, _ in got] == sorted(t for t, _ in got)
        for t, image in got:
            np.testing.assert_array_equal(image, whole[t])
    assert counts == sorted(counts) and any(0 < n < 20 for n in counts)


def test_commit_remuxes_the_partial_file_and_leaves_no_temporary_file(tmp_path):
    w = _writer(tmp_path / "o.mp4", metadata={"streamfuse_t0_ns": "5"})
    for i in range(3):
        w.write(np.zeros((24, 32, 3), np.uint8), i * 512)
    w.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert c.format.name.startswith("mov") and c.metadata["streamfuse_t0_ns"] == "5"


def test_frames_capture_dropped_before_the_recording_are_said_at_its_end(tmp_path, rng, caplog):
    # a live loop that fell behind (a slow first pair, say) never hands the ring's overwritten frames to the recorder
    path = tmp_path / "rig.mcap"
    with caplog.at_level(logging.WARNING):
        rec = Recorder(RecordConfig(path=str(path)))
        for frame in _frames(rng, 2):
            rec.write(frame)
        rec.close({"ir": 3, "vis": 0})
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} lacks 3 IR and 0 visible frames that capture dropped before they reached it (the live loop fell "
        "behind them: capture_dropped); a replay of it pairs what is there"]


def test_a_recording_whose_folder_was_removed_is_said_lost_not_named_to_rename(tmp_path, caplog):
    """The folder removed while the run recorded (a cleanup script, a user): the end told to rename or recover the
    .partial file, which was gone with it."""
    import shutil

    from streamfuse.pipeline import _log_recording_failure

    path = tmp_path / "runs" / "rig.mcap"
    rec = Recorder(RecordConfig(path=str(path)))
    for i in range(3):
        rec.write(Frame("vis", i, 1_000_000 + i * 40_000_000, np.zeros((8, 8, 3), np.uint8)))
    shutil.rmtree(tmp_path / "runs")
    rec.close()
    with caplog.at_level(logging.ERROR):
        _log_recording_failure(rec)
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith(f"recording failed: {path} was not completed (") and "rename it" not in line
    assert line.endswith(f"nothing of it is kept: {partial_path(path)} is gone (its folder removed or renamed while "
                         f"the run recorded)")


def test_a_recording_given_no_frame_leaves_no_file(tmp_path, caplog):
    """A run that ended (or failed) before its first frame finished an empty recording, or left an empty .partial
    file, and either refused the next run's record.path."""
    for ending in ("close", "error"):
        path = tmp_path / ending / "rig.mcap"
        with caplog.at_level(logging.WARNING), contextlib.suppress(RuntimeError):
            with Recorder(RecordConfig(path=str(path))):
                if ending == "error":
                    raise RuntimeError("the run failed")
        assert not path.exists() and not partial_path(path).exists()
        Recorder(RecordConfig(path=str(path))).abort()  # the next run records there
    assert f"no frame was recorded: no recording written to {tmp_path / 'close' / 'rig.mcap'}" in caplog.text


def test_a_link_at_the_recordings_name_that_points_nowhere_is_refused_at_the_start(tmp_path):
    # the final rename never writes over a name taken: a dangling link there failed the run at its end, hours later,
    # as a file that "appeared while the run recorded"
    os.symlink(tmp_path / "elsewhere.mcap", tmp_path / "rig.mcap")
    with pytest.raises(RuntimeError, match="rig.mcap exists"):
        Recorder(RecordConfig(path=str(tmp_path / "rig.mcap")))


def _chunk_offsets(data: bytes) -> list[int]:
    """Where each Chunk record (opcode 0x06) of an MCAP file starts, walking its records to the Footer."""
    pos, found = 8, []
    while pos + 9 <= len(data) and data[pos] != 0x02:
        found += [pos] if data[pos] == 0x06 else []
        pos += 9 + int.from_bytes(data[pos + 1:pos + 9], "little")
    return found


def test_a_chunk_whose_opcode_is_damaged_is_not_skipped_in_silence(tmp_path, rng):
    # a chunk's opcode byte is in no chunk CRC: damaged into an unknown opcode, readers skipped the whole chunk, and a
    # replay fused the rest as if the recording were whole; the data section's CRC tells now
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path), chunk_mb=0.0625)) as rec:
        for f in _frames(rng, 60):
            rec.write(f)
    data = bytearray(path.read_bytes())
    chunks = _chunk_offsets(bytes(data))
    assert len(chunks) >= 2
    data[chunks[1]] ^= 0x10  # 0x06 -> 0x16, no record MCAP knows
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="truncated or corrupt after .* frames .*unknown type 0x16"):
        list(read_recording(path))


@pytest.mark.parametrize("opcode", [0x20, 0x81], ids=["a later MCAP version's", "an application's"])
def test_a_record_of_a_type_the_reader_does_not_know_is_skipped_and_said(tmp_path, rng, caplog, opcode):
    # the MCAP format has readers skip records of a type they do not know (its opcodes 0x01-0x7f are kept for its
    # later versions): one of a reserved type was refused as damage, and an application's was skipped unsaid
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path), chunk_mb=0.0625), queue_size=512) as rec:
        for f in _frames(rng, 60):
            rec.write(f)
    whole = [(f.stream, f.seq, f.t_capture_ns) for f in read_recording(path)]
    data, pos, retyped = bytearray(path.read_bytes()), 8, 0
    while data[pos] != 0x0F:  # the data section's records, up to its end: each message index retyped
        if data[pos] == 0x07:
            data[pos], retyped = opcode, retyped + 1
        pos += 9 + int.from_bytes(data[pos + 1:pos + 9], "little")
    data[pos + 9:pos + 13] = zlib.crc32(data[:pos]).to_bytes(4, "little")  # the data section's CRC, written so
    path.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert [(f.stream, f.seq, f.t_capture_ns) for f in read_recording(path)] == whole
    assert retyped > 1 and caplog.messages == [f"recording {path}: {retyped} records of a type this reader does not "
                                               f"know (0x{opcode:02x}: a later MCAP version's or an application's) "
                                               f"skipped, as the format has readers do"]


@pytest.mark.parametrize("cut", [False, True])
def test_a_damaged_chunk_opcode_stops_the_reading_there_not_after_the_frames_behind_it(tmp_path, rng, cut):
    # the data section's CRC is checked at its end, after every frame behind the damaged chunk (and a cut recording,
    # what recover copies, has none): those frames were read, the chunk's own skipped, recover's copy read back clean
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path), chunk_mb=0.0625), queue_size=512) as rec:
        for f in _frames(rng, 90):
            rec.write(f)
    data = path.read_bytes()
    chunks = _chunk_offsets(data)
    assert len(chunks) >= 3
    before = tmp_path / "before.mcap"  # cut where the damaged chunk starts: the frames a reading should stop after
    before.write_bytes(data[:chunks[1]])
    n_before = int(re.search(r"after (\d+) frames", str(_error(read_recording(before)))).group(1))
    damaged = bytearray(data[:chunks[-1]] if cut else data)
    damaged[chunks[1]] ^= 0x10  # 0x06 -> 0x16, no record MCAP knows
    path.write_bytes(bytes(damaged))
    read: list[Frame] = []
    with pytest.raises(SourceError, match=f"after {n_before} frames .*unknown type 0x16"):
        read.extend(read_recording(path))
    assert len(read) <= n_before


def _error(frames) -> BaseException:
    """The exception that ends iterating ``frames``."""
    try:
        for _ in frames:
            pass
    except BaseException as exc:  # noqa: BLE001 (the test's answer)
        return exc
    raise AssertionError("read to its end without an error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_at_the_partial_name_is_refused_not_waited_on(tmp_path):
    # the check for a running run's lock opened it for reading: with no writer, the run waited in open() for good,
    # deaf to SIGTERM
    from helpers_zmq import PATIENCE_S

    path = tmp_path / "rig.mcap"
    os.mkfifo(partial_path(path))
    failed: list[BaseException] = []

    def start() -> None:
        try:
            Recorder(RecordConfig(path=str(path)))
        except BaseException as exc:  # noqa: BLE001 (the test's answer)
            failed.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(PATIENCE_S)
    if thread.is_alive():  # a writer frees the open() it waits in
        os.close(os.open(partial_path(path), os.O_WRONLY | os.O_NONBLOCK))
        thread.join(PATIENCE_S)
        pytest.fail("the recorder waited in open() on the FIFO")
    assert len(failed) == 1
    assert re.search(r"cannot record to .*rig\.mcap: .*\.rig\.mcap\.partial exists", str(failed[0])), failed


def test_a_file_given_the_recordings_name_while_it_records_is_not_written_over(tmp_path, rng, caplog):
    # the name was checked for only at the start: a file put there meanwhile was replaced by the recording at the end
    from streamfuse.pipeline import _log_recording_failure

    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        for frame in _frames(rng, 4):
            rec.write(frame)
        path.write_bytes(b"keep me")
    assert path.read_bytes() == b"keep me"
    assert (rec.finished, rec.error) == (True, f"{path} appeared while the run recorded, and is not written over")
    assert len(list(read_recording(partial_path(path)))) == 8  # whole, under its temporary name
    with caplog.at_level(logging.ERROR):
        _log_recording_failure(rec)
    assert caplog.messages == [f"recording failed: {partial_path(path)} was not given its name ({rec.error}); it "
                               f"holds 4 IR and 4 visible frames, whole: rename it to {path}"]


@pytest.mark.parametrize("path", ["runs/rig0mcap", "runs/rig0.mp4", ""])
def test_a_record_path_not_ending_in_dot_mcap_is_refused(path):
    """Replay and the mcap source know a recording by its .mcap suffix: another name could not be replayed."""
    with pytest.raises(ValueError, match=f"^path='{path}' is out of range; allowed: a .mcap file path "):
        RecordConfig(path=path)
