"""One writer per output: a second run given an output another run is writing is refused, whatever killed the first
run frees it, and a link planted at the lock's name is not followed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamfuse.output_lock import check_not_held, lock_path, output_lock

HOLD = ("import sys, time; from streamfuse.output_lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")


@contextlib.contextmanager
def held_elsewhere(out: Path) -> Iterator[subprocess.Popen]:
    """Another process holding ``out``'s lock for the block, killed (SIGKILL: nothing released) at its end."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=60)


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "fused.mp4"
    with output_lock(out):
        assert lock_path(out).read_text().endswith(f" pid {os.getpid()}\n")
        with pytest.raises(FileExistsError, match=rf"^output {out} is being written by another run \(.* pid "
                                               rf"{os.getpid()}, holding \.fused\.mp4\.lock\); wait for it to end"):
            with output_lock(out):
                pass
    assert not lock_path(out).exists()  # released: removed, and free for the next run
    with output_lock(out):
        pass


def test_a_killed_holder_frees_the_output(tmp_path):
    out = tmp_path / "fused.mp4"
    with held_elsewhere(out) as holder:
        with pytest.raises(FileExistsError, match=f"pid {holder.pid}, holding"):
            with output_lock(out):
                pass
    assert lock_path(out).exists()  # left by the killed run, meaning nothing now
    with output_lock(out):
        pass


def test_a_link_at_the_locks_name_is_not_followed(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    out = tmp_path / "fused.mp4"
    lock_path(out).symlink_to(precious)
    with pytest.raises(OSError, match=f"^cannot lock output {out}: .*fused.mp4.lock: "):
        with output_lock(out):
            pass
    assert precious.read_text() == "keep me"


def test_a_check_sees_another_runs_lock_but_not_its_own(tmp_path, monkeypatch):
    out = tmp_path / "fused.mp4"
    check_not_held(out)  # no lock file
    with held_elsewhere(out) as holder:
        with pytest.raises(FileExistsError, match=f"^output {out} is being written by another run .* pid {holder.pid}"):
            check_not_held(out)
    check_not_held(out)  # its lock file is left, no longer held
    with output_lock(out):
        check_not_held(out)
    monkeypatch.chdir(tmp_path)  # an output named relative to the working folder (-o fused.mp4) is its own too
    with output_lock("fused.mp4"):
        check_not_held("fused.mp4")


def test_a_lock_that_cannot_be_removed_leaves_the_run_s_own_error_and_no_descriptor(tmp_path, monkeypatch, caplog):
    """The output's folder made read-only while a replay ran: removing the lock raised over the replay's own error
    (the batch's reason became "[Errno 30] ... .lock", its frame counts lost) and left the lock's descriptor open."""
    import errno
    from pathlib import Path

    out = tmp_path / "fused.mp4"
    real_unlink = Path.unlink

    def read_only(path, missing_ok=False):
        if path == lock_path(out):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_unlink(path, missing_ok=missing_ok)

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(Path, "unlink", read_only)
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="the replay's own error"):
        with output_lock(out):
            raise ValueError("the replay's own error")
    assert len(os.listdir("/proc/self/fd")) == before
    assert f"{out}: could not remove .fused.mp4.lock (Read-only file system)" in caplog.text


def test_a_lock_file_its_ending_holder_removed_as_it_was_opened_is_made_again(tmp_path, monkeypatch):
    """The first run ends, removing its lock file, between the second run's open and its lock: the second run must
    lock a file at the lock's name, or a third run makes one there and writes the same output beside it."""
    import fcntl

    out, real_flock, removed = tmp_path / "fused.mp4", fcntl.flock, []

    def flock(fd, op):
        if not removed:  # the first run's end, just after this run opened the file it was about to release
            removed.append(True)
            os.unlink(lock_path(out))
        real_flock(fd, op)

    lock_path(out).write_text("host pid 1\n")  # the first run's lock file
    monkeypatch.setattr(fcntl, "flock", flock)
    before = len(os.listdir("/proc/self/fd"))
    with output_lock(out):
        assert lock_path(out).read_text().endswith(f" pid {os.getpid()}\n")
        with pytest.raises(FileExistsError, match="is being written by another run"):
            with output_lock(out):
                pass
    assert len(os.listdir("/proc/self/fd")) == before  # the removed file's descriptor closed too


def test_a_longer_lock_file_left_by_a_killed_run_is_overwritten_whole(tmp_path):
    """The holder's line is what a refused run names: the rest of a longer line a killed run left must not follow it."""
    import socket

    out = tmp_path / "fused.mp4"
    lock_path(out).write_text("a-much-longer-host-name.example.org pid 4194304\n")
    with output_lock(out):
        assert lock_path(out).read_text() == f"{socket.gethostname()} pid {os.getpid()}\n"


def test_a_refused_run_keeps_no_descriptor_and_names_a_holder_that_wrote_nothing(tmp_path):
    import fcntl

    out = tmp_path / "fused.mp4"
    lock_path(out).touch()
    holder = os.open(lock_path(out), os.O_RDWR)  # a holder that has not written its line yet
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with pytest.raises(FileExistsError,
                               match=r"by another run \(another process, holding \.fused\.mp4\.lock\)"):
                with output_lock(out):
                    pass
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(holder)


def test_a_released_lock_is_no_longer_taken_for_this_run_s_own(tmp_path):
    out = tmp_path / "fused.mp4"
    with output_lock(out):
        pass
    with held_elsewhere(out) as holder:
        with pytest.raises(FileExistsError, match=f"pid {holder.pid}, holding"):
            check_not_held(out)


@pytest.mark.parametrize("code", ["ENOLCK", "EOPNOTSUPP", "ENOSYS"])  # each as a filesystem without locks says it
def test_a_filesystem_without_locks_lets_the_run_go_on_warned(tmp_path, monkeypatch, caplog, code):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    out = tmp_path / "fused.mp4"
    lock_path(out).write_text("host pid 1\n")  # an earlier run's, or another's: this filesystem cannot tell
    monkeypatch.setattr(fcntl, "flock", no_locks)
    check_not_held(out)  # nothing it can tell: output_lock warns
    with caplog.at_level("WARNING"), output_lock(out):
        pass
    assert f"{out}: this filesystem has no locks ({os.strerror(getattr(errno, code))})" in caplog.text
    assert not lock_path(out).exists()


def test_a_check_leaves_a_lock_file_it_cannot_open_to_output_lock(tmp_path):
    import fcntl

    out = tmp_path / "fused.mp4"
    lock_path(out).symlink_to(tmp_path / "elsewhere")  # not followed: output_lock refuses it, naming it
    check_not_held(out)
    (tmp_path / "elsewhere").touch()  # a link to a file that another program holds locked: still not followed
    other = os.open(tmp_path / "elsewhere", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        check_not_held(out)
    finally:
        os.close(other)


def test_a_lock_that_fails_for_another_reason_is_one_line_and_keeps_no_descriptor(tmp_path, monkeypatch):
    import errno
    import fcntl

    def failing(fd, op):
        raise OSError(errno.EIO, "Input/output error")  # a network filesystem's lock server gone, say

    out = tmp_path / "fused.mp4"
    monkeypatch.setattr(fcntl, "flock", failing)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match=f"^cannot lock output {out}: .*fused.mp4.lock: Input/output error"):
        with output_lock(out):
            pass
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_refusal_names_a_holder_with_a_long_host_name_whole(tmp_path):
    """A cluster node's host name is long: the refusal names the holder's whole line."""
    import fcntl
    import re

    out = tmp_path / "fused.mp4"
    line = "ip-10-0-0-12.eu-west-1.compute.internal pid 4194304"
    lock_path(out).write_text(f"{line}\n")
    holder = os.open(lock_path(out), os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(FileExistsError, match=rf"by another run \({re.escape(line)}, holding"):
            check_not_held(out)
        with pytest.raises(FileExistsError, match=rf"by another run \({re.escape(line)}, holding"):
            with output_lock(out):
                pass
    finally:
        os.close(holder)


def test_a_check_takes_another_runs_check_of_the_same_output_for_no_holder(tmp_path):
    """Two replays of one output started together both check it before either locks it: a check holds the lock
    file shared, so neither takes the other's check for a run writing the output."""
    import fcntl

    out = tmp_path / "fused.mp4"
    lock_path(out).write_text("host pid 1\n")  # left by an earlier run that ended
    checking = os.open(lock_path(out), os.O_RDONLY)
    fcntl.flock(checking, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the other run's check, under way
    try:
        check_not_held(out)
    finally:
        os.close(checking)
