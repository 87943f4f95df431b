"""``bench subscriptions`` prints the figures the README quotes of long subscriptions: the memory a plain XPUB took
for them, and that the Publisher dropped such a peer."""

from __future__ import annotations

import re
import sys

import pytest

from streamfuse.bench import main as bench

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory read from /proc")


def test_bench_subscriptions_prints_the_memory_a_subscription_took_and_the_publishers_drop(capsys):
    assert bench(["subscriptions", "--bytes", "20000", "--count", "2", "--peers", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"plain libzmq XPUB [\d.]+: -?\d+\.\d MiB more memory \(-?\d+ bytes a byte\); the peers' leaving "
                     r"held the socket \d+\.\d+ s", out), out
    assert re.search(r"streamfuse Publisher: [+-]\d+\.\d MiB of memory; the peer was disconnected", out), out


def test_too_short_a_subscription_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench(["subscriptions", "--bytes", "10"])
    assert exc.value.code == 2 and "argument --bytes" in capsys.readouterr().err


def test_bench_subscriptions_flood_prints_the_publishers_memory_frames_and_cuts(capsys):
    # 10,000 subscriptions of 100 bytes: 1 MB a peer, past the 512 KiB a consumer may send, so each peer is cut
    assert bench(["subscriptions", "--flood", "10000", "--peers", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"2 tcp peer\(s\) flooding streamfuse's Publisher with 10000 subscription\(s\) of 100 bytes "
                     r"each", out)
    assert re.search(r"[+-]\d+\.\d MiB of memory \([+-]\d+\.\d MiB at most\), \d+\.\d frames/s while it lasted \(30 "
                     r"asked\), \d+\.\d{3} s at most between two frames; 2 peer\(s\) cut", out), out
