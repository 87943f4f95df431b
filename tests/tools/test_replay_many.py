"""tools/replay_many.py: one output per pair, failures reported at the end without stopping the others, skips."""

from __future__ import annotations

import importlib.util
import re
import signal
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from streamfuse.signals import stopped_by
from streamfuse.video import VideoWriter, decode_frames

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("replay_many", REPO / "tools" / "replay_many.py")
replay_many = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay_many)
ARGS = ["--set", "fuse.name=max", "--set", "replay.progress=false"]


def _video(path: Path, n: int = 5) -> None:
    w = VideoWriter(path, codec="h264", crf=10, time_base=Fraction(1, 25), rate=Fraction(25), width=32, height=24)
    for i in range(n):
        w.write(np.full((24, 32, 3), 40 * i, np.uint8), i)
    w.commit()


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def _stop_fusing_at(monkeypatch: pytest.MonkeyPatch, frame: int, stop: Callable[[], None]) -> Callable:
    """Every fuser the replays build calls ``stop`` as it fuses the batch's ``frame``-th frame (counted across its
    pairs); returns the real ``config_fuser``."""
    import streamfuse.processor

    real, fused = streamfuse.processor.config_fuser, []

    def stopping(*args):
        fuser = real(*args)

        class Stops:
            name, version = fuser.name, fuser.version

            def fuse(self, *a, **k):
                fused.append(1)
                if len(fused) == frame:
                    stop()
                return fuser.fuse(*a, **k)

        return Stops()

    monkeypatch.setattr(streamfuse.processor, "config_fuser", stopping)
    return real


def test_folder_of_pairs_reports_failures_at_the_end_and_skips_done_outputs(tmp_path, capsys):
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        _video(tmp_path / sub / "a.mp4")
        _video(tmp_path / sub / "c.mp4")
    _video(tmp_path / "ir" / "b.mp4")
    (tmp_path / "vi" / "b.mp4").write_text("not a video")
    out = tmp_path / "out"
    assert replay_many.main([str(tmp_path), "--out", str(out), *ARGS]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "b.mp4" in err and "not a video" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "c.mp4"]  # c ran after b failed
    assert len(list(decode_frames(out / "a.mp4"))) == 5

    mtime = (out / "a.mp4").stat().st_mtime_ns
    (tmp_path / "ir" / "b.mp4").unlink()
    assert replay_many.main([str(tmp_path), "--out", str(out), *ARGS]) == 0
    assert (out / "a.mp4").stat().st_mtime_ns == mtime  # already complete: skipped


def test_list_file_and_bad_list(tmp_path, capsys):
    _video(tmp_path / "ir.mp4")
    _video(tmp_path / "vis.mp4")
    (tmp_path / "pairs.txt").write_text("ir.mp4 vis.mp4\n")
    assert replay_many.main([str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o"), "--ext", ".mkv", *ARGS]) == 0
    assert (tmp_path / "o" / "ir.mkv").exists()
    assert replay_many.main([str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), *ARGS]) == 2
    assert "pair list not found" in capsys.readouterr().err


@pytest.mark.parametrize("given, said", [(["", "--out", "o"], "argument LIST_OR_DIR: empty path"),
                                         (["pairs", "--out", ""], "argument --out: empty path")])
def test_an_empty_path_is_refused_not_read_as_the_working_folder(given, said, tmp_path, monkeypatch, capsys):
    # an unset shell variable: --out "$OUT" wrote the fused videos into the working folder, and an empty input read
    # the working folder's ir/ and vi/
    for sub in ("pairs/ir", "pairs/vi", "ir", "vi"):
        (tmp_path / sub).mkdir(parents=True)
        _video(tmp_path / sub / "a.mp4")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        replay_many.main([*given, *ARGS])
    assert exc.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir", "pairs", "vi"]  # nothing written


def test_ctrl_c_stops_the_batch(tmp_path, monkeypatch):
    import streamfuse.processor

    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for name in ("a.mp4", "b.mp4"):
            _video(tmp_path / sub / name)

    class Interrupted:
        name, version = "max", "1"

        def fuse(self, *_, **__):
            raise KeyboardInterrupt

    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: Interrupted())
    out = tmp_path / "out"
    assert replay_many.main([str(tmp_path), "--out", str(out), *ARGS]) == 130
    assert not (out / "a.mp4").exists() and not (out / ".b.mp4.partial").exists()  # b never started


def test_outputs_that_are_inputs_are_refused_before_any_work(tmp_path, capsys):
    _video(tmp_path / "a.mp4")
    _video(tmp_path / "b.mp4")
    before = (tmp_path / "a.mp4").read_bytes()
    (tmp_path / "pairs.txt").write_text("a.mp4 b.mp4\n")
    # --out is the inputs' folder and --ext their extension: the output a.mp4 would be the IR input
    assert replay_many.main([str(tmp_path / "pairs.txt"), "--out", str(tmp_path), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the IR input" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "a.mp4").read_bytes() == before and not list(tmp_path.glob(".*"))


def test_two_pairs_writing_one_output_are_refused(tmp_path, capsys):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        _video(tmp_path / sub / "ir.mp4")
        _video(tmp_path / sub / "vis.mp4")
    (tmp_path / "pairs.txt").write_text("x/ir.mp4 x/vis.mp4\ny/ir.mp4 y/vis.mp4\n")
    assert replay_many.main([str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o"), *ARGS]) == 2
    assert "two pairs would write" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_summary_table_and_a_folder_of_recordings(tmp_path, capsys):
    for name in ("a.mp4", "b.mp4"):
        _video(tmp_path / name)
    (tmp_path / "pairs.txt").write_text("a.mp4 b.mp4\n")
    assert replay_many.main([str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o"), *ARGS]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["pair", "status", "ir", "in", "vis", "in", "out", "fps", "worker"]
    assert table[1].split()[:5] == ["a.mp4", "done", "5", "5", "5"]
    assert table[-1].startswith("1 pairs: 1 done, 0 skipped (complete), 0 failed; 5 frames out")

    from streamfuse.batch import PairJob, find_jobs

    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "bag3").mkdir()  # a bag folder, split into two files
    for name in ("run1.mcap", "run2.db3", "run4.bag", "run5.db3.zstd", "notes.txt", "bag3/metadata.yaml",
                 "bag3/bag3_0.mcap", "bag3/bag3_1.mcap"):
        (tmp_path / "rec" / name).write_bytes(b"")  # each recording (or bag file) holds both streams
    assert find_jobs(tmp_path / "rec", tmp_path / "o") == [
        PairJob(tmp_path / "rec" / name, tmp_path / "rec" / name, tmp_path / "o" / f"{name.split('.')[0]}.mp4")
        for name in ("bag3", "run1.mcap", "run2.db3", "run4.bag", "run5.db3.zstd")]  # a split bag: one pair
    assert find_jobs(tmp_path / "rec" / "run1.mcap", tmp_path / "o") == [  # a recording alone: one pair
        PairJob(tmp_path / "rec" / "run1.mcap", tmp_path / "rec" / "run1.mcap", tmp_path / "o" / "run1.mp4")]


def test_a_video_given_as_the_pair_list_and_a_cut_recording_are_each_one_line(tmp_path, capsys, caplog):
    _video(tmp_path / "a.mp4")  # a video where its list belongs: not text
    assert replay_many.main([str(tmp_path / "a.mp4"), "--out", str(tmp_path / "o"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert err == (f"replay_many.py: error: {tmp_path / 'a.mp4'} is not a pair list (a text file of 'IR VIS' lines) "
                   "nor a folder of pairs\n")
    from streamfuse.batch import find_jobs

    (tmp_path / "rec").mkdir()
    # run2: a live run killed while it recorded; run3: a ROS 1 bag still recorded (or its recorder killed)
    for name in ("run1.mcap", ".run2.mcap.partial", "run3.bag.active"):
        (tmp_path / "rec" / name).write_bytes(b"")
    assert [job.ir.name for job in find_jobs(tmp_path / "rec", tmp_path / "o")] == ["run1.mcap"]
    cut = ("a recording cut short (a killed run, or a write error such as a full disk): `python -m streamfuse recover "
           "FILE` finishes it")
    active = ("a ROS 1 bag still being recorded, or cut short: replay it alone once it is complete (`python -m "
              "streamfuse replay --ir FILE --out OUT`)")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'rec' / '.run2.mcap.partial'}: {cut}; not replayed",
        f"{tmp_path / 'rec' / 'run3.bag.active'}: {active}; not replayed"]
    for name, why in ((".run2.mcap.partial", cut), ("run3.bag.active", active)):  # given alone
        with pytest.raises(ValueError, match=f"^{tmp_path / 'rec' / name} is {re.escape(why)}$"):
            find_jobs(tmp_path / "rec" / name, tmp_path / "o")


def test_ray_engine_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    real = replay_many.importlib.util.find_spec
    monkeypatch.setattr(replay_many.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else
                        real(name, *a))
    assert replay_many.main([str(tmp_path), "--out", str(tmp_path / "o"), "--engine", "ray", *ARGS]) == 2
    assert capsys.readouterr().err.strip() == ("replay_many.py: error: --engine ray needs Ray: "
                                               "pip install 'streamfuse[ray]'")


def test_unreachable_ray_cluster_is_one_line(tmp_path, capsys):
    import socket

    pytest.importorskip("ray", reason="Ray not installed (pip install 'streamfuse[ray]')")
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _video(tmp_path / "a.mp4")
    (tmp_path / "pairs.txt").write_text("a.mp4 a.mp4\n")
    args = [str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o"), "--engine", "ray", "--address",
            f"127.0.0.1:{port}", *ARGS]
    assert replay_many.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"replay_many.py: error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert "\n" not in err
    from streamfuse.batch.ray_join import check_cluster

    with pytest.raises(ValueError, match=rf"^cannot reach the Ray cluster at \[::1\]:{port}: ") as refused:
        check_cluster(None, f"[::1]:{port}")  # an IPv6 address in brackets, as Ray writes one
    assert "Name or service not known" not in str(refused.value)


def test_a_web_server_given_as_the_ray_cluster_is_one_line(tmp_path, capsys):
    """The dashboard's port (8265) given for the GCS's: Ray waited for ever, printing its connection retries."""
    import http.server
    import threading

    pytest.importorskip("ray", reason="Ray not installed (pip install 'streamfuse[ray]')")

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        _video(tmp_path / "a.mp4")
        (tmp_path / "pairs.txt").write_text("a.mp4 a.mp4\n")
        args = [str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o"), "--engine", "ray", "--address", address,
                *ARGS]
        assert replay_many.main(args) == 2
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().err == (
        f"replay_many.py: error: no Ray cluster at {address}: a web server answers there ('HTTP/1.0 200 OK'); give the "
        f"GCS's address (`ray start --head --port`, 6379 by default; 8265 is the dashboard's)\n")


@pytest.mark.parametrize("args, message", [
    (["--config", "nosuch"], "nosuch: no such config file here, nor a shipped config"),
    (["--set", "fuse.stepz=1"], "unknown config key fuse.stepz"),
])
def test_a_bad_config_is_a_config_error_as_in_run(tmp_path, capsys, args, message):
    assert replay_many.main([str(tmp_path), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("replay_many.py: config error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("args, said", [
    (["--gpus", "nan"], "argument --gpus: nan must be a finite number of GPUs >= 0"),
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--retries", "-1"], "argument --retries: must be >= 0, got -1")])
def test_numbers_that_mean_nothing_are_refused_when_parsed(tmp_path, capsys, args, said):
    # they were taken (the local engine ignores them; Ray's check let NaN GPUs through)
    with pytest.raises(SystemExit) as stop:
        replay_many.main([str(tmp_path), "--out", str(tmp_path / "out"), *args])
    assert stop.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(said)


def test_a_pair_failing_again_beside_complete_outputs_still_fails_the_batch(tmp_path, capsys):
    # the outputs already complete are skipped; the pair that fails again is no "nothing to do"
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        _video(tmp_path / sub / "a.mp4")
    _video(tmp_path / "ir" / "b.mp4")
    (tmp_path / "vi" / "b.mp4").write_text("not a video")
    out = tmp_path / "out"
    assert replay_many.main([str(tmp_path), "--out", str(out), *ARGS]) == 1
    capsys.readouterr()
    assert replay_many.main([str(tmp_path), "--out", str(out), *ARGS]) == 1
    said = capsys.readouterr()
    assert "FAILED" in said.err and "b.mp4" in said.err and "nothing to do" not in said.out


def test_a_stopped_pair_is_finished_by_resume_and_only_by_it(tmp_path, capsys, monkeypatch):
    import streamfuse.processor

    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        _video(tmp_path / sub / "a.mp4", 6)
    real = _stop_fusing_at(monkeypatch, 3, _ctrl_c)
    out = tmp_path / "out"
    assert replay_many.main([str(tmp_path), "--out", str(out), *ARGS]) == 130
    assert ("replay_many.py: interrupted (Ctrl-C) before the end: 0 done, 1 interrupted (partial outputs kept), "
            "0 not started;") in capsys.readouterr().err
    monkeypatch.setattr(streamfuse.processor, "config_fuser", real)
    assert replay_many.main([str(tmp_path), "--out", str(out), *ARGS]) == 1  # its partial output is kept, not redone
    assert "run again with --resume" in capsys.readouterr().err
    assert replay_many.main([str(tmp_path), "--out", str(out), *ARGS, "--resume"]) == 0
    assert len(list(decode_frames(out / "a.mp4"))) == 6 and [p.name for p in out.iterdir()] == ["a.mp4"]


def test_threads_reach_the_local_engine(tmp_path, monkeypatch):
    import streamfuse.batch

    made, real = [], streamfuse.batch.LocalEngine
    monkeypatch.setattr(streamfuse.batch, "LocalEngine", lambda **kwargs: made.append(kwargs) or real(**kwargs))
    _video(tmp_path / "ir.mp4")
    _video(tmp_path / "vis.mp4")
    (tmp_path / "pairs.txt").write_text("ir.mp4 vis.mp4\n")
    assert replay_many.main([str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o"), "--threads", "3", *ARGS]) == 0
    assert made == [{"threads": 3}]


def test_a_codec_the_output_container_cannot_hold_is_refused_before_any_work(tmp_path, capsys):
    _video(tmp_path / "ir.mp4")
    _video(tmp_path / "vis.mp4")
    (tmp_path / "pairs.txt").write_text("ir.mp4 vis.mp4\n")
    assert replay_many.main([str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o"), *ARGS,
                             "--set", "replay.codec=ffv1"]) == 2
    err = capsys.readouterr().err
    assert "FFV1 cannot be stored in .mp4; use .mkv, .nut or .avi" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("stop, said", [(KeyboardInterrupt, "interrupted (Ctrl-C)"),
                                        (stopped_by(signal.SIGTERM), "interrupted (SIGTERM)")])
def test_a_stop_while_the_config_loads_is_one_line_naming_it_and_130(stop, said, tmp_path, capsys, monkeypatch):
    import streamfuse.config

    def loading(*_args, **_kwargs):
        raise stop

    monkeypatch.setattr(streamfuse.config, "load_config", loading)
    assert replay_many.main([str(tmp_path), "--out", str(tmp_path / "o"), *ARGS]) == 130
    assert capsys.readouterr().err == f"replay_many.py: {said}\n"


@pytest.mark.parametrize("sig, said", [(signal.SIGINT, "interrupted (Ctrl-C)"),
                                       (signal.SIGTERM, "interrupted (SIGTERM)")], ids=["Ctrl-C", "SIGTERM"])
@pytest.mark.parametrize("where, left", [("in", "1 interrupted (partial outputs kept), 1 not started"),
                                         ("between", "0 interrupted (partial outputs kept), 2 not started")],
                         ids=["in_a_pair", "between_pairs"])
def test_a_stopped_batchs_last_line_names_the_signal_and_what_finished(sig, said, where, left, tmp_path, capsys,
                                                                       monkeypatch):
    # its last line said "stopped before the end" for Ctrl-C and SIGTERM alike, and nothing of the pairs done
    import streamfuse.batch.local

    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for name in ("a.mp4", "b.mp4", "c.mp4"):
            _video(tmp_path / sub / name, 6)
    real_log = streamfuse.batch.local._log

    def logged(result):  # between the first pair and the second
        real_log(result)
        if where == "between":
            signal.raise_signal(sig)

    if where == "in":
        _stop_fusing_at(monkeypatch, 10, lambda: signal.raise_signal(sig))  # in the second pair, at its fourth frame
    monkeypatch.setattr(streamfuse.batch.local, "_log", logged)
    assert replay_many.main([str(tmp_path), "--out", str(tmp_path / "out"), *ARGS]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"replay_many.py: {said} before the end: 1 done, {left}; run the same command again with --resume to finish")


def test_a_stop_as_the_last_pair_ends_is_said_and_ends_the_batch_with_130(tmp_path, capsys, monkeypatch):
    # run_batch said the batch was stopped, yet the tool exited 0 without a word of the stop
    import streamfuse.batch
    from streamfuse.batch import PairResult

    class StoppedAfterTheLast:
        def run(self, cfg, jobs, *, resume, frames):
            yield from (PairResult(str(job.out), "done") for job in jobs)
            raise stopped_by(signal.SIGTERM)

    monkeypatch.setattr(streamfuse.batch, "LocalEngine", lambda **kwargs: StoppedAfterTheLast())
    _video(tmp_path / "ir.mp4")
    _video(tmp_path / "vis.mp4")
    (tmp_path / "pairs.txt").write_text("ir.mp4 vis.mp4\n")
    assert replay_many.main([str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o"), *ARGS]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "replay_many.py: interrupted (SIGTERM) as the batch ended, every pair finished: 1 done")


def test_a_stop_as_the_last_pair_ends_counts_the_pairs_already_complete_and_failed(tmp_path, capsys, monkeypatch):
    # what the batch finished is said whole: the pairs an earlier run completed and those that failed too
    import streamfuse.batch
    from streamfuse.batch import PairResult

    for name in ("a", "b", "c"):
        _video(tmp_path / f"{name}_ir.mp4")
        _video(tmp_path / f"{name}_vis.mp4")
    (tmp_path / "a.txt").write_text("a_ir.mp4 a_vis.mp4 a\n")
    assert replay_many.main([str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), *ARGS]) == 0  # complete

    class StoppedAfterTheLast:
        def run(self, cfg, jobs, *, resume, frames):
            done, failed = jobs
            yield PairResult(str(done.out), "done")
            yield PairResult(str(failed.out), "failed", reason="cannot open c_ir.mp4")
            raise stopped_by(signal.SIGTERM)

    monkeypatch.setattr(streamfuse.batch, "LocalEngine", lambda **kwargs: StoppedAfterTheLast())
    (tmp_path / "pairs.txt").write_text("a_ir.mp4 a_vis.mp4 a\nb_ir.mp4 b_vis.mp4 b\nc_ir.mp4 c_vis.mp4 c\n")
    capsys.readouterr()
    assert replay_many.main([str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o"), *ARGS]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "replay_many.py: interrupted (SIGTERM) as the batch ended, every pair finished: 1 done, 1 already complete, "
        "1 failed")


def test_a_pair_whose_input_is_cut_part_way_fails_alone_and_the_batch_ends_with_1(tmp_path, capsys):
    """An IR video cut part-way (its first frames decode) stops its replay with a reason of its own: that pair fails,
    the others are done, and the batch ends as one with a failed pair does, not as a stopped one (130, --resume)."""
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for name in ("a.nut", "b.nut", "c.nut"):
            _lossless(tmp_path / sub / name)
    whole = (tmp_path / "ir" / "b.nut").read_bytes()
    (tmp_path / "ir" / "b.nut").write_bytes(whole[: len(whole) * 2 // 3])
    out = tmp_path / "out"
    assert replay_many.main([str(tmp_path), "--out", str(out), "--ext", ".nut", *ARGS,
                             "--set", "replay.codec=ffv1"]) == 1
    said = capsys.readouterr()
    rows = {row[0]: row[1] for row in map(str.split, said.out.splitlines()) if row and row[0].endswith(".nut")}
    assert rows == {"a.nut": "done", "b.nut": "failed", "c.nut": "done"}
    assert "FAILED" in said.err and "b.nut" in said.err and "ir input ended early" in said.err
    assert "interrupted" not in said.err and "--resume" not in said.err
    assert len(list(decode_frames(out / "c.nut"))) == 12


def _lossless(path: Path, n: int = 12) -> None:
    """``n`` frames of FFV1 (whose slice checksums find a cut picture) in NUT, whose frames are read as they come."""
    w = VideoWriter(path, codec="ffv1", crf=0, time_base=Fraction(1, 25), rate=Fraction(25), width=32, height=24)
    for i in range(n):
        w.write(np.full((24, 32, 3), 20 * i, np.uint8), i)
    w.commit()
