"""``python -m streamfuse bench batch``: bad numbers and configs are one line before any pair is written or Ray
starts (the benchmark itself needs Ray and minutes; it is not run here)."""

from __future__ import annotations

import pytest

from streamfuse.bench import batch as bench_batch


@pytest.mark.parametrize("args, message", [
    (["--pairs", "0"], "argument --pairs: must be >= 1, got 0"),
    (["--workers", "1"], "argument --workers: must be >= 2, got 1"),  # 1 worker against 1 compares nothing
    (["--frames", "-3"], "argument --frames: must be >= 1, got -3"),
    (["--size", "640"], "argument --size: size '640' is not WIDTHxHEIGHT"),
])
def test_bad_numbers_are_refused_when_parsing(args, message, monkeypatch, capsys):
    monkeypatch.setattr(bench_batch, "_pairs", lambda *a, **k: pytest.fail("started with a bad number"))
    with pytest.raises(SystemExit) as exc:
        bench_batch.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().splitlines()[-1].endswith(message)


@pytest.mark.parametrize("args, message", [
    (["--set", "bad"], "bench batch: config error: override 'bad' is not of the form stage.key=value"),
    (["--config", "nowhere.yaml"], "bench batch: config error: nowhere.yaml: no such config file here, nor a shipped"),
    (["--config", "nowhere"], "bench batch: config error: nowhere: no such config file here, nor a shipped"),
])
def test_a_bad_config_is_one_line_before_any_work(args, message, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.setattr(bench_batch, "_pairs", lambda *a, **k: pytest.fail("started before refusing"))
    with pytest.raises(SystemExit) as exc:
        bench_batch.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err
