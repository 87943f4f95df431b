"""``bench client`` prints the figures the README quotes of a same-host frame's read: copied out of the pool, and as
a view of it."""

from __future__ import annotations

import platform
import re
import sys

import pytest

from streamfuse.bench import main as bench


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"),
                    reason="the pool's ring is Linux x86-64's")
def test_bench_client_prints_a_copied_read_and_a_view(capsys):
    assert bench(["client", "--size", "64x48", "--reads", "100"]) == 0
    out = capsys.readouterr().out
    assert "64x48 bgr8 frame from shared memory, 100 reads each, load average " in out
    for label in ("copied out of the pool (copy=True)", "a view of the pool (copy=False)"):
        assert re.search(rf"{re.escape(label)} +median \d+\.\d+ ms, p90 \d+\.\d+ ms", out), out


def test_too_few_reads_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench(["client", "--reads", "5"])
    assert exc.value.code == 2 and "argument --reads" in capsys.readouterr().err


def test_more_reads_than_the_benchmark_keeps_are_a_usage_error(monkeypatch, capsys):
    # --reads 10**20 ran on for good, each read's time kept
    from streamfuse.bench import client

    monkeypatch.setattr(client, "Publisher", lambda *a, **k: pytest.fail("started with too many reads"))
    with pytest.raises(SystemExit) as exc:
        bench(["client", "--reads", "100000000000000000000"])
    assert exc.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        "streamfuse bench client: error: argument --reads: must be in 100..1000000, got 100000000000000000000")


def test_a_frame_larger_than_a_subscriber_takes_is_a_usage_error(monkeypatch, capsys):
    # 8192x8192 waited 30 s for a frame the subscribers refused, then ended in a traceback
    from streamfuse.bench import client

    monkeypatch.setattr(client, "Publisher", lambda *a, **k: pytest.fail("published a frame too large"))
    with pytest.raises(SystemExit) as exc:
        bench(["client", "--size", "8192x8192"])
    assert exc.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        "streamfuse bench client: error: --size 8192x8192: a 201.3 MB frame, over the 99.5 MB a Subscriber takes by "
        "default")
