"""Smoke test of ``python -m streamfuse bench replay``: a tiny synthetic pair, the max fuser, the printed figures."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from streamfuse.bench.replay import main


def test_prints_rate_and_stage_shares(capsys):
    main(["--fuser", "max", "--frames", "6", "--size", "64x48", "--set", "engine.device=cpu"])
    out = capsys.readouterr().out
    assert re.search(r"max +6 frames in [0-9.]+ s = [0-9.]+ frames/s \(the whole replay once the model is loaded",
                     out), out
    assert "fuse " in out and "loop waits on decode+encode" in out
    assert re.search(r"frames/s \(.*\), load average [0-9.]+\n", out), out  # the README's figures name their load
    # the two decoders' time was summed into one share: "decode_thread 168%", more than a thread can be busy
    assert re.search(r"  decode_thread [0-9]+% each of 2 threads \(", out), out


def test_a_lossless_output_is_written_in_a_container_that_takes_it(capsys):
    main(["--fuser", "max", "--frames", "2", "--size", "64x48", "--codec", "ffv1", "--set", "engine.device=cpu"])
    assert re.search(r"output ffv1\n +max +2 frames in ", capsys.readouterr().out)


def test_a_missing_input_is_one_line(tmp_path):
    (tmp_path / "vis.mp4").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["--ir", str(tmp_path / "nope.mp4"), "--vis", str(tmp_path / "vis.mp4"), "--fuser", "max"])
    assert str(exc.value.code) == f"streamfuse bench replay: error: IR video not found: {tmp_path / 'nope.mp4'}"
    (tmp_path / "frames").mkdir()  # a folder is no video: refused before any config is read or replay made
    with pytest.raises(SystemExit) as exc:
        main(["--ir", str(tmp_path / "frames"), "--vis", str(tmp_path / "vis.mp4"), "--fuser", "max"])
    assert str(exc.value.code) == f"streamfuse bench replay: error: IR video not found: {tmp_path / 'frames'}"


def test_exit_status_1_when_no_fuser_ran(tmp_path, capsys):
    for name in ("ir.mp4", "vis.mp4"):
        (tmp_path / name).write_bytes(b"not a video")
    assert main(["--ir", str(tmp_path / "ir.mp4"), "--vis", str(tmp_path / "vis.mp4"), "--fuser", "max"]) == 1
    assert capsys.readouterr().err.startswith("streamfuse bench replay: error: max not run: ")


def test_every_replay_runs_without_its_progress_bar(monkeypatch, capsys):
    # a bar on a terminal would write over the figures of the fusers before it
    import streamfuse.replay

    seen = []

    def spy(cfg, **kwargs):
        seen.append(cfg.replay.progress)
        raise RuntimeError("not run")

    monkeypatch.setattr(streamfuse.replay, "run_replay", spy)
    assert main(["--fuser", "max,average", "--frames", "2", "--size", "64x48"]) == 1
    assert seen == [False, False]


def test_a_fuser_that_fails_beside_one_that_runs_is_on_stderr_and_exit_1(monkeypatch, capsys):
    # it was a line on stdout among the figures, and exit 0 (a script comparing fusers took the run for complete)
    import streamfuse.replay

    replay = streamfuse.replay.run_replay

    def failing(cfg, **kwargs):
        if cfg.fuse.name == "average":
            raise RuntimeError("no weights")
        return replay(cfg, **kwargs)

    monkeypatch.setattr(streamfuse.replay, "run_replay", failing)
    assert main(["--fuser", "max,average", "--frames", "4", "--size", "64x48", "--set", "engine.device=cpu"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "streamfuse bench replay: error: average not run: no weights\n"
    assert re.search(r"max +4 frames in", captured.out) and "  average " not in captured.out


def test_the_verdict_names_the_larger_of_decode_plus_encode_and_fuse(tmp_path, monkeypatch, capsys):
    import streamfuse.replay

    shares = {"max": {"decode": 0.3, "encode": 0.2, "fuse": 0.4}, "average": {"decode": 0.1, "encode": 0.1,
                                                                             "fuse": 0.7}}

    def replayed(cfg, **kwargs):  # the figures of a replay, without one
        stages = {k: {"share": v, "median_ms": 1.0} for k, v in shares[cfg.fuse.name].items()}
        return SimpleNamespace(written=4, wall_s=1.0, fps=4.0, stages=stages)

    monkeypatch.setattr(streamfuse.replay, "run_replay", replayed)
    for name in ("ir.mp4", "vis.mp4"):
        (tmp_path / name).write_bytes(b"")
    assert main(["--ir", str(tmp_path / "ir.mp4"), "--vis", str(tmp_path / "vis.mp4"), "--fuser", "max,average"]) == 0
    verdicts = re.findall(r"loop waits on decode\+encode (\d+)% vs fuse (\d+)%: (.*)", capsys.readouterr().out)
    assert verdicts == [("50", "40", "decode/encode IS the bottleneck"), ("20", "70", "fusion is the bottleneck")]


@pytest.mark.parametrize("args, message", [
    (["--frames", "0"], "argument --frames: must be >= 1, got 0"),
    (["--size", "abc"], "argument --size: size 'abc' is not WIDTHxHEIGHT"),
    (["--size", "0x48"], "argument --size: size '0x48': width and height must be in 1..8192"),
    (["--ir", "ir.mp4"], "give both --ir and --vis, or neither (a synthetic pair)"),
    (["--vis", "vis.mp4"], "give both --ir and --vis, or neither (a synthetic pair)"),
    # passed over: the whole videos were replayed, at their size
    (["--ir", "ir.mp4", "--vis", "vi.mp4", "--frames", "30"], "--frames is the synthetic clip's: --ir and --vis are "
                                                              "replayed whole"),
    (["--ir", "ir.mp4", "--vis", "vi.mp4", "--si=64x48"], "--size is the synthetic clip's: --ir and --vis are "
                                                          "replayed whole"),
])
def test_bad_numbers_are_refused_when_parsing(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--fuser", "max", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().splitlines()[-1].endswith(message) and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--fuser", "max,bogus"], "fuse: name='bogus' is out of range"),
    (["--set", "bad"], "override 'bad' is not of the form stage.key=value"),
    (["--config", "nowhere.yaml"], "nowhere.yaml: no such config file here, nor a shipped config"),
    (["--config", "nowhere"], "nowhere: no such config file here, nor a shipped config"),
])
def test_a_bad_config_is_one_line_before_any_replay(args, message, monkeypatch, capsys):
    monkeypatch.setattr("streamfuse.bench.replay.synthetic_pair", lambda *a: pytest.fail("started before refusing"))
    with pytest.raises(SystemExit) as exc:
        main(["--fuser", "max", "--frames", "2", "--size", "64x48", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("streamfuse bench replay: config error: ") and message in err, err
    assert err.count("\n") == 1


@pytest.mark.parametrize("override", ["fuse.name=rule", "replay.codec=ffv1", "replay.progress=true"])
def test_a_set_the_benchmark_would_pass_over_is_refused(override, capsys):
    # --set fuse.name=rule benchmarked max, --set replay.codec=ffv1 wrote h264, both exit 0
    with pytest.raises(SystemExit) as exc:
        main(["--fuser", "max", "--set", override])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --set {override}: the fuser is --fuser, the codec --codec (progress stays off)")


def test_ctrl_c_or_sigterm_stops_the_whole_bench_with_130_and_one_line(monkeypatch, capsys):
    # the stop was "not run" with a --resume hint into the deleted temporary folder, the next fuser ran, and exit 1
    import streamfuse.replay
    from streamfuse.replay.summary import ReplayError

    def stopped(cfg, **kwargs):
        if cfg.fuse.name == "average":
            pytest.fail("the next fuser ran after the stop")
        raise ReplayError("replay stopped: interrupted (SIGTERM); 3 frames kept in /tmp/x/.out_max.mp4.partial",
                          interrupted=True, hint="run again with --resume (same --out /tmp/x/out_max.mp4) to continue")

    monkeypatch.setattr(streamfuse.replay, "run_replay", stopped)
    assert main(["--fuser", "max,average", "--frames", "2", "--size", "64x48", "--set", "engine.device=cpu"]) == 130
    assert capsys.readouterr().err == "streamfuse bench replay: max replay stopped: interrupted (SIGTERM)\n"


def test_a_control_character_in_an_input_path_stays_escaped(tmp_path, capsys):
    # the terminal got the path raw: an escape sequence in a file name drew on it, a newline split the error line
    ir, vis = tmp_path / "ir\x1b[2J.mp4", tmp_path / "vis\n.mp4"
    vis.write_bytes(b"not a video")
    with pytest.raises(SystemExit) as exc:
        main(["--ir", str(ir), "--vis", str(vis), "--fuser", "max"])
    assert str(exc.value.code) == f"streamfuse bench replay: error: IR video not found: {tmp_path}/ir\\x1b[2J.mp4"
    ir.write_bytes(b"not a video")
    assert main(["--ir", str(ir), "--vis", str(vis), "--fuser", "max"]) == 1
    out, err = capsys.readouterr()
    assert out == "replay of ir\\x1b[2J.mp4 + vis\\n.mp4, output h264\n"
    assert err == f"streamfuse bench replay: error: max not run: ir input {tmp_path}/ir\\x1b[2J.mp4 is not a video " \
                  "PyAV can read (Invalid data found when processing input)\n"
