"""File and folder names that are no plain ASCII (not UTF-8 at all, or read as ASCII under ``LC_ALL=C`` with
``PYTHONUTF8=0``): what a run stores of them (a resume's sidecar, the config a fused video records) names the same
files when read back under another locale."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from tqdm import tqdm
from helpers_zmq import held_port
from test_replay import interrupted_replay, make_cfg, write_video

from streamfuse.bitdepth import read_image
from streamfuse.replay import run_replay
from streamfuse.replay.outputs import check_output_paths

pytestmark = pytest.mark.timeout(180)

_ASCII_LOCALE = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
_RESUME = """
import json, sys
from streamfuse.config import config_from_dict
from streamfuse.replay import run_replay
from streamfuse.replay.outputs import check_output_paths
cfg = config_from_dict(json.loads(sys.argv[1]))
try:
    print(run_replay(cfg, ir_path=sys.argv[2], vis_path=sys.argv[3], out_path=sys.argv[4], resume=True).reused)
except (OSError, ValueError) as exc:  # the refusal's one line
    print(exc)
"""


def _resume_in_c_locale(cfg, ir, vis, out) -> str:
    """What ``--resume`` of ``out`` says in a process that reads file names as ASCII."""
    sections = json.dumps({k: v for k, v in cfg.to_dict().items() if v is not None})
    proc = subprocess.run([sys.executable, "-c", _RESUME, sections, ir, vis, out], env=_ASCII_LOCALE,
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def pairs(tmp_path):
    """Two pairs of small videos, in a folder named in Chinese and a folder named by bytes that are not UTF-8."""
    made = []
    for name in ("空 🎥", "bad\udcff"):
        folder = tmp_path / name
        folder.mkdir()
        write_video(folder / "ir.mkv", 12, 25, grey=True, codec="ffv1")
        write_video(folder / "vis.mkv", 12, 25, codec="ffv1")
        made.append((folder / "ir.mkv", folder / "vis.mkv"))
    return made


def test_a_replay_stopped_under_a_utf8_locale_resumes_under_the_c_locale(tmp_path, pairs):
    # the sidecar's input paths, read back as text, could not be encoded where Python reads names as ASCII: the resume
    # stopped on "'ascii' codec can't encode characters"
    (ir, vis), out, cfg = pairs[0], tmp_path / "空 🎥" / "fused.mkv", make_cfg(replay={"codec": "ffv1"})
    interrupted_replay(cfg, ir, vis, out, stop=5)
    assert _resume_in_c_locale(cfg, ir, vis, out) == "4" and out.exists()


def test_a_complete_output_of_other_inputs_is_refused_under_the_c_locale(tmp_path, pairs):
    # the inputs it records were looked for by a name that could not be encoded there, so found missing: the other
    # pair's output passed for this one's
    (ir, vis), (other_ir, other_vis) = pairs
    out, cfg = tmp_path / "fused.mkv", make_cfg(replay={"codec": "ffv1"})
    run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    said = _resume_in_c_locale(cfg, other_ir, other_vis, out)
    assert said.startswith("output ") and "is complete but was made from other inputs" in said


def test_a_montage_tile_labelled_with_bytes_that_are_not_utf8_is_drawn():
    # OpenCV's putText crashed the process on the name (a segmentation fault: evaluate died, exit status 139)
    code = ("import numpy as np; from streamfuse.eval_report import tile; "
            "print(tile(np.zeros((48, 64), np.uint8), 'IR bad\\udcff\\udcfe').shape)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, "(240, 320, 3)"), proc.stderr


def test_a_command_prints_a_name_s_bytes_that_are_not_utf8_under_a_utf8_locale(tmp_path):
    # a UTF-8 locale's standard output is strict (PYTHONIOENCODING=utf-8 makes it so under any locale): evaluate ended
    # its finished run with a traceback (UnicodeEncodeError) printing where its outputs are
    folder = tmp_path / "bad\udcff"
    for side in ("ir", "vi"):
        (folder / side).mkdir(parents=True)
        image = np.full((40, 56), 90 if side == "ir" else 160, np.uint8)
        cv2.imencode(".png", image)[1].tofile(folder / side / "a.png")
    proc = subprocess.run([sys.executable, "-m", "streamfuse", "evaluate", folder / "ir", folder / "vi", "--fuser",
                           "max", "--out", folder / "out"], env={**os.environ, "PYTHONIOENCODING": "utf-8"},
                          capture_output=True, timeout=150)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert os.fsencode(folder / "out" / "metrics.csv") in proc.stdout


def test_a_config_file_naming_a_file_beyond_ascii_finds_it_under_the_c_locale(tmp_path):
    # the name, read from the UTF-8 file as text, could not be encoded where Python reads names as ASCII: the replay
    # stopped on "'ascii' codec can't encode characters"
    (tmp_path / "空 🎥.mkv").write_bytes(b"")
    (tmp_path / "c.yaml").write_text("ir: {kind: file, path: 空 🎥.mkv}\nreplay: {frames_dir: 空/f}\n", encoding="utf-8")
    code = ("import os, sys; from streamfuse.config import load_config; cfg = load_config(sys.argv[1]); "
            "print(os.path.isfile(cfg.ir.path), "
            "os.path.dirname(cfg.replay.frames_dir) == os.fsdecode(b'\\xe7\\xa9\\xba'))")
    proc = subprocess.run([sys.executable, "-c", code, "c.yaml"], cwd=tmp_path, env=_ASCII_LOCALE,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.split()) == (0, ["True", "True"]), proc.stderr


_OPENCV_READS = """
import sys
import cv2, numpy as np
from streamfuse.bitdepth import read_image
from streamfuse.capture.palette import check_palette
folder = sys.argv[1]
cv2.imencode(".tiff", np.zeros((8, 8), np.uint8))[1].tofile(folder + "/frame.tiff")
bar = np.repeat(np.linspace(0, 255, 64).astype(np.uint8)[None, :], 8, 0)
cv2.imencode(".png", cv2.applyColorMap(bar, cv2.COLORMAP_JET))[1].tofile(folder + "/bar.png")
check_palette(folder + "/bar.png")
print(read_image(folder + "/frame.tiff").shape)
"""


@pytest.mark.parametrize("env", [os.environ, _ASCII_LOCALE], ids=["locale", "ascii"])
def test_a_tiff_or_palette_bar_named_by_bytes_that_are_not_utf8_is_read(tmp_path, env):
    # OpenCV's binding crashed the process on such a name (a segmentation fault: a replay of a folder of TIFFs, or a
    # palette file, died with exit status 139); under LC_ALL=C with PYTHONUTF8=0 every name beyond ASCII is one
    for name in ("bad\udcff", "空"):
        (tmp_path / name).mkdir()
        proc = subprocess.run([sys.executable, "-c", _OPENCV_READS, tmp_path / name], env=env, capture_output=True,
                              text=True, timeout=120)
        assert (proc.returncode, proc.stdout.strip()) == (0, "(8, 8)"), proc.stderr


_CAMERA_READS = """
import sys
from streamfuse.capture.sources import SourceConfig, open_source
with open_source("vis", SourceConfig(kind="camera", path=sys.argv[1], width=64, height=48)) as source:
    print(source.read().image.shape)
"""


def test_a_camera_path_named_by_bytes_that_are_not_utf8_opens(tmp_path):
    # OpenCV's VideoCapture crashed the process on such a name (a segmentation fault)
    video = tmp_path / "cam\udcff.mkv"
    write_video(video, 3, 25)
    proc = subprocess.run([sys.executable, "-c", _CAMERA_READS, video], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, "(48, 64, 3)"), proc.stderr


_LISTED = """
import os, sys
from streamfuse.replay import find_pairs
print(*(os.path.isfile(p) for pair in find_pairs(sys.argv[1]) for p in pair[:2]))
"""


@pytest.mark.parametrize("env", [os.environ, _ASCII_LOCALE], ids=["locale", "ascii"])
def test_a_pair_list_naming_files_beyond_ascii_or_utf8_finds_them(tmp_path, env):
    # a name's bytes that are not UTF-8 (a list written by `ls > list` among Latin-1 names) refused the list as "not a
    # pair list"; under LC_ALL=C with PYTHONUTF8=0 a UTF-8 name stopped on "'ascii' codec can't encode characters"
    for name in (b"caf\xe9", "空 🎥".encode()):
        for side in (b"ir", b"vi"):
            (tmp_path / os.fsdecode(side + b"_" + name + b".mp4")).write_bytes(b"")
    (tmp_path / "list.txt").write_bytes(b"'ir_caf\xe9.mp4' 'vi_caf\xe9.mp4'\r\n'ir_" + "空 🎥".encode() + b".mp4' 'vi_"
                                        + "空 🎥".encode() + b".mp4' named\r\n")
    proc = subprocess.run([sys.executable, "-c", _LISTED, tmp_path / "list.txt"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert (proc.returncode, proc.stdout.split()) == (0, ["True"] * 4), proc.stderr


def test_an_output_name_with_no_room_for_its_work_files_is_refused_saying_how_long_it_may_be(tmp_path):
    # a 255-byte name, which the file system takes, failed on a file the user never named: "[Errno 36] File name too
    # long: '.LLL...L.mkv.partial'"
    with pytest.raises(ValueError, match=r": its name is 255 bytes long and a replay writes \.NAME\.partial\.json "
                                         r"beside it, 14 bytes longer, .*; choose a name of at most 241 bytes$"):
        check_output_paths(tmp_path / ("空" * 83 + "LL.mkv"), {})
    check_output_paths(tmp_path / ("L" * 237 + ".mkv"), {})


def test_the_progress_bar_shows_an_output_name_s_control_characters_as_escapes(tmp_path, pairs, monkeypatch):
    # the bar wrote the name as it was: an escape sequence in it drew on the terminal, a line break broke the bar
    shown = []

    def bar(*args, **kwargs):
        shown.append(kwargs["desc"])
        return tqdm(*args, **{**kwargs, "disable": True})

    monkeypatch.setattr("tqdm.tqdm", bar)  # the replay imports it as it starts
    ir, vis = pairs[0]
    run_replay(make_cfg(replay={"codec": "ffv1", "progress": True}), ir_path=ir, vis_path=vis,
               out_path=tmp_path / "red\x1b[31m\nline.mkv")
    assert shown == ["replay red\\x1b[31m\\nline.mkv"]


@pytest.mark.parametrize("topic, said", [("fused/空", "(topic 'fused/\\u7a7a')"),  # its stderr writes escapes
                                         (os.fsdecode(b"fused/\xff"), "argument --topic: 'fused/\\udcff' holds bytes")])
def test_a_topic_beyond_ascii_is_subscribed_as_utf8_under_the_c_locale(topic, said):
    # under LC_ALL=C with PYTHONUTF8=0 the topic came as byte escapes: "error: 'utf-8' codec can't encode characters"
    # (the Foxglove bridge: a traceback)
    with held_port() as port:
        proc = subprocess.run([sys.executable, "-m", "streamfuse", "subscribe", f"tcp://127.0.0.1:{port}", "--topic",
                               topic, "--first-timeout", "0.5", "--timeout", "0.5"], env=_ASCII_LOCALE,
                              capture_output=True, timeout=120)
    assert proc.returncode in (1, 2) and said.encode() in proc.stdout + proc.stderr, proc.stderr


def test_reading_a_frame_named_by_bytes_that_are_not_utf8_leaves_no_file_open(tmp_path):
    # such a name is read through a file opened for it; a replay of a folder of such frames reads one a frame, and each
    # left open would run the process out of file descriptors
    frame = tmp_path / "bad\udcff.tiff"
    cv2.imencode(".tiff", np.zeros((8, 8), np.uint8))[1].tofile(frame)
    before = sorted(os.listdir("/proc/self/fd"))
    assert [read_image(frame).shape for _ in range(3)] == [(8, 8)] * 3
    assert sorted(os.listdir("/proc/self/fd")) == before


_LOCAL_NAMES = r"""
import os, sys
from streamfuse.file_names import local_name
print(sys.getfilesystemencoding())
for text in ("\u7a7a.png", "caf\udce9.png", "\u7a7a\udce9.png", "plain.png"):  # UTF-8, no UTF-8, both, ASCII
    print(os.path.isfile(os.path.join(sys.argv[1], local_name(text))))
print(local_name("\ud800") == "\ud800")  # a lone surrogate that stands for no byte: the text itself
"""


def test_names_as_a_file_holds_them_open_their_files_where_python_reads_names_as_ascii(tmp_path):
    # under LC_ALL=C with PYTHONUTF8=0 (and no coercion of the C locale to UTF-8), a name held as the UTF-8 text it is
    # names its file only as the escapes of its bytes
    for name in (b"\xe7\xa9\xba.png", b"caf\xe9.png", b"\xe7\xa9\xba\xe9.png", b"plain.png"):
        (tmp_path / os.fsdecode(name)).write_bytes(b"")
    env = {**_ASCII_LOCALE, "PYTHONCOERCECLOCALE": "0"}
    proc = subprocess.run([sys.executable, "-c", _LOCAL_NAMES, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=150)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ascii", "True", "True", "True", "True", "True"]
