"""Device names and the CPU set-up the engine and training share."""

from __future__ import annotations

import os
import platform

import pytest
import torch

from streamfuse.device import available_cores, resolve_device, tune_malloc


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_is_one_line():
    with pytest.raises(ValueError, match="no CUDA GPU") as info:
        resolve_device("cuda:1")
    assert "\n" not in str(info.value)


def test_available_cores():
    assert 1 <= available_cores() <= (os.cpu_count() or 1)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc tuning is glibc-only")
def test_malloc_tuning_applies_on_glibc(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(name, raising=False)
    assert tune_malloc() is True
