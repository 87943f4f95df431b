"""``python -m streamfuse bench batch``: bad numbers and configs are one line before any pair is written or Ray
starts (the benchmark itself needs Ray and minutes; it is not run here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamfuse.bench import batch as bench_batch
from streamfuse.signals import handled, raise_terminated

BATCH_ERROR = "streamfuse bench batch: error: "  # how the command's error lines start


@pytest.mark.parametrize("args, message", [
    (["--pairs", "0"], "argument --pairs: must be >= 1, got 0"),
    (["--workers", "1"], "argument --workers: must be >= 2, got 1"),  # 1 worker against 1 compares nothing
    (["--frames", "-3"], "argument --frames: must be >= 1, got -3"),
    (["--size", "640"], "argument --size: size '640' is not WIDTHxHEIGHT"),
    # 3 workers on 2 pairs: the row said 3 workers, 2 ran (and 3 warm-up pairs were written and replayed)
    (["--pairs", "2", "--workers", "3"], "--workers 3 with --pairs 2: at most 2 workers have a pair at once"),
])
def test_bad_numbers_are_refused_when_parsing(args, message, monkeypatch, capsys):
    monkeypatch.setattr(bench_batch, "_pairs", lambda *a, **k: pytest.fail("started with a bad number"))
    with pytest.raises(SystemExit) as exc:
        bench_batch.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().splitlines()[-1].endswith(message)


def test_as_many_workers_as_pairs_run(monkeypatch):
    pytest.importorskip("ray")

    def started(*args, **kwargs):
        raise RuntimeError("started")

    monkeypatch.setattr(bench_batch, "_pairs", started)
    with pytest.raises(RuntimeError, match="started"):
        bench_batch.main(["--pairs", "2", "--workers", "2"])


@pytest.mark.parametrize("args, message", [
    (["--set", "bad"], "streamfuse bench batch: config error: override 'bad' is not of the form stage.key=value"),
    (["--config", "nowhere.yaml"],
     "streamfuse bench batch: config error: nowhere.yaml: no such config file here, nor a shipped"),
    (["--config", "nowhere"], "streamfuse bench batch: config error: nowhere: no such config file here, nor a shipped"),
])
def test_a_bad_config_is_one_line_before_any_work(args, message, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.setattr(bench_batch, "_pairs", lambda *a, **k: pytest.fail("started before refusing"))
    with pytest.raises(SystemExit) as exc:
        bench_batch.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_pairs_are_hard_links_of_the_ir_and_the_visible_video(tmp_path):
    folder = bench_batch._pairs(tmp_path / "src", 3, 2, 32, 24, prefix="q")
    for sub, name in (("ir", "ir.mp4"), ("vi", "vis.mp4")):
        assert sorted(p.name for p in (folder / sub).iterdir()) == ["q0.mp4", "q1.mp4", "q2.mp4"]
        assert all((folder / sub / p).samefile(folder / name) for p in ("q0.mp4", "q2.mp4"))


def _summary(*results):
    from streamfuse.batch import BatchSummary

    return BatchSummary(list(results), wall_s=4.0)


def test_a_batch_run_reports_frames_per_wall_second_and_stops_at_a_failed_pair(monkeypatch, tmp_path):
    from streamfuse.batch import PairResult

    done = [PairResult("a.mp4", "done", frames_out=30, fps=15.0), PairResult("b.mp4", "done", frames_out=50, fps=25.0)]
    monkeypatch.setattr("streamfuse.batch.find_jobs", lambda src, out: [])
    monkeypatch.setattr("streamfuse.batch.run_batch", lambda cfg, jobs, engine: _summary(*done))
    row = bench_batch._batch(None, tmp_path, tmp_path / "out", None)
    assert (row["frames"], row["wall"], row["fps"], row["pair_fps"]) == (80, 4.0, 20.0, [15.0, 25.0])
    failed = PairResult("c.mp4", "failed", reason="no video stream")
    monkeypatch.setattr("streamfuse.batch.run_batch", lambda cfg, jobs, engine: _summary(*done, failed))
    with pytest.raises(SystemExit) as exc:
        bench_batch._batch(None, tmp_path, tmp_path / "out", None)
    assert exc.value.code == "streamfuse bench batch: error: c.mp4: no video stream"
    failed = PairResult("c\x1b[2J.mp4", "failed", reason="cannot open c\x1b[2J.mp4\nat all")  # kept on its line
    monkeypatch.setattr("streamfuse.batch.run_batch", lambda cfg, jobs, engine: _summary(*done, failed))
    with pytest.raises(SystemExit) as exc:
        bench_batch._batch(None, tmp_path, tmp_path / "out", None)
    assert exc.value.code == "streamfuse bench batch: error: c\\x1b[2J.mp4: cannot open c\\x1b[2J.mp4\\nat all"


def _fake_ray(monkeypatch, calls: list, init=lambda: None):
    """A ``ray`` module of the calls the engine makes to start and stop a local Ray, recorded in ``calls``; ``init``
    runs inside ``ray.init``."""
    import sys
    import types

    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: any(c[0] == "init" for c in calls)
    ray._private = types.SimpleNamespace(utils=types.SimpleNamespace(
        set_sigterm_handler=lambda handler: signal.signal(signal.SIGTERM, handler)))

    def start(**kwargs):
        init()
        calls.append(("init", kwargs.get("address"), kwargs.get("num_cpus")))

    ray.init = start
    ray.nodes = lambda: [{"Alive": True, "Resources": {"CPU": 3.0}}]
    ray.shutdown = lambda: calls.append(("shutdown",))
    monkeypatch.setitem(sys.modules, "ray", ray)
    return ray


def test_ray_starts_local_with_one_cpu_per_worker_warms_up_and_always_shuts_down(monkeypatch, tmp_path):
    # with $RAY_ADDRESS set (a job of a cluster) ray.init joined that cluster, where num_cpus is refused: a traceback
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:50710")
    calls = []
    _fake_ray(monkeypatch, calls)
    monkeypatch.setattr("streamfuse.batch.find_jobs", lambda src, out: [(src, out)])

    def run_batch(cfg, jobs, engine):
        calls.append(("batch", jobs[0], engine.workers, engine.threads))
        raise SystemExit("a pair failed")

    monkeypatch.setattr("streamfuse.batch.run_batch", run_batch)
    with pytest.raises(SystemExit):
        bench_batch._ray(None, tmp_path / "src", tmp_path / "warm", tmp_path / "out", 3)
    assert calls == [("init", "local", 3), ("batch", (tmp_path / "warm", tmp_path / "out" / "warm"), 3, 1),
                     ("shutdown",)]


def test_a_sigterm_while_ray_starts_stops_the_bench_once_ray_is_up_and_shut_down(monkeypatch, tmp_path):
    # Ray's own SIGTERM handler, set as it starts, ended the bench with status 15 and no line, Ray cut half-way
    calls = []

    def init():
        sys.modules["ray"]._private.utils.set_sigterm_handler(lambda signum, frame: sys.exit(15))
        os.kill(os.getpid(), signal.SIGTERM)

    _fake_ray(monkeypatch, calls, init)
    monkeypatch.setattr("streamfuse.batch.run_batch", lambda *a: pytest.fail("a batch ran after the stop"))
    with handled(raise_terminated, (signal.SIGTERM,)), pytest.raises(KeyboardInterrupt):
        bench_batch._ray(None, tmp_path / "src", tmp_path / "warm", tmp_path / "out", 2)
    assert calls == [("init", "local", 2), ("shutdown",)]


@pytest.mark.parametrize(("rc", "stderr", "fps"), [(0, "replayed: wall 2.0 s, 15.5 frames/s\n", 15.5),
                                                   (1, "replayed: wall 2.0 s, 15.5 frames/s\nerror: disk full\n", None),
                                                   (0, "no summary\n", None)])
def test_the_single_replay_runs_on_one_thread_and_its_failure_is_one_line(rc, stderr, fps, monkeypatch, tmp_path):
    seen = []

    def run(cmd, env, log):
        seen.append((cmd, env))
        log.write_text(stderr)
        return rc, 1.0, 2.0

    monkeypatch.setattr(bench_batch, "_own_run", run)
    args = SimpleNamespace(config="replay")
    warm, pair = (tmp_path / "w_ir.mp4", tmp_path / "w_vi.mp4"), (tmp_path / "ir.mp4", tmp_path / "vi.mp4")
    if fps is None:
        with pytest.raises(SystemExit, match=rf"^{BATCH_ERROR}the single replay failed \(rc {rc}\): "):
            bench_batch._single_replay(args, ["a.b=1"], warm, pair, tmp_path / "o.mp4")
        return
    assert bench_batch._single_replay(args, ["a.b=1", "c.d=2"], warm, pair, tmp_path / "o.mp4") == (fps, 0.5)
    cmd, env = seen[-1]
    assert cmd[-4:] == ["--set", "a.b=1", "--set", "c.d=2"]
    assert (env["OMP_NUM_THREADS"], env["OPENCV_FOR_THREADS_NUM"]) == ("1", "1")


def test_the_single_replay_is_timed_after_a_warm_up_replay(monkeypatch, tmp_path):
    # timed cold, the one replay paid the first compile of the numba kernels and the first read of torch, beside
    # engines timed after their warm-up pairs
    runs = []

    def run(cmd, env, log):
        runs.append(cmd[cmd.index("--ir") + 1])
        log.write_text(f"replayed: wall 1.0 s, {len(runs)}.0 frames/s\n")
        return 0, 1.0, 1.0

    monkeypatch.setattr(bench_batch, "_own_run", run)
    warm, pair = (tmp_path / "w_ir.mp4", tmp_path / "w_vi.mp4"), (tmp_path / "ir.mp4", tmp_path / "vi.mp4")
    fps, _ = bench_batch._single_replay(SimpleNamespace(config="replay"), [], warm, pair, tmp_path / "o.mp4")
    assert runs == [str(warm[0]), str(pair[0])] and fps == 2.0  # the second run's figure


def test_the_single_replay_counts_its_own_cpu_not_a_stray_child_reaped_meanwhile(tmp_path):
    # every child this process reaped in the replay's window was counted as the replay's cores (Ray's processes)
    go, done = tmp_path / "go", tmp_path / "done"
    stray = subprocess.Popen([sys.executable, "-c", f"import os, time\nwhile not os.path.exists({str(go)!r}): "
                              f"time.sleep(0.01)\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass"])
    threading.Thread(target=lambda: (stray.wait(), done.touch()), daemon=True).start()
    own = [sys.executable, "-c", f"import os, pathlib, time\npathlib.Path({str(go)!r}).touch()\n"
           f"while not os.path.exists({str(done)!r}): time.sleep(0.05)"]
    try:
        rc, cpu, wall = bench_batch._own_run(own, dict(os.environ), tmp_path / "own.log")
    finally:  # a run that failed to start left the stray waiting for it
        go.touch()
        stray.wait()
    assert rc == 0 and stray.returncode == 0  # the stray was reaped within the window, its 1.5 s of CPU spent
    assert cpu < 1.0, f"{cpu:.2f} s of CPU counted for a replay that slept"


def test_the_local_engine_is_timed_after_a_warm_up_pair(monkeypatch, tmp_path):
    # timed cold, the first pair ran at half the frames/s of the next (imports, the kernels' compilation), so the
    # local engine's row stood below the warmed-up Ray worker's
    pytest.importorskip("ray")
    from streamfuse.batch import PairResult

    batches = []

    def run_batch(cfg, jobs, engine):
        batches.append([job.ir.parent.parent.name for job in jobs])
        return _summary(*[PairResult(str(job.out), "done", frames_out=5, fps=10.0) for job in jobs])

    monkeypatch.setattr("streamfuse.batch.run_batch", run_batch)
    monkeypatch.setattr(bench_batch, "_ray", lambda *a: {"frames": 1, "wall": 1.0, "fps": 1.0, "pair_fps": [1.0],
                                                         "load": ""})
    monkeypatch.setattr(bench_batch, "_single_replay", lambda *a: (1.0, 1.0))
    monkeypatch.setattr(bench_batch, "synthetic_pair", lambda folder, *a: (folder / "ir.mp4", folder / "vis.mp4"))
    monkeypatch.setattr(bench_batch.os, "link", lambda src, dst: Path(dst).touch())
    bench_batch.main(["--pairs", "3", "--workers", "2", "--frames", "5"])
    assert batches == [["warm"], ["src"] * 3]


def test_the_table_compares_n_workers_with_one_and_a_worker_with_a_single_replay(monkeypatch, capsys):
    pytest.importorskip("ray")
    seen = {}
    row = {"frames": 60, "wall": 2.0, "fps": 30.0, "pair_fps": [10.0, 12.0, 20.0], "load": "0.10 -> 0.20"}
    monkeypatch.setattr(bench_batch, "_pairs", lambda folder, *a, **k: folder)
    monkeypatch.setattr(bench_batch, "_local", lambda *a: row)
    monkeypatch.setattr(bench_batch, "_ray", lambda cfg, src, warm, out, n: {**row, "fps": 30.0 * n,
                                                                           "pair_fps": [2.0 * n, 6.0 * n, 7.0 * n]})
    monkeypatch.setattr(bench_batch, "_single_replay", lambda args, overrides, *paths: seen.update(
        overrides=overrides) or (4.0, 1.25))
    bench_batch.main(["--workers", "3", "--set", "engine.threads=2"])
    out = capsys.readouterr().out.splitlines()
    assert "local engine, 1 worker        60     2.00      30.0  0.10 -> 0.20" in out
    assert out[-2:] == ["ray 3 workers vs 1: 3.00x", "one ray worker: 6.0 frames/s (median of its pairs); a single "
                        "replay of the same pair with one thread, after a warm-up replay: 4.0 frames/s, 1.25 cores "
                        "busy (its own user + sys / wall, start and imports included); ratio 1.50"]
    # the user's --set comes last, so it wins over the benchmark's own one-thread settings
    assert seen["overrides"][-2:] == ["fuse.name=max", "engine.threads=2"]
    assert seen["overrides"][0] == "engine.threads=1"


def test_a_sigterm_mid_batch_is_one_line_naming_it_and_130(monkeypatch, capsys):
    # a batch stopped by SIGTERM ended the benchmark "streamfuse bench batch: interrupted", as for a Ctrl-C
    pytest.importorskip("ray")
    monkeypatch.setattr("streamfuse.batch.worker.run_replay", lambda cfg, **kw: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(SystemExit) as exc:
        bench_batch.main(["--pairs", "2", "--frames", "2", "--size", "32x24"])
    assert exc.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == "streamfuse bench batch: interrupted (SIGTERM)"


def test_the_single_replay_gives_its_frames_per_second_and_the_cores_it_kept_busy(tmp_path):
    from streamfuse.bench.replay import synthetic_pair

    ir, vis = synthetic_pair(tmp_path, 5, 64, 48)
    args = SimpleNamespace(config="replay")
    fps, cores = bench_batch._single_replay(args, ["fuse.name=max", "replay.progress=false"], (ir, vis), (ir, vis),
                                            tmp_path / "out.mp4")
    assert fps > 0 and cores > 0
