"""Shared fixtures: the real-data folder (skipped with a reason when absent), seeded generators, the tools/
scripts loaded as modules (they are not a package), and host names under ``.invalid`` that never resolve."""

from __future__ import annotations

import importlib.util
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import streamfuse  # noqa: F401  (before torch: it sets OpenMP's wait policy, which torch reads once)
import torch
import zmq

from helpers_data import DATA, REPO
from helpers_threads import Watch
from helpers_zmq import plain_pub

TORCH_THREADS = torch.get_num_threads()  # torch's default here: OMP_NUM_THREADS, else the cores

# Started in the background of a script (`make test &`, a CI runner), this process inherits Ctrl-C ignored, and so
# would every command a test starts, where Python then installs no KeyboardInterrupt: the tests that press Ctrl-C
# would wait for nothing. A command started from a terminal gets it as the default; so do the tests' commands.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; tests that need it skip when it is absent."""
    if not (DATA / "README.md").exists():
        pytest.skip(f"real data not found at {DATA} (set STREAMFUSE_DATA)")
    return DATA


@pytest.fixture(autouse=True)
def invalid_names_do_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names under ``.invalid`` (RFC 2606) fail to resolve at once in a consumer's lookup (the resolver seam
    ``connection_watch._resolve``), as a working resolver answers: a machine whose name servers cannot be reached
    would say "try again" after seconds, and the tests of that name would wait."""
    from streamfuse import connection_watch

    real = connection_watch._resolve

    def resolve(name: str) -> list[tuple]:
        if name.rstrip(".").endswith(".invalid"):
            name.encode("idna")  # a malformed name fails as the real lookup fails it (UnicodeError)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(name)

    monkeypatch.setattr(connection_watch, "_resolve", resolve)
    monkeypatch.setattr(connection_watch, "_resolved", {})  # each test looks its names up afresh


@pytest.fixture(autouse=True)
def stop_handlers_put_back() -> Iterator[None]:
    """Each test starts with the suite's handlers of Ctrl-C, SIGTERM and SIGHUP: a command run in this process leaves
    them ignored as it exits (``ignore_stops``), and a later test whose stop relies on them would not be stopped."""
    from streamfuse.signals import STOP_SIGNALS

    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def torch_threads_put_back() -> Iterator[None]:
    """Each test starts with torch's own thread count: an engine made with ``threads=1`` sets the count for the whole
    process, and the CPU-bound tests after it ran on one core."""
    yield
    torch.set_num_threads(TORCH_THREADS)


@pytest.fixture
def raw_pub() -> Iterator[tuple[zmq.Socket, str]]:
    """A plain PUB socket on a free loopback port, to send whatever bytes a test needs; with its bound endpoint."""
    with plain_pub() as sock:
        yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


@pytest.fixture
def main_watch() -> Iterator[Watch]:
    """The main thread's calls, noted by it for the test's duration, for a thread of the test to act as it waits."""
    with Watch() as watch:
        yield watch


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tool() -> Callable[[str], ModuleType]:
    """``tool("evaluate")`` -> the module of tools/evaluate.py, loaded once per session."""

    def load(name: str) -> ModuleType:
        key = f"{name}_tool"
        if key not in sys.modules:
            spec = importlib.util.spec_from_file_location(key, REPO / "tools" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # dataclasses look their module up while the file executes
            hook = sys.excepthook  # a tool sets its own for its process (quiet_interrupt): not this session's
            try:
                spec.loader.exec_module(module)
            finally:
                sys.excepthook = hook
        return sys.modules[key]

    return load
