"""``run_live``, as a program of its own calls it, refuses a live run that cannot start before anything of it starts
(the publisher, the model, the capture processes), in the line ``python -m streamfuse run`` prints."""

from __future__ import annotations

import itertools

import pytest

from streamfuse import pipeline
from streamfuse.capture.sources import SourceError
from streamfuse.checks import ConfigError
from streamfuse.cli.run import main
from streamfuse.config import load_config
from streamfuse.configs import resolve

# a name of each run's own: a publisher bound by a run that went too far frees its name later, on a ZeroMQ thread
_ENDPOINTS = (f"publish.endpoint=inproc://live-checks-{n}" for n in itertools.count())


@pytest.fixture
def nothing_starts(monkeypatch):
    """A run that gets as far as binding its publisher fails the test (the checks come first)."""

    def started(*_args, **_kwargs):
        raise AssertionError("the run started: its publisher was made")

    monkeypatch.setattr(pipeline, "Publisher", started)


def _refused(sets: list[str], capsys) -> tuple[Exception, str]:
    """What ``run_live`` raised for the demo config with ``sets``, and the line ``run`` printed for the same."""
    with pytest.raises((ConfigError, SourceError, RuntimeError)) as exc:
        pipeline.run_live(load_config(resolve("demo"), [*sets, next(_ENDPOINTS)]), duration_s=60.0)
    capsys.readouterr()
    assert main(["--config", "demo", *(a for s in sets for a in ("--set", s)), "--set", next(_ENDPOINTS)]) != 0
    return exc.value, capsys.readouterr().err.strip()


def test_a_missing_source_file_is_refused_before_anything_starts(tmp_path, nothing_starts, capsys):
    # run_live started the publisher, loaded the model and the capture, then failed late with RunFailed
    sets = [f"{s}.{k}={v}" for s in ("ir", "vis") for k, v in (("kind", "file"), ("path", tmp_path / f"{s}.mp4"))]
    exc, line = _refused(sets, capsys)
    assert type(exc) is SourceError
    assert str(exc) == f"ir: video file not found: {tmp_path / 'ir.mp4'}; vis: video file not found: " \
                       f"{tmp_path / 'vis.mp4'}"
    assert line == f"streamfuse run: error: {exc}"


def test_sources_whose_clocks_never_pair_are_refused_before_anything_starts(tmp_path, nothing_starts, capsys):
    # a live visible camera beside a file's IR: every frame counted unpaired, nothing published, no error
    exc, line = _refused(["ir.kind=file", f"ir.path={tmp_path / 'ir.mp4'}"], capsys)
    assert type(exc) is ConfigError and str(exc).endswith(": they would never pair (give two live sources, two files "
                                                          "or folders, or two recordings)")
    assert line == f"streamfuse run: config error: {exc}"


def test_a_recording_folder_that_cannot_be_written_is_refused_before_anything_starts(tmp_path, nothing_starts,
                                                                                      capsys):
    (tmp_path / "runs").write_bytes(b"keep me")  # a file where the recording's folder would be
    path = tmp_path / "runs" / "rig.mcap"
    exc, line = _refused([f"record.path={path}"], capsys)
    assert type(exc) is RuntimeError and str(exc) == f"cannot write recording {path}: {tmp_path / 'runs'} is not a " \
                                                     f"folder"
    assert line == f"streamfuse run: error: {exc}"
    assert (tmp_path / "runs").read_bytes() == b"keep me"
