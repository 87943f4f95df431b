"""The suite itself: pytest-xdist's workers each collect it and refuse to run where their collections differ."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers_data import REPO


@pytest.mark.slow  # a second collection of the whole suite: xdist's own comparison guards make test
def test_a_second_collection_names_the_same_tests(request: pytest.FixtureRequest) -> None:
    # a parameter made of the time of day named a test by it: each worker had another name and xdist ran nothing
    files = sorted({str(item.path) for item in request.session.items})
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "", "-p", "no:cacheprovider"]
    proc = subprocess.run([*collect, *files], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    again = set(proc.stdout.splitlines())
    assert [item.nodeid for item in request.session.items if item.nodeid not in again] == []

