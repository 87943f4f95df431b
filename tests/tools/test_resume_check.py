"""tools/resume_check.py: a replay stopped once its output holds --stop-at frames, resumed, and compared with an
uninterrupted run (the README's figures of how far a resume's frames go from those)."""

from __future__ import annotations

import re

import pytest

from streamfuse.bench.replay import synthetic_pair


@pytest.mark.timeout(600)  # three replays, each loading the model
def test_a_resumed_replay_is_compared_with_an_uninterrupted_one(tool, tmp_path, capsys):
    ir, vis = synthetic_pair(tmp_path, 200, 320, 240)
    # HCLFuse's 190 frames after the 10th take seconds on a CPU: the run is still going when its output holds 10
    tool("resume_check").main(["--ir", str(ir), "--vis", str(vis), "--stop-at", "10", "--set", "engine.device=cpu",
                               "--out", str(tmp_path / "out")])
    line = capsys.readouterr().out.strip()
    found = re.fullmatch(r"stopped at frame (\d+) of 200; grey levels from the uninterrupted run's frames, largest / "
                         r"mean: before it 0 / 0\.0000, after it \d+ / \d+\.\d{4}", line)
    assert found and 10 <= int(found[1]) < 200, line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["resumed.mkv", "whole.mkv"]


def test_a_replay_that_fails_is_one_line(tool, tmp_path):
    with pytest.raises(SystemExit) as exc:
        tool("resume_check").main(["--ir", str(tmp_path / "none_ir.mp4"), "--vis", str(tmp_path / "none_vis.mp4"),
                                   "--out", str(tmp_path / "out")])
    assert re.fullmatch(r"resume_check\.py: error: the uninterrupted replay ended with status 1: .*none_.*",
                        str(exc.value.code)), exc.value.code


def test_an_out_that_is_a_file_is_one_line(tool, tmp_path):
    # it was a traceback of mkdir (FileExistsError)
    (out := tmp_path / "out").write_text("mine\n")
    with pytest.raises(SystemExit) as exc:
        tool("resume_check").main(["--ir", str(tmp_path / "ir.mp4"), "--vis", str(tmp_path / "vis.mp4"),
                                   "--out", str(out)])
    assert exc.value.code == f"resume_check.py: error: --out {out} exists and is not a folder"
    assert out.read_text() == "mine\n"


def test_an_input_that_is_one_of_its_outputs_is_refused_and_kept(tool, tmp_path):
    # the uninterrupted run's output, --out/whole.mkv, was deleted before the first replay started: the input with it
    (ir := tmp_path / "whole.mkv").write_bytes(b"the user's recording")
    with pytest.raises(SystemExit) as exc:
        tool("resume_check").main(["--ir", str(ir), "--out", str(tmp_path)])
    assert str(exc.value.code).startswith(f"resume_check.py: error: the uninterrupted run's output {ir} is or lies "
                                          f"in the --ir folder {ir}"), exc.value.code
    assert ir.read_bytes() == b"the user's recording"
