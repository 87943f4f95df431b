"""The parts of a split recording know their set: a file only named like a part is not read with it, a set that goes
on past its last part here is told, and a replay of a folder names a set's output after the set."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import struct
import threading
from typing import Callable

import pytest
from mcap.writer import Writer

from streamfuse.atomic_write import partial_path
from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceError
from streamfuse.frames import Frame
from streamfuse.part_set import part_marks
from streamfuse.record_parts import END_RECORD, PART_RECORD, part_path
from streamfuse.recording import IMAGE_SCHEMA_TEXT, TOPICS, encode_image
from streamfuse.recover import recover
from test_record_split import _key, _killed, _record, _synthetic_run


def _other_tool(path, frames: list[Frame], records: tuple[tuple[str, dict], ...] = (),
                library: str = "another-recorder", topics: dict[str, str] = TOPICS) -> None:
    """An MCAP file of the same images as another tool writes it: no record of any set (or ``records``, by hand), on
    our recorder's topics (or ``topics``)."""
    with open(path, "wb") as f:
        writer = Writer(f, chunk_size=4096)
        writer.start(profile="ros2", library=library)
        for name, record in records:
            writer.add_metadata(name, record)
        schema = writer.register_schema("sensor_msgs/msg/Image", "ros2msg", IMAGE_SCHEMA_TEXT.encode())
        channels = {s: writer.register_channel(topic, "cdr", schema) for s, topic in topics.items()}
        for frame in frames:
            writer.add_message(channels[frame.stream], frame.t_capture_ns, encode_image(frame, "optical"),
                               frame.t_capture_ns, frame.seq)
        writer.finish()


def test_a_part_of_another_recording_beside_the_first_is_refused_naming_it(tmp_path):
    # read as the set's second part: another run's frames mixed into this one's, without a word
    frames = _synthetic_run(90)
    _record(tmp_path / "a" / "rig0.mcap", frames, split_s=1)
    _record(tmp_path / "b" / "rig0.mcap", frames, split_s=1)
    (tmp_path / "mix").mkdir()
    first, stranger = tmp_path / "mix" / "rig0_0000.mcap", tmp_path / "mix" / "rig0_0001.mcap"
    shutil.copy(part_path(tmp_path / "a" / "rig0.mcap", 0), first)
    shutil.copy(part_path(tmp_path / "b" / "rig0.mcap", 1), stranger)
    with pytest.raises(SourceError, match=rf"^recording {first}: {stranger} is not its part 1 \(it is of another "
                                          rf"recording, only named like one\): move it away to replay the set$"):
        list(read_recording(first))


def test_files_of_another_tool_named_like_parts_are_read_alone(tmp_path):
    # foo_0001.mcap was read after foo_0000.mcap as its second part
    frames = _synthetic_run(30)
    _other_tool(tmp_path / "foo_0000.mcap", frames[:20])
    _other_tool(tmp_path / "foo_0001.mcap", frames[20:])
    assert _key(read_recording(tmp_path / "foo_0000.mcap")) == _key(frames[:20])


def test_a_set_without_its_last_part_is_told(tmp_path):
    # the parts up to the one before were read as the whole recording
    _record(tmp_path / "rig0.mcap", _synthetic_run(150), split_s=1)
    parts = sorted(tmp_path.glob("rig0_*.mcap"))
    assert len(parts) >= 3
    parts[-1].unlink()
    with pytest.raises(SourceError, match=rf"^recording {parts[0]}: the set goes on after {parts[-2].name}, its last "
                                          rf"part here \(the run recorded more\): its last parts are missing"):
        list(read_recording(parts[0]))
    for part in parts[1:-1]:
        part.unlink()
    with pytest.raises(SourceError, match=rf"the set goes on after {parts[0].name}, its last part here"):
        list(read_recording(parts[0]))


def test_a_part_cut_before_its_first_frame_reached_the_disk_is_recovered_as_the_sets_end(tmp_path):
    # recover found nothing in it, and the set without it could not be told from one whose last part is missing
    frames, path = _synthetic_run(150), tmp_path / "rig0.mcap"
    rec, cut = _killed(path, frames)
    first = part_path(path, 0)
    before = list(read_recording(part_path(path, rec.parts - 2)))
    cut.write_bytes(b"")  # killed before a byte of it was on the disk
    assert recover(cut) == (f"{cut} holds no complete frame (it was cut before its first chunk was written): "
                            f"{part_path(path, rec.parts - 1)} ends its split recording with no frame, so that "
                            f"the set reads to its end")
    got = _key(read_recording(first))
    assert got == _key(frames)[:len(got)] and got[-1] == _key(before)[-1]


def test_an_empty_cut_part_with_a_later_part_beside_it_is_recovered_as_a_middle_part(tmp_path):
    # its line said it ended the set, which it does not: the later part is read after it
    frames, path = _synthetic_run(150), tmp_path / "rig0.mcap"
    rec = _record(path, frames, split_s=1)
    assert rec.parts >= 3
    middle = part_path(path, 1)
    lost = _key(read_recording(middle))  # the part read alone: its frames
    middle.unlink()
    cut = tmp_path / f".{middle.name}.partial"
    cut.write_bytes(b"")  # its run could not write a byte of it, and went on to the next part
    assert recover(cut) == (f"{cut} holds no complete frame (it was cut before its first chunk was written): "
                            f"{middle} keeps its place in its split recording with no frame, so that the set reads "
                            f"on to its next part")
    assert _key(read_recording(part_path(path, 0))) == [key for key in _key(frames) if key not in lost]


def test_a_folder_names_a_sets_output_after_the_set_unless_a_recording_there_has_that_name(tmp_path, caplog):
    # rig0_0000.mp4: named after the first part, as if the set were that part alone
    from streamfuse.batch.jobs import find_jobs

    _record(tmp_path / "bags" / "rig0.mcap", _synthetic_run(90), split_s=1)
    _record(tmp_path / "bags" / "other.mcap", _synthetic_run(10))
    assert [job.out.name for job in find_jobs(tmp_path / "bags", tmp_path / "out")] == ["other.mp4", "rig0.mp4"]
    assert [job.out.name for job in find_jobs(part_path(tmp_path / "bags" / "rig0.mcap", 0), tmp_path / "out")] == [
        "rig0.mp4"]
    _record(tmp_path / "bags" / "rig0.mcap", _synthetic_run(10))
    with caplog.at_level(logging.WARNING):
        jobs = find_jobs(tmp_path / "bags", tmp_path / "out")
    assert [job.out.name for job in jobs] == ["other.mp4", "rig0.mp4", "rig0_0000.mp4"]
    assert caplog.messages == [f"{part_path(tmp_path / 'bags' / 'rig0.mcap', 0)}: its output is named after this "
                               f"first part, not after its set (rig0), as rig0.mcap there is"]


@pytest.mark.parametrize("kind", ["folder", "pipe", "device", "link to nothing", "link loop"])
def test_a_part_that_is_no_regular_file_is_refused_naming_it(tmp_path, kind):
    # a pipe held the read in open() for good; a folder or a device ended the replay's decoder in a traceback
    _record(tmp_path / "rig0.mcap", _synthetic_run(90), split_s=1)
    first, second = part_path(tmp_path / "rig0.mcap", 0), part_path(tmp_path / "rig0.mcap", 1)
    second.unlink()
    if kind == "folder":
        second.mkdir()
    elif kind == "pipe":
        os.mkfifo(second)
    else:
        second.symlink_to({"device": "/dev/null", "link to nothing": "gone.mcap", "link loop": second.name}[kind])
    said = _past_pipe(second, lambda: list(read_recording(first)))
    what = {"folder": "a folder", "pipe": "a pipe or a device", "device": "a pipe or a device"}.get(
        kind, "a link to no file: ")
    assert isinstance(said, SourceError)
    assert re.fullmatch(rf"recording {first}: its part {second} is not a recording file \({re.escape(what)}.*\)",
                        str(said))


def test_a_part_a_running_run_still_writes_is_refused_as_being_recorded_not_as_cut(tmp_path):
    # told as cut short, the user was sent to `recover` a part the run was still writing
    _record(tmp_path / "rig0.mcap", _synthetic_run(90), split_s=1)
    first, last = part_path(tmp_path / "rig0.mcap", 0), max(tmp_path.glob("rig0_*.mcap"))
    writing = last.with_name(f".{last.name}.partial")
    last.rename(writing)
    fd = os.open(writing, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the recorder holds its part while it writes it
        with pytest.raises(SourceError, match=rf"^recording {re.escape(str(first))}: its part "
                                              rf"{re.escape(str(writing))} is being recorded by a running run; "
                                              rf"replay the set once that run has ended$"):
            list(read_recording(first))
    finally:
        os.close(fd)


def _past_pipe(pipe, call: Callable[[], object]) -> object:
    """What ``call()`` returns or raises, run on a thread; a call held in ``pipe``'s open() or read() (for good,
    with no writer) fails the test, let go by a writer that comes and goes."""
    said: list[object] = []

    def run() -> None:
        try:
            said.append(call())
        except BaseException as exc:  # noqa: BLE001  whatever it is, the test names it
            said.append(exc)

    calling = threading.Thread(target=run, daemon=True)
    calling.start()
    calling.join(timeout=30)  # a call that opens no pipe ends long before
    held = calling.is_alive()
    if held and pipe.is_fifo():
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        calling.join(timeout=30)
    assert not held, f"held by {pipe} until a writer came: {said}"
    return said[0]


def test_recover_of_a_part_cut_before_its_record_is_not_held_by_a_pipe_named_as_the_part_before(tmp_path):
    # recover, looking for the set in the part before, waited in the pipe's open() for good
    cut = tmp_path / ".rig0_0001.mcap.partial"
    cut.write_bytes(b"")
    os.mkfifo(tmp_path / "rig0_0000.mcap")
    said = _past_pipe(tmp_path / "rig0_0000.mcap", lambda: recover(cut))
    assert isinstance(said, ValueError) and str(said) == (f"nothing to recover: {cut} holds no complete frame (it was "
                                                          f"cut before its first chunk was written)")


@pytest.mark.parametrize("records", [(), ((PART_RECORD, {"index": "0"}),)], ids=["no record", "no set"])
def test_recover_of_a_part_cut_before_its_record_after_a_part_of_no_set_is_one_line(tmp_path, records):
    # the part before, of a recorder that kept no record of its set (or a record naming none), has no set to give
    _other_tool(tmp_path / "rig0_0000.mcap", _synthetic_run(20), records, "streamfuse")
    cut = tmp_path / ".rig0_0001.mcap.partial"
    cut.write_bytes(b"")
    with pytest.raises(ValueError, match=r"^nothing to recover: .* holds no complete frame"):
        recover(cut)


@pytest.mark.parametrize("record", [{"index": "1"}, {"set": "a1", "index": "x"}, {"set": "a1", "index": "-7"},
                                    {"set": "a1"}], ids=["no set", "no number", "another place", "no place"])
def test_a_cut_part_whose_own_record_is_no_part_of_its_name_is_recovered_as_a_plain_recording(tmp_path, record):
    # a record without its set or place ended recover in a traceback, a place that is no number in a line naming no
    # file, and another place was written into the finished part as its set's end (-7, the set ending at -6 parts)
    _other_tool(tmp_path / "whole.mcap", _synthetic_run(30), ((PART_RECORD, record),), "streamfuse")
    cut = tmp_path / ".rig0_0001.mcap.partial"
    cut.write_bytes((tmp_path / "whole.mcap").read_bytes()[:-20000])
    assert recover(cut).startswith("recovered ")
    assert part_marks(tmp_path / "rig0_0001.mcap")[1] == {}


def test_a_part_moved_away_while_the_set_is_read_is_one_line_naming_it(tmp_path):
    # the replay's decoder ended in a traceback (FileNotFoundError), "see the log"
    _record(tmp_path / "rig0.mcap", _synthetic_run(90), split_s=1)
    first, second = part_path(tmp_path / "rig0.mcap", 0), part_path(tmp_path / "rig0.mcap", 1)
    frames = read_recording(first)
    next(frames)
    second.unlink()  # copied off meanwhile
    with pytest.raises(SourceError, match=rf"^recording {second}: cannot read it \(not found\)$"):
        list(frames)


@pytest.mark.parametrize("ends", [(2, 3), (None, 99)], ids=["two ends", "another count"])
def test_parts_that_contradict_each_other_on_where_the_set_ends_are_refused(tmp_path, ends):
    # read through without a word: the frames of a part after the set's recorded end, or a count no part here has
    frames = _synthetic_run(60)
    for index, (chunk, end) in enumerate(zip((frames[:40], frames[40:80], frames[80:]), (None, *ends))):
        records = ((PART_RECORD, {"set": "a1", "index": str(index)}),) + (
            ((END_RECORD, {"set": "a1", "parts": str(end)}),) if end is not None else ())
        _other_tool(part_path(tmp_path / "rig0.mcap", index), chunk, records, "streamfuse")
    first = part_path(tmp_path / "rig0.mcap", 0)
    wrong = part_path(tmp_path / "rig0.mcap", 1 if ends[0] is not None else 2)
    with pytest.raises(SourceError, match=rf"^recording {first}: {wrong} records that the set ends with "
                                          rf"{ends[0] or ends[1]} parts, yet it is part {wrong.name[-6]} of 3 here"):
        list(read_recording(first))


def test_a_part_whose_index_is_damaged_still_has_its_set_checked(tmp_path):
    # its records unread, the checks stopped there: the set read up to it as whole, its last part missing unsaid
    _record(tmp_path / "rig0.mcap", _synthetic_run(90), split_s=1)
    first, second = part_path(tmp_path / "rig0.mcap", 0), part_path(tmp_path / "rig0.mcap", 1)
    damaged = bytearray(second.read_bytes())
    struct.pack_into("<Q", damaged, len(damaged) - 8 - 20, 2**40)  # the footer's summary start, past the file's end
    second.write_bytes(damaged)
    part_path(tmp_path / "rig0.mcap", 2).unlink()
    with pytest.raises(SourceError, match=rf"^recording {first}: the set goes on after {second.name}, its last part "):
        list(read_recording(first))


def test_a_later_part_on_other_topics_than_the_first_is_refused_naming_it(tmp_path):
    # its IR frames, on /thermal, were left out without a word: only "IR input ended first" told of them
    frames = _synthetic_run(60)
    moved = {"ir": "/thermal", "vis": TOPICS["vis"]}
    for index, (chunk, topics) in enumerate(((frames[:50], TOPICS), (frames[50:], moved))):
        records = ((PART_RECORD, {"set": "a1", "index": str(index)}),) + (
            ((END_RECORD, {"set": "a1", "parts": "2"}),) if index else ())
        _other_tool(part_path(tmp_path / "rig0.mcap", index), chunk, records, "streamfuse", topics)
    first, second = part_path(tmp_path / "rig0.mcap", 0), part_path(tmp_path / "rig0.mcap", 1)
    with pytest.raises(SourceError, match=rf"^recording {first}: its part {second.name} holds its images on /thermal, "
                                          rf"/vis/image, where part 0 holds them on /ir/image, /vis/image \(a "
                                          rf"recording's parts share their topics\): it is of another recording$"):
        list(read_recording(first, {"ir": TOPICS["ir"]}))


def test_a_first_part_recovered_without_a_frame_of_one_stream_reads_on_into_the_parts_that_have_them(tmp_path):
    # its recovered file kept the channels it found frames of: the later part's IR channel, which the first part had
    # without a frame (its camera's first frame came after the split), was refused as another recording's
    frames, path = _synthetic_run(60), tmp_path / "rig0.mcap"
    first, second = part_path(path, 0), part_path(path, 1)
    _other_tool(first, [f for f in frames[:50] if f.stream == "vis"], ((PART_RECORD, {"set": "a1", "index": "0"}),),
                "streamfuse")
    _other_tool(second, frames[50:], ((PART_RECORD, {"set": "a1", "index": "1"}), (END_RECORD, {"set": "a1",
                                                                                                  "parts": "2"})),
                "streamfuse")
    first.rename(partial_path(first))  # left whole under its temporary name: its finish failed at the split
    recover(partial_path(first))
    kept = [f for f in frames[:50] if f.stream == "vis"] + frames[50:]
    assert [(f.stream, f.t_capture_ns) for f in read_recording(first)] == [(f.stream, f.t_capture_ns) for f in kept]


def test_a_finished_part_damaged_inside_keeps_its_place_in_the_set_once_recovered(tmp_path):
    # recover --out wrote it without its set's record: put back as the part, the set refused it as another recording's
    frames, path = _synthetic_run(150), tmp_path / "rig0.mcap"
    _record(path, frames, split_s=1)
    parts = sorted(tmp_path.glob("rig0_*.mcap"))
    assert len(parts) >= 3
    data = bytearray(parts[1].read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)  # a disk's bad blocks
    parts[1].write_bytes(bytes(data))
    saved = tmp_path / "saved.mcap"
    assert recover(parts[1], saved).startswith("recovered ")
    os.replace(saved, parts[1])
    got = _key(read_recording(parts[0]))
    assert len(got) < len(frames) and got[-1] == _key(frames)[-1]  # the frames after the damage lost, and those only


def test_the_parts_of_a_recorder_that_kept_no_record_of_their_set_are_read_as_one(tmp_path):
    frames = _synthetic_run(30)
    _other_tool(tmp_path / "rig0_0000.mcap", frames[:20], library="streamfuse")
    _other_tool(tmp_path / "rig0_0001.mcap", frames[20:], library="streamfuse")
    assert _key(read_recording(tmp_path / "rig0_0000.mcap")) == _key(frames)


def test_a_set_reads_only_its_own_parts_beside_a_set_whose_name_begins_with_its_name(tmp_path):
    frames, night = _synthetic_run(90), _synthetic_run(150)
    _record(tmp_path / "cam.mcap", frames, split_s=1)
    _record(tmp_path / "cam_night.mcap", night, split_s=1)
    assert _key(read_recording(tmp_path / "cam_0000.mcap")) == _key(frames)


def test_a_part_moved_into_another_place_of_its_set_is_refused_naming_it(tmp_path):
    # the set read on over the gap, the frames of a part lost without a word
    _record(tmp_path / "rig0.mcap", _synthetic_run(150), split_s=1)
    parts = sorted(tmp_path.glob("rig0_*.mcap"))
    parts[-2].unlink()
    parts[-1].rename(parts[-2])
    with pytest.raises(SourceError, match=rf"^recording {parts[0]}: {parts[-2]} is not its part {len(parts) - 2} "):
        list(read_recording(parts[0]))


def test_a_cut_part_whose_earlier_parts_were_copied_off_is_recovered_into_its_set(tmp_path):
    # the parts are finished one by one so that they can be copied off while the run goes on
    frames, path, away = _synthetic_run(150), tmp_path / "rig0.mcap", tmp_path / "copied"
    rec, cut = _killed(path, frames)
    away.mkdir()
    for index in range(rec.parts - 1):
        part_path(path, index).rename(part_path(away / "rig0.mcap", index))
    assert recover(cut).startswith("recovered ")
    part_path(path, rec.parts - 1).rename(part_path(away / "rig0.mcap", rec.parts - 1))
    assert _key(read_recording(part_path(away / "rig0.mcap", 0))) == _key(frames)


def test_a_set_under_a_hidden_name_is_read_whole(tmp_path):
    # each part of .rig0.mcap was refused as cut short, its leading dot taken for a temporary name's
    frames = _synthetic_run(90)
    rec = _record(tmp_path / ".rig0.mcap", frames, split_s=1)
    assert rec.parts >= 2
    assert _key(read_recording(part_path(tmp_path / ".rig0.mcap", 0))) == _key(frames)


@pytest.mark.parametrize("recorder", ["earlier", "ours"])
@pytest.mark.parametrize("link", [os.symlink, os.link], ids=["symlink", "hard link"])
def test_a_part_that_is_another_part_s_file_is_refused_naming_both(tmp_path, recorder, link):
    # a set of a recorder that kept no records of it was checked by name only: the linked part's frames read twice
    frames = _synthetic_run(30)
    if recorder == "earlier":
        _other_tool(tmp_path / "rig0_0000.mcap", frames[:20], library="streamfuse")
        _other_tool(tmp_path / "rig0_0001.mcap", frames[20:], library="streamfuse")
    else:
        _record(tmp_path / "rig0.mcap", _synthetic_run(90), split_s=1)
    first, linked = tmp_path / "rig0_0000.mcap", sorted(tmp_path.glob("rig0_*.mcap"))[-1]
    twin = linked.with_name(f"rig0_{len(list(tmp_path.glob('rig0_*.mcap'))):04d}.mcap")
    link(linked.name if link is os.symlink else linked, twin)
    with pytest.raises(SourceError, match=rf"^recording {first}: its parts {linked} and {twin} are the same file \(one "
                                          rf"a link to the other\): its frames would be read twice$"):
        list(read_recording(first))


@pytest.mark.parametrize("twice", [PART_RECORD, END_RECORD])
def test_a_part_holding_a_record_of_its_set_twice_is_refused_naming_it(tmp_path, twice):
    # it was judged by its last record: a file claiming another set first, then this one's place, was read as the part
    _record(tmp_path / "rig0.mcap", _synthetic_run(90), split_s=1)
    parts = sorted(tmp_path.glob("rig0_*.mcap"))
    mark, end = part_marks(parts[-1])[1][PART_RECORD], part_marks(parts[-1])[1][END_RECORD]
    stranger = {PART_RECORD: {"set": "0123456789abcdef", "index": "0"}, END_RECORD: {"set": mark["set"], "parts": "9"}}
    parts[-1].unlink()
    _other_tool(parts[-1], _synthetic_run(30), ((twice, stranger[twice]), (PART_RECORD, mark), (END_RECORD, end)),
                library="streamfuse")
    with pytest.raises(SourceError, match=rf"^recording {parts[0]}: its part {parts[-1]} holds its {twice} record "
                                          rf"twice, where a part holds it once: it is damaged or made by hand, and its "
                                          rf"set and place cannot be told$"):
        list(read_recording(parts[0]))


@pytest.mark.parametrize("cut", [True, False], ids=["cut", "finished, damaged"])
def test_recover_refuses_a_part_holding_its_place_twice_as_replay_does(tmp_path, cut):
    # a cut part was judged by its first record, a finished one by its last
    frames = _synthetic_run(30)
    records = ((PART_RECORD, {"set": "0123456789abcdef", "index": "1"}), (PART_RECORD, {"set": "fedcba9876543210",
                                                                                         "index": "1"}))
    _other_tool(tmp_path / "whole.mcap", frames, records, "streamfuse")
    data = (tmp_path / "whole.mcap").read_bytes()
    src = tmp_path / (".rig0_0001.mcap.partial" if cut else "rig0_0001.mcap")
    src.write_bytes(data[:-20000] if cut else data[:-30000] + bytes(1000) + data[-29000:])
    with pytest.raises(ValueError, match=rf"^{src} holds its {PART_RECORD} record twice, where a part holds it once: "
                                         rf"it is damaged or made by hand, and its set and place cannot be told$"):
        recover(src, None if cut else tmp_path / "saved.mcap")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, "whole.mcap"])
