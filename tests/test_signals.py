"""streamfuse.signals: a SIGTERM that comes during an import stops the run once the import is over."""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from streamfuse.signals import Terminated, handled, raise_terminated

PATIENCE_S = 30.0  # how long the test waits for the stop that must come (a loaded machine can be slow)


def test_a_sigterm_during_an_import_stops_the_run_once_the_import_is_over(tmp_path, monkeypatch):
    """Raised inside an import, the stop could unwind through a C++ extension's initialisation (torch's, as a run
    loads its model), which aborts the process; the import finishes and the stop comes after it, still raised."""
    name = "streamfuse_test_signalled_import"
    (tmp_path / f"{name}.py").write_text("import signal\nsignal.raise_signal(signal.SIGTERM)\nfinished = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)  # gone again after the test
    with handled(raise_terminated, (signal.SIGTERM,)), pytest.raises(Terminated, match=r"^interrupted \(SIGTERM\)$"):
        __import__(name)
        threading.Event().wait(PATIENCE_S)  # the stop ends this wait
    assert sys.modules[name].finished
