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
    from streamfuse import device

    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(device, "_malloc_tuned", None)  # asked afresh: an earlier test's answer is remembered
    assert tune_malloc() is True


def test_cuda_names_resolve_against_the_gpus_torch_sees(monkeypatch):
    # no GPU needed: torch's answers are those of a machine with one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda") == torch.device("cuda", 0) == resolve_device("cuda:0")
    with pytest.raises(ValueError, match=r"^device 'cuda:1' requested but torch sees only 1 CUDA GPU\(s\)$"):
        resolve_device("cuda:1")


def test_cuda_without_an_index_is_the_gpu_torch_has_made_current(monkeypatch):
    # as torch's own "cuda": a host program that chose the second GPU (torch.cuda.set_device(1)) fuses there, not on
    # the first one, which another program may fill
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_available_cores_are_those_of_the_affinity_mask(monkeypatch):
    # a container or taskset pinning the process to 2 of the machine's cores: 2 torch threads, not one per core
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity mask here")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cores() == 2


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"])
def test_any_one_malloc_variable_the_user_set_leaves_malloc_alone(name, monkeypatch):
    from streamfuse import device

    for other in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "1048576")
    assert device._apply_mallopt() is False  # the user's choice wins: mallopt is never called


def test_malloc_is_tuned_once_per_process(monkeypatch):
    # every engine (and training) asks for it: mallopt and its log line once, the answer remembered
    from streamfuse import device

    calls = []
    monkeypatch.setattr(device, "_malloc_tuned", None)
    monkeypatch.setattr(device, "_apply_mallopt", lambda: calls.append(1) or True)
    assert tune_malloc() is True and tune_malloc() is True
    assert calls == [1]


def test_malloc_tuning_is_not_in_effect_when_mallopt_rejects_one_setting(monkeypatch):
    from streamfuse import device

    class Libc:  # glibc that takes the thresholds but not the top pad
        gnu_get_libc_version = None

        @staticmethod
        def mallopt(param, value):
            return 0 if param == device._M_TOP_PAD else 1

    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(device.ctypes, "CDLL", lambda name: Libc())
    assert device._apply_mallopt() is False


@pytest.mark.parametrize("late", [False, True])
def test_the_cpu_set_up_warns_only_when_torch_came_before_the_wait_policy(late, monkeypatch, caplog):
    from streamfuse import device

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the suite's own thread count is left alone
    monkeypatch.setattr(device, "LATE_WAIT_POLICY", late)
    device._warn_late_wait_policy.cache_clear()  # warned once per process: an earlier test's warning is forgotten
    with caplog.at_level("WARNING", logger="streamfuse.device"):
        device.prepare_cpu(1)
    assert ("OMP_WAIT_POLICY=PASSIVE could not take effect" in caplog.text) is late
