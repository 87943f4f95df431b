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
