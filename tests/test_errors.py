"""One-line reasons (:mod:`streamfuse.errors`): what a log line, a summary or a table says of an exception."""

from __future__ import annotations

import errno

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


def test_an_exception_without_a_message_reads_as_its_type():
    assert one_line(TimeoutError()) == "TimeoutError" and one_line(ValueError("  \n ")) == "ValueError"


@pytest.mark.parametrize("code, expected", [(errno.ECONNREFUSED, True), (errno.ENETDOWN, True),
                                            (errno.EHOSTDOWN, True), (errno.ENOENT, False), (errno.EACCES, False)])
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
