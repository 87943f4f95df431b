"""Imported by the producers' fork server alone (its preload, see ``producer_process.start_servers``): an error that
ends the server is one line on stderr, not multiprocessing's traceback.

The server dies when a fork is refused (the process limit, ``ulimit -u``, reached) or a client goes away in the
middle of its request (a run out of file descriptors); the run then says in its own line what it could not start.
"""

from __future__ import annotations

import sys
from types import TracebackType

from streamfuse.errors import one_line

__all__: list[str] = []


def _one_line(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    print(f"streamfuse fork server: {one_line(exc, typed=True)}", file=sys.stderr)


sys.excepthook = _one_line
