"""streamfuse.batch: bounded scheduling, one model per worker, and the Ray engine (2 local workers, one killed)."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from test_output_lock import HOLD

from streamfuse.atomic_write import partial_path
from streamfuse.batch import (BatchInterrupted, BatchSummary, LocalEngine, PairJob, PairResult, RayEngine, bounded,
                              find_jobs, run_batch, worker_cfg)
from streamfuse.config import load_config
from streamfuse.replay import ReplayError, run_replay
from streamfuse.video import VideoWriter, decode_frames

REPO = Path(__file__).resolve().parents[1]
# ffv1 into NUT: lossless and byte-reproducible (Matroska writes a random segment UID and the date). engine.threads and
# replay.codec_threads are set: a batch worker turns 0 ("all cores") into its CPUs, which the config tag records.
CFG = ["fuse.name=max", "engine.threads=1", "replay.codec_threads=1", "replay.overlap=false",
       "replay.progress=false", "replay.codec=ffv1"]


def _video(path: Path, n: int, seed: int, size: tuple[int, int] = (48, 64), top: int = 256) -> None:
    """A lossless video of a moving random texture of levels below ``top``, pts 0, 40, 80 ... ms."""
    base = np.random.default_rng(seed).integers(0, top, (*size, 3), np.uint8)
    w = VideoWriter(path, codec="ffv1", crf=0, time_base=Fraction(1, 1000), rate=Fraction(25), width=size[1],
                    height=size[0])
    for i in range(n):
        w.write(np.roll(base, i, axis=1), 40 * i)
    w.commit()


def _pairs(root: Path, names: list[str], n: int) -> Path:
    """``root/ir`` and ``root/vi`` with ``names``: hard links of one generated pair (the output names differ)."""
    for sub, seed in (("ir", 1), ("vi", 2)):
        (root / sub).mkdir(parents=True)
        _video(root / sub / names[0], n, seed)
        for name in names[1:]:
            os.link(root / sub / names[0], root / sub / name)
    return root


def _times(path: Path) -> list[Fraction]:
    return [t for t, _ in decode_frames(path)]


def test_a_worker_gives_torch_and_ffmpeg_its_own_cpus_unless_the_config_says():
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", ["engine.threads=0", "replay.codec_threads=0"])
    got = worker_cfg(cfg, 3)
    assert (got.engine.threads, got.replay.codec_threads) == (3, 3)
    fixed = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", ["engine.threads=2", "replay.codec_threads=4"])
    assert worker_cfg(fixed, 3) == fixed
    with pytest.raises(ValueError, match="threads must be >= 1"):
        LocalEngine(threads=0)


def test_a_one_cpu_worker_decodes_and_encodes_in_its_loops_thread():
    """replay.overlap is turned off for a worker of one CPU only; a worker of more keeps the config's."""
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", ["replay.overlap=true"])
    assert (worker_cfg(cfg, 1).replay.overlap, worker_cfg(cfg, 2).replay.overlap) == (False, True)


def test_bounded_keeps_at_most_limit_running_and_reads_jobs_lazily():
    read, running, peak = [], set(), [0]

    def jobs():
        for i in range(5000):
            read.append(i)
            yield i

    def submit(job):
        running.add(job)
        peak[0] = max(peak[0], len(running))
        assert len(read) == job + 1  # nothing read ahead of what is submitted
        return job

    def wait_one(handles):
        running.discard(min(handles))
        return min(handles), f"r{min(handles)}"

    out = list(bounded(jobs(), submit, wait_one, limit=4))
    assert peak[0] == 4 and len(out) == 5000 and out[0] == (0, 0, "r0")


def _tiny_weights(path: Path) -> Path:
    """Untrained HCLFuse weights: the shipped ones are not needed to test the plumbing (skips without torch)."""
    pytest.importorskip("torch")
    import streamfuse.model.weights as hclfuse

    hclfuse.save_weights(path, hclfuse.HCLFuseNet(hclfuse.ModelConfig(widths=(4, 8), latent_channels=2,
                                                                      denoiser_width=4)))
    return path


def test_local_engine_loads_the_model_once_and_each_video_starts_afresh(tmp_path, monkeypatch):
    weights = _tiny_weights(tmp_path / "tiny.pt")
    import streamfuse.model.weights as hclfuse

    src = tmp_path / "src"
    for sub, seed in (("ir", 1), ("vi", 2)):
        (src / sub).mkdir(parents=True)
        _video(src / sub / "a.nut", 3, seed, (24, 32))
        _video(src / sub / "b.nut", 3, seed + 10, (24, 32), top=64)  # darker: its own OT plan differs from a's
    # align.drift: a plan is kept for any later histogram, so a plan left over from a would be used for all of b
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml",
                      [*CFG, "fuse.name=hclfuse", f"hclfuse.weights={weights}", "engine.device=cpu",
                       "engine.threads=1", "hclfuse.steps=1", "align.drift=1.0"])
    loads = []
    real = hclfuse.load_weights
    monkeypatch.setattr(hclfuse, "load_weights", lambda *a, **k: loads.append(1) or real(*a, **k))
    summary = run_batch(cfg, find_jobs(src, tmp_path / "out", ext=".nut"))
    assert [r.status for r in summary.results] == ["done", "done"] and len(loads) == 1
    for name in ("a.nut", "b.nut"):  # b's OT plans and noise are its own: the same as replaying b alone
        batch = (tmp_path / "out" / name).read_bytes()
        (tmp_path / "out" / name).unlink()  # the same path (the config tag records it); a replay writes over none
        run_replay(cfg, ir_path=src / "ir" / name, vis_path=src / "vi" / name, out_path=tmp_path / "out" / name)
        assert (tmp_path / "out" / name).read_bytes() == batch


def test_a_workers_model_is_loaded_again_for_other_engine_settings(tmp_path, monkeypatch):
    """A Ray worker keeps its models across tasks, and a driver may run batches of other settings on the same Ray: a
    model loaded for one engine (device, threads) is not handed to a pair of another."""
    weights = _tiny_weights(tmp_path / "tiny.pt")
    import streamfuse.model.weights as hclfuse
    from streamfuse.batch.worker import Models

    loads, real = [], hclfuse.load_weights
    monkeypatch.setattr(hclfuse, "load_weights", lambda *a, **k: loads.append(1) or real(*a, **k))
    models = Models()
    for threads in (1, 1, 2):
        models.fuser(load_config(REPO / "streamfuse" / "configs" / "replay.yaml",
                                 ["fuse.name=hclfuse", f"hclfuse.weights={weights}", "engine.device=cpu",
                                  f"engine.threads={threads}"]))
    assert len(loads) == 2


def test_the_frames_out_are_those_of_the_outputs_done_and_the_rate_counts_every_frame_fused():
    # the total counted the frames a failed pair had fused into its partial output: 1,314 frames out were said where
    # the finished outputs held 1,062
    summary = BatchSummary([PairResult("a.mkv", "done", frames_out=100), PairResult("b.mkv", "failed", frames_out=30),
                            PairResult("c.mkv", "skipped", frames_out=50)], wall_s=2.0)
    assert summary.format().splitlines()[-1] == ("3 pairs: 1 done, 1 skipped (complete), 1 failed; 100 frames out (30 "
                                                 "more fused by pairs that did not finish) in 2.0 s (65.0 frames/s)")


def test_a_bad_pair_fails_alone_and_complete_outputs_are_skipped(tmp_path):
    src = _pairs(tmp_path / "src", ["a.nut", "c.nut"], 4)
    shutil.copy(src / "ir" / "a.nut", src / "ir" / "b.nut")
    (src / "vi" / "b.nut").write_text("not a video")
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    jobs = find_jobs(src, tmp_path / "out", ext=".nut")
    summary = run_batch(cfg, jobs)
    assert [(Path(r.out).name, r.status) for r in summary.results] == [("a.nut", "done"), ("b.nut", "failed"),
                                                                       ("c.nut", "done")]
    bad = summary.results[1]
    assert "not a video" in bad.reason and "\n" not in bad.reason
    table = summary.format()
    assert "3 pairs: 2 done, 0 skipped (complete), 1 failed; 8 frames out" in table
    again = run_batch(cfg, jobs)
    assert [r.status for r in again.results] == ["skipped", "skipped", "failed"]


def test_the_frames_bar_counts_every_fused_frame_and_fps_is_frames_per_wall_second(tmp_path):
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    (tmp_path / "out").mkdir()
    counted: list[tuple[int, str]] = []
    results = list(LocalEngine().run(cfg, find_jobs(src, tmp_path / "out", ext=".nut"), resume=False,
                                     frames=lambda n, out: counted.append((n, Path(out).name))))
    assert [r.frames_out for r in results] == [4, 4] and counted == [(1, "a.nut")] * 4 + [(1, "b.nut")] * 4
    assert all(r.fps == pytest.approx(r.frames_out / r.wall_s) for r in results)


def test_a_partial_output_found_whole_and_only_finished_adds_nothing_to_the_rates(tmp_path, monkeypatch):
    """A disk full as the last pair's output was copied out of its whole partial file: --resume finished it without
    fusing a frame, and its row said 300 frames out at 10327.7 frames/s, the batch's rate counting them too."""
    from streamfuse.video import VideoWriter as Writer

    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 6)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    jobs = find_jobs(src, tmp_path / "out", ext=".nut")

    def full(self, path):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(Writer, "_remux", full)
        assert [r.status for r in run_batch(cfg, jobs[1:]).results] == ["failed"]
    summary = run_batch(cfg, jobs, resume=True)
    rows = {Path(r.out).name: r for r in summary.results}
    assert (rows["b.nut"].status, rows["b.nut"].frames_out, rows["b.nut"].fps) == ("done", 6, 0.0)
    assert rows["a.nut"].fused == 6 and rows["a.nut"].fps > 0
    summary.wall_s = 1.0
    assert summary.format().endswith("12 frames out in 1.0 s (6.0 frames/s)")  # the rate: a.nut's frames alone


def test_the_summary_table_has_a_row_per_pair_run_and_only_counts_the_skipped_ones():
    from streamfuse.batch import PairResult

    summary = BatchSummary([PairResult("/o/done_pair.nut", "done", frames_out=4),
                            PairResult("/o/skipped_pair.nut", "skipped")], wall_s=2.0)
    table = summary.format()
    assert "done_pair.nut" in table and "skipped_pair.nut" not in table
    assert table.splitlines()[-1].startswith("2 pairs: 1 done, 1 skipped (complete), 0 failed; 4 frames out")


def test_a_batch_of_complete_outputs_starts_no_engine(tmp_path):
    """Starting a Ray takes seconds: with nothing to replay, the engine is not run at all."""
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    jobs = find_jobs(src, tmp_path / "out", ext=".nut")
    run_batch(cfg, jobs)

    class NoRun:
        def run(self, cfg, jobs, *, resume, frames):
            pytest.fail("the engine was started for a batch with nothing to do")
            yield

    assert [r.status for r in run_batch(cfg, jobs, NoRun()).results] == ["skipped"]


def test_a_ctrl_c_as_the_engine_winds_down_after_its_last_pair_still_says_the_batch_was_stopped(tmp_path):
    # every pair had ended, but the user's Ctrl-C came: the batch ends as stopped (130), not as a plain success (0)
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)

    class StoppedAfterTheLast:
        def run(self, cfg, jobs, *, resume, frames):
            yield from (PairResult(str(job.out), "done") for job in jobs)
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as stopped:
        run_batch(cfg, find_jobs(src, tmp_path / "out", ext=".nut"), StoppedAfterTheLast())
    assert [r.status for r in stopped.value.summary.results] == ["done"]


def test_workers_run_without_progress_bars_of_their_own(tmp_path):
    """The batch shows its own pairs and frames bars; a worker's replay would draw one more per pair."""
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", [*CFG, "replay.progress=true"])
    given = []

    class Recording(LocalEngine):
        def run(self, cfg, jobs, *, resume, frames):
            given.append(cfg.replay.progress)
            yield from super().run(cfg, jobs, resume=resume, frames=frames)

    run_batch(cfg, find_jobs(src, tmp_path / "out", ext=".nut"), Recording())
    assert given == [False]


@pytest.mark.parametrize(("progress", "disable"), [(True, None), (False, True)])  # None: shown on a terminal
def test_the_batch_bars_follow_replay_progress(monkeypatch, progress, disable):
    import tqdm

    given = []

    class Recording(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            given.append(kwargs["disable"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", [*CFG, f"replay.progress={progress}"])
    run_batch(cfg, [])
    assert given == [disable, disable]  # the pairs bar and the frames bar


def test_the_local_engine_runs_its_pairs_with_a_workers_config_of_its_threads(monkeypatch):
    """``threads`` reach the pairs: torch's and FFmpeg's "every core" (0) become the engine's CPUs."""
    from streamfuse.batch.jobs import PairJob

    given = []
    monkeypatch.setattr("streamfuse.batch.local.replay_pair",
                        lambda cfg, job, **kwargs: given.append(cfg) or PairResult(str(job.out), "done"))
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", ["engine.threads=0", "replay.codec_threads=0"])
    job = PairJob(Path("ir.nut"), Path("vi.nut"), Path("/o/a.nut"))
    assert [r.status for r in LocalEngine(threads=3).run(cfg, [job], resume=False, frames=print)] == ["done"]
    assert given == [worker_cfg(cfg, 3)] and given[0].engine.threads == 3


def test_in_a_folder_a_missing_visible_video_fails_its_pair_alone(tmp_path, caplog):
    src = _pairs(tmp_path / "src", ["a.nut", "c.nut"], 4)
    shutil.copy(src / "ir" / "a.nut", src / "ir" / "b.nut")  # no vi/b.nut
    shutil.copy(src / "vi" / "a.nut", src / "vi" / "lonely.nut")  # no ir/lonely.nut
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    with caplog.at_level(logging.WARNING):
        jobs = find_jobs(src, tmp_path / "out", ext=".nut")
    assert "no IR video of the same name for lonely.nut" in caplog.text
    summary = run_batch(cfg, jobs)
    assert [(Path(r.out).name, r.status) for r in summary.results] == [("a.nut", "done"), ("b.nut", "failed"),
                                                                       ("c.nut", "done")]
    assert "b.nut" in summary.results[1].reason and "\n" not in summary.results[1].reason


@pytest.mark.parametrize("ext", [".mkv", ".nut"])  # NUT's demuxer drops a tag of 1 KiB: the config goes in parts
def test_a_skipped_output_made_with_other_settings_is_named(tmp_path, caplog, ext):
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    replay_yaml = REPO / "streamfuse" / "configs" / "replay.yaml"
    jobs = find_jobs(src, tmp_path / "out", ext=ext)
    run_batch(load_config(replay_yaml, CFG), jobs)
    with caplog.at_level(logging.WARNING):
        again = run_batch(load_config(replay_yaml, [*CFG, "engine.threads=2"]), jobs)  # threads: the same frames
    assert [r.status for r in again.results] == ["skipped"] and "other settings" not in caplog.text
    with caplog.at_level(logging.WARNING):
        again = run_batch(load_config(replay_yaml, [*CFG, "fuse.name=average"]), jobs)
    assert [r.status for r in again.results] == ["skipped"]
    assert f"a{ext} is complete and skipped, but was made with other settings (fuse.name)" in caplog.text


def test_an_existing_output_that_is_no_video_fails_its_pair_and_is_left_as_it_is(tmp_path):
    """A folder, an empty file or another program's file at an output's name is not a complete output: the pair fails
    with its one-line reason (not "skipped"), and the file stays as it was (not written over)."""
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut", "c.nut", "d.nut", "e.nut"], 4)
    out = tmp_path / "out"
    (out / "a.nut").mkdir(parents=True)
    (out / "b.nut").write_bytes(b"")
    (out / "c.nut").write_text("notes")
    shutil.copy(src / "vi" / "a.nut", out / "e.nut")  # a video, but none of ours: its frames were never fused
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    summary = run_batch(cfg, find_jobs(src, out, ext=".nut"))
    assert {Path(r.out).name: r.status for r in summary.results} == {"a.nut": "failed", "b.nut": "failed",
                                                                     "c.nut": "failed", "d.nut": "done",
                                                                     "e.nut": "failed"}
    reasons = {Path(r.out).name: r.reason for r in summary.failed}
    assert "is not a file" in reasons["a.nut"] and "is empty" in reasons["b.nut"]
    assert "is not a video" in reasons["c.nut"] and all("\n" not in r for r in reasons.values())
    assert reasons["e.nut"] == (f"output {out / 'e.nut'} exists but is another program's video (it records no "
                                "streamfuse config); delete it or choose another --out")
    assert (out / "a.nut").is_dir() and (out / "b.nut").read_bytes() == b"" and (out / "c.nut").read_text() == "notes"


def test_without_resume_a_partial_output_fails_its_pair_and_is_kept(tmp_path):
    """As a single replay refuses to: an interrupted pair's partial output is not started over (its frames lost)
    without --resume, which continues it."""
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    out = tmp_path / "out"
    out.mkdir()
    partial = partial_path(out / "a.nut")
    partial.write_bytes(b"an interrupted run's frames")
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    jobs = find_jobs(src, out, ext=".nut")
    summary = run_batch(cfg, jobs)
    assert {Path(r.out).name: r.status for r in summary.results} == {"a.nut": "failed", "b.nut": "done"}
    assert summary.failed[0].reason == (f"{partial} holds an interrupted replay of {out / 'a.nut'}; run again with "
                                        f"--resume to continue it, or delete .a.nut.partial to start over")
    assert partial.read_bytes() == b"an interrupted run's frames" and not (out / "a.nut").exists()
    again = run_batch(cfg, jobs, resume=True)  # this one has no sidecar: started over, with a warning
    assert {Path(r.out).name: r.status for r in again.results} == {"a.nut": "done", "b.nut": "skipped"}
    assert len(_times(out / "a.nut")) == 4 and not partial.exists()


def test_resume_starts_pairs_never_started_without_a_warning_for_each(tmp_path, caplog):
    """A batch's --resume after a stop: the pairs it never reached have nothing to resume, which is expected; the
    single replay's warning said so once for each of them."""
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    with caplog.at_level("WARNING"):
        summary = run_batch(cfg, find_jobs(src, tmp_path / "out", ext=".nut"), resume=True)
    assert [r.status for r in summary.results] == ["done", "done"]
    assert [len(_times(tmp_path / "out" / name)) for name in ("a.nut", "b.nut")] == [4, 4]
    assert "nothing to resume" not in caplog.text


@pytest.mark.parametrize("resume", [False, True])
def test_a_pair_another_run_is_writing_fails_alone_and_is_left_to_it(tmp_path, resume):
    """Two batches given one output folder: the second's pair that the first is writing is not taken for an
    interrupted one (nor resumed, nor started over), and its partial file stays the first run's."""
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    out = tmp_path / "out"
    out.mkdir()
    partial = partial_path(out / "a.nut")
    partial.write_bytes(b"the first run's frames")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / "a.nut")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
        summary = run_batch(cfg, find_jobs(src, out, ext=".nut"), resume=resume)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert {Path(r.out).name: r.status for r in summary.results} == {"a.nut": "failed", "b.nut": "done"}
    assert summary.failed[0].reason.startswith(f"output {out / 'a.nut'} is being written by another run (")
    assert partial.read_bytes() == b"the first run's frames" and not (out / "a.nut").exists()


def test_replay_many_says_in_one_line_that_every_output_is_already_complete(tmp_path, tool, capsys):
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    args = [str(src), "--out", str(tmp_path / "out"), "--ext", ".nut", *(f"--set={item}" for item in CFG)]
    assert tool("replay_many").main(args) == 0
    assert "2 pairs: 2 done" in capsys.readouterr().out
    assert tool("replay_many").main(args) == 0
    said = capsys.readouterr().out
    assert said == f"replay_many.py: all 2 pairs already complete in {tmp_path / 'out'}; nothing to do\n"


def test_a_bad_batch_is_refused_in_one_line_before_any_work(tmp_path):
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    with pytest.raises(ValueError, match="unknown container"):
        find_jobs(src, tmp_path / "out", ext="nut")  # no dot: outputs named "anut"
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        find_jobs(src, tmp_path / "file", ext=".nut")
    (tmp_path / "empty" / "ir").mkdir(parents=True)
    (tmp_path / "empty" / "vi").mkdir()
    with pytest.raises(ValueError, match="no pairs to replay"):
        find_jobs(tmp_path / "empty", tmp_path / "out", ext=".nut")
    # a's output is c's visible input: it would be written over (or, there already, taken for a complete output)
    os.link(src / "ir" / "a.nut", tmp_path / "c.nut")
    for folder, vis in (("out", src / "vi" / "a.nut"), ("later", None)):  # there already, or made by the batch
        if vis is not None:
            (tmp_path / folder).mkdir()
            shutil.copy(vis, tmp_path / folder / "a.nut")
        (tmp_path / "pairs.txt").write_text(f"{src / 'ir' / 'a.nut'} {src / 'vi' / 'a.nut'}\n"
                                            f"{tmp_path / 'c.nut'} {tmp_path / folder / 'a.nut'}\n")
        with pytest.raises(ValueError, match="an input of another pair"):
            find_jobs(tmp_path / "pairs.txt", tmp_path / folder, ext=".nut")


def test_an_output_folder_inside_the_input_folder_is_refused_before_any_work(tmp_path):
    # --out src/ir with another extension: the outputs would go among the IR videos, and the next run would take them
    # for IR inputs
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    for out, folder in ((src / "ir", src / "ir"), (src / "ir" / "new", src / "ir"), (src / "vi", src / "vi")):
        with pytest.raises(ValueError, match=f"output folder {out} (is|is inside) the input folder {folder}; choose"):
            find_jobs(src, out, ext=".mkv")
    assert [job.out for job in find_jobs(src, src / "fused", ext=".mkv")] == [src / "fused" / "a.mkv"]  # beside: ok
    with pytest.raises(ValueError, match=f"^replay.frames_dir {src / 'ir' / 'frames'} is inside the input folder "
                                         f"{src / 'ir'}; choose a folder outside it$"):  # its PNGs too
        find_jobs(src, src / "fused", ext=".mkv", frames_dir=src / "ir" / "frames")
    (tmp_path / "link").symlink_to(src / "ir")  # ir/ spelt another way
    with pytest.raises(ValueError, match=f"output folder {tmp_path / 'link'} is the input folder {src / 'ir'}; choose"):
        find_jobs(src, tmp_path / "link", ext=".mkv")
    (tmp_path / "pairs.txt").write_text(f"{src / 'ir'} {src / 'vi' / 'a.nut'}\n")  # a folder input (of frames)
    with pytest.raises(ValueError, match="is inside the input folder"):
        find_jobs(tmp_path / "pairs.txt", src / "ir" / "out", ext=".mkv")
    (tmp_path / "pairs.txt").write_text(f"{src / 'ir' / 'a.nut'} {src / 'vi'}\n")  # a visible folder input too
    with pytest.raises(ValueError, match=f"is inside the input folder {src / 'vi'}; choose"):
        find_jobs(tmp_path / "pairs.txt", src / "vi" / "out", ext=".mkv")
    assert sorted(p.name for p in src.rglob("*")) == ["a.nut", "a.nut", "ir", "vi"]  # nothing made
    (src / "vi").rename(src / "vis")  # the visible folder's other spelling, which a pairs folder may have
    with pytest.raises(ValueError, match=f"output folder {src / 'vis'} is the input folder {src / 'vis'}; choose"):
        find_jobs(src, src / "vis", ext=".mkv")
    # a vi/ made beside vis/ is the visible folder of the next run: it fused IR with this run's outputs
    with pytest.raises(ValueError, match=f"output folder {src / 'vi'} is the input folder {src / 'vi'}; choose"):
        find_jobs(src, src / "vi", ext=".mkv")
    assert not (src / "vi").exists()


def test_an_output_that_is_a_hard_link_of_another_pairs_input_is_refused_before_any_work(tmp_path):
    # another name of the same file: replaying the first pair would write over the second pair's input (or take it
    # for an earlier output), found only when that pair ran
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    shutil.copy(src / "ir" / "a.nut", tmp_path / "c.nut")
    shutil.copy(src / "vi" / "a.nut", tmp_path / "c_vis.nut")
    (tmp_path / "out").mkdir()
    os.link(tmp_path / "c_vis.nut", tmp_path / "out" / "a.nut")
    (tmp_path / "pairs.txt").write_text(f"{src / 'ir' / 'a.nut'} {src / 'vi' / 'a.nut'}\n"
                                        f"{tmp_path / 'c.nut'} {tmp_path / 'c_vis.nut'}\n")
    with pytest.raises(ValueError, match=f"output {tmp_path / 'out' / 'a.nut'} would overwrite .*c_vis.nut, an "
                                         f"input of another pair"):
        find_jobs(tmp_path / "pairs.txt", tmp_path / "out", ext=".nut")


def test_a_compressed_recordings_output_is_named_without_either_extension(tmp_path):
    # robot_0.db3.zstd fused to robot_0.db3.mp4: the batch's outputs would not match the names of its recordings
    (tmp_path / "bags").mkdir()
    for name in ("robot_0.db3.zstd", "robot_1.mcap.zstd", "robot_2.mcap"):
        (tmp_path / "bags" / name).write_bytes(b"")
    jobs = find_jobs(tmp_path / "bags", tmp_path / "out")
    assert [job.out.name for job in jobs] == ["robot_0.mp4", "robot_1.mp4", "robot_2.mp4"]


def test_a_macs_hidden_metadata_file_beside_a_recording_is_no_recording(tmp_path):
    # a Mac copying onto a FAT or exFAT drive writes "._NAME" beside each file: taken as a recording, it failed a pair
    (tmp_path / "bags").mkdir()
    (tmp_path / "bags" / "robot.mcap").write_bytes(b"")
    (tmp_path / "bags" / "._robot.mcap").write_bytes(b"\0\5\x16\7")
    assert [job.out.name for job in find_jobs(tmp_path / "bags", tmp_path / "out")] == ["robot.mp4"]


def test_a_folder_named_as_a_recording_without_a_bags_metadata_is_no_recording(tmp_path):
    # an "old.mcap" folder of a user's own (no metadata.yaml: no bag folder) beside the recordings is no pair to fail
    (tmp_path / "bags" / "old.mcap").mkdir(parents=True)
    (tmp_path / "bags" / "robot.mcap").write_bytes(b"")
    assert [job.out.name for job in find_jobs(tmp_path / "bags", tmp_path / "out")] == ["robot.mp4"]


def test_a_bag_folders_output_is_named_as_the_whole_folder_even_with_a_dot_in_its_name(tmp_path):
    (tmp_path / "bags" / "drive.2024-05-01").mkdir(parents=True)  # a bag folder: its name has no extension to drop
    for name in ("metadata.yaml", "drive_0.mcap"):
        (tmp_path / "bags" / "drive.2024-05-01" / name).write_bytes(b"")
    assert [job.out.name for job in find_jobs(tmp_path / "bags", tmp_path / "out")] == ["drive.2024-05-01.mp4"]


def test_a_bag_folder_given_as_the_batch_is_one_pair_however_many_files_it_was_split_into(tmp_path):
    bag = tmp_path / "drive"
    bag.mkdir()
    for name in ("metadata.yaml", "drive_0.mcap", "drive_1.mcap"):
        (bag / name).write_bytes(b"")
    assert [(job.ir, job.out.name) for job in find_jobs(bag, tmp_path / "out")] == [(bag, "drive.mp4")]


def test_paths_are_made_absolute_for_workers_in_other_folders(tmp_path, monkeypatch):
    """A cluster's workers do not run in the driver's folder: relative inputs and outputs would name other files."""
    _pairs(tmp_path / "src", ["a.nut"], 4)
    (tmp_path / "pairs.txt").write_text("src/ir/a.nut src/vi/a.nut\n")
    monkeypatch.chdir(tmp_path)
    for given in ("src", "pairs.txt"):
        [job] = find_jobs(given, "out", ext=".nut")
        assert (job.ir, job.vis, job.out) == (tmp_path / "src/ir/a.nut", tmp_path / "src/vi/a.nut",
                                              tmp_path / "out/a.nut")


def test_the_engine_gets_the_config_s_relative_paths_made_absolute(tmp_path, monkeypatch):
    """A cluster's workers run in another folder: a relative replay.frames_dir put every pair's frames there (the
    table said done), and the driver's own checks looked at another folder than the one written."""
    _pairs(tmp_path / "src", ["a.nut"], 4)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bars.csv").write_text("".join(f"{v},{v},{v}\n" for v in range(256)))
    cfg = load_config(REPO / "streamfuse/configs/replay.yaml", [*CFG, "replay.frames_dir=frames",
                                                                "ir.palette=bars.csv", "hclfuse.weights=w/m.pt"])
    given = []

    class Recording(LocalEngine):
        def run(self, cfg, jobs, *, resume, frames):
            given.append(cfg)
            yield from super().run(cfg, jobs, resume=resume, frames=frames)

    run_batch(cfg, find_jobs("src", "out", ext=".nut", frames_dir="frames"), Recording())
    assert (given[0].replay.frames_dir, given[0].ir.palette, given[0].hclfuse.weights) == (
        str(tmp_path / "frames"), str(tmp_path / "bars.csv"), str(tmp_path / "w/m.pt"))
    assert len(list((tmp_path / "frames" / "a").glob("*.png"))) == 4


def test_a_pair_listed_twice_is_replayed_once_and_two_of_one_output_name_are_refused(tmp_path, caplog):
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    # the second and third lines name the first pair again, spelt another way (they were refused as two pairs
    # sharing an output)
    (tmp_path / "pairs.txt").write_text(f"{src}/ir/a.nut {src}/vi/a.nut\n{src}/ir/a.nut {src}/vi/a.nut\n"
                                        f"{src}/ir/../ir/a.nut {src}/./vi/a.nut\n")
    with caplog.at_level("WARNING"):
        [job] = find_jobs(tmp_path / "pairs.txt", tmp_path / "out", ext=".nut")
    assert (job.ir, job.vis, job.out.name) == (src / "ir/a.nut", src / "vi/a.nut", "a.nut")  # the first spelling
    assert f"{tmp_path / 'pairs.txt'} names 2 pairs more than once; each is replayed once" in caplog.text
    (tmp_path / "pairs.txt").write_text(f"{src}/ir/a.nut {src}/vi/a.nut\n{src}/ir/../ir/a.nut {src}/vi/a.nut\n")
    with caplog.at_level("WARNING"):
        find_jobs(tmp_path / "pairs.txt", tmp_path / "out", ext=".nut")
    assert f"{tmp_path / 'pairs.txt'} names a pair more than once; each is replayed once" in caplog.text
    shutil.copy(src / "ir" / "a.nut", src / "ir" / "a.mkv")
    (tmp_path / "pairs.txt").write_text(f"{src}/ir/a.nut {src}/vi/a.nut\n{src}/ir/a.mkv {src}/vi/a.nut\n")
    with pytest.raises(ValueError, match=r"two pairs would write .*a.nut \(IR files of one name, their extensions "
                                         r"aside\): name their outputs in a pair list \(a third word, 'IR VIS NAME'\)"):
        find_jobs(tmp_path / "pairs.txt", tmp_path / "out", ext=".nut")


def test_a_pair_listed_again_under_its_own_name_is_replayed_once_and_a_listed_name_twice_is_said(tmp_path, caplog):
    """A third word that is the IR file's name gives the output the line without one gives: the same pair again, not
    two pairs sharing an output; two pairs given one name are refused as the list's, not the IR files' names."""
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    line = f"{src}/ir/a.nut {src}/vi/a.nut"
    (tmp_path / "pairs.txt").write_text(f"{line}\n{line} a\n")
    with caplog.at_level("WARNING"):
        [job] = find_jobs(tmp_path / "pairs.txt", tmp_path / "out", ext=".nut")
    assert job.out.name == "a.nut" and "names a pair more than once; each is replayed once" in caplog.text
    (tmp_path / "pairs.txt").write_text(f"{line} same\n{src}/ir/b.nut {src}/vi/b.nut same\n")
    with pytest.raises(ValueError, match=r"two pairs would write .*same.nut: an output name .*pairs.txt gives \(a "
                                         r"third word\) is another pair's output too"):
        find_jobs(tmp_path / "pairs.txt", tmp_path / "out", ext=".nut")


def test_one_pair_listed_under_two_output_names_is_replayed_for_each(tmp_path, caplog):
    """A repeated line is one replay, but the same inputs named twice (a third word) are two outputs, said nowhere as
    repeats."""
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    line = f"{src}/ir/a.nut {src}/vi/a.nut"
    (tmp_path / "pairs.txt").write_text(f"{line} first\n{line} second\n")
    with caplog.at_level("WARNING"):
        jobs = find_jobs(tmp_path / "pairs.txt", tmp_path / "out", ext=".nut")
    assert [job.out.name for job in jobs] == ["first.nut", "second.nut"] and "more than once" not in caplog.text


def test_a_pair_list_names_outputs_so_two_archives_ir_files_of_one_name_share_a_batch(tmp_path):
    sites = [_pairs(tmp_path / site, ["cam.nut"], 4 + i) for i, site in enumerate(("site1", "site2"))]
    (tmp_path / "pairs.txt").write_text("".join(f"{s}/ir/cam.nut {s}/vi/cam.nut {s.name}_cam\n" for s in sites))
    cfg = load_config(REPO / "streamfuse/configs/replay.yaml", ["fuse.name=max", "replay.progress=false",
                                                                 f"replay.frames_dir={tmp_path / 'frames'}"])
    jobs = find_jobs(tmp_path / "pairs.txt", tmp_path / "out", ext=".nut", frames_dir=cfg.replay.frames_dir)
    assert [job.out.name for job in jobs] == ["site1_cam.nut", "site2_cam.nut"]
    summary = run_batch(cfg, jobs)
    assert [r.status for r in summary.results] == ["done", "done"]
    assert [r.frames_out for r in summary.results] == [4, 5]  # each output its own pair's
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["site1_cam", "site2_cam"]


def test_frames_left_staged_beside_a_complete_output_are_moved_in_by_the_next_batch(tmp_path):
    """A batch killed between a pair's video rename and its frames' move: the next batch skipped the complete pair and
    its frames stayed hidden in ``.partial`` for ever (a single replay's --resume moved them in)."""
    _pairs(tmp_path / "data", ["a.nut"], 4)
    cfg = load_config(REPO / "streamfuse/configs/replay.yaml", ["fuse.name=max", "replay.progress=false",
                                                                 f"replay.frames_dir={tmp_path / 'frames'}"])
    jobs = find_jobs(tmp_path / "data", tmp_path / "out", ext=".nut", frames_dir=cfg.replay.frames_dir)
    assert [r.status for r in run_batch(cfg, jobs).results] == ["done"]
    frames = tmp_path / "frames" / "a"
    (frames / ".partial").mkdir()
    (frames / ".partial" / "output").write_text(f"{jobs[0].out.absolute()}\n")
    for png in frames.glob("*.png"):
        png.replace(frames / ".partial" / png.name)
    [result] = run_batch(cfg, jobs).results
    assert (result.status, result.frames_out) == ("done", 4)  # the frames its video holds (it said 0)
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert [r.status for r in run_batch(cfg, jobs).results] == ["skipped"]


def test_a_pair_stopped_before_its_frames_moved_in_is_interrupted_not_done(tmp_path):
    """A stop between a pair's video rename and its frames' move (the Ray driver cuts a worker that takes longer than
    its wait for cancelled pairs): the table said done while the frames were still hidden in ``.partial``."""
    _pairs(tmp_path / "data", ["a.nut"], 4)
    cfg = load_config(REPO / "streamfuse/configs/replay.yaml", ["fuse.name=max", "replay.progress=false",
                                                                 f"replay.frames_dir={tmp_path / 'frames'}"])
    jobs = find_jobs(tmp_path / "data", tmp_path / "out", ext=".nut", frames_dir=cfg.replay.frames_dir)
    frames = tmp_path / "frames" / "a"

    class StoppedBeforeTheMove(LocalEngine):
        def run(self, cfg, jobs, *, resume, frames):
            for result in super().run(cfg, jobs, resume=resume, frames=frames):
                staged = tmp_path / "frames" / "a" / ".partial"
                staged.mkdir()
                (staged / "output").write_text(f"{jobs[0].out.absolute()}\n")
                for png in (tmp_path / "frames" / "a").glob("*.png"):
                    png.replace(staged / png.name)
                raise KeyboardInterrupt
                yield result

    with pytest.raises(KeyboardInterrupt) as stopped:
        run_batch(cfg, jobs, StoppedBeforeTheMove())
    [result] = stopped.value.summary.results
    assert (result.status, result.reason) == ("interrupted", f"stopped before its frames moved in from "
                                                             f"{frames / '.partial'}")
    [result] = run_batch(cfg, jobs, resume=True).results
    assert (result.status, result.frames_out) == ("done", 4)
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(4)]


def test_a_frames_dir_that_is_a_file_is_refused_before_any_pair(tmp_path):
    """Every pair failed on it, one by one, with the same reason."""
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    (tmp_path / "frames").write_text("")
    with pytest.raises(ValueError, match=f"^replay.frames_dir {tmp_path / 'frames'} is a file, not a folder"):
        find_jobs(src, tmp_path / "out", ext=".nut", frames_dir=tmp_path / "frames")


def test_a_pair_another_run_completes_before_its_turn_is_skipped_not_done(tmp_path):
    """Two batches on one output folder: the second, at a pair the first had finished since the second began, said it
    done, its frames among its own frames out and its rate thousands of frames/s, as if it had fused them."""
    from streamfuse.batch.worker import FOUND_COMPLETE

    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    cfg = load_config(REPO / "streamfuse/configs/replay.yaml", CFG)
    jobs = find_jobs(src, tmp_path / "out", ext=".nut")

    class AnotherRunFinishesTheSecondPair(LocalEngine):
        def run(self, cfg, jobs, *, resume, frames):
            for result in super().run(cfg, jobs, resume=resume, frames=frames):
                if Path(result.out).name == "a.nut":  # the other batch, ahead, finishes b.nut meanwhile
                    run_replay(cfg, ir_path=src / "ir" / "b.nut", vis_path=src / "vi" / "b.nut",
                               out_path=tmp_path / "out" / "b.nut")
                yield result

    summary = run_batch(cfg, jobs, AnotherRunFinishesTheSecondPair())
    assert [(Path(r.out).name, r.status, r.frames_out, r.reason) for r in summary.results] == [
        ("a.nut", "done", 4, ""), ("b.nut", "skipped", 4, FOUND_COMPLETE)]
    assert summary.results[1].fps == 0
    table = summary.format().splitlines()
    assert table[2].split()[:5] == ["b.nut", "skipped", "0", "0", "4"]  # its row: found complete, not fused
    assert table[-1].startswith("2 pairs: 1 done, 1 skipped (complete), 0 failed; 4 frames out in ")


def test_a_pair_completed_as_the_batch_stops_is_done_in_the_table(tmp_path):
    """Ctrl-C just after a pair's replay completed it, before its result reached the driver: the table called the
    finished pair "not started" (and a rerun then skipped it as complete)."""
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    cfg = load_config(REPO / "streamfuse/configs/replay.yaml", ["fuse.name=max", "replay.progress=false"])
    jobs = find_jobs(src, tmp_path / "out", ext=".nut")

    class StoppedAfterTheFirstPair(LocalEngine):
        def run(self, cfg, jobs, *, resume, frames):
            for result in super().run(cfg, jobs, resume=resume, frames=frames):
                raise KeyboardInterrupt  # the pair is complete on disk; its result never yielded
                yield result

    with pytest.raises(KeyboardInterrupt) as stopped:
        run_batch(cfg, jobs, StoppedAfterTheFirstPair())
    results = {Path(r.out).name: r for r in stopped.value.summary.results}
    assert results["a.nut"].status == "done" and results["a.nut"].frames_out == 4
    assert results["b.nut"].status == "not started"


def test_a_pair_another_run_completes_after_the_batch_stopped_is_not_claimed_done(tmp_path):
    """Stopped after its first pair while a second batch on the same outputs completed the next: the stopped batch's
    table said that pair done with its 4 frames, and "8 frames out" counted them as its own."""
    from streamfuse.batch.worker import FOUND_COMPLETE

    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    cfg = load_config(REPO / "streamfuse/configs/replay.yaml", CFG)
    jobs = find_jobs(src, tmp_path / "out", ext=".nut")

    class StoppedAsAnotherRunFinishesTheNext(LocalEngine):
        def run(self, cfg, jobs, *, resume, frames):
            yield next(super().run(cfg, jobs, resume=resume, frames=frames))
            run_replay(cfg, ir_path=src / "ir" / "b.nut", vis_path=src / "vi" / "b.nut",
                       out_path=tmp_path / "out" / "b.nut")
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as stopped:
        run_batch(cfg, jobs, StoppedAsAnotherRunFinishesTheNext())
    summary = stopped.value.summary
    assert [(Path(r.out).name, r.status, r.frames_out, r.reason) for r in summary.results] == [
        ("a.nut", "done", 4, ""), ("b.nut", "skipped", 4, FOUND_COMPLETE)]
    assert summary.format().splitlines()[-1].startswith("2 pairs: 1 done, 1 skipped (complete), 0 failed; 4 frames out")


def test_a_stop_as_a_pairs_output_takes_its_name_stops_the_batch_after_that_pair(tmp_path, monkeypatch):
    """SIGTERM while the first pair's output was renamed into place: the replay, rightly, let its complete output be,
    but the stop was thrown away and the batch replayed every other pair and exited 0."""
    import streamfuse.video

    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    cfg = load_config(REPO / "streamfuse/configs/replay.yaml", ["fuse.name=max", "replay.progress=false"])
    jobs = find_jobs(src, tmp_path / "out", ext=".nut")
    real_replace = streamfuse.video.durable_replace

    def replace_then_stop(src_path, dst):
        real_replace(src_path, dst)
        if Path(dst).name == "a.nut":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(streamfuse.video, "durable_replace", replace_then_stop)
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_batch(cfg, jobs)
    assert [(Path(r.out).name, r.status, r.frames_out) for r in stopped.value.summary.results] == [
        ("a.nut", "done", 4), ("b.nut", "not started", 0)]


def test_ray_joins_the_cluster_of_ray_address_unless_given_another(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # as in a job that `ray job submit` started
    assert RayEngine().address == "10.0.0.5:6379" and RayEngine(address="10.0.0.6:6379").address == "10.0.0.6:6379"
    inits = []
    RayEngine(address="")._init(SimpleNamespace(init=lambda **kwargs: inits.append(kwargs)))
    assert inits[0]["address"] == "local"  # ray.init reads $RAY_ADDRESS too: `--address ''` failed on num_cpus
    monkeypatch.delenv("RAY_ADDRESS")
    assert RayEngine().address == ""  # a local Ray


def test_a_worker_no_node_can_hold_is_refused_here_and_warned_of_on_a_cluster(caplog):
    """Ray waits for ever (a line of its autoscaler every half minute) for resources no node has."""
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    ray = SimpleNamespace(nodes=lambda: nodes)
    with pytest.raises(ValueError, match=r"^this machine's Ray has no node with the 1 CPUs and 0.5 GPUs a worker asks "
                                         r"for \(--threads, --gpus; the largest has 2 CPUs, 0 GPUs\)$"):
        RayEngine(gpus=0.5, address="")._check_fits(ray)
    with caplog.at_level("WARNING"):
        RayEngine(threads=4, address="auto")._check_fits(ray)  # an autoscaler may start a node that has them
    assert "no node of the Ray cluster has the 4 CPUs and 0 GPUs a worker asks for" in caplog.text
    RayEngine(threads=2, address="auto")._check_fits(ray)


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    with pytest.raises(OSError, match=f"^cannot make output folder {tmp_path / 'notes.txt' / 'out'}: "):
        run_batch(cfg, find_jobs(src, tmp_path / "notes.txt" / "out", ext=".nut"))


def test_output_folders_the_batch_made_are_removed_when_its_engine_fails_to_start(tmp_path):
    """A Ray that cannot start or join left the output folders it was given, made beforehand and empty, for good."""
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    (tmp_path / "kept").mkdir()
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)

    class NoCluster:
        def run(self, cfg, jobs, *, resume, frames):
            raise ValueError("cannot join the Ray cluster at 10.0.0.5:6379: no answer")
            yield

    for out in (tmp_path / "new" / "fused" / "day", tmp_path / "kept" / "fused"):
        with pytest.raises(ValueError, match="^cannot join the Ray cluster"):
            run_batch(cfg, find_jobs(src, out, ext=".nut"), NoCluster())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept", "src"]
    assert not any((tmp_path / "kept").iterdir())


def test_a_pair_failing_with_any_ffmpeg_error_fails_alone(tmp_path, monkeypatch):
    """PyAV errors that derive from no OSError, ValueError or RuntimeError (a decoder not found, an external library's
    error) fail their pair alone with one line, as the others do, instead of ending the batch with a traceback."""
    import av

    def external_error_in_a(cfg, **kwargs):
        if Path(kwargs["out_path"]).name == "a.nut":
            raise av.error.ExternalError(-542398533, "Generic error in an external library", str(kwargs["ir_path"]))
        return run_replay(cfg, **kwargs)

    monkeypatch.setattr("streamfuse.batch.worker.run_replay", external_error_in_a)
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    summary = run_batch(cfg, find_jobs(src, tmp_path / "out", ext=".nut"))
    assert [r.status for r in summary.results] == ["failed", "done"]
    assert "Generic error in an external library" in summary.results[0].reason


def test_a_failed_pairs_reason_is_one_line_logged_as_an_error(tmp_path, monkeypatch, caplog):
    def two_line_error(cfg, **kwargs):
        raise RuntimeError("decoder gave up\n  at frame 3")

    monkeypatch.setattr("streamfuse.batch.worker.run_replay", two_line_error)
    src = _pairs(tmp_path / "src", ["a.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    with caplog.at_level(logging.INFO, logger="streamfuse.batch"):
        summary = run_batch(cfg, find_jobs(src, tmp_path / "out", ext=".nut"))
    reason = summary.results[0].reason
    assert summary.results[0].status == "failed" and "decoder gave up" in reason and "\n" not in reason
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.ERROR,
                                                                      f"{tmp_path / 'out' / 'a.nut'}: {reason}")]


@pytest.mark.parametrize("name", ["average", "laplacian", "max", "rule"])
def test_a_worker_makes_every_baseline_fuser_afresh_for_each_video(name):
    """Baselines load nothing: each video gets a fuser of its own (none carries another video's state)."""
    from streamfuse.batch.worker import Models

    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", [f"fuse.name={name}"])
    models = Models()
    first, second = models.fuser(cfg), models.fuser(cfg)
    assert first is not second and type(first) is type(second)


def test_each_pair_writes_its_frames_to_a_folder_of_its_own(tmp_path):
    src = _pairs(tmp_path / "src", ["a.nut", "c.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml",
                      [*CFG, f"replay.frames_dir={tmp_path / 'frames'}"])
    summary = run_batch(cfg, find_jobs(src, tmp_path / "out", ext=".nut"))
    assert [r.status for r in summary.results] == ["done", "done"]
    assert {p.name: len(list(p.iterdir())) for p in (tmp_path / "frames").iterdir()} == {"a": 4, "c": 4}


def _stopped_batch(tmp_path: Path, monkeypatch, replay) -> BatchSummary:
    """The summary of a batch of pairs a and b whose first pair's replay is ``replay`` (it raises a stop)."""
    monkeypatch.setattr("streamfuse.batch.worker.run_replay", replay)
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_batch(cfg, find_jobs(src, tmp_path / "out", ext=".nut"))
    return stopped.value.summary


def test_an_interrupted_batch_counts_the_pairs_it_did_not_start(tmp_path, monkeypatch):
    """Ctrl-C in the first pair: the batch stops (KeyboardInterrupt, with the summary), the pair is counted interrupted,
    not failed, the second one not started, and the pair's reason leaves out the single replay's "--out FILE" hint
    (for a batch, --out is the folder)."""
    def interrupted(cfg, **kwargs):
        partial_path(kwargs["out_path"]).write_bytes(b"frames")  # what the replay kept
        raise ReplayError("replay stopped: interrupted (Ctrl-C); 3 frames kept in .a.nut.partial", interrupted=True,
                          hint="run again with --resume (same --out a.nut) to continue")

    summary = _stopped_batch(tmp_path, monkeypatch, interrupted)
    assert [(Path(r.out).name, r.status) for r in summary.results] == [("a.nut", "interrupted"),
                                                                       ("b.nut", "not started")]
    assert summary.results[0].reason == "replay stopped: interrupted (Ctrl-C); 3 frames kept in .a.nut.partial"
    assert summary.failed == []
    assert "2 pairs: 0 done, 0 skipped (complete), 0 failed, 1 interrupted, 1 not started;" in summary.format()


def test_a_pair_stopped_before_its_first_frame_is_not_started_not_interrupted(tmp_path, monkeypatch):
    # Ctrl-C while the model loads: no partial output to resume, so it is not counted as one kept
    def interrupted(cfg, **kwargs):
        raise ReplayError("replay stopped: interrupted (Ctrl-C)", interrupted=True)

    summary = _stopped_batch(tmp_path, monkeypatch, interrupted)
    assert [r.status for r in summary.results] == ["not started", "not started"]
    assert "2 pairs: 0 done, 0 skipped (complete), 0 failed, 2 not started;" in summary.format()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_a_terminal_hangup_stops_a_local_batch_as_ctrl_c_does(tmp_path, monkeypatch):
    """SIGHUP (the terminal, an SSH session, went away) as the first pair starts: the batch stops with its summary,
    the pairs counted as a Ctrl-C there counts them."""
    def unhandled(*_):
        raise AssertionError("SIGHUP reached the process's own handler: the batch did not handle it")

    src = _pairs(tmp_path / "src", ["a.nut", "b.nut"], 4)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    statuses = {}
    for sig in (signal.SIGINT, signal.SIGHUP):
        monkeypatch.setattr("streamfuse.batch.worker.run_replay", lambda cfg, sig=sig, **kw: signal.raise_signal(sig))
        previous = signal.signal(signal.SIGHUP, unhandled)  # a net: unhandled, SIGHUP would end pytest
        try:
            with pytest.raises(KeyboardInterrupt) as stopped:
                run_batch(cfg, find_jobs(src, tmp_path / "out", ext=".nut"))
        finally:
            signal.signal(signal.SIGHUP, previous)
        statuses[sig] = [r.status for r in stopped.value.summary.results]
    assert statuses[signal.SIGHUP] == statuses[signal.SIGINT] == ["not started", "not started"]


# ------------------------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module", autouse=True)
def _faulthandler_after_ray(request):
    """Ray's fatal-signal handlers stay after its shutdown, in place of faulthandler's: a later test's abort killed
    the suite with no stack at all. Put faulthandler back (on pytest's own stderr) once this module's Ray is done."""
    yield
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
        stderr = request.config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError):  # another pytest, or its faulthandler plugin off: nothing to put back
        return
    faulthandler.disable()  # enabling it again alone does not reinstall its handlers
    faulthandler.enable(file=stderr)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for this module; started without OMP_WAIT_POLICY in the environment, so only the
    workers' own import of streamfuse can set it."""
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'streamfuse[ray]')")
    saved = os.environ.pop("OMP_WAIT_POLICY", None)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if saved is not None:
            os.environ["OMP_WAIT_POLICY"] = saved
    yield ray
    ray.shutdown()


def test_ray_and_local_engines_give_byte_identical_outputs(tmp_path, ray_local):
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut", "c.nut"], 6)
    (src / "ir" / "d.nut").write_bytes(b"\0" * 100)
    (src / "vi" / "d.nut").write_bytes(b"\0" * 100)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    jobs = find_jobs(src, tmp_path / "out", ext=".nut")
    local = run_batch(cfg, jobs, LocalEngine())
    (tmp_path / "out").rename(tmp_path / "local")  # same output path for both: the config tag records it
    ray = run_batch(cfg, jobs, RayEngine(workers=2))
    assert {Path(r.out).name: r.status for r in ray.results} == {Path(r.out).name: r.status for r in local.results}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nut", "b.nut", "c.nut"]
    for name in ("a.nut", "b.nut", "c.nut"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    failed = {Path(r.out).name: r.reason for r in ray.failed}
    assert list(failed) == ["d.nut"] and "d.nut" in failed["d.nut"] and "\n" not in failed["d.nut"]
    done = [r for r in ray.results if r.status == "done"]
    assert all(r.frames_out == r.frames_in["vis"] == 6 and r.wait_policy == "PASSIVE" for r in done)
    assert all(r.worker.split(":")[1] != str(os.getpid()) for r in done)  # ran in the workers


def test_the_ray_frames_bar_counts_each_fused_frame_once(tmp_path, ray_local):
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut", "c.nut"], 6)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    (tmp_path / "out").mkdir()
    reported: list[int] = []
    results = list(RayEngine(workers=2).run(cfg, find_jobs(src, tmp_path / "out", ext=".nut"), resume=False,
                                            frames=lambda n, out: reported.append(n)))
    assert [r.status for r in results] == ["done"] * 3 and sum(reported) == 3 * 6


def _holds_a_frame(path: Path) -> bool:
    """Whether the partial output ``path``, still being written, holds a video packet yet."""
    try:
        with av.open(str(path)) as container:
            return any(packet.size for packet in container.demux(container.streams.video[0]))
    except (av.FFmpegError, OSError, IndexError):  # only its header so far, or not even that
        return False


def _ray_holder(path: Path) -> int | None:
    """The pid of a Ray worker process that has ``path`` open, or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    return int(pid)
        except OSError:  # gone, or not ours
            continue
    return None


def _kill_first_worker_mid_pair(out: Path, stop: threading.Event, killed: list[tuple[str, int]],
                                sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the first worker found writing a partial output in ``out``."""
    while not stop.is_set() and not killed:
        for partial in out.glob(".*.partial"):
            pid = _ray_holder(partial.resolve())
            if pid is not None:
                os.kill(pid, sig)
                killed.append((partial.name, pid))
                return
        stop.wait(0.005)


# SIGTERM: what `kill PID`, a node's shutdown or a container's stop send; only the driver's stops the batch
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the worker to kill through /proc")
def test_ray_worker_killed_mid_pair_is_retried_and_every_output_is_complete(tmp_path, ray_local, sig):
    names = ["a.nut", "b.nut", "c.nut", "d.nut"]
    src = _pairs(tmp_path / "src", names, 400)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    out = tmp_path / "out"
    out.mkdir()
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_worker_mid_pair, args=(out, stop, killed, sig))
    killer.start()
    try:
        summary = run_batch(cfg, find_jobs(src, out, ext=".nut"), RayEngine(workers=2, retries=2))
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was caught mid-pair"
    assert [r.status for r in summary.results] == ["done"] * 4
    assert str(killed[0][1]) not in {r.worker.split(":")[1] for r in summary.results}  # the retry ran elsewhere
    expected = _times(src / "vi" / "a.nut")
    assert len(expected) == 400
    for name in names:
        assert _times(out / name) == expected  # frames out == frames in, the same pts
        assert not partial_path(out / name).exists()


def test_ray_engine_settings_are_checked():
    with pytest.raises(ValueError, match="workers must be a finite number >= 1"):
        RayEngine(workers=0)
    with pytest.raises(ValueError, match="gpus must be a finite number >= 0, got nan"):  # NaN passed `< 0`
        RayEngine(gpus=float("nan"))
    with pytest.raises(ValueError, match="gpus must be a finite number >= 0, got inf"):  # Ray's init refuses it later
        RayEngine(gpus=float("inf"))


def test_a_lost_frames_counter_costs_no_pair():
    """The progress actor's process killed (say, by the OOM killer): the bar stops counting, the batch goes on."""
    from types import SimpleNamespace

    from streamfuse.batch.ray_engine import _report

    class ActorDied(Exception):
        pass

    def get(ref):
        raise ActorDied(ref)

    ray = SimpleNamespace(exceptions=SimpleNamespace(RayError=ActorDied), get=get)
    _report(ray, SimpleNamespace(take=SimpleNamespace(remote=lambda: "ref")), lambda n, out: pytest.fail("counted"))


# ------------------------------------------------------------------------------------------------------ stopping


def test_replay_many_tells_pairs_a_ctrl_c_stopped_from_failed_ones(tmp_path, monkeypatch, tool, capsys):
    """A Ctrl-C in the second pair: the bad first pair is FAILED, the second interrupted, the third not started, exit
    status 130 (the user's stop), not 1; --resume then finishes the two, and only the bad pair fails (exit 1)."""
    src = _pairs(tmp_path / "src", ["a.nut", "b.nut", "c.nut"], 4)
    (src / "vi" / "a.nut").unlink()  # a hard link of the others
    (src / "vi" / "a.nut").write_text("not a video")

    def ctrl_c_in_b(cfg, **kwargs):
        if Path(kwargs["out_path"]).name == "b.nut":
            partial_path(kwargs["out_path"]).write_bytes(b"")  # the replay's partial output (unreadable: redone)
            raise ReplayError("replay stopped: interrupted (Ctrl-C); 2 frames kept in .b.nut.partial", interrupted=True)
        return run_replay(cfg, **kwargs)

    monkeypatch.setattr("streamfuse.batch.worker.run_replay", ctrl_c_in_b)
    args = [str(src), "--out", str(tmp_path / "out"), "--ext", ".nut", *(f"--set={item}" for item in CFG)]
    assert tool("replay_many").main(args) == 130
    out, err = capsys.readouterr()
    assert "3 pairs: 0 done, 0 skipped (complete), 1 failed, 1 interrupted, 1 not started;" in out
    assert f"FAILED {tmp_path / 'out' / 'a.nut'}" in err and err.count("FAILED") == 1
    assert "run the same command again with --resume" in err
    monkeypatch.undo()
    assert tool("replay_many").main([*args, "--resume"]) == 1
    out, err = capsys.readouterr()
    assert "3 pairs: 2 done, 0 skipped (complete), 1 failed;" in out and "--resume" not in err


def _signal_driver_mid_pair(out: Path, stop: threading.Event, sig: int, sent: list[int]) -> None:
    """Send ``sig`` to this process (the driver) once a worker is found writing a partial output in ``out`` that holds
    a frame (one stopped before its first frame has nothing to keep: its partial output goes)."""
    while not stop.is_set() and not sent:
        if any(_ray_holder(partial.resolve()) and _holds_a_frame(partial) for partial in out.glob(".*.partial")):
            os.kill(os.getpid(), sig)
            sent.append(sig)
            return
        stop.wait(0.005)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the worker writing through /proc")
def test_ray_driver_stopped_mid_pair_keeps_partials_that_resume_finishes(tmp_path, ray_local, sig):
    """Ctrl-C or SIGTERM to the driver: the running pairs are interrupted (not retried, not failed) and keep their
    partial outputs (those that wrote a frame), the rest are not started; the batch stops with its summary, and
    --resume completes every pair."""
    names = ["a.nut", "b.nut", "c.nut", "d.nut"]
    src = _pairs(tmp_path / "src", names, 400)
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    out = tmp_path / "out"
    out.mkdir()
    jobs = find_jobs(src, out, ext=".nut")
    stop, sent = threading.Event(), []
    sender = threading.Thread(target=_signal_driver_mid_pair, args=(out, stop, sig, sent))
    sender.start()
    try:
        with pytest.raises(KeyboardInterrupt) as stopped:
            run_batch(cfg, jobs, RayEngine(workers=2, retries=2))
    finally:
        stop.set()
        sender.join()
    results = stopped.value.summary.results
    assert sent and {r.status for r in results} <= {"done", "interrupted", "not started"}
    interrupted = [r for r in results if r.status == "interrupted"]
    # a pair stopped before its first frame has nothing to keep; the one the signal waited for had written one
    assert any(r.frames_out for r in interrupted)
    assert all(partial_path(Path(r.out)).exists() == (r.frames_out > 0) for r in interrupted)
    # told by the replay itself, in words of what happened: the batch was stopped (Ray cancels with SIGINT, whichever
    # signal the driver had; a SIGTERM read "interrupted (Ctrl-C)")
    assert all(r.reason.startswith("replay stopped: interrupted (the batch was stopped)") for r in interrupted)
    assert stopped.value.stop == ("interrupted (SIGTERM)" if sig == signal.SIGTERM else "interrupted (Ctrl-C)")
    again = run_batch(cfg, jobs, RayEngine(workers=2), resume=True)
    assert {r.status for r in again.results} <= {"done", "skipped"}
    expected = _times(src / "vi" / "a.nut")
    for name in names:
        assert _times(out / name) == expected
        assert not partial_path(out / name).exists()


def test_a_ctrl_c_while_ray_starts_lets_it_start_and_stops_the_batch_then():
    from streamfuse.batch.ray_engine import RayEngine

    def init(**kwargs):  # the user's Ctrl-C lands while Ray starts its processes
        signal.raise_signal(signal.SIGINT)
        inits.append(kwargs)

    inits, stop = [], threading.Event()
    RayEngine(workers=1)._start(SimpleNamespace(init=init), stop)
    assert stop.is_set() and len(inits) == 1  # ray.init ran to its end: ray.shutdown then knows what to stop

    def init_twice(**kwargs):  # joining a cluster (Ray retries one that does not answer): a second Ctrl-C stops at once
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        RayEngine(workers=1, address="auto")._start(SimpleNamespace(init=init_twice), threading.Event())


def test_a_local_ray_that_fails_to_start_is_one_line():
    # a local Ray whose GCS never wrote its port (stopped as it started) ended the batch in a traceback, exit status 1
    def init(**kwargs):
        raise RuntimeError("Timed out waiting for file /tmp/ray/session_1/gcs_server_port_2")

    with pytest.raises(ValueError, match=r"^cannot start a local Ray: Timed out waiting for file /tmp/ray/session_1/"):
        RayEngine(workers=1, address="")._init(SimpleNamespace(init=init))


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_second_stop_ends_a_local_ray_start_that_has_gone_on_too_long(monkeypatch, second):
    """A local start whose GCS stopped answering retried it for minutes, deaf to every Ctrl-C and SIGTERM; past
    _HUNG_S it is taken for hung, and a second stop ends it at once, named by its signal. Before that, a second stop
    still lets it start."""
    from streamfuse.batch import ray_engine
    from streamfuse.signals import interrupted

    def init(**kwargs):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(second)
        inits.append(kwargs)

    inits, stop = [], threading.Event()
    RayEngine(workers=1)._start(SimpleNamespace(init=init), stop)
    assert stop.is_set() and len(inits) == 1
    monkeypatch.setattr(ray_engine, "_HUNG_S", 0.0)
    with pytest.raises(KeyboardInterrupt) as stopped:
        RayEngine(workers=1)._start(SimpleNamespace(init=init), threading.Event())
    assert len(inits) == 1
    assert interrupted(stopped.value) == ("interrupted (SIGTERM)" if second == signal.SIGTERM else
                                          "interrupted (Ctrl-C)")


@pytest.mark.parametrize("signum, said", [(signal.SIGTERM, "interrupted (SIGTERM)"), (signal.SIGINT, "")])
def test_a_stop_while_a_benchmarks_ray_starts_is_named_once_it_is_up(monkeypatch, signum, said):
    # bench batch, sent SIGTERM as its Ray started, ended "bench_batch.py: interrupted", as for a Ctrl-C
    import ray

    from streamfuse.batch.ray_engine import RayEngine
    from streamfuse.signals import Terminated

    monkeypatch.setattr(RayEngine, "_init", lambda self, ray: signal.raise_signal(signum))
    monkeypatch.setattr(RayEngine, "_check_fits", lambda self, ray: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(KeyboardInterrupt) as stopped:
        with RayEngine(workers=1).session():
            pytest.fail("the batch went on after the stop")
    assert isinstance(stopped.value, Terminated) == bool(said) and str(stopped.value) == said


@pytest.mark.skipif(not hasattr(signal, "SIGHUP") or not Path("/proc/self/status").exists(), reason="Linux signals")
def test_a_local_rays_processes_leave_a_terminal_hangup_to_the_driver():
    """A hangup reached Ray's workers too (the terminal's process group) and killed them mid-pair: the pairs' counts
    were lost (0 frames in the table) and their output locks left. Ray's processes now start with it blocked; the
    driver takes it (here while Ray starts: the batch stops once Ray is up) and cancels the pairs as on SIGTERM."""
    from streamfuse.batch.ray_engine import RayEngine

    def init(**kwargs):  # where Ray starts its processes (its raylet, which starts the workers)
        status = subprocess.run([sys.executable, "-c", "print(open('/proc/self/status').read())"],
                                capture_output=True, text=True, check=True).stdout
        masks.append(int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16))
        signal.raise_signal(signal.SIGHUP)  # the terminal hangs up meanwhile

    masks, stop = [], threading.Event()
    previous = signal.signal(signal.SIGHUP, lambda *_: pytest.fail("the hangup reached no handler of the batch"))
    try:  # a handler, not nohup's SIG_IGN (the suite may run under nohup), for the batch's to replace
        RayEngine(workers=1)._start(SimpleNamespace(init=init), stop)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert masks[0] & 1 << (signal.SIGHUP - 1), "Ray's processes take the hangup themselves"
    assert stop.is_set()


@pytest.mark.parametrize("late_stop, exits", [(signal.SIGTERM, True), (signal.SIGINT, False), (0, False)])
def test_a_ray_worker_sigtermed_as_its_pair_completed_exits_for_ray_to_run_the_pair_again(monkeypatch, late_stop,
                                                                                          exits):
    """A SIGTERM to a worker (a node shutting down) while its pair's output took its name was held by the replay and
    then dropped: the worker went on with the next pairs. It now exits as for a SIGTERM mid-pair (Ray runs the pair
    again, which finds it complete); the driver's cancel (SIGINT) is not such a stop."""
    from streamfuse.batch import ray_engine
    from streamfuse.batch.jobs import PairResult
    from streamfuse.signals import handled

    monkeypatch.setattr(ray_engine, "_MODELS", object())
    monkeypatch.setattr(ray_engine, "replay_pair", lambda *args, **kwargs: PairResult("o.nut", "done",
                                                                                     late_stop=late_stop))
    raised = []
    with handled(lambda signum, frame: raised.append(signum), (signal.SIGTERM,)):
        result = ray_engine._ray_replay(None, None, False, 1, SimpleNamespace(add=SimpleNamespace(remote=print)))
    assert result.status == "done" and raised == ([signal.SIGTERM] if exits else [])


def test_a_second_ctrl_c_stops_the_wait_for_cancelled_ray_pairs_at_once():
    """Ray holds Python's signal handlers while it waits: one wait of the whole 10 s for the cancelled pairs took a
    second Ctrl-C only 9 s later. The wait is made of short ones now."""
    from streamfuse.batch.ray_engine import _wind_down

    timeouts = []

    def wait(refs, num_returns, timeout):  # the pairs never end; the user's second Ctrl-C comes during the second
        timeouts.append(timeout)
        if len(timeouts) == 2:
            signal.raise_signal(signal.SIGINT)
        return [], refs

    ray = SimpleNamespace(cancel=lambda ref: None, wait=wait)
    with pytest.raises(KeyboardInterrupt):
        list(_wind_down(ray, {"ref1": None, "ref2": None}, lambda: None))
    assert len(timeouts) == 2 and max(timeouts) <= 0.25


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,),
                                     (signal.SIGTERM, signal.SIGINT, signal.SIGTERM)],
                         ids=["Ctrl-C twice", "SIGTERM", "all sorts"])
def test_no_signal_cuts_a_local_ray_start_half_way(signals):
    """A local Ray cut half-way left its raylet's agents running for minutes, or the driver crashing at exit (its core
    worker half made): a second Ctrl-C, and even a first SIGTERM (ray.init sets a handler of its own, first thing,
    that exits wherever it is), now lets ray.init run to its end, and the batch stops then."""
    from streamfuse.batch.ray_engine import RayEngine

    def set_sigterm_handler(handler):  # Ray's: ray.init calls it before it starts anything
        signal.signal(signal.SIGTERM, handler)

    def init(**kwargs):
        ray._private.utils.set_sigterm_handler(lambda signum, frame: sys.exit(signum))  # as ray.init does
        for sig in signals:
            signal.raise_signal(sig)
        inits.append(kwargs)

    utils = SimpleNamespace(set_sigterm_handler=set_sigterm_handler)
    ray = SimpleNamespace(init=init, _private=SimpleNamespace(utils=utils))
    inits, stop, before = [], threading.Event(), signal.getsignal(signal.SIGTERM)
    try:
        RayEngine(workers=1)._start(ray, stop)
    except KeyboardInterrupt:  # caught: pytest would take it for the user's and stop the whole run
        pytest.fail("a signal cut ray.init half-way")
    assert stop.is_set() and len(inits) == 1  # ray.init ran to its end: ray.shutdown then knows what to stop
    assert utils.set_sigterm_handler is set_sigterm_handler and signal.getsignal(signal.SIGTERM) == before


def test_a_sigterm_stops_a_ray_cluster_join_at_once():
    """Joining a cluster (Ray retries one that does not answer for ever) keeps Ray's SIGTERM handler: a service
    manager's stop ends the join instead of waiting for it."""
    from streamfuse.batch.ray_engine import RayEngine

    def set_sigterm_handler(handler):
        signal.signal(signal.SIGTERM, handler)

    def init(**kwargs):  # as ray.init does: its handler first, then the join, which a SIGTERM lands in
        ray._private.utils.set_sigterm_handler(lambda signum, frame: sys.exit(signum))
        signal.raise_signal(signal.SIGTERM)
        joined.append(kwargs)

    ray = SimpleNamespace(init=init, _private=SimpleNamespace(utils=SimpleNamespace(
        set_sigterm_handler=set_sigterm_handler)))
    joined, before = [], signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        RayEngine(workers=1, address="auto")._start(ray, threading.Event())
    assert not joined and signal.getsignal(signal.SIGTERM) == before


def test_ray_engine_refuses_workers_of_no_cpu_and_negative_retries():
    with pytest.raises(ValueError, match="threads must be a finite number >= 1, got 0"):
        RayEngine(threads=0)
    with pytest.raises(ValueError, match="retries must be a finite number >= 0, got -1"):
        RayEngine(retries=-1)
    assert RayEngine(gpus=0, retries=0).retries == 0


@pytest.mark.parametrize("gpus, num_gpus", [(0.0, 0), (0.5, None)])  # None: Ray finds the machine's GPUs
def test_a_local_ray_gets_the_cpus_of_every_worker_and_the_gpus_only_when_asked(gpus, num_gpus):
    inits = []
    RayEngine(workers=3, threads=2, gpus=gpus, address="")._init(SimpleNamespace(init=lambda **kw: inits.append(kw)))
    assert (inits[0]["num_cpus"], inits[0]["num_gpus"]) == (6, num_gpus)


def test_a_worker_that_takes_a_whole_node_fits_and_the_largest_node_is_named(caplog):
    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}}]
    ray = SimpleNamespace(nodes=lambda: nodes)
    with caplog.at_level("WARNING"):
        RayEngine(threads=4, address="")._check_fits(ray)  # as many CPUs as the node has: no refusal
        RayEngine(threads=2, gpus=1, address="")._check_fits(ray)
    assert caplog.text == ""
    with pytest.raises(ValueError, match=r"the largest has 4 CPUs, 0 GPUs\)$"):
        RayEngine(threads=8, address="")._check_fits(ray)


def test_a_first_ctrl_c_while_joining_a_cluster_waits_for_the_join():
    """Only a second Ctrl-C stops a join at once; the first lets it end, and the batch stops then."""
    def init(**kwargs):
        signal.raise_signal(signal.SIGINT)
        joined.append(kwargs)

    joined, stop = [], threading.Event()
    try:
        RayEngine(workers=1, address="auto")._start(SimpleNamespace(init=init), stop)
    except KeyboardInterrupt:  # caught: pytest would take it for the user's and stop the whole run
        pytest.fail("a first Ctrl-C cut the join")
    assert stop.is_set() and len(joined) == 1


def test_frame_reports_are_added_up_and_sent_at_most_every_quarter_second(monkeypatch):
    from streamfuse.batch import ray_engine

    now, sent = [0.0], []
    monkeypatch.setattr(ray_engine, "time", SimpleNamespace(monotonic=lambda: now[0]))
    report = ray_engine._Batched(sent.append)
    report(1)
    report(1)
    assert sent == []
    now[0] = 0.25
    report(1)
    report(4)
    report.flush()
    report.flush()  # nothing new: nothing sent
    assert sent == [3, 4]


def test_a_ray_pair_sends_its_last_frames_and_puts_back_the_workers_ctrl_c_handler(monkeypatch):
    """The frames fused since the last report reach the bar as the pair ends; the task's SIGINT handler (the driver's
    cancel) is the task's only, not left to the worker's later work."""
    from streamfuse.batch import ray_engine
    from streamfuse.batch.jobs import PairResult

    def replay(*args, report, **kwargs):
        report(2)
        return PairResult("o.nut", "done", frames_out=2)

    sent = []
    monkeypatch.setattr(ray_engine, "_MODELS", object())
    monkeypatch.setattr(ray_engine, "replay_pair", replay)
    monkeypatch.setattr(ray_engine, "time", SimpleNamespace(monotonic=lambda: 0.0))  # no report sent by time
    before = signal.getsignal(signal.SIGINT)
    job = PairJob(Path("ir.nut"), Path("vi.nut"), Path("/o/o.nut"))
    ray_engine._ray_replay(None, job, False, 1, SimpleNamespace(add=SimpleNamespace(
        remote=lambda n, out: sent.append((n, out)))))
    assert sent == [(2, "/o/o.nut")] and signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("fused_here, status", [(True, "done"), (False, "skipped")])
def test_a_ray_pair_found_complete_is_done_only_where_this_batch_fused_it(monkeypatch, fused_here, status):
    """A pair whose output was complete when its task ran: done where this batch's workers fused frames into it (a
    retry after a worker lost as it finished the pair), skipped where another run did."""
    from streamfuse.batch import ray_engine
    from streamfuse.batch.worker import FOUND_COMPLETE

    asked = []

    def fused(out):
        asked.append(out)
        return fused_here

    fake_ray = SimpleNamespace(get=lambda value: value, exceptions=SimpleNamespace(RayError=RuntimeError))
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setattr(ray_engine, "_MODELS", object())
    monkeypatch.setattr(ray_engine, "replay_pair", lambda *args, **kwargs: PairResult(
        "/o/o.nut", "skipped", frames_out=4, reason=FOUND_COMPLETE))
    job = PairJob(Path("ir.nut"), Path("vi.nut"), Path("/o/o.nut"))
    result = ray_engine._ray_replay(None, job, False, 1, SimpleNamespace(fused=SimpleNamespace(remote=fused)))
    assert (result.status, result.frames_out, asked) == (status, 4, ["/o/o.nut"])
    assert result.reason == ("" if fused_here else FOUND_COMPLETE)


def test_the_frames_counter_keeps_the_outputs_fused_into_until_the_next_batch():
    from streamfuse.batch.ray_progress import Progress

    progress = Progress()
    progress.add(3, "/o/a.nut")
    assert progress.fused("/o/a.nut") and not progress.fused("/o/b.nut") and progress.take() == {"/o/a.nut": 3}
    assert progress.take() == {} and progress.fused("/o/a.nut")
    progress.reset()
    assert not progress.fused("/o/a.nut")


def test_cancelled_ray_pairs_get_their_time_and_those_that_return_are_yielded(monkeypatch):
    """The wind-down waits ``_CANCEL_S`` (not for ever) for the cancelled pairs; a pair that returned is yielded, one
    that ended in a Ray error (cancelled before it began) is left to the batch to count; the frames they fused
    meanwhile are reported (the outputs they fused into are the batch's, whether their results come back or not)."""
    from streamfuse.batch import ray_engine

    class RayError(Exception):
        pass

    now, waits, cancelled = [0.0], [], []

    def wait(refs, num_returns, timeout):
        waits.append(timeout)
        assert len(waits) < 1000, "the wind-down waits for ever for a pair that never ends"
        now[0] += timeout
        done = [ref for ref in refs if ref != "hung"]  # "hung" never ends
        return done, [ref for ref in refs if ref not in done]

    def get(ref):
        if ref == "never began":
            raise RayError(ref)
        return f"result of {ref}"

    monkeypatch.setattr(ray_engine, "time", SimpleNamespace(monotonic=lambda: now[0]))
    ray = SimpleNamespace(cancel=cancelled.append, wait=wait, get=get, exceptions=SimpleNamespace(RayError=RayError))
    reported = []
    got = list(ray_engine._wind_down(ray, {"ran": None, "never began": None, "hung": None},
                                     lambda: reported.append(len(waits))))
    assert got == ["result of ran"] and cancelled == ["ran", "never began", "hung"]
    assert reported == [len(waits)]  # once, after the wait
    assert len(waits) == round(ray_engine._CANCEL_S / ray_engine._WAIT_S)


def test_a_pair_whose_ray_task_raised_fails_with_its_own_reason_not_as_a_lost_worker():
    from streamfuse.batch.jobs import PairJob
    from streamfuse.batch.ray_engine import _lost

    class RayTaskError(Exception):
        def __init__(self, cause):
            super().__init__("ray::_ray_replay() (pid=7)\nTraceback ...")
            self.cause = cause

    class WorkerCrashedError(Exception):
        pass

    ray = SimpleNamespace(exceptions=SimpleNamespace(RayTaskError=RayTaskError))
    job = PairJob(Path("ir.nut"), Path("vi.nut"), Path("/o/a.nut"))
    assert _lost(ray, job, RayTaskError(MemoryError("no room")), 3).reason == "MemoryError: no room"
    lost = _lost(ray, job, WorkerCrashedError("the worker died"), 3)
    assert lost.status == "failed"
    assert lost.reason == ("its worker was lost (WorkerCrashedError: the worker died; Ray runs a pair again up to 3 "
                           "times); run again with --resume")


class _FakeRay:
    """Enough of ``ray`` for the driver's scheduling: each task ends at the first wait for it, with its pair done; the
    frames counter has one frame fused each time it is asked."""

    exceptions = SimpleNamespace(RayError=RuntimeError)

    def __init__(self) -> None:
        self.options, self.submitted, self.running, self.peak, self.took = {}, [], set(), 0, 0

    def get_runtime_context(self):
        return SimpleNamespace(gcs_address="127.0.0.1:6379")

    def put(self, value):
        return value

    def remote_functions(self) -> dict:
        def options(**kwargs):
            self.options = kwargs
            return SimpleNamespace(remote=submit)

        def submit(cfg, job, resume, threads, progress):
            self.submitted.append(job)
            self.running.add(job.out)
            self.peak = max(self.peak, len(self.running))
            return job.out

        progress = SimpleNamespace(take=SimpleNamespace(remote=lambda: "take"),
                                   reset=SimpleNamespace(remote=lambda: "reset"))
        return {"replay": SimpleNamespace(options=options), "progress": SimpleNamespace(remote=lambda: progress)}

    def wait(self, refs, num_returns, timeout):
        return refs[:1], refs[1:]

    def get(self, ref):
        if ref == "take":
            self.took += 1
            return {"/o/0.nut": 1}
        if ref == "reset":
            return None
        self.running.discard(ref)
        return PairResult(str(ref), "done")


def _schedule(engine: RayEngine, ray: _FakeRay, n: int, stop: threading.Event, monkeypatch) -> list[int]:
    """Run the driver's scheduling of ``n`` pairs on ``ray``; returns the frames it reported to the bar."""
    from streamfuse.batch import ray_engine
    from streamfuse.batch.jobs import PairJob

    monkeypatch.setattr(ray_engine, "_remote", lambda ray: ray.remote_functions())
    jobs = [PairJob(Path(f"{i}.nut"), Path(f"{i}.nut"), Path(f"/o/{i}.nut")) for i in range(n)]
    frames: list[int] = []
    results = list(engine._schedule(ray, None, jobs, False, lambda n, out: frames.append(n), stop))
    assert [r.status for r in results] == ["done"] * len(ray.submitted)
    return frames


def test_the_ray_driver_gives_ray_two_pairs_per_worker_retries_lost_ones_and_counts_the_last_frames(monkeypatch):
    """At most two pairs per worker are given to Ray at once (one running, one queued to start as the other ends);
    a pair whose worker dies is run again up to ``retries`` times; the frames fused after the last wait reach the
    bar too."""
    ray = _FakeRay()
    frames = _schedule(RayEngine(workers=2, retries=5), ray, 7, threading.Event(), monkeypatch)
    assert len(ray.submitted) == 7 and ray.peak == 4
    assert ray.options["max_retries"] == 5 and ray.options["retry_exceptions"] is False
    assert frames == [1] * 8 and ray.took == 8  # one take per pair ended, and one at the end


def test_a_batch_stopped_while_ray_started_gives_ray_nothing(monkeypatch):
    ray = _FakeRay()
    stop = threading.Event()
    stop.set()
    assert _schedule(RayEngine(workers=2), ray, 3, stop, monkeypatch) == []
    assert ray.submitted == [] and ray.options == {}


def test_a_stop_ends_the_drivers_wait_for_pairs_that_have_not_ended():
    from streamfuse.batch.ray_engine import _Stopped, _wait_one

    waits = []

    def wait(refs, num_returns, timeout):
        waits.append(timeout)
        assert len(waits) < 100, "the driver waits on for pairs after a stop"
        return [], refs

    ray = SimpleNamespace(wait=wait, get=lambda ref: {}, exceptions=SimpleNamespace(RayError=RuntimeError))
    stop = threading.Event()
    stop.set()
    with pytest.raises(_Stopped):
        _wait_one(ray, ["running"], SimpleNamespace(take=SimpleNamespace(remote=lambda: "take")), lambda *_: None, stop)
    assert len(waits) == 1


def test_the_frames_counter_is_kept_for_the_next_batch_on_the_same_ray_only(monkeypatch):
    from streamfuse.batch import ray_engine

    made, address = [], ["127.0.0.1:6379"]
    monkeypatch.setattr(ray_engine, "_remote", lambda ray: {"progress": SimpleNamespace(
        remote=lambda: made.append(object()) or made[-1])})
    ray = SimpleNamespace(get_runtime_context=lambda: SimpleNamespace(gcs_address=address[0]))
    engine = RayEngine()
    first = engine._progress_actor(ray)
    assert engine._progress_actor(ray) is first
    address[0] = "127.0.0.1:6380"  # another Ray (the first was shut down): its actor is gone with it
    assert engine._progress_actor(ray) is not first and len(made) == 2


def test_a_ray_client_address_is_left_to_ray(monkeypatch):
    """``ray://HOST:PORT`` (Ray Client) is no GCS address to try here."""
    from streamfuse.batch import ray_join

    monkeypatch.setattr(ray_join.socket, "create_connection", lambda *a, **k: pytest.fail("connected"))
    ray_join.check_cluster(SimpleNamespace(), "ray://127.0.0.1:10001")
    ray_join.check_cluster(SimpleNamespace(), "auto")


class _AuthenticationError(Exception):
    pass


def _gcs_that_answers(probe):
    """A Ray whose cluster answers its port as a GCS does (an HTTP/2 frame) and its probe as ``probe`` does."""
    class RayError(Exception):
        pass

    exceptions = SimpleNamespace(RayError=RayError, AuthenticationError=_AuthenticationError)
    joined = []
    ray = SimpleNamespace(exceptions=exceptions, _raylet=SimpleNamespace(InnerGcsClient=SimpleNamespace(
        standalone=lambda address, cluster_id, timeout_ms: probe(exceptions))), init=lambda **kw: joined.append(kw))
    return ray, joined


@pytest.fixture
def gcs_port():
    """A loopback port this test listens on, answering a connection with an HTTP/2 frame as a GCS does."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer():
            with contextlib.suppress(OSError):  # closed as the test ends
                link, _ = server.accept()
                with link:
                    link.recv(64)
                    link.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an empty HTTP/2 SETTINGS frame
        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        yield server.getsockname()[1]


@pytest.mark.parametrize(("mode", "said"), [("", "set RAY_AUTH_MODE=token, with the cluster's token"),
                                            ("token", "it refuses this driver's token")])
def test_a_cluster_that_asks_for_a_token_is_refused_at_once_in_one_line(gcs_port, monkeypatch, capfd, mode, said):
    """A token-authenticated cluster joined without RAY_AUTH_MODE=token (or with another token): ray.init tried it
    for about 20 s, a warning a second, and then said only that it failed to connect."""
    def refuse(exceptions):
        os.write(2, b"gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated\n")  # Ray's C++
        raise exceptions.AuthenticationError("RPC error: InvalidAuthToken")

    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    ray, joined = _gcs_that_answers(refuse)
    with pytest.raises(ValueError) as refused:
        RayEngine(address=f"127.0.0.1:{gcs_port}")._init(ray)
    assert said in str(refused.value) and "\n" not in str(refused.value) and not joined
    assert "Unauthenticated" not in capfd.readouterr().err  # the line above says it


def test_a_cluster_the_token_probe_cannot_tell_is_left_to_ray_init(gcs_port, capfd):
    def time_out(exceptions):
        os.write(2, b"rpc_client.h:153: Failed to connect to GCS\n")
        raise exceptions.RayError("Timed out while waiting for GCS to become available.")

    ray, joined = _gcs_that_answers(time_out)
    RayEngine(address=f"127.0.0.1:{gcs_port}")._init(ray)
    assert joined == [{"address": f"127.0.0.1:{gcs_port}"}]
    assert "Failed to connect to GCS" in capfd.readouterr().err  # Ray's own warnings stand


@pytest.mark.parametrize(("interrupted_by", "exits"), [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_a_ray_worker_whose_pair_a_sigterm_interrupted_exits_and_the_drivers_cancel_does_not(monkeypatch,
                                                                                             interrupted_by, exits):
    """A SIGTERM to a worker (a node shutting down) interrupts its pair: the worker exits for Ray to run the pair
    again; the driver's cancel (SIGINT, through the task's handler) interrupts it as well, and the worker stays."""
    from streamfuse.batch import ray_engine
    from streamfuse.signals import handled

    def replay(*args, **kwargs):
        try:
            if interrupted_by == signal.SIGINT:
                signal.raise_signal(signal.SIGINT)  # ray.cancel, through the task's handler
        except KeyboardInterrupt:
            pass
        return PairResult("o.nut", "interrupted")  # either way the replay stops and keeps its partial output

    monkeypatch.setattr(ray_engine, "_MODELS", object())
    monkeypatch.setattr(ray_engine, "replay_pair", replay)
    raised = []
    with handled(lambda signum, frame: raised.append(signum), (signal.SIGTERM,)):
        result = ray_engine._ray_replay(None, None, False, 1, SimpleNamespace(add=SimpleNamespace(remote=print)))
    assert result.status == "interrupted" and raised == ([signal.SIGTERM] if exits else [])


def test_the_table_shows_a_pair_s_control_characters_as_escapes():
    # the name went out as it was: an escape sequence drew on the terminal, a line break split its row
    table = BatchSummary([PairResult("/o/red\x1b[31m\nx.mkv", "done", frames_out=4)], wall_s=1.0).format()
    assert table.splitlines()[1].startswith("red\\x1b[31m\\nx.mkv  done")


def _partial_of(out: Path, n: int) -> None:
    """``n`` frames under ``out``'s partial name, as a stopped or killed replay leaves them."""
    _video(out.with_name("cut.nut"), n, 1)
    os.replace(out.with_name("cut.nut"), partial_path(out))


def test_a_pair_whose_worker_was_lost_for_good_counts_the_frames_its_partial_output_holds(tmp_path):
    """A Ray worker killed more often than --retries allow: its row said 0 frames out while its partial output held the
    8 it fused (which --resume takes over); now its row says them, as a failed pair's are said beside the total."""
    from streamfuse.batch.ray_engine import _lost

    out = tmp_path / "p.nut"
    _partial_of(out, 8)
    ray = SimpleNamespace(exceptions=SimpleNamespace(RayTaskError=type("RayTaskError", (Exception,), {})))
    result = _lost(ray, PairJob(tmp_path / "ir.nut", tmp_path / "vis.nut", out), RuntimeError("worker died"), 0)
    assert (result.status, result.frames_out) == ("failed", 8)


def test_a_pair_stopped_without_a_result_counts_the_frames_its_partial_output_holds(tmp_path):
    """A pair whose result never came back (a Ray task cancelled that outlasted the wait for it): its row said 0
    frames out beside a partial output of 8; now it says them."""
    class Stopped:
        def run(self, cfg, jobs, *, resume, frames):
            _partial_of(jobs[0].out, 8)
            raise KeyboardInterrupt
            yield

    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", CFG)
    out = tmp_path / "p.nut"
    with pytest.raises(BatchInterrupted) as err:
        run_batch(cfg, [PairJob(tmp_path / "ir.nut", tmp_path / "vis.nut", out)], Stopped())
    [result] = err.value.summary.results
    assert (result.status, result.frames_out) == ("interrupted", 8)
