"""A split recording's set read back (part_set): a damaged last part is named as damaged, not as a set going on; a
first part holding a record twice leaves its name to its replay's refusal; parts past the 9999th are still parts; a
recording not split records no set; split_mb is in MiB; a cut part before a cut one is recovered as a middle part."""

from __future__ import annotations

import pytest
from test_record_split import _record, _synthetic_run
from test_record_split_sets import _other_tool

from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceError
from streamfuse.part_set import later_part, part_marks, set_name
from streamfuse.record_parts import END_RECORD, PART_RECORD, Parts, part_path
from streamfuse.recording import IMAGE_SCHEMA_TEXT, RecordConfig
from streamfuse.recover import recover


def test_a_last_part_damaged_inside_is_named_as_damaged_not_as_a_set_going_on(tmp_path):
    # its records unreadable, the end of the set it holds is unseen: the read says where the damage is, rather than
    # sending the user to look for later parts that were never recorded
    _record(tmp_path / "rig0.mcap", _synthetic_run(90), split_s=1)
    parts = sorted(tmp_path.glob("rig0_*.mcap"))
    parts[-1].write_bytes(parts[-1].read_bytes()[:parts[-1].stat().st_size // 2])
    with pytest.raises(SourceError, match=rf"^recording {parts[-1]} is truncated or corrupt after \d+ frames"):
        list(read_recording(parts[0]))


def test_the_set_name_of_a_first_part_holding_a_record_twice_is_left_to_its_replay(tmp_path):
    # set_name names a folder batch's outputs: such a part's pair fails alone, in its replay's line
    _record(tmp_path / "rig0.mcap", _synthetic_run(90), split_s=1)
    first = part_path(tmp_path / "rig0.mcap", 0)
    mark = part_marks(first)[1][PART_RECORD]
    first.unlink()
    _other_tool(first, _synthetic_run(30), ((PART_RECORD, mark), (PART_RECORD, mark)), library="streamfuse")
    assert set_name(first) is None
    with pytest.raises(SourceError, match=f"holds its {PART_RECORD} record twice"):
        list(read_recording(first))


def test_a_part_past_the_9999th_is_a_later_part_of_its_set(tmp_path):
    # the names grow a fifth digit there: a folder replay would read rig0_10000.mcap again, alone
    first, later = part_path(tmp_path / "rig0.mcap", 0), part_path(tmp_path / "rig0.mcap", 10_000)
    _other_tool(first, _synthetic_run(2), ((PART_RECORD, {"set": "a1", "index": "0"}),), "streamfuse")
    _other_tool(later, _synthetic_run(2), ((PART_RECORD, {"set": "a1", "index": "10000"}),
                                           (END_RECORD, {"set": "a1", "parts": "10001"})), "streamfuse")
    assert later.name == "rig0_10000.mcap" and later_part(later)


def test_a_recording_not_split_holds_no_record_of_a_set(tmp_path):
    # a set's end recorded in a file of no set: a reader of its records is told of parts that never were
    _record(tmp_path / "rig.mcap", _synthetic_run(30))
    assert part_marks(tmp_path / "rig.mcap") == ("streamfuse", {})


def test_split_mb_counts_mebibytes_as_documented(tmp_path):
    # a part of split_mb: 1 turns at 1048576 bytes (its allowed range is in MiB), not at a million
    cfg = RecordConfig(path=str(tmp_path / "rig.mcap"), split_mb=1)
    parts = Parts(tmp_path / "rig.mcap", cfg, ("sensor_msgs/msg/Image", "ros2msg", IMAGE_SCHEMA_TEXT.encode()), ())
    try:
        assert not parts.due()  # the part's first frame
        parts.part.file.write(bytes(1_000_000))
        assert not parts.due()
        parts.part.file.write(bytes(2**20 - 1_000_000))
        assert parts.due()
    finally:
        parts.part.sync.close()
        parts.part.file.close()


def test_a_cut_part_whose_next_part_was_cut_too_is_recovered_as_a_middle_part(tmp_path):
    # the run could not finish one part and went on to the next, then was killed in it: recovered as the set's end,
    # the part after it would contradict it
    _record(tmp_path / "rig0.mcap", _synthetic_run(150), split_s=1)
    middle, following = part_path(tmp_path / "rig0.mcap", 1), part_path(tmp_path / "rig0.mcap", 2)
    middle.unlink()
    cut = middle.with_name(f".{middle.name}.partial")
    cut.write_bytes(b"")
    following.rename(following.with_name(f".{following.name}.partial"))
    assert recover(cut).endswith(f"{middle} keeps its place in its split recording with no frame, so that the set "
                                 f"reads on to its next part")
    assert END_RECORD not in part_marks(middle)[1]
