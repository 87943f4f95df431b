"""A recording split into parts (``record.split_s``, ``record.split_mb``): each part a complete MCAP file, the
parts together the frames of an unsplit recording, read back as one from the first part."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from mcap.reader import make_reader

from streamfuse.capture.mcap_source import image_topics, read_recording
from streamfuse.capture.sources import SourceConfig, SourceError, open_source
from streamfuse.config import ConfigError, load_config
from streamfuse.frames import Frame
from streamfuse import record_parts
from streamfuse.pipeline import _log_recording_failure
from streamfuse.part_set import set_parts
from streamfuse.record_parts import Parts, part_path
from streamfuse.recording import RecordConfig, Recorder, check_record_path
from streamfuse.recover import recover

T0 = 1_700_000_000_000_000_000


def _synthetic_run(n: int) -> list[Frame]:
    """A seeded synthetic rig's frames in live arrival order: visible at 30 fps, IR at 25 fps arriving 25 ms late."""
    with open_source("vis", SourceConfig(kind="synthetic", width=64, height=48, seed=7, realtime=False)) as vis, \
            open_source("ir", SourceConfig(kind="synthetic", width=64, height=48, seed=7, fps=25,
                                           realtime=False)) as ir:
        frames = [vis.read() for _ in range(n)] + [ir.read() for _ in range(n * 5 // 6)]
    for frame in frames:
        frame.t_capture_ns += T0
    return sorted(frames, key=lambda f: f.t_capture_ns + 25_000_000 * (f.stream == "ir"))


@contextlib.contextmanager
def _recorder_clock(at: Callable[[Frame], int] = lambda frame: frame.t_capture_ns) -> Iterator[None]:
    """The recorder's own clock (which ``split_s`` counts) reads ``at(frame)`` while it writes each frame: by
    default the frame's capture time, as in a live run, which writes each frame as it comes."""
    now = [0]
    append = Recorder._append

    def timed(self, frame):
        now[0] = at(frame)
        append(self, frame)

    with mock.patch.object(Recorder, "_append", timed), \
            mock.patch.object(record_parts, "time", types.SimpleNamespace(monotonic_ns=lambda: now[0])):
        yield


def _record(path, frames: list[Frame], **split) -> Recorder:
    cfg = RecordConfig(path=str(path), chunk_mb=0.0625, compression="none", **split)
    with _recorder_clock(), Recorder(cfg, queue_size=len(frames)) as rec:  # the queue holds them all: none left out
        for frame in frames:
            rec.write(frame)
    return rec


def _killed(path, frames: list[Frame]) -> tuple[Recorder, Path]:
    """A recording in parts of one second stopped by an error (as a kill), and the ``.partial`` part it leaves."""
    cfg = RecordConfig(path=str(path), chunk_mb=0.0625, compression="none", split_s=1)
    with pytest.raises(KeyboardInterrupt), _recorder_clock(), Recorder(cfg, queue_size=len(frames)) as rec:
        for frame in frames:
            rec.write(frame)
        raise KeyboardInterrupt
    return rec, path.parent / f".{part_path(path, rec.parts - 1).name}.partial"


def _disk_full_at(monkeypatch, failing: Frame) -> None:
    """The recorder's write of the frame ``failing`` fails as on a full disk."""
    real_append = Recorder._append

    def append(self, frame):
        if frame is failing:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_append(self, frame)

    monkeypatch.setattr(Recorder, "_append", append)


def _cut_short(first: Path, cut: Path) -> str:
    """The line a read of the set from ``first`` stops at, ``cut`` left cut short by a kill or a write error."""
    return (rf"^recording {first}: its part {cut} was cut short \(a killed run, or a write error such as a full "
            rf"disk\): `python -m streamfuse recover {cut}` finishes it, then replay the set$")


def _key(frames) -> list[tuple[str, int, int]]:
    return [(f.stream, f.seq, f.t_capture_ns) for f in frames]


@pytest.mark.parametrize("split", [{"split_s": 1}, {"split_mb": 1}, {"split_s": 2, "split_mb": 1}],
                         ids=["by time", "by size", "both"])
def test_the_parts_together_hold_the_frames_of_an_unsplit_recording(tmp_path, split):
    frames = _synthetic_run(300)  # 10 s of visible frames
    whole = _record(tmp_path / "whole.mcap", frames)
    rec = _record(tmp_path / "rig0.mcap", frames, **split)
    parts = sorted(tmp_path.glob("rig0_*.mcap"))
    assert rec.parts == len(parts) >= 3 and parts == [part_path(tmp_path / "rig0.mcap", i) for i in range(rec.parts)]
    assert not (tmp_path / "rig0.mcap").exists() and not list(tmp_path.glob(".*"))
    assert rec.counts == whole.counts == {"ir": 250, "vis": 300} and rec.dropped == {"ir": 0, "vis": 0}
    read = []
    for part in parts:  # each complete and indexed, read by the MCAP library itself
        with open(part, "rb") as f:
            reader = make_reader(f)
            assert reader.get_summary().statistics.message_count > 0
            read += [(channel.topic, msg.sequence, msg.log_time)
                     for _, channel, msg in reader.iter_messages(log_time_order=False)]
    assert len(read) == len(set(read)) == len(frames)
    expected, got = list(read_recording(tmp_path / "whole.mcap")), list(read_recording(parts[0]))
    assert _key(got) == _key(expected) == _key(frames)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.image, b.image)
    assert image_topics(parts[0]) == {"/ir/image": ("sensor_msgs/msg/Image", 250),
                                      "/vis/image": ("sensor_msgs/msg/Image", 300)}
    alone = _key(read_recording(parts[1]))  # a later part given: that part alone
    start = _key(frames).index(alone[0])
    assert 0 < start and alone == _key(frames)[start:start + len(alone)] and len(alone) < len(frames) - start


def test_the_writers_index_does_not_grow_across_parts(tmp_path, monkeypatch):
    """MCAP's writer keeps an index entry per chunk until the file is finished: a recording left running grew by it
    for good; each part starts a new index."""
    frames = _synthetic_run(600)
    held = []  # index entries the writer holds as each part ends
    finish = Parts.finish

    def counted(self):
        held.append(len(self.part.writer._Writer__chunk_indices))
        finish(self)

    monkeypatch.setattr(Parts, "finish", counted)
    cfg = RecordConfig(path=str(tmp_path / "whole.mcap"), chunk_mb=0.0625, compression="none")
    with Recorder(cfg, queue_size=len(frames)) as whole:
        for frame in frames:
            whole.write(frame)
        whole._worker.join()  # every frame written: the index as it stands at the end
        unsplit = len(whole._part.writer._Writer__chunk_indices)
    rec = _record(tmp_path / "rig0.mcap", frames, split_mb=1)
    assert len(held) == rec.parts - 1 >= 5
    assert max(held) <= 1 / 0.0625 + 2 and unsplit > 4 * max(held)  # a part's chunks, give or take the last ones


def test_a_missing_middle_part_is_one_line_naming_it(tmp_path):
    _record(tmp_path / "rig0.mcap", _synthetic_run(150), split_s=1)
    part_path(tmp_path / "rig0.mcap", 2).unlink()
    with pytest.raises(SourceError, match=r"^recording .*rig0_0000\.mcap: its part .*rig0_0002\.mcap is missing "
                                          r"\(the set has parts up to rig0_0004\.mcap\): its frames would be lost$"):
        list(read_recording(part_path(tmp_path / "rig0.mcap", 0)))
    with open_source("ir", SourceConfig(kind="mcap", path=str(part_path(tmp_path / "rig0.mcap", 0)))) as src, \
            pytest.raises(SourceError, match=r"rig0_0002\.mcap is missing"):
        src.read()


def test_a_damaged_middle_part_stops_the_read_naming_it(tmp_path):
    _record(tmp_path / "rig0.mcap", _synthetic_run(150), split_s=1)
    damaged = part_path(tmp_path / "rig0.mcap", 2)
    with open(damaged, "r+b") as f:
        f.seek(os.path.getsize(damaged) // 2)
        f.write(b"\xff" * 64)
    with pytest.raises(SourceError, match=rf"^recording {damaged} is truncated or corrupt after \d+ frames"):
        list(read_recording(part_path(tmp_path / "rig0.mcap", 0)))


def test_a_cut_split_recording_is_recovered_and_replayed_whole(tmp_path, caplog):
    """A run stopped by an error (as a kill) leaves the part it was writing as ``.NAME.mcap.partial``: the set's
    read says so in one line, and once ``recover`` has finished that part the set reads whole."""
    frames = _synthetic_run(150)
    rec, cut = _killed(tmp_path / "rig0.mcap", frames)
    assert cut.is_file() and rec.parts >= 3
    first = part_path(tmp_path / "rig0.mcap", 0)
    with pytest.raises(SourceError, match=_cut_short(first, cut)):
        list(read_recording(first))
    assert recover(cut).startswith("recovered ")
    assert _key(read_recording(first)) == _key(frames)  # the abort wrote out every frame queued


def test_a_part_of_an_earlier_recording_is_never_written_over(tmp_path):
    _record(tmp_path / "rig0.mcap", _synthetic_run(60), split_s=1)
    before = part_path(tmp_path / "rig0.mcap", 1).read_bytes()
    with pytest.raises(RuntimeError, match=r"^cannot record to .*rig0\.mcap in parts: .*rig0_0000\.mcap exists; "):
        Recorder(RecordConfig(path=str(tmp_path / "rig0.mcap"), split_s=1))
    check_record_path(tmp_path / "rig0.mcap")  # unsplit, rig0.mcap itself is free
    assert part_path(tmp_path / "rig0.mcap", 1).read_bytes() == before


# its final name, or a killed run's part left under it: all there is of that run's frames until `recover` finishes it
@pytest.mark.parametrize("name", ["{}", ".{}.partial"])
def test_a_part_name_taken_while_recording_stops_the_recording_not_the_caller(tmp_path, caplog, name):
    frames = _synthetic_run(90)
    part = part_path(tmp_path / "rig0.mcap", 1)
    taken = part.with_name(name.format(part.name))
    cfg = RecordConfig(path=str(tmp_path / "rig0.mcap"), chunk_mb=0.0625, compression="none", split_s=1)
    with caplog.at_level(logging.ERROR), _recorder_clock(), Recorder(cfg, queue_size=len(frames)) as rec:
        taken.write_bytes(b"a user's file")
        for frame in frames:
            rec.write(frame)
    assert taken.read_bytes() == b"a user's file"
    assert rec.error == f"beginning recording part {part} failed: {taken} is there already, and is not written over"
    assert rec.parts == 1 and 0 < sum(rec.counts.values()) == len(frames) - sum(rec.dropped.values())
    taken.unlink()
    assert _key(read_recording(part_path(cfg.path, 0))) == _key(frames)[:sum(rec.counts.values())]
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [f"recording stopped: {rec.error}"]
    caplog.clear()
    _log_recording_failure(rec)
    assert caplog.messages == [f"recording failed: it stopped after {part_path(cfg.path, 0)} ({rec.error}); it and "
                               f"the parts before it are complete, and a replay of the set reads them"]


def test_a_write_error_in_a_later_part_is_said_of_that_part(tmp_path, caplog, monkeypatch):
    """The run's end names the part the error cut, kept as its ``.partial`` for ``recover``: the recording's own path
    is no file of a split recording."""
    frames = _synthetic_run(90)
    _disk_full_at(monkeypatch, frames[-5])  # in the third part
    cut = part_path(tmp_path / "rig0.mcap", 2)
    with _recorder_clock(), Recorder(RecordConfig(path=str(tmp_path / "rig0.mcap"), split_s=1),
                                     queue_size=len(frames)) as rec:
        for frame in frames:
            rec.write(frame)
    assert rec.parts == 3 and rec.file == cut and rec.error is not None
    caplog.clear()
    _log_recording_failure(rec)
    assert caplog.messages == [f"recording failed: {cut} was not completed ({rec.error}); what was recorded until then "
                               f"is kept in {tmp_path / '.rig0_0002.mcap.partial'} (`python -m streamfuse recover` "
                               f"makes a finished recording of it)"]
    first, partial = part_path(tmp_path / "rig0.mcap", 0), tmp_path / ".rig0_0002.mcap.partial"
    with pytest.raises(SourceError, match=_cut_short(first, partial)):  # no kill: not said to be one
        list(read_recording(first))


def test_a_part_a_write_error_cut_is_let_go_while_the_run_goes_on(tmp_path, monkeypatch):
    """A full disk stops the recording, not the run: the part it cut is closed at once, so ``recover`` finishes it
    and the set replays while the run goes on (held open to the run's end, it was refused as still being recorded)."""
    from helpers_zmq import wait_until

    frames = _synthetic_run(90)
    _disk_full_at(monkeypatch, frames[-20])  # in the third part
    cfg = RecordConfig(path=str(tmp_path / "rig0.mcap"), chunk_mb=0.0625, compression="none", split_s=1)
    with _recorder_clock(), Recorder(cfg, queue_size=len(frames)) as rec:
        for frame in frames[:-19]:
            rec.write(frame)
        wait_until(lambda: rec._worker.error is not None, "the write error")
        rec.write(frames[-19])  # the run's next frame: the recording stops there
        cut = tmp_path / f".{part_path(tmp_path / 'rig0.mcap', rec.parts - 1).name}.partial"
        assert rec.error is not None and rec.parts == 3
        assert recover(cut).startswith("recovered ")
        assert len(list(read_recording(part_path(tmp_path / "rig0.mcap", 0)))) == sum(rec.counts.values())


def test_split_keys_are_checked_at_load(tmp_path):
    empty = tmp_path / "rig.yaml"
    empty.write_text("{}\n")
    for key, value in (("split_s", -1), ("split_s", 0.5), ("split_mb", 0.5), ("split_mb", 2**21)):
        with pytest.raises(ConfigError, match=rf"record: {key}=.* is out of range"):
            load_config(empty, [f"record.path={tmp_path / 'rig.mcap'}", f"record.{key}={value}"])
    assert load_config(empty, [f"record.path={tmp_path / 'rig.mcap'}", "record.split_s=3600"]).record.split_s == 3600
    assert not RecordConfig(path="rig.mcap").split and RecordConfig(path="rig.mcap", split_mb=1).split


def test_a_single_part_or_a_later_part_reads_alone(tmp_path):
    frames = _synthetic_run(60)
    _record(tmp_path / "one.mcap", frames, split_s=60)
    assert set_parts(part_path(tmp_path / "one.mcap", 0)) is None  # one part: a file as any other
    assert _key(read_recording(part_path(tmp_path / "one.mcap", 0))) == _key(frames)


def test_a_replay_of_the_first_part_pairs_and_fuses_as_one_of_the_unsplit_recording(tmp_path):
    from streamfuse.config import config_from_dict
    from streamfuse.replay import run_replay
    from streamfuse.video import decode_frames

    frames = _synthetic_run(120)
    _record(tmp_path / "whole.mcap", frames)
    rec = _record(tmp_path / "rig0.mcap", frames, split_s=1)
    assert rec.parts >= 4
    cfg = config_from_dict({"ir": {"kind": "mcap"}, "vis": {"kind": "mcap"}, "fuse": {"name": "max"},
                            "replay": {"progress": False, "codec": "ffv1"}})
    whole = run_replay(cfg, ir_path=tmp_path / "whole.mcap", out_path=tmp_path / "whole.mkv")
    split = run_replay(cfg, ir_path=part_path(tmp_path / "rig0.mcap", 0), out_path=tmp_path / "split.mkv")
    assert split.complete and split.frames == whole.frames == {"ir": 100, "vis": 120}
    assert split.pairs == split.written == whole.pairs > 0
    for (t_a, a), (t_b, b) in zip(decode_frames(tmp_path / "split.mkv"), decode_frames(tmp_path / "whole.mkv"),
                                  strict=True):
        assert t_a == t_b
        np.testing.assert_array_equal(a, b)
    part_path(tmp_path / "rig0.mcap", 1).unlink()
    with pytest.raises(ValueError, match=r"rig0_0001\.mcap is missing"):
        run_replay(cfg, ir_path=part_path(tmp_path / "rig0.mcap", 0), out_path=tmp_path / "gap.mkv")


def test_a_folder_of_recordings_replays_a_split_one_once_from_its_first_part(tmp_path):
    from streamfuse.batch.jobs import find_jobs

    _record(tmp_path / "bags" / "rig0.mcap", _synthetic_run(90), split_s=1)
    _record(tmp_path / "bags" / "other.mcap", _synthetic_run(10))
    assert [job.out.name for job in find_jobs(tmp_path / "bags", tmp_path / "out")] == ["other.mp4", "rig0.mp4"]


def test_a_folder_of_recordings_says_nothing_of_a_cut_part_once_it_is_recovered(tmp_path, caplog):
    """The cut ``.partial`` part stays beside the part ``recover`` made of it: the batch replays the set from its
    first part, that recovered part included, and no longer tells the user to recover it."""
    from streamfuse.batch.jobs import find_jobs

    _, cut = _killed(tmp_path / "rig0.mcap", _synthetic_run(90))
    with caplog.at_level(logging.WARNING):
        find_jobs(tmp_path, tmp_path / "out")
    assert [r.getMessage() for r in caplog.records if str(cut) in r.getMessage()]  # not recovered yet: said
    recover(cut)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert [job.out.name for job in find_jobs(tmp_path, tmp_path / "out")] == ["rig0.mp4"]
    assert [r.getMessage() for r in caplog.records] == []


@pytest.mark.timeout(180)
def test_a_live_run_records_in_parts_and_counts_as_for_one_file(tmp_path):
    from test_pipeline import _start

    path = tmp_path / "runs" / "rig0.mcap"
    small = [f"--set={s}.{k}={v}" for s in ("ir", "vis") for k, v in (("width", 64), ("height", 48))]
    # stopped once its third part has begun: a --duration of 4 s on a busy machine recorded only 2 parts
    proc = _start(f"--set=record.path={path}", "--set=record.split_s=1", *small)
    read = []  # its log, read as it comes so that the pipe never fills while the parts are waited for
    reader = threading.Thread(target=lambda: read.append(proc.stdout.read()), daemon=True)
    reader.start()
    try:
        third = (part_path(path, 2), path.parent / f".{part_path(path, 2).name}.partial")
        deadline = time.monotonic() + 120
        while not any(p.exists() for p in third) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        reader.join(timeout=30)
    out = "".join(read)
    assert proc.returncode == 0, out
    recorded = re.search(r"recorded (\d+) IR and (\d+) visible frames to (\d+) parts, rig0_0000\.mcap to "
                         r"(rig0_\d{4}\.mcap) \(a replay reads them all from the first\)", out)
    assert recorded, out
    n_ir, n_vis, parts = map(int, recorded.group(1, 2, 3))
    assert parts >= 3 and sorted(p.name for p in path.parent.iterdir()) == [
        part_path(path, i).name for i in range(parts)] and recorded.group(4) == part_path(path, parts - 1).name
    final = next(line for line in out.splitlines() if "final:" in line)
    assert "record_failed" not in final and "record_dropped" not in final  # 0: left out of the line
    assert f"received.ir={n_ir} " in final and f"received.vis={n_vis} " in final  # every frame received recorded
    got = list(read_recording(part_path(path, 0)))
    assert len(got) == n_ir + n_vis and sum(f.stream == "ir" for f in got) == n_ir
    for stream in ("ir", "vis"):
        seqs = [f.seq for f in got if f.stream == stream]
        assert seqs == sorted(set(seqs))  # none twice, in order across the parts


def test_a_resume_sees_a_later_part_changed(tmp_path):
    """An interrupted replay of a split recording is continued only while every part is as it was: the first part's
    size and time alone let a recovered or replaced later part pass."""
    from streamfuse.config import config_from_dict
    from streamfuse.replay.fingerprints import fingerprint
    from streamfuse.replay.inputs import resolve

    _record(tmp_path / "rig0.mcap", _synthetic_run(90), split_s=1)
    cfg = config_from_dict({"ir": {"kind": "mcap"}, "vis": {"kind": "mcap"}, "fuse": {"name": "max"}})
    first = part_path(tmp_path / "rig0.mcap", 0)
    inputs = [resolve(stream, getattr(cfg, stream), first) for stream in ("ir", "vis")]
    before = fingerprint(cfg, *inputs)
    later = part_path(tmp_path / "rig0.mcap", 2)
    os.utime(later, ns=(os.stat(later).st_atime_ns, os.stat(later).st_mtime_ns + 1_000_000_000))
    assert fingerprint(cfg, *inputs) != before


def test_a_discarded_split_recording_leaves_no_part(tmp_path):
    """A run that fails before its other source delivered a frame keeps nothing of its recording, so that the
    corrected rerun can record to the same path: the parts finished meanwhile go too."""
    frames = [f for f in _synthetic_run(90) if f.stream == "vis"]  # the IR camera never delivered
    path = tmp_path / "runs" / "rig0.mcap"
    with _recorder_clock():
        rec = Recorder(RecordConfig(path=str(path), split_s=1), queue_size=len(frames))
        for frame in frames:
            rec.write(frame)
        rec._worker.join()
    assert rec.parts == 3
    rec.discard()
    rec.__exit__(None, None, None)  # the live run's `with` block around it ends after the discard
    assert not (tmp_path / "runs").exists()
    check_record_path(path, split=True)


def test_split_s_counts_the_recorders_clock_not_the_frames_stamps(tmp_path):
    """A camera clock set forward an hour, then back two, mid-run: the parts end each second of the recorder's own
    clock as they do for frames stamped steadily (the stamps' jumps ended a part at once, then none ever again)."""
    frames = _synthetic_run(150)  # 5 s
    steady = {id(frame): frame.t_capture_ns - T0 for frame in frames}  # the recorder's clock, steady throughout
    cfg = RecordConfig(path=str(tmp_path / "steady.mcap"), chunk_mb=0.0625, compression="none", split_s=1)
    with _recorder_clock(lambda frame: steady[id(frame)]), Recorder(cfg, queue_size=len(frames)) as rec:
        for frame in frames:
            rec.write(frame)
    for frame in frames:
        frame.t_capture_ns += 3600_000_000_000 * ((steady[id(frame)] >= 1_500_000_000) - 2 * (
            steady[id(frame)] >= 2_200_000_000))
    with _recorder_clock(lambda frame: steady[id(frame)]), Recorder(
            RecordConfig(path=str(tmp_path / "jumps.mcap"), chunk_mb=0.0625, compression="none", split_s=1),
            queue_size=len(frames)) as jumps:
        for frame in frames:
            jumps.write(frame)

    def sizes(path) -> list[int]:
        return [len(list(read_recording(part_path(path, i)))) for i in range(5)]

    assert rec.parts == jumps.parts == 5 and sizes(tmp_path / "jumps.mcap") == sizes(tmp_path / "steady.mcap")
    assert _key(read_recording(part_path(tmp_path / "jumps.mcap", 0))) == _key(frames)


# MemoryError: the last chunk's compression buffer not allocated; it left the next part's file open, its sync thread
# running and its empty .partial behind
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), MemoryError()],
                         ids=["disk full", "out of memory"])
def test_a_part_that_cannot_be_finished_leaves_no_empty_part_after_it(tmp_path, monkeypatch, error):
    # an empty .partial part beside the one `recover` finishes: the set then read as cut short there
    from streamfuse.record_parts import PartWriter

    def finish(self):
        raise error

    monkeypatch.setattr(PartWriter, "finish", finish)
    frames = _synthetic_run(90)
    rec = _record(tmp_path / "rig0.mcap", frames, split_s=1)
    assert rec.error is not None and [p.name for p in tmp_path.iterdir()] == [".rig0_0000.mcap.partial"]


def test_a_part_whose_folder_sync_fails_once_it_has_its_name_is_kept_and_the_recording_goes_on(tmp_path, caplog,
                                                                                                 monkeypatch):
    """The part was whole under its name, yet the recording stopped there, its later frames dropped, and the error
    named the next part as the one that could not begin."""
    import streamfuse.atomic_write

    first, real_sync = part_path(tmp_path / "rig0.mcap", 0), streamfuse.atomic_write._sync_folder

    def failing(folder):
        if first.exists() and not part_path(tmp_path / "rig0.mcap", 1).exists():  # once, as the first part ends
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_sync(folder)

    monkeypatch.setattr(streamfuse.atomic_write, "_sync_folder", failing)
    frames = _synthetic_run(90)
    with caplog.at_level(logging.WARNING, logger="streamfuse.record_parts"):
        rec = _record(tmp_path / "rig0.mcap", frames, split_s=1)
    assert rec.error is None and not any(rec.dropped.values()) and rec.parts > 2
    assert _key(read_recording(first)) == _key(frames)
    assert [r.getMessage() for r in caplog.records if r.name == "streamfuse.record_parts"] == [
        f"recording part {first} is whole and has its name, but its folder could not be synced after it took it "
        f"(Input/output error): a power loss may yet lose that name; copy it elsewhere"]
