"""``evaluate``'s outputs (--out, --save) appear only when a run ends well: a failed or interrupted run leaves none of
them (its rerun is not refused), and a second run into a folder the first is writing is refused."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from streamfuse import evaluation
from streamfuse.cli.evaluate import main as evaluate
from streamfuse.output_lock import output_lock

EVALUATE_ERROR = "streamfuse evaluate: error: "  # how the command's error lines start


def _stop_at_second_pair(monkeypatch, error: BaseException) -> None:
    score, calls = evaluation._score, []

    def scoring(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:  # one image of the first pair is saved already
            raise error
        return score(*args, **kwargs)

    monkeypatch.setattr(evaluation, "_score", scoring)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), ValueError("p1: damaged")], ids=["ctrl_c", "failure"])
def test_a_run_that_does_not_end_leaves_no_outputs_and_its_rerun_goes_ahead(error, pairs, tmp_path, monkeypatch):
    # it left --save with the first pair's image (the rerun then refused: "already holds 1 images") and an empty --out
    ir_dir, vis_dir = pairs
    out, saved = tmp_path / "runs" / "out", tmp_path / "runs" / "saved"
    args = [str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(out), "--save", str(saved)]
    _stop_at_second_pair(monkeypatch, error)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        evaluate(args)
    assert not (tmp_path / "runs").exists()  # nor the folder made to hold them
    monkeypatch.undo()
    assert evaluate(args) == 0
    assert sorted(p.name for p in saved.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.md", "montage.png"]  # no lock, no stage


def test_an_existing_out_keeps_its_other_files_when_a_run_fails(pairs, tmp_path, monkeypatch):
    ir_dir, vis_dir = pairs
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _stop_at_second_pair(monkeypatch, ValueError("p1: damaged"))
    with pytest.raises(SystemExit, match="^streamfuse evaluate: error: p1: damaged$"):
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(out)])
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("busy", ["out", "saved", "saved/max"])
def test_a_second_run_into_a_folder_being_written_is_refused(busy, pairs, tmp_path):
    ir_dir, vis_dir = pairs
    (tmp_path / busy).mkdir(parents=True)
    fusers = ["--fuser", "max"] + ["--fuser", "average"] * (busy == "saved/max")  # several: saved/<method>/
    with output_lock(tmp_path / busy, inside=True), pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), *fusers, "--out", str(tmp_path / "out"), "--save",
                  str(tmp_path / "saved")])
    assert str(exc.value.code).startswith(f"{EVALUATE_ERROR}output {tmp_path / busy} is being written by another run (")
    assert not (tmp_path / "out").exists() or busy == "out"
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name not in ("ir", "vi")]


def test_an_out_folder_whose_parent_cannot_be_written_is_written(pairs, tmp_path):
    # a mounted volume in a folder of another user: the lock and the staging go inside the output folder
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ir_dir, vis_dir = pairs
    (tmp_path / "mnt" / "results").mkdir(parents=True)
    (tmp_path / "mnt").chmod(0o555)
    try:
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "mnt" / "results")])
    finally:
        (tmp_path / "mnt").chmod(0o755)
    assert sorted(p.name for p in (tmp_path / "mnt" / "results").iterdir()) == ["metrics.csv", "metrics.md",
                                                                               "montage.png"]


@pytest.mark.parametrize("save", ["out", "out/fused"])
def test_save_may_be_out_or_lie_in_it(save, pairs, tmp_path):
    ir_dir, vis_dir = pairs
    evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "out"),
              "--save", str(tmp_path / save)])
    images = sorted(p.name for p in (tmp_path / save).glob("p*.png"))
    assert images == ["p0.png", "p1.png", "p2.png"] and (tmp_path / "out" / "metrics.csv").is_file()
    assert cv2.imread(str(tmp_path / save / "p0.png"), cv2.IMREAD_UNCHANGED).shape == (45, 70)
    assert not list(tmp_path.rglob(".*"))  # no lock file or staging folder left


def test_staged_folders_moves_files_only_at_the_end(tmp_path):
    from streamfuse.staged_folders import staged_folders

    final = tmp_path / "a" / "b"
    with staged_folders([final]) as (stage,):
        (stage / "x.txt").write_text("x")
        (stage / "notes").write_text("a file of any name")  # every file, not only those with a suffix
        assert not (final / "x.txt").exists() and stage.parent == final
        assert list(final.parent.iterdir()) == [final]  # nothing beside it: its parent may be another user's
    assert sorted(p.name for p in final.iterdir()) == ["notes", "x.txt"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["b"]
    assert isinstance(stage, Path) and not stage.exists()


@pytest.mark.parametrize("how", [["-m", "streamfuse", "evaluate"], ["tools/evaluate.py"]])
def test_a_sigterm_mid_run_is_one_line_and_130_and_leaves_no_outputs(how, pairs, tmp_path):
    """SIGTERM (a service manager's stop, `timeout`) ended the run by the signal (143) with no line, and left its
    hidden staging folders and lock files in --out and --save for good."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    ir_dir, vis_dir = pairs
    out, saved, scored = tmp_path / "runs" / "out", tmp_path / "runs" / "saved", tmp_path / "scored"
    script = textwrap.dedent(f"""
        import pathlib, runpy, sys, time
        from streamfuse import evaluation

        score = evaluation._score

        def scoring(*args, **kwargs):  # the first pair is scored and saved, then the run waits for its stop
            result = score(*args, **kwargs)
            pathlib.Path({str(scored)!r}).touch()
            time.sleep(60)
            return result

        evaluation._score = scoring
        args = [{str(ir_dir)!r}, {str(vis_dir)!r}, "--fuser", "max", "--out", {str(out)!r}, "--save", {str(saved)!r}]
        sys.argv = [{how[-1]!r}, *args] if {how[0]!r} == "-m" else [{how[0]!r}, *args]
        if {how[0]!r} == "-m":
            sys.argv.insert(0, "streamfuse")
            from streamfuse.cli import console
            console()
        else:
            runpy.run_path({how[0]!r}, run_name="__main__")
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not scored.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.splitlines()[-1].endswith(": interrupted (SIGTERM)"), err
    assert "Traceback" not in err and "WARNING" in err.splitlines()[0]  # the one line before: the fixture's orphan
    assert not (tmp_path / "runs").exists()


def test_an_earlier_runs_results_are_replaced_as_a_whole_and_said_so(pairs, tmp_path, caplog):
    # a second run into one --out kept the first run's eval.resolved.yaml beside its own table: the folder claimed a
    # config its figures did not come from
    ir_dir, vis_dir = pairs
    out = tmp_path / "out"
    assert evaluate([str(ir_dir), str(vis_dir), "--config", "eval", "--set", "fuse.name=max", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    with caplog.at_level("INFO", "streamfuse.evaluation"):
        assert evaluate([str(ir_dir), str(vis_dir), "--fuser", "average", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.md", "montage.png", "notes.txt"]
    assert "average" in (out / "metrics.md").read_text() and "eval" not in (out / "metrics.md").read_text()
    said = [r.getMessage() for r in caplog.records if r.name == "streamfuse.evaluation"]
    assert f"replacing the earlier results in {out} (eval.resolved.yaml, metrics.csv, metrics.md, montage.png)" in said


@pytest.mark.parametrize("args, said", [
    (["--out", ""], "argument --out: empty path"), (["--save", ""], "argument --save: empty path")])
def test_an_empty_output_path_is_refused_not_read_as_the_working_folder(args, said, pairs, capsys):
    # an unset shell variable ("--out $OUT") wrote the table and montage, or the fused images, into the working folder
    ir_dir, vis_dir = pairs
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", *args])
    assert exc.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(said)


def test_an_empty_fused_folder_is_refused_not_read_as_the_working_folder(pairs, tmp_path, monkeypatch):
    # --fused "$DIR" with DIR unset scored the working folder's images as a method without a name, exit 0
    ir_dir, vis_dir = pairs
    monkeypatch.chdir(ir_dir)  # a folder of images
    with pytest.raises(SystemExit, match=r"^streamfuse evaluate: error: --fused: empty path$"):
        evaluate([str(ir_dir), str(vis_dir), "--fused", "", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_one_folder_given_as_both_ir_and_visible_is_refused(pairs, tmp_path):
    # each image was scored against itself: SSIM 2.000, VIF 2.000, exit 0
    ir_dir, _ = pairs
    with pytest.raises(SystemExit, match=r"^streamfuse evaluate: error: the IR and visible folders are one folder"):
        evaluate([str(ir_dir), str(ir_dir / ".." / ir_dir.name), "--fuser", "max", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_folder_that_cannot_be_made_is_named_in_one_line(pairs):
    # it was "streamfuse evaluate: error: [Errno 2] No such file or directory: '/proc/...'", of a folder that is there
    ir_dir, vis_dir = pairs
    with pytest.raises(SystemExit, match=rf"^{EVALUATE_ERROR}cannot make output folder /proc/streamfuse-test: it "
                                         r"takes no new files$"):
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", "/proc/streamfuse-test"])


@pytest.mark.parametrize("damaged", ["ir", "vis", "fused", "fused_size", "fused_width"])
def test_a_damaged_last_pair_is_refused_before_any_pair_is_scored(damaged, pairs, tmp_path, monkeypatch):
    # it was found at its turn, after every pair before it had been fused and scored
    ir_dir, vis_dir = pairs
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    for stem in ("p0", "p1", "p2"):
        cv2.imwrite(str(fused_dir / f"{stem}.png"), cv2.imread(str(ir_dir / f"{stem}.png"), cv2.IMREAD_GRAYSCALE))
    damage = {"ir": (ir_dir / "p2.png", b"\x89PNG\r\n\x1a\n" + b"junk" * 100),
              "vis": (vis_dir / "p2.png", b"not an image"),
              "fused": (fused_dir / "p2.png", b"not an image"),
              "fused_size": (fused_dir / "p2.png", cv2.imencode(".png", cv2.imread(str(ir_dir / "p0.png"))[1:])[1]),
              "fused_width": (fused_dir / "p2.png", cv2.imencode(".png", cv2.imread(str(ir_dir / "p0.png"))[:, 1:])[1])}
    path, data = damage[damaged]
    path.write_bytes(bytes(data))
    monkeypatch.setattr(evaluation, "_score", lambda *a: pytest.fail("scored before refusing"))
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), "--fused", f"other={fused_dir}", "--fuser", "max",
                  "--out", str(tmp_path / "out")])
    why = {"ir": f"cannot read image {path}: corrupt, or not an image",
           "vis": f"cannot read image {path}: corrupt, or not an image",
           "fused": f"cannot read image {path}: corrupt, or not an image",
           "fused_size": "other/p2: fused size (44, 70) differs from the sources' (45, 70)",
           "fused_width": "other/p2: fused size (45, 69) differs from the sources' (45, 70)"}[damaged]
    assert str(exc.value.code) == f"streamfuse evaluate: error: {why}"
    assert not (tmp_path / "out").exists()


def test_staged_folders_stage_hidden_and_a_failure_keeps_a_made_folder_that_another_run_wrote_into(tmp_path):
    """The staging folder is hidden in the output folder (its user's files may lie beside it). On a failure the
    folders made for the run go, except one that a file reached meanwhile, and the run's own error is the one
    raised."""
    from streamfuse.staged_folders import staged_folders

    final = tmp_path / "a" / "b"
    with pytest.raises(ValueError, match="^the run's own error$"):
        with staged_folders([final]) as (stage,):
            assert stage.name.startswith(".")
            (tmp_path / "a" / "theirs.txt").write_text("not this run's")
            raise ValueError("the run's own error")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "theirs.txt"]


def test_staged_folders_leave_an_output_folder_made_before_the_run_on_a_failure(tmp_path):
    """Only the folders this run made go when it fails: an empty one its user made for the outputs stays."""
    from streamfuse.staged_folders import staged_folders

    final = tmp_path / "mine" / "new"
    final.parent.mkdir()
    with pytest.raises(ValueError, match="^failed$"):
        with staged_folders([final]):
            raise ValueError("failed")
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and not list(final.parent.iterdir())


def test_staged_folders_say_the_os_reason_for_a_folder_that_cannot_be_made(tmp_path, monkeypatch):
    """A folder the OS refuses to make (a full disk) is said with the OS's reason, not as a filesystem that takes no
    new files (what ENOENT in a folder that exists means)."""
    import errno

    from streamfuse.staged_folders import staged_folders

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(OSError, match=f"^cannot make output folder {tmp_path / 'out'}: No space left on device$"):
        with staged_folders([tmp_path / "out"]):
            pass


def test_its_closing_line_shows_an_output_folder_s_control_characters_as_escapes(pairs, tmp_path, capsys):
    # the folder was printed as it was: an escape sequence in its name drew on the terminal
    ir_dir, vis_dir = pairs
    assert evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "o\x1b[31m")]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "\x1b" not in last and f"per-image rows in {tmp_path}/o\\x1b[31m/metrics.csv, montage in" in last
