"""Imported by the producers' fork server alone (its preload, see ``producer_process.start_servers``): an error that
ends the server, or a producer it forked before that producer's body runs (the program's main module failing in it),
is one line on stderr, not multiprocessing's traceback.

The server dies when a fork is refused (the process limit, ``ulimit -u``, reached) or a client goes away in the
middle of its request (a run out of file descriptors); the run then says in its own line what it could not start.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

from streamfuse.errors import one_line

__all__ = ["SERVER_PID"]

SERVER_PID = os.getpid()  # imported once, in the server: a producer forked from it has another pid


def _one_line(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    # named by pid as the run names a producer that ended; written at once, not in two parts as print writes it,
    # which the other producer's line or the run's log ran into
    who = "fork server" if os.getpid() == SERVER_PID else f"producer (pid {os.getpid()})"
    sys.stderr.write(f"streamfuse {who}: {one_line(exc, typed=True)}\n")


sys.excepthook = _one_line
