"""A split recording whose part could not be finished (its index, its final rename, or the folder's sync after it
failed: a full disk, a permissions change, a failing disk), at a split or at the run's end: the set's read either
takes it whole, or names in one line the ``recover`` that makes it so."""

from __future__ import annotations

import contextlib
import errno
import os

import pytest
from mcap.writer import Writer

import streamfuse.atomic_write
import streamfuse.record_parts
import streamfuse.recording
from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceError
from streamfuse.record_parts import part_path
from streamfuse.recording import RecordConfig, Recorder
from streamfuse.recover import recover
from test_record_split import _key, _synthetic_run


def _failing(fault: str, target: list[str], monkeypatch) -> None:
    """Make finishing the part whose final name is ``target[0]`` fail at ``fault``."""
    def error(code: int) -> OSError:
        return OSError(code, os.strerror(code))

    if fault == "index":
        finish = Writer.finish

        def full(self):
            if self._Writer__stream.name.endswith(f".{target[0]}.partial"):
                raise error(errno.ENOSPC)
            finish(self)

        monkeypatch.setattr(Writer, "finish", full)
        return
    rename, link = streamfuse.atomic_write.durable_rename_new, streamfuse.atomic_write._link_new

    def renamed(src, dst):
        if dst.name == target[0] and fault == "rename":
            raise error(errno.EPERM)
        rename(src, dst)
        if dst.name == target[0] and fault == "folder sync after the rename":
            raise error(errno.EIO)

    def linked(src, dst):
        link(src, dst)
        if dst.name == target[0] and fault == "folder sync after the link":
            raise error(errno.EIO)

    for module in (streamfuse.recording, streamfuse.record_parts):
        monkeypatch.setattr(module, "durable_rename_new", renamed)
    monkeypatch.setattr(streamfuse.atomic_write, "_link_new", linked)


@pytest.mark.parametrize("when", ["at a split", "at the run's end"])
@pytest.mark.parametrize("fault", ["index", "rename", "folder sync after the link", "folder sync after the rename"])
def test_a_part_that_could_not_be_finished_leaves_a_set_that_recover_and_replay_take_whole(tmp_path, monkeypatch,
                                                                                          when, fault):
    frames, path = _synthetic_run(300), tmp_path / "rig0.mcap"
    target = [part_path(path, 1).name]
    cfg = RecordConfig(path=str(path), chunk_mb=0.0625, compression="none", split_mb=1)
    if when == "at a split":
        _failing(fault, target, monkeypatch)
    with Recorder(cfg, queue_size=len(frames)) as rec:
        for frame in frames:
            rec.write(frame)
        with contextlib.suppress(RuntimeError):  # the split's failure, said by the recording's end
            rec._worker.join()  # every frame written: the part being written is the last
        if when == "at the run's end":
            target[0] = rec.file.name
            _failing(fault, target, monkeypatch)
    assert rec.error is not None and rec.parts >= (2 if when == "at a split" else 3)
    recorded, first = sum(rec.counts.values()), part_path(path, 0)
    assert recorded > 0
    try:
        got = list(read_recording(first))
    except SourceError as exc:  # one line naming what to run
        cut = tmp_path / f".{target[0]}.partial"
        assert str(exc).startswith(f"recording {first}: its part {cut} ") and f"streamfuse recover {cut}`" in str(exc)
        assert recover(cut).startswith("recovered ")
        got = list(read_recording(first))
    assert len(got) == recorded and _key(got) == _key(frames)[:recorded]
