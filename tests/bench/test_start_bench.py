"""``python -m streamfuse bench start``: a line per run, with its first frame's seconds, its main process's cost a
frame and its exit's seconds."""

from __future__ import annotations

import re
import sys

import pytest

from streamfuse.bench import start


@pytest.mark.timeout(600)
def test_each_run_is_a_line_with_its_first_frame_its_cost_a_frame_and_its_exit(capsys) -> None:
    assert start.main(["--runs", "2", "--seconds", "1", "--set", "fuse.name=max"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("python -m streamfuse run --config demo --set fuse.name=max; ")
    assert [re.fullmatch(r"run (\d): first frame \d+\.\d\d s after its start; main process \d+\.\d\d ms of CPU and "
                         r"\d+ page faults a frame; exit \d+\.\d\d s after its SIGTERM \(load average \d+\.\d\d\)",
                         line) and line[4] for line in lines[1:]] == ["1", "2"], lines


def test_runs_are_counted_from_one(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        start.main(["--runs", "0"])
    assert exc.value.code == 2 and "argument --runs: must be in 1..100, got 0" in capsys.readouterr().err


def test_a_run_that_ends_before_it_publishes_is_one_line_naming_this_benchmark(tmp_path) -> None:
    # its line named the viewer's benchmark, whose start it borrowed: "streamfuse bench view: error: ..."
    code = "import sys; sys.stderr.write('no camera here\\n')"
    with pytest.raises(SystemExit) as exc:
        start._run([sys.executable, "-c", code, "x"], tmp_path / "run.log", 1.0)
    assert exc.value.code == f"streamfuse bench start: error: {code} x did not start: no camera here"


@pytest.mark.parametrize("args, message", [
    (["--config", "nowhere"], "config error: nowhere: no such config file here, nor a shipped config of that name"),
    (["--set", "bad"], "config error: override 'bad' is not of the form stage.key=value"),
    (["--set", "engine.device=nope"], "engine: device='nope' is out of range; allowed: auto | cpu | cuda | cuda:N"),
])
def test_a_bad_config_is_one_line_and_exit_2_before_any_run(args, message, monkeypatch, capsys) -> None:
    # each was the first run's failure to start: a live run launched, then exit status 1
    monkeypatch.setattr(start, "_run", lambda *a: pytest.fail("a run started with a bad config"))
    code = start.main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("streamfuse bench start: ") and message in err and err.count("\n") == 1, err
