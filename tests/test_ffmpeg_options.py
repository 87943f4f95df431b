import functools
import http.server
import io
import logging
import threading
from pathlib import Path

import av
import cv2

from streamfuse.capture import ffmpeg_options


def test_the_option_check_asks_the_ffmpeg_copy_pyav_is_linked_against(tmp_path, monkeypatch):
    """OpenCV loads its own FFmpeg, of another version, into the same process: a check that took the first copy
    by folder name asked OpenCV's wherever its folder sorted first, and answered for the wrong FFmpeg."""
    assert cv2.__file__  # OpenCV's FFmpeg is loaded beside PyAV's, as in a run
    other = tmp_path / "a.libs"  # sorts before PyAV's folder
    other.mkdir()
    opencv_libs = sorted(Path(cv2.__file__).resolve().parents[1].glob("opencv_python*.libs/libav*"))
    for lib in opencv_libs:
        (other / lib.name).symlink_to(lib)
    maps = "".join(f"7f00-7f01 r-xp 00000000 00:00 0 {p}\n" for p in sorted(other.iterdir()))
    real_open = open
    monkeypatch.setattr(ffmpeg_options, "open", lambda path, *a, **k: io.StringIO(maps)
                        if path == "/proc/self/maps" else real_open(path, *a, **k), raising=False)
    ffmpeg_options._library.cache_clear()
    try:
        lib = ffmpeg_options._library()
        major, minor, micro = av.library_versions["libavutil"]
        assert lib.avutil_version() == major << 16 | minor << 8 | micro
    finally:
        ffmpeg_options._library.cache_clear()
    assert ffmpeg_options.unknown_options(["fflags=nobuffer", "fflags_misspelt=1"]) == ["fflags_misspelt"]


def test_options_given_once_through_are_each_asked_of_what_reads_a_file():
    # the options were gone through twice, once for the names no FFmpeg library has: given as a generator, none was
    # left for the second pass, and a network stream's option given to a file went unsaid
    given = ["fflags=+genpts", "rtsp_transport=tcp", "no_such_option=1"]
    assert ffmpeg_options.unread_by_files(iter(given)) == ffmpeg_options.unread_by_files(given) == ["rtsp_transport"]


def test_an_option_of_another_demuxer_is_told_once_the_file_is_opened(tmp_path, caplog):
    # ignore_editlist is the MP4 demuxer's: given to a Matroska file, FFmpeg left it unused and nothing said so (the
    # config's check passes it, some demuxer that reads a file having it)
    from helpers_video import write

    from streamfuse.capture.sources import SourceConfig, open_source

    path = tmp_path / "clip.mkv"
    write(path, "matroska", 0, 0)
    given = ("ignore_editlist=1", "probesize=5000000", "threads=1")
    with caplog.at_level(logging.WARNING, "streamfuse"), \
            open_source("ir", SourceConfig(kind="file", path=str(path), ffmpeg=given)) as source:
        assert source.read() is not None
    said = [m for m in caplog.messages if "ffmpeg" in m]
    assert said == [f"ir.ffmpeg: ignore_editlist: not an option of the matroska,webm demuxer that reads {path}, nor "
                    "of what it reads through (another format's): left unused"]



class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # a line on stderr a request
        pass


def test_an_option_no_layer_of_a_stream_takes_is_told_once_it_is_open(tmp_path, caplog):
    # a stream hands its options on through its protocols, so the config's check tells none: ignore_editlist given to
    # a Matroska stream over HTTP was left unused without a word
    from helpers_video import write

    from streamfuse.capture.sources import SourceConfig, open_source

    write(tmp_path / "clip.mkv", "matroska", 0, 0)
    files = functools.partial(_QuietFiles, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), files) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}/clip.mkv"
        given = ("ignore_editlist=1", "user_agent=streamfuse", "reconnect=1", "probesize=5000000")
        try:
            with caplog.at_level(logging.WARNING, "streamfuse"), \
                    open_source("ir", SourceConfig(kind="stream", path=url, ffmpeg=given)) as source:
                assert source.read() is not None
        finally:
            server.shutdown()
    said = [m for m in caplog.messages if "ffmpeg" in m]
    assert said == [f"ir.ffmpeg: ignore_editlist: not an option of the matroska,webm demuxer that reads {url}, nor of "
                    "what it reads through (another format's): left unused"]

def test_an_option_of_the_files_own_demuxer_or_of_every_file_is_not_told():
    assert ffmpeg_options.unread_by_demuxer("mov,mp4,m4a,3gp,3g2,mj2", ["ignore_editlist=1", "probesize=32"]) == []
    assert ffmpeg_options.unread_by_demuxer("avi", ["err_detect=explode", "blocksize=4096", "rw_timeout=1"]) == []
    # what the config's checks already tell: no name at all, a network stream's
    assert ffmpeg_options.unread_by_demuxer("avi", ["no_such_option=1", "rtsp_transport=tcp"]) == []
    given = ["rtsp_transport=tcp", "timeout=5", "user_agent=x"]  # the demuxer's, a protocol's beneath it
    assert ffmpeg_options.unread_by_demuxer("rtsp", given, stream=True) == []
