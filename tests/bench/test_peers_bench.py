"""``python -m streamfuse bench peers``: a row per run, with the reading consumer's frames counted."""

from __future__ import annotations

from streamfuse.bench import peers


def test_each_run_is_a_row_with_the_readers_frames(capsys) -> None:
    peers.main(["--size", "32x24", "--rate", "20", "--seconds", "1", "--stalled", "0,3", "--unsent-kb", "0,64"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[:2] for row in rows] == [["0", "0"], ["0", "3"], ["64", "0"], ["64", "3"]]
    assert all(int(row[2].split("/")[0]) > 0 for row in rows)  # the reader got frames in every run
