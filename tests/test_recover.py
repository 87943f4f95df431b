"""``python -m streamfuse recover``: a recording cut short by a kill becomes a finished one that replays to the end."""

from __future__ import annotations

import errno
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mcap.writer import Writer
from test_record import _chunk_offsets

from streamfuse.atomic_write import partial_path
from streamfuse.capture.mcap_source import read_messages, read_recording
from streamfuse.capture.sources import SourceError
from streamfuse.config import config_from_dict
from streamfuse.frames import Frame
from streamfuse.recording import RecordConfig, Recorder
from streamfuse.recover import main, recover
from streamfuse.replay import ReplayError, run_replay
from streamfuse.signals import HANGUP, handled
from streamfuse.sync import Pairer
from streamfuse.video import decode_frames

T0 = 1_700_000_000_000_000_000


def _frames(rng: np.random.Generator, n: int = 30, *, smooth: bool = False) -> list[Frame]:
    """Live-like arrivals: visible at 30 fps, IR at 25 fps arriving 15 ms late (not in capture-time order); noise,
    which zstd stores as it is, or ``smooth`` moving gradients, which it compresses."""
    yy, xx = np.mgrid[0:48, 0:64]
    out = []
    for i in range(n):
        ir = ((xx * 4 + yy * 2 + 9 * i) % 256).astype(np.uint8) if smooth else rng.integers(0, 256, (48, 64), np.uint8)
        vis = np.dstack([ir, 255 - ir, ir // 2]) if smooth else rng.integers(0, 256, (48, 64, 3), np.uint8)
        out.append(Frame("vis", i, T0 + i * 33_333_333, vis))
        out.append(Frame("ir", i, T0 + i * 40_000_000 - 15_000_000, ir))
    return out


def _record(path, frames: list[Frame], *, cut: float | None, zeros: bool = False) -> None:
    """A recording of ``frames`` in 64 KiB chunks; with ``cut``, killed: the run never closed it, and its temporary
    file ends at that fraction of its size, mid-chunk (``zeros``: after a power loss, the file keeps its size but
    its end holds zeros, the blocks the disk never got)."""
    rec = Recorder(RecordConfig(path=str(path), chunk_mb=0.0625))
    for f in frames:
        rec.write(f)
    assert not any(rec.dropped.values())  # the writer's queue holds them all: the file has every frame
    if cut is None:
        rec.close()
        return
    rec.abort()
    data = partial_path(path).read_bytes()
    end = int(len(data) * cut)
    partial_path(path).write_bytes(data[:end] + (bytes(len(data) - end) if zeros else b""))


def _messages(path) -> list[tuple]:
    """Every field of every image message that reads back, with its channel and schema, up to a cut."""
    got = []
    try:
        for schema, channel, msg in read_messages(path):
            got.append((schema.name, schema.encoding, schema.data, channel.topic, channel.message_encoding,
                        dict(channel.metadata), msg.log_time, msg.publish_time, msg.sequence, msg.data))
    except SourceError:
        pass
    return got


@pytest.fixture
def cut(tmp_path, rng):
    """(the cut recording .rig.mcap.partial, the frames the run recorded)."""
    frames = _frames(rng)
    _record(tmp_path / "rig.mcap", frames, cut=0.6)
    return partial_path(tmp_path / "rig.mcap"), frames


# a power loss in a chunk of noise leaves frames whose zstd block decodes with zeros in it (the chunk's CRC tells);
# in a compressed chunk, zstd's own check fails
@pytest.mark.parametrize("power_loss, smooth, cut", [(False, False, 0.6), (True, False, 0.6), (True, True, 0.7)],
                         ids=["killed", "power loss", "power loss, compressed"])
def test_a_cut_recording_recovers_its_frames_as_written_and_replays_to_the_end(tmp_path, rng, capsys, power_loss,
                                                                              smooth, cut):
    frames = _frames(rng, smooth=smooth)
    _record(tmp_path / "rig.mcap", frames, cut=cut, zeros=power_loss)
    src = partial_path(tmp_path / "rig.mcap")
    with pytest.raises(SourceError, match="truncated or corrupt"):
        list(read_recording(src))
    before = src.read_bytes()
    assert main([str(src)]) == 0
    out = tmp_path / "rig.mcap"
    got = list(read_recording(out))
    assert 0 < len(got) < len(frames)
    assert [(f.stream, f.seq, f.t_capture_ns) for f in got] == [(f.stream, f.seq, f.t_capture_ns)
                                                                 for f in frames[:len(got)]]
    for a, b in zip(frames, got):
        np.testing.assert_array_equal(a.image, b.image)
    assert _messages(out) == _messages(src)  # bytes, times, sequence numbers, schema and channels as written
    assert src.read_bytes() == before  # the cut recording is only read
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name, "rig.mcap"]  # no temporary file left
    n = {s: sum(f.stream == s for f in got) for s in ("ir", "vis")}
    times = [f.t_capture_ns for f in got]
    assert capsys.readouterr().out == (
        f"recovered {n['ir']} IR and {n['vis']} visible frames ({(max(times) - min(times)) / 1e9:.3f} s of capture "
        f"time, {min(times)} to {max(times)} ns) from {src} into {out}; what was recorded after the cut is lost\n")

    cfg = config_from_dict({"ir": {"kind": "mcap"}, "vis": {"kind": "mcap"}, "fuse": {"name": "max"},
                            "replay": {"progress": False, "codec": "ffv1"}})
    pairer = Pairer(cfg.sync)
    pairs = [p for f in got for p in pairer.push(f)] + pairer.flush()
    summary = run_replay(cfg, ir_path=out, out_path=tmp_path / "fused.mkv", resume=False)
    assert summary.complete and summary.written == len(pairs) > 0
    assert (tmp_path / "fused.mkv").exists() and not partial_path(tmp_path / "fused.mkv").exists()


def test_a_replay_of_a_cut_recording_says_how_to_recover_it(tmp_path, cut, capsys):
    """Replayed as it is, a cut recording stops at its cut; its line gives the command that saves its frames, and
    that command, run as given, makes the recording that replays to its end."""
    src, _ = cut
    cfg = config_from_dict({"ir": {"kind": "mcap"}, "vis": {"kind": "mcap"}, "fuse": {"name": "max"},
                            "replay": {"progress": False}})
    with pytest.raises(ReplayError) as info:
        run_replay(cfg, ir_path=src, out_path=tmp_path / "fused.mkv", resume=False)
    command = re.search(r"`python -m streamfuse recover (.+?)` saves its frames", str(info.value))
    assert command is not None, str(info.value)
    assert main(shlex.split(command.group(1))) == 0 and (tmp_path / "rig.mcap").is_file()


def test_a_complete_recording_is_reported_and_left_alone(tmp_path, rng, capsys):
    path = tmp_path / "rig.mcap"
    _record(path, _frames(rng, 3), cut=None)
    assert main([str(path), "--out", str(tmp_path / "copy.mcap")]) == 0
    assert capsys.readouterr().out == f"{path} is a complete recording, not cut: nothing to recover (replay it as " \
                                      "it is)\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rig.mcap"]


def test_a_complete_recording_left_under_its_temporary_name_is_given_its_name(tmp_path, rng):
    # its run's final rename failed (a full disk, a permissions change): called complete, it kept a name no replay
    # of the folder looks for
    path = tmp_path / "rig.mcap"
    _record(path, _frames(rng, 3), cut=None)
    frames = len(list(read_recording(path)))
    path.rename(partial_path(path))
    said = recover(partial_path(path))
    assert said.startswith("recovered ") and said.endswith("it was complete, only not given its name: nothing is lost")
    assert len(list(read_recording(path))) == frames > 0


@pytest.mark.parametrize("named", [True, False], ids=["under its name", "under its temporary name"])
def test_a_complete_recording_damaged_inside_is_not_called_complete(tmp_path, rng, capsys, named):
    """Zeros inside a closed recording (a disk's bad blocks): recover called it complete, to "replay it as it is", and
    a replay of it stopped at the damage; now it says so, and given --out recovers the frames before the damage. Under
    its temporary name, the line that refused it told to run the very command that refused it."""
    path, out = tmp_path / "rig.mcap", tmp_path / "saved.mcap"
    frames = _frames(rng)
    _record(path, frames, cut=None)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    if not named:  # its run's final rename failed
        path = path.rename(partial_path(path))
    assert main([str(path)]) == 1
    said = capsys.readouterr().err
    assert re.fullmatch(r"streamfuse recover: error: recording .*rig\.mcap(\.partial)? is truncated or corrupt after "
                        r"\d+ frames \(.*\): pass --out FILE\.mcap to recover the frames before the damage\n", said)
    assert "`python -m streamfuse recover" not in said, said
    assert main([str(path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.endswith("; what was recorded after the cut is lost\n")  # not "nothing is lost"
    got = list(read_recording(out))
    assert 0 < len(got) < len(frames)
    assert [(f.stream, f.seq) for f in got] == [(f.stream, f.seq) for f in frames[:len(got)]]


def _bytes_read() -> int:
    """The bytes this process has read through read() calls so far (its page-cache hits included)."""
    return int(re.search(r"^rchar: (\d+)$", Path("/proc/self/io").read_text(), re.MULTILINE).group(1))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/self/io")
def test_a_complete_recording_damaged_inside_is_read_once(tmp_path, rng):
    # it was read up to its damage to find it, then again to copy the frames before it
    path = tmp_path / "rig.mcap"
    _record(path, _frames(rng), cut=None)
    data = bytearray(path.read_bytes())
    data[len(data) * 9 // 10:len(data) * 9 // 10 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    recover(path, tmp_path / "first.mcap")  # what a first call loads is not counted
    before = _bytes_read()
    assert recover(path, tmp_path / "saved.mcap").startswith("recovered ")
    assert _bytes_read() - before < 1.2 * len(data)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_its_report_to_a_full_disk_is_the_one_line_every_command_gives(tmp_path, rng):
    # it said "streamfuse recover: error: [Errno 28] No space left on device", unlike the other commands
    path = tmp_path / "rig.mcap"
    _record(path, _frames(rng, 3), cut=None)
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "streamfuse", "recover", str(path)], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert (done.returncode, done.stderr) == (1, "streamfuse recover: error: cannot write its output: No space left "
                                                 "on device\n")


@pytest.mark.parametrize("case, match", [
    ("missing", "recording not found: .*nope.mcap.partial"),
    ("not mcap", r"notes.txt is not an MCAP recording"),
    ("cut in its first chunk", r"nothing to recover: .*\.early\.mcap\.partial holds no complete frame"),
    ("killed at its start", r"nothing to recover: .*\.empty\.mcap\.partial holds no complete frame"),
    ("output exists", r"cannot recover to .*rig\.mcap: it exists; pass another --out or move it away"),
    ("missing folder", r"cannot write .*gone/o\.mcap: .*gone/\.o\.mcap\.partial: No such file or directory"),
    ("folder is a file", r"cannot write .*notes\.txt/o\.mcap: .*: Not a directory"),
    ("not .mcap", r"cannot recover to .*o\.mp4: a recording's name must end in \.mcap"),
    ("no final name", r"cannot name the recovered recording of .*cut\.bin .*: pass --out"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, cut, rng, capsys, case, match):
    src, _ = cut
    args = {"missing": [str(tmp_path / ".nope.mcap.partial")],
            "not mcap": [str(tmp_path / "notes.txt")],
            "cut in its first chunk": [str(tmp_path / ".early.mcap.partial")],
            "killed at its start": [str(tmp_path / ".empty.mcap.partial")],
            "output exists": [str(src)],
            "missing folder": [str(src), "--out", str(tmp_path / "gone" / "o.mcap")],
            "folder is a file": [str(src), "--out", str(tmp_path / "notes.txt" / "o.mcap")],
            "not .mcap": [str(src), "--out", str(tmp_path / "o.mp4")],
            "no final name": [str(tmp_path / "cut.bin")]}[case]
    (tmp_path / "notes.txt").write_text("not a recording\n")
    (tmp_path / "rig.mcap").write_bytes(b"keep me")
    (tmp_path / "cut.bin").write_bytes(src.read_bytes())
    (tmp_path / ".empty.mcap.partial").touch()  # what a run killed before it wrote a byte leaves
    _record(tmp_path / "early.mcap", _frames(rng, 30), cut=0.02)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("streamfuse recover: error: ") and "Traceback" not in err
    assert re.search(match, err), err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_recording_named_in_capitals_is_recovered_to_its_name(tmp_path, cut):
    # the recorder takes record.path=RIG.MCAP (.mcap in any case), and so does replay: recover writes it too
    src, _ = cut
    assert recover(src, tmp_path / "RIG.MCAP").startswith("recovered ")
    assert list(read_recording(tmp_path / "RIG.MCAP"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_an_unwritable_folder_is_one_line(tmp_path, cut, capsys):
    src, _ = cut
    (tmp_path / "ro").mkdir(mode=0o500)
    assert main([str(src), "--out", str(tmp_path / "ro" / "o.mcap")]) == 1
    assert "Permission denied" in capsys.readouterr().err and not list((tmp_path / "ro").iterdir())


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_ctrl_c_or_a_full_disk_midway_leaves_nothing(tmp_path, cut, monkeypatch, exc):
    src, _ = cut
    real, calls = Writer.add_message, []

    def add_message(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise exc
        real(self, *args, **kwargs)

    monkeypatch.setattr(Writer, "add_message", add_message)
    with pytest.raises(type(exc), match=None if isinstance(exc, KeyboardInterrupt) else
                       r"^cannot recover .*rig\.mcap\.partial into .*rig\.mcap: No space left on device$"):
        recover(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_ctrl_c_while_it_looks_for_a_split_recordings_records_leaves_nothing(tmp_path, rng, monkeypatch):
    # a whole file's records are read from its index, once read after its temporary output was made: a Ctrl-C there
    # left that empty file, and every later recover of the recording was refused as writing over it
    import streamfuse.recover

    def read_through(path):
        raise KeyboardInterrupt

    src = partial_path(tmp_path / "rig.mcap")  # left whole under its temporary name: its run's final rename failed
    _record(tmp_path / "rig.mcap", _frames(rng, 3), cut=None)
    (tmp_path / "rig.mcap").rename(src)
    monkeypatch.setattr(streamfuse.recover, "part_marks", read_through)
    with pytest.raises(KeyboardInterrupt):
        recover(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts the bytes read in /proc/self/io")
def test_a_cut_recording_is_read_once(tmp_path, rng):
    # it was read through a second time for a split recording's records, which a cut file of one part has none of:
    # 40-50% of the time on a recording of a few hundred MB
    path = tmp_path / "rig.mcap"
    _record(path, _frames(rng), cut=0.9)
    size = partial_path(path).stat().st_size

    def read_bytes() -> int:
        return int(re.search(r"^rchar: (\d+)$", Path("/proc/self/io").read_text(), re.M)[1])

    before = read_bytes()
    recover(partial_path(path))
    assert size <= read_bytes() - before < 1.5 * size
    assert len(_messages(path)) == len(_messages(partial_path(path)))


@pytest.mark.parametrize("stop", ["ctrl_c", "sigterm", "sighup"])
def test_a_stop_through_the_command_is_one_line_exit_130_and_leaves_nothing(tmp_path, cut, monkeypatch, capsys,
                                                                             stop):
    """Ctrl-C, or a SIGTERM (a service manager stopping it) or SIGHUP (its terminal gone), taken as Ctrl-C, midway
    through the copy: the temporary file goes, one line, exit 130."""
    from streamfuse import cli

    src, _ = cut
    real, calls = Writer.add_message, []

    def add_message(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5 and stop != "ctrl_c":
            os.kill(os.getpid(), signal.SIGTERM if stop == "sigterm" else signal.SIGHUP)
        elif len(calls) == 5:
            raise KeyboardInterrupt
        real(self, *args, **kwargs)

    monkeypatch.setattr(Writer, "add_message", add_message)
    monkeypatch.setattr(sys, "argv", ["streamfuse", "recover", str(src)])

    def unhandled(*_):  # the command sets its own handler for the copy: this one fires only if it did not
        raise AssertionError(f"{stop} reached the caller's handler")

    # handled() puts back the Ctrl-C handler, which console() leaves ignored once its command is over; the net is set
    # directly, since handled() leaves a SIGHUP ignored from the start (a suite run under nohup) as it is
    nets = {sig: signal.signal(sig, unhandled) for sig in (signal.SIGTERM, *HANGUP)}
    try:
        with handled(signal.getsignal(signal.SIGINT), (signal.SIGINT,)), pytest.raises(SystemExit) as exc:
            cli.console()
    finally:
        for sig, previous in nets.items():
            signal.signal(sig, previous)
    assert exc.value.code == 130 and capsys.readouterr().err == "streamfuse recover: interrupted (Ctrl-C)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_a_recording_a_running_run_still_writes_is_not_recovered(tmp_path, rng):
    # recover took a live run's .partial: it wrote a short NAME.mcap that looked finished, which the run's own final
    # rename then replaced; a second run told to recover that same file was pointed at it too
    path = tmp_path / "rig.mcap"
    rec = Recorder(RecordConfig(path=str(path), chunk_mb=0.0625))
    try:
        for f in _frames(rng, 3):
            rec.write(f)
        with pytest.raises(ValueError, match=r"is being recorded by a running run \(its record\.path\); it is "
                                             r"finished when that run ends"):
            recover(partial_path(path))
        assert not path.exists()
        with pytest.raises(RuntimeError, match=r"exists \(another run is recording to it\)"):
            Recorder(RecordConfig(path=str(path)))
    finally:
        rec.close()
    assert path.is_file() and not partial_path(path).exists()


def test_a_cut_recording_of_the_ir_stream_alone_recovers_under_its_own_header(tmp_path, rng, capsys):
    # a rig whose visible camera gave nothing before the kill still has IR frames to recover
    from mcap.reader import NonSeekingReader

    frames = [f for f in _frames(rng, 60) if f.stream == "ir"]
    _record(tmp_path / "rig.mcap", frames, cut=0.6)
    src = partial_path(tmp_path / "rig.mcap")
    assert main([str(src)]) == 0
    got = list(read_recording(tmp_path / "rig.mcap"))
    assert 0 < len(got) < len(frames) and {f.stream for f in got} == {"ir"}
    assert capsys.readouterr().out.startswith(f"recovered {len(got)} IR and 0 visible frames (")
    headers = []
    for path in (src, tmp_path / "rig.mcap"):
        with open(path, "rb") as f:
            header = NonSeekingReader(f).get_header()
        headers.append((header.profile, header.library))
    assert headers[0] == headers[1] and headers[0][0]


def test_a_temporary_file_another_recover_left_is_not_written_over(tmp_path, cut, capsys):
    src, _ = cut
    theirs = tmp_path / ".o.mcap.partial"  # a second recover to the same --out, still copying
    theirs.write_bytes(b"another recover's copy")
    assert main([str(src), "--out", str(tmp_path / "o.mcap")]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"streamfuse recover: error: cannot write .*o\.mcap: .*\.o\.mcap\.partial: File exists\n", err)
    assert theirs.read_bytes() == b"another recover's copy" and not (tmp_path / "o.mcap").exists()


def test_a_cut_recording_not_named_as_the_recorder_names_it_needs_out(tmp_path, cut, capsys):
    # without its leading dot, NAME.mcap.partial is no name the recorder gives: "ig.mcap" is not its final name
    src, _ = cut
    (tmp_path / "in").mkdir()
    plain = tmp_path / "in" / "rig.mcap.partial"
    plain.write_bytes(src.read_bytes())
    assert main([str(plain)]) == 1
    assert "cannot name the recovered recording of" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["rig.mcap.partial"]


def test_a_chunk_claiming_an_impossible_size_is_damage_in_one_line(tmp_path, rng, capsys):
    # a flipped top byte of a chunk's uncompressed size: zstd's OverflowError came out of recover as a traceback, and
    # out of a replay's decoder thread
    path, out = tmp_path / "rig.mcap", tmp_path / "saved.mcap"
    frames = _frames(rng)
    _record(path, frames, cut=None)
    data = bytearray(path.read_bytes())
    data[_chunk_offsets(bytes(data))[1] + 9 + 16 + 7] = 0xFF  # after the opcode, length and two times
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="truncated or corrupt after"):
        list(read_recording(path))
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(r"streamfuse recover: error: recording .* is truncated or corrupt", err)
    assert main([str(path), "--out", str(out)]) == 0
    got = list(read_recording(out))
    assert 0 < len(got) < len(frames) and [(f.stream, f.seq) for f in got] == [(f.stream, f.seq)
                                                                             for f in frames[:len(got)]]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    # recover opened it to read: with no writer, it waited in open() for good
    import threading

    from helpers_zmq import PATIENCE_S

    fifo = partial_path(tmp_path / "rig.mcap")
    os.mkfifo(fifo)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main([str(fifo)])), daemon=True)
    thread.start()
    thread.join(PATIENCE_S)
    if thread.is_alive():  # a writer frees the open() it waits in
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(PATIENCE_S)
        pytest.fail("recover waited in open() on the FIFO")
    assert codes == [1]
    assert capsys.readouterr().err == f"streamfuse recover: error: {fifo} is not a recording file (a folder, pipe " \
                                      "or device)\n"


def test_a_file_given_the_output_name_while_it_copies_is_not_written_over(tmp_path, cut, monkeypatch, capsys):
    import streamfuse.recover

    src, _ = cut
    out = tmp_path / "saved.mcap"
    real_copy = streamfuse.recover._copy

    def copy_then_taken(*args):
        done = real_copy(*args)
        out.write_bytes(b"keep me")  # another program's file, given that name meanwhile
        return done

    monkeypatch.setattr(streamfuse.recover, "_copy", copy_then_taken)
    assert main([str(src), "--out", str(out)]) == 1
    assert out.read_bytes() == b"keep me" and not partial_path(out).exists()
    assert capsys.readouterr().err == f"streamfuse recover: error: cannot recover {src} into {out}: File exists\n"


@pytest.mark.parametrize("when", ["after its link", "after its temporary name went"])
def test_a_recovered_file_whose_folder_sync_fails_is_said_to_be_there(tmp_path, cut, monkeypatch, capsys, when):
    """The file linked into place whole, the folder's fsync failed: it was said not to be recovered, though it was."""
    import streamfuse.atomic_write

    src, _ = cut
    out = tmp_path / "saved.mcap"
    real_sync = streamfuse.atomic_write._sync_folder

    def failing(folder):
        if out.exists() and (when == "after its link" or not partial_path(out).exists()):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_sync(folder)

    monkeypatch.setattr(streamfuse.atomic_write, "_sync_folder", failing)
    assert main([str(src), "--out", str(out)]) == 1  # the user must act: copy it elsewhere, keep the cut one
    assert len(_messages(out)) == len(_messages(src)) > 0 and set(tmp_path.iterdir()) == {src, out}
    err = capsys.readouterr().err
    monkeypatch.undo()
    said = recover(src, tmp_path / "again.mcap").replace(str(tmp_path / "again.mcap"), str(out))  # where the sync works
    assert err == (f"streamfuse recover: error: {said}; but its folder could not "
                   f"be synced after it took its name (Input/output error): a power loss may yet lose that name; keep "
                   f"the cut recording and copy the recovered one elsewhere\n")


def test_a_link_at_the_output_name_that_points_nowhere_is_refused_before_the_copy(tmp_path, cut):
    src, _ = cut
    out = tmp_path / "saved.mcap"
    os.symlink(tmp_path / "elsewhere.mcap", out)
    with pytest.raises(FileExistsError, match="it exists"):
        recover(src, out)
    assert out.is_symlink() and not partial_path(out).exists()


def test_a_recovered_recording_carries_its_data_section_crc(tmp_path, cut):
    # so that damage no chunk CRC covers (a chunk header's times) is found
    src, _ = cut
    out = tmp_path / "saved.mcap"
    assert recover(src, out).startswith("recovered ")
    data = bytearray(out.read_bytes())
    data[_chunk_offsets(bytes(data))[0] + 9] ^= 0x10  # its message_start_time: in no chunk CRC, read without a fault
    out.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="truncated or corrupt after .* frames .*crc"):
        list(read_recording(out))


def test_a_cut_recording_of_visible_frames_alone_is_recovered(tmp_path, rng):
    """A run whose IR camera gave nothing (or a visible-only rig) recorded visible frames alone: they are recovered,
    not called nothing to recover."""
    frames = [f for f in _frames(rng) if f.stream == "vis"]
    _record(tmp_path / "rig.mcap", frames, cut=0.6)
    said = recover(partial_path(tmp_path / "rig.mcap"))
    got = sum(1 for _ in read_messages(tmp_path / "rig.mcap"))
    assert said.startswith(f"recovered 0 IR and {got} visible frames ") and 0 < got < len(frames)


def test_a_cut_recording_with_the_irs_counts_says_its_ir_frames_not_its_messages(tmp_path, rng):
    """A thermal camera's counts travel beside each IR frame (/ir/counts): recovered with them, they are no more IR
    frames."""
    frames = [Frame(f.stream, f.seq, f.t_capture_ns, f.image, counts=f.image.astype(np.uint16) << 6)
              if f.stream == "ir" else f for f in _frames(rng)]
    _record(tmp_path / "rig.mcap", frames, cut=0.6)
    said = recover(partial_path(tmp_path / "rig.mcap"))
    ir = sum(1 for _, channel, _ in read_messages(tmp_path / "rig.mcap") if channel.topic == "/ir/image")
    assert said.startswith(f"recovered {ir} IR and ") and ir > 0


def test_its_line_shows_a_name_s_control_characters_as_escapes(tmp_path, rng):
    # it printed the names as they were: an escape sequence in one drew on the terminal, a line break split the line
    path = tmp_path / "rig\x1b[31m.mcap"
    _record(path, _frames(rng, 10), cut=0.9)
    said = recover(partial_path(path), tmp_path / "fixed\n.mcap")
    assert ".rig\\x1b[31m.mcap.partial into " in said and "fixed\\n.mcap;" in said and "\n" not in said


def _replayed_to_the_cut_and_recovered(tmp_path: Path, src: Path):
    """The config of a replay of the cut recording ``src`` into fused.mkv, stopped at its cut; ``src`` recovered."""
    cfg = config_from_dict({"ir": {"kind": "mcap"}, "vis": {"kind": "mcap"}, "fuse": {"name": "max"},
                            "replay": {"progress": False, "codec": "ffv1"}})
    with pytest.raises(ReplayError, match="truncated or corrupt"):
        run_replay(cfg, ir_path=src, out_path=tmp_path / "fused.mkv", resume=False)
    assert main([str(src)]) == 0
    return cfg


def test_a_replay_stopped_at_the_cut_resumes_from_the_recording_recovered_of_it(tmp_path, cut):
    """A replay of a cut recording stops at its cut; its output was refused to a --resume from the recording recover
    made of it (another file: its input "changed"), which holds the same frames, up to that cut."""
    src, _ = cut
    cfg = _replayed_to_the_cut_and_recovered(tmp_path, src)
    resumed = run_replay(cfg, ir_path=tmp_path / "rig.mcap", out_path=tmp_path / "fused.mkv", resume=True)
    whole = run_replay(cfg, ir_path=tmp_path / "rig.mcap", out_path=tmp_path / "whole.mkv", resume=False)
    assert resumed.complete and resumed.reused > 0 and resumed.written == whole.written
    for (t, a), (u, b) in zip(*(decode_frames(tmp_path / name) for name in ("fused.mkv", "whole.mkv")), strict=True):
        assert t == u
        np.testing.assert_array_equal(a, b)


def test_a_resume_from_a_recovered_recording_whose_cut_one_is_gone_says_why_it_is_refused(tmp_path, cut):
    src, _ = cut
    cfg = _replayed_to_the_cut_and_recovered(tmp_path, src)
    src.unlink()
    with pytest.raises(FileExistsError, match=f"; {re.escape(str(tmp_path / 'rig.mcap'))} was recovered of the cut "
                                              f"recording it read, which is not there as it was, so nothing says it "
                                              f"holds the same frames; run it with the inputs"):
        run_replay(cfg, ir_path=tmp_path / "rig.mcap", out_path=tmp_path / "fused.mkv", resume=True)
    assert partial_path(tmp_path / "fused.mkv").exists()  # its frames kept
