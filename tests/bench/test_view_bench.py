"""``python -m streamfuse bench view``: its pages really read the viewer, and bad arguments are one line."""

from __future__ import annotations

import pytest

from streamfuse.bench import view as bench_view

pytest.importorskip("aiohttp")


def test_pages_read_the_viewer_and_its_cpu_is_measured(capsys) -> None:
    assert bench_view.main(["--pages", "2", "--seconds", "1", "--rounds", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    name, pages, per_page, lowest, total, cores, _load = rows[-1].split()
    assert (name, pages) == ("this", "2") and float(lowest) > 0 and float(total) > 0 and float(cores) > 0, rows


@pytest.mark.parametrize("args, message", [
    (["--pages", "0"], "argument --pages: must be in 1..1000, got 0"),
    (["--seconds", "nan"], "argument --seconds: must be a number in (0, 600], got nan"),
    (["--against", "."], "--against .: no streamfuse/view there")])
def test_bad_arguments_are_one_line(args, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # '.' holds no checkout
    with pytest.raises(SystemExit) as exit_:
        bench_view.main(args)
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(message)
