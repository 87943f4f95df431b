"""A live run whose recording cannot be made says so in one line before its model loads and its publisher binds:
a recording that is there already, or a folder this user cannot write."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from helpers_users import as_other_user, needs_root, shared_folder

from streamfuse import pipeline
from streamfuse.atomic_write import partial_path
from streamfuse.config import load_config
from streamfuse.configs import resolve


# a name of each run's own: a publisher bound by a run that went too far frees its name later, on a ZeroMQ thread
_ENDPOINTS = (f"publish.endpoint=inproc://record-path-{n}" for n in itertools.count())


@pytest.fixture
def no_model(monkeypatch):
    """A run that gets as far as loading its model fails the test (the check comes first)."""

    def loaded(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline.FrameProcessor, "from_config", loaded)


# _run in a fresh interpreter, whose model must not load either (as ``no_model`` says)
RUN_UNLOADED = """
from streamfuse import pipeline
from streamfuse.config import load_config
from streamfuse.configs import resolve
def loaded(*_args, **_kwargs):
    raise AssertionError("the model was loaded")
pipeline.FrameProcessor.from_config = loaded
cfg = load_config(resolve("demo"), [f"record.path={path}", "publish.endpoint=inproc://record-path"])
pipeline.run(cfg, duration_s=1.0)
"""


def _run(path: Path) -> None:
    cfg = load_config(resolve("demo"), [f"record.path={path}", next(_ENDPOINTS)])
    pipeline.run(cfg, duration_s=1.0)


@pytest.mark.parametrize("left", ["earlier recording", "partial file"])
def test_an_existing_recording_is_refused_before_the_model_loads(tmp_path, no_model, left):
    path = tmp_path / "rig.mcap"
    existing = path if left == "earlier recording" else partial_path(path)
    existing.write_bytes(b"keep me")
    with pytest.raises(RuntimeError, match=f"^cannot record to {path}: {existing} exists"):
        _run(path)
    assert existing.read_bytes() == b"keep me"


def test_a_folder_that_is_a_file_is_refused_before_the_model_loads(tmp_path, no_model):
    (tmp_path / "runs").write_bytes(b"keep me")
    with pytest.raises(RuntimeError, match=f"^cannot write recording .*: {tmp_path / 'runs'} is not a folder$"):
        _run(tmp_path / "runs" / "rig0" / "rig.mcap")


@needs_root
def test_a_folder_this_user_cannot_write_is_refused_before_the_model_loads():
    with shared_folder(0o755) as folder:  # root's: another user reads it, cannot write in it
        path = folder / "runs" / "rig.mcap"
        said = as_other_user(RUN_UNLOADED, path=path)
        assert said == f"RuntimeError: cannot write recording {path}: {folder} is not writable (Permission denied)"
        assert os.listdir(folder) == []


def test_a_part_of_an_earlier_split_recording_is_refused_before_the_model_loads(tmp_path, no_model):
    path = tmp_path / "rig.mcap"
    (tmp_path / ".rig_0002.mcap.partial").write_bytes(b"keep me")
    cfg = load_config(resolve("demo"), [f"record.path={path}", "record.split_s=60", next(_ENDPOINTS)])
    with pytest.raises(RuntimeError, match=f"^cannot record to {path} in parts: {tmp_path / '.rig_0002.mcap.partial'} "
                                           f"exists; choose another record.path or move it away$"):
        pipeline.run(cfg, duration_s=1.0)
    assert (tmp_path / ".rig_0002.mcap.partial").read_bytes() == b"keep me"
