"""``python -m streamfuse bench peers``: a row per run, with the reading consumer's frames counted, and a line of
stale frames per ``--unsent-kb``."""

from __future__ import annotations

import re

import numpy as np
import pytest

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


@pytest.mark.parametrize("args, message", [
    # each was a traceback: a port past 65535 from the endpoint's check, an unsent_kb past the config's range from
    # the publisher's, 3000 stalled peers from their child's ZeroMQ context ("Too many open files")
    (["--port", "70000"], "argument --port: must be in 0..65535, got 70000"),
    (["--port", "65535", "--stalled", "0,3"], "--port 65535: its 4 runs take the ports up to 65538, past 65535"),
    (["--unsent-kb", "0,999999999"],
     "argument --unsent-kb: unsent_kb=999999999 is out of range; allowed: 0 (the kernel's own) .. 1048576 KiB"),
    (["--stalled", "3000"], "argument --stalled: must be in 0..1000, got 3000"),
    (["--stalled", "-1"], "argument --stalled: must be in 0..1000, got -1"),
])
def test_bad_numbers_are_one_line_and_exit_2_before_any_run(args, message, monkeypatch, capsys) -> None:
    monkeypatch.setattr(peers, "_run", lambda *a: pytest.fail("a run started with a bad number"))
    with pytest.raises(SystemExit) as exc:
        peers.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().splitlines()[-1] == f"streamfuse bench peers: error: {message}"


def test_the_stalled_peers_take_the_receive_buffer_given(monkeypatch, capsys) -> None:
    # the README's trials of peers with a 64 KiB SO_RCVBUF had no option here: they were run by hand
    import zmq

    run = {"sent": 1, "got": 1, "missed": 0, "ages": np.ones(1), "worst": [1.0]}
    monkeypatch.setattr(peers, "_run", lambda *a: run)
    monkeypatch.setattr(peers, "_stale", lambda *a: 0)
    peers.main(["--size", "32x24", "--stalled", "3", "--unsent-kb", "64", "--peer-rcvbuf-kb", "64"])
    assert "the stalled peers' SO_RCVBUF 64 KiB; " in capsys.readouterr().out.splitlines()[0]
    with zmq.Context() as ctx:
        sock = peers.stalled_socket(ctx, "tcp://127.0.0.1:1", 64)
        kernels = peers.stalled_socket(ctx, "tcp://127.0.0.1:1", 0)
        try:
            assert (sock.getsockopt(zmq.RCVBUF), kernels.getsockopt(zmq.RCVBUF)) == (64 * 1024, -1)
        finally:
            sock.close(linger=0)
            kernels.close(linger=0)
