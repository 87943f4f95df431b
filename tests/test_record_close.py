"""A Ctrl-C that cuts short a recorder's wait for its writer or sync thread as it closes: the file is never closed under
the thread, which Python before 3.13 takes for ended once a ``Thread.join()`` was cut short."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from helpers_threads import Watch
from helpers_zmq import wait_until

import streamfuse.atomic_write
from streamfuse.atomic_write import BackgroundSync
from streamfuse.frames import Frame
from streamfuse.recording import RecordConfig, Recorder

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="a Ctrl-C sent to the main thread")

T0 = 1_700_000_000_000_000_000


def _ctrl_c_when_main_waits_in(main: Watch, function: str) -> None:
    """Ctrl-C to the main thread, as a terminal sends it, once it waits inside ``function`` (on a thread of its own)."""
    def ctrl_c() -> None:
        main.when_waits_in(function, threading.Event())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()


class _Held:
    """A call held at its start until released, noting whether ``closed()`` was true by then (the call then does
    nothing: a write to a closed file must not fail the test)."""

    def __init__(self, call, closed):
        self.inside, self.release, self.left = threading.Event(), threading.Event(), threading.Event()
        self.closed_under: bool | None = None
        self._call, self._closed = call, closed

    def __call__(self, *args):
        self.inside.set()
        self.release.wait()
        try:
            if self.closed_under is None:
                self.closed_under = self._closed()
                if not self.closed_under:
                    self._call(*args)
        finally:
            self.left.set()


def test_a_ctrl_c_as_close_waits_for_the_writer_thread_leaves_the_file_open_until_it_ends(tmp_path, main_watch):
    # close() closed the file in its finally while the writer thread still wrote the queued frames into it
    rec = Recorder(RecordConfig(path=str(tmp_path / "rig.mcap")))
    file = rec._part.file
    held = _Held(rec._worker._handle, lambda: file.closed)
    rec._worker._handle = held
    for i in range(3):
        rec.write(Frame("vis", i, T0 + i * 33_333_333, np.full((24, 32, 3), i, np.uint8)))
    assert held.inside.wait(60)
    _ctrl_c_when_main_waits_in(main_watch, "close")
    with pytest.raises(KeyboardInterrupt):
        rec.close()
    held.release.set()
    rec._worker.join()  # ends once the thread, done with the frames, has closed the file
    assert held.closed_under is False and file.closed and rec._worker.error is None


def test_a_sync_close_cut_short_by_a_ctrl_c_waits_for_the_sync_when_called_again(tmp_path, monkeypatch, main_watch):
    # the second close() returned at once, the fsync still running, and its caller closed the file under it
    fd = os.open(tmp_path / "synced", os.O_WRONLY | os.O_CREAT)
    real_fsync = os.fsync
    held = _Held(real_fsync, lambda: False)
    monkeypatch.setattr(streamfuse.atomic_write.os, "fsync", lambda f: held(f) if f == fd else real_fsync(f))
    try:
        sync = BackgroundSync(fd, "sync test")
        sync.request()
        assert held.inside.wait(60)
        first_cut = threading.Event()

        def release_in_the_second_close() -> None:
            first_cut.wait()
            main_watch.when_waits_in("close", held.release)

        _ctrl_c_when_main_waits_in(main_watch, "close")
        threading.Thread(target=release_in_the_second_close, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            sync.close()
        first_cut.set()
        sync.close()
        synced = held.left.is_set()
    finally:
        held.release.set()
        assert held.left.wait(60)
        os.close(fd)
    assert synced


def test_a_ctrl_c_as_close_queues_its_end_into_a_full_queue_still_closes_the_file_once_the_thread_is_done(
        tmp_path, main_watch):
    # the Ctrl-C came while close() waited for room for the thread's end in a full queue: the thread, never told to
    # end, waited for more frames once done with those queued, and the file it was to close stayed open
    rec = Recorder(RecordConfig(path=str(tmp_path / "rig.mcap")), queue_size=2)
    file = rec._part.file
    held = _Held(rec._worker._handle, lambda: file.closed)
    rec._worker._handle = held
    for i in range(3):  # one held by the thread, two filling its queue
        rec.write(Frame("vis", i, T0 + i * 33_333_333, np.full((24, 32, 3), i, np.uint8)))
        if i == 0:
            assert held.inside.wait(60)
    assert rec.dropped["vis"] == 0
    _ctrl_c_when_main_waits_in(main_watch, "put")
    with pytest.raises(KeyboardInterrupt):
        rec.close()
    held.release.set()
    wait_until(lambda: not rec._worker.running(), "the writer thread's end")
    assert held.closed_under is False and file.closed and rec._worker.error is None
