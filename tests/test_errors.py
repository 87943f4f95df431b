"""One-line reasons (:mod:`streamfuse.errors`): what a log line, a summary or a table says of an exception."""

from __future__ import annotations

import errno
import resource
import subprocess
import sys

import cv2
import pytest

from streamfuse.errors import io_reason, one_line, opencv_quiet, printable, unreachable


def test_a_delete_character_is_written_as_an_escape_like_the_other_controls():
    # DEL (0x7f) is a control character too: raw, a terminal may act on it
    assert printable("a\x7fb\x1bc") == "a\\x7fb\\x1bc"


def test_a_one_line_reason_masks_a_urls_password_and_secret_query_values():
    exc = OSError("cannot open rtsp://admin:s3cret@10.0.0.7/live?auth=abc:\n  Connection refused")
    assert one_line(exc) == "cannot open rtsp://admin:***@10.0.0.7/live?auth=***: Connection refused"
    assert one_line(exc, typed=True) == "OSError: cannot open rtsp://admin:***@10.0.0.7/live?auth=***:"


def test_a_reason_that_is_a_limit_reached_names_the_limit():
    # a replay's or a source's line said "[Errno 24] Too many open files: '/streamfuse_..._g1'" and nothing of the limit
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    exc = OSError(errno.EMFILE, "Too many open files", "/streamfuse_1_ab_g1")
    assert one_line(exc) == (f"[Errno 24] Too many open files: '/streamfuse_1_ab_g1' (the process's open-file limit, "
                             f"ulimit -n, is {soft}: raise it)")
    assert one_line(OSError(errno.ENFILE, "Too many open files in system"), typed=True) == (
        "OSError: [Errno 23] Too many open files in system (the system's open-file table is full: fs.file-max)")
    assert one_line(OSError(errno.ENOENT, "No such file or directory")) == "[Errno 2] No such file or directory"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a file-descriptor limit set for the child")
def test_a_limit_reached_is_named_with_no_file_left_to_open():
    # the limit was read by an import made as the line was written: with every file taken, that import failed too
    code = ("import os, sys; from streamfuse.errors import one_line\n"
            "held = []\n"
            "while True:\n"
            "    try:\n"
            "        held.append(os.open(os.devnull, os.O_RDONLY))\n"
            "    except OSError as exc:\n"
            "        print(one_line(exc)); break\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 128)))
    assert proc.stdout == ("[Errno 24] Too many open files: '/dev/null' (the process's open-file limit, ulimit -n, is "
                           "64: raise it)\n"), proc.stderr


def test_an_exception_without_a_message_reads_as_its_type():
    assert one_line(TimeoutError()) == "TimeoutError" and one_line(ValueError("  \n ")) == "ValueError"


@pytest.mark.parametrize("code, expected", [(errno.ECONNREFUSED, True), (errno.ENETDOWN, True),
                                            (errno.EHOSTDOWN, True), (errno.ECONNRESET, True), (errno.ETIMEDOUT, True),
                                            (errno.EHOSTUNREACH, True), (errno.ENETUNREACH, True),
                                            (errno.ENOENT, False), (errno.EACCES, False)])
def test_unreachable_is_a_peer_not_there_yet_not_a_wrong_path_or_password(code, expected):
    assert unreachable(OSError(code, "why")) is expected


def test_an_error_that_is_no_os_error_is_not_unreachable():
    assert unreachable(ValueError("bad URL")) is False and unreachable(KeyboardInterrupt()) is False


def test_an_io_reason_is_the_os_reason_without_the_call_and_the_file_name():
    assert io_reason(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y.mp4")) == \
        "No such file or directory"
    assert io_reason(ValueError("not a video\n  at all")) == "not a video at all"  # no strerror: its one line


def test_opencv_is_quiet_inside_the_block_only():
    before = cv2.utils.logging.getLogLevel()
    with opencv_quiet():
        assert cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_SILENT
    assert cv2.utils.logging.getLogLevel() == before != cv2.utils.logging.LOG_LEVEL_SILENT


def test_a_url_no_host_can_be_read_from_fails_to_open_in_its_own_line():
    # urlsplit's ValueError escaped the open's failure: "producer crashed: ValueError: Invalid IPv6 URL", no path
    from streamfuse.capture.sources import SourceConfig, SourceError, open_source

    path = "rtsp://[192.168.1.10/stream"
    with pytest.raises(SourceError, match=r"^ir: cannot open rtsp://\[192\.168\.1\.10/stream: "):
        with open_source("ir", SourceConfig(kind="stream", path=path, width=64, height=48)) as source:
            source.read()


def test_opencv_quiet_blocks_that_overlap_on_threads_put_the_level_back_once_the_last_ends():
    # a replay reads both folders at once: the first block to end put the level back while the other still read, and
    # the last put back the silence the first had set, for good (a later test saw OpenCV silent)
    import cv2

    before, first, second = cv2.utils.logging.getLogLevel(), opencv_quiet(), opencv_quiet()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # ended first, as another thread's can
    assert cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_SILENT  # the second block still reads
    second.__exit__(None, None, None)
    assert cv2.utils.logging.getLogLevel() == before != cv2.utils.logging.LOG_LEVEL_SILENT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a memory limit set for the child")
@pytest.mark.parametrize("limit, name", [("RLIMIT_AS", "address-space limit, ulimit -v"),
                                         ("RLIMIT_DATA", "data limit, ulimit -d")])
def test_an_allocation_refused_under_a_memory_limit_names_the_limit(limit, name):
    # a replay of large frames under ulimit -v stopped on torch's "DefaultCPUAllocator: can't allocate memory: you
    # tried to allocate 48000000 bytes. Error code 12 (Cannot allocate memory)" and nothing of the limit
    code = ("import resource, sys\n"
            "resource.setrlimit(getattr(resource, sys.argv[1]), (8 << 30, resource.RLIM_INFINITY))\n"
            "import numpy, torch\n"
            "from streamfuse.errors import one_line\n"
            "for allocate in (lambda: torch.empty(16 << 30, dtype=torch.uint8), lambda: numpy.empty(16 << 30, 'u1')):\n"
            "    try:\n"
            "        allocate()\n"
            "    except (RuntimeError, MemoryError) as exc:\n"
            "        print(one_line(exc))\n")
    proc = subprocess.run([sys.executable, "-c", code, limit], capture_output=True, text=True, timeout=300)
    said = proc.stdout.splitlines()
    assert len(said) == 2, proc.stderr
    assert "can't allocate memory" in said[0] and "Unable to allocate 16.0 GiB" in said[1]
    assert all(line.endswith(f" (out of memory: the process's {name}, is 8.0 GiB: raise it)") for line in said), said
