"""``python -m streamfuse bench peers``: a row per run, with the reading consumer's frames counted, and a line of
stale frames per ``--unsent-kb``."""

from __future__ import annotations

import re

from streamfuse.bench import peers


def test_each_run_is_a_row_with_the_readers_frames_then_the_stale_frames(capsys) -> None:
    peers.main(["--size", "32x24", "--rate", "20", "--seconds", "1", "--stalled", "0,3", "--unsent-kb", "0,64"])
    lines = capsys.readouterr().out.splitlines()[2:]
    rows = [line.split() for line in lines[:4]]
    assert [row[:2] for row in rows] == [["0", "0"], ["0", "3"], ["64", "0"], ["64", "3"]]
    assert all(int(row[2].split("/")[0]) > 0 for row in rows)  # the reader got frames in every run
    stale = [re.fullmatch(r"stale frames, unsent_kb (\d+): a subscriber that stopped reading for 1 s then got (\d+) "
                          r"frames published before it read again \(load average \d+\.\d\)", line)
             for line in lines[4:]]
    assert [match and match[1] for match in stale] == ["0", "64"], lines
