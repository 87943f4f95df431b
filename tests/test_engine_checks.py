"""Engine: the limits it refuses, the CPU threads it takes by default, and the GPU path's per-stage timings (emulated
on CPU by the fixtures of test_engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import test_engine
from test_engine import FakeEvent, TinyNet, make_batch

from streamfuse import engine as engine_module
from streamfuse.engine import Engine

gpu_engine = test_engine.gpu_engine  # its fixture: GPU-path engines, emulated on CPU


def test_a_max_batch_below_one_is_refused():
    # max_batch=0 was taken: an engine that refused every batch it was given, each with "allowed 1..max_batch=0"
    with pytest.raises(ValueError, match="max_batch=0 must be >= 1"):
        Engine(TinyNet(), device="cpu", threads=1, max_batch=0)
    with pytest.raises(ValueError, match="threads=-1 >= 0"):
        Engine(TinyNet(), device="cpu", threads=-1)


def test_an_empty_batch_is_refused_in_one_line():
    engine = Engine(TinyNet(), device="cpu", threads=1, max_batch=2)
    frames = np.zeros((0, 16, 16), np.uint8)
    with pytest.raises(ValueError, match=r"^engine: batch of 0 pairs; allowed 1\.\.max_batch=2$"):
        engine.run(frames, frames, np.zeros((0, 256), np.float32), torch.zeros(0, 2, 2, 2))


def test_lookup_tables_of_another_dtype_are_taken_as_float32(rng):
    # np.linspace gives float64: a table built that way failed on the CPU in the net ("Input type (double)")
    engine = Engine(TinyNet(), device="cpu", threads=1)
    ir, vis, luts, noise = make_batch(rng, 1, 16, 24)
    want = engine.run(ir, vis, luts, noise)
    np.testing.assert_array_equal(engine.run(ir, vis, luts.astype(np.float64), noise), want)
    np.testing.assert_array_equal(engine.run(ir, vis, luts.tolist(), noise), want)


def test_threads_default_to_the_cores_this_process_may_use(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # the suite's own thread count is left alone
    monkeypatch.setattr(engine_module, "available_cores", lambda: 7)
    assert Engine(TinyNet(), device="cpu").threads == 7
    assert Engine(TinyNet(), device="cpu", threads=3).device_name == "cpu (3 threads)"
    assert calls == [7, 3]


@pytest.mark.parametrize("gpu_engine", ["emulated"], indirect=True)
def test_profile_timings_pair_each_stage_with_its_own_events(rng, gpu_engine, monkeypatch):
    engine = gpu_engine(TinyNet(), cuda_graphs=False, profile=True)
    handle = engine.submit(*make_batch(rng, 1, 16, 24))
    names = {id(event): name for name, event in handle._slot.events.items()}
    spans = {("uploaded_start", "uploaded"): 1.0, ("computed_start", "computed"): 2.0,
             ("downloaded_start", "downloaded"): 3.0}
    monkeypatch.setattr(FakeEvent, "elapsed_time", lambda start, end: spans[names[id(start)], names[id(end)]])
    engine.result(handle)
    assert handle.timings == {"h2d": 1.0, "compute": 2.0, "d2h": 3.0}


class _TwoPlaneNet(TinyNet):
    """A net of another interface: two output planes where the engine takes one."""

    def forward(self, ir01, vis01, noise, ir_raw01):
        fused = super().forward(ir01, vis01, noise, ir_raw01)
        return torch.cat([fused, 1 - fused], 1)


def test_a_net_returning_another_shape_is_one_line_not_its_first_plane(rng):
    # only the batch size checked: the first of several planes was taken as the fused image, without a word
    engine = Engine(_TwoPlaneNet(), device="cpu", threads=1)
    with pytest.raises(RuntimeError, match=r"^net _TwoPlaneNet returned shape \(1, 2, 16, 24\); expected "
                                           r"\(1, 1, 16, 24\)$"):
        engine.run(*make_batch(rng, 1, 16, 24))
