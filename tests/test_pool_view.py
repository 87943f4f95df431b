"""PoolView, a subscriber's view of its publisher's pool: the slot it holds, the pool it reads, the pool it lets go."""

from __future__ import annotations

import numpy as np
import pytest

from streamfuse.pool_view import PoolView
from streamfuse.shm_pool import ShmPool, shm_supported

pytestmark = pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")


def _header(pool: ShmPool, slot: int, gen: int) -> dict:
    """A shared-memory descriptor's header of a 4x16 mono8 frame."""
    return {"shm_pool": pool.name, "shm_slot": slot, "shm_gen": gen, "height": 4, "width": 16, "step": 16,
            "encoding": "mono8"}


def _frame(value: int) -> np.ndarray:
    return np.full((4, 16), value, np.uint8)


def test_release_gives_the_writer_the_held_slot_back() -> None:
    view = PoolView()
    with ShmPool(1, 64) as pool:
        try:
            view.map(pool.name)
            held = view.frame(_header(pool, *pool.write(_frame(1))), copy=False)
            np.testing.assert_array_equal(held, 1)
            assert pool.write(_frame(2)) is None  # the pool's one slot is held by the view
            view.release()  # a frame that came another way (ZeroMQ): the slot is not needed any more
            assert pool.write(_frame(3)) is not None
        finally:
            view.close()


def test_a_pool_given_up_for_another_lets_its_slot_go() -> None:
    view = PoolView()
    with ShmPool(1, 64) as old, ShmPool(1, 64) as new:
        try:
            view.map(old.name)
            assert view.frame(_header(old, *old.write(_frame(1))), copy=False) is not None  # holds old's one slot
            cursor_pool = view.reader  # as the subscriber's ring cursor keeps it
            view.map(new.name)  # a restarted publisher's pool
            assert view.reader.name == new.name and cursor_pool.name == old.name
            assert old.write(_frame(2)) is not None  # the old pool's mapping was closed, its slot let go
        finally:
            view.close()


def test_a_descriptor_of_another_pool_is_not_read_from_the_mapped_one() -> None:
    # latest mode: the consumer may take a descriptor of the pool before the one the receiving thread just mapped;
    # its slot and generation mean nothing in the new pool, whose frame there must not be returned as it
    view = PoolView()
    with ShmPool(2, 64) as old, ShmPool(2, 64) as new:
        try:
            stale = _header(old, *old.write(_frame(1)))
            assert new.write(_frame(9)) == (stale["shm_slot"], stale["shm_gen"])  # the same slot and generation
            view.map(new.name)
            assert view.frame(stale, copy=True) is None
            np.testing.assert_array_equal(view.frame(_header(new, stale["shm_slot"], stale["shm_gen"]), True), 9)
        finally:
            view.close()


def test_a_copy_holds_no_slot_and_a_mono_frame_has_two_axes() -> None:
    view = PoolView()
    with ShmPool(1, 64) as pool:
        try:
            view.map(pool.name)
            copied = view.frame(_header(pool, *pool.write(_frame(1))), copy=True)
            assert copied.shape == (4, 16)  # mono8 as every other path gives it: (H, W), not (H, W, 1)
            assert pool.write(_frame(2)) is not None  # the copy let the pool's one slot go at once
            np.testing.assert_array_equal(copied, 1)  # and is the frame read, not what the slot holds now
        finally:
            view.close()


def test_the_next_descriptor_of_the_mapped_pool_keeps_its_mapping_and_held_slot() -> None:
    # every descriptor names its pool: mapping it again for each one closed the mapping, and with it let go of the
    # slot of the frame a caller was still reading without a copy
    view = PoolView()
    with ShmPool(1, 64) as pool:
        try:
            view.map(pool.name)
            reader = view.reader
            held = view.frame(_header(pool, *pool.write(_frame(1))), copy=False)
            view.map(pool.name)
            assert view.reader is reader and pool.write(_frame(2)) is None  # the one slot still held
            np.testing.assert_array_equal(held, 1)
        finally:
            view.close()


def test_close_lets_the_held_slot_go() -> None:
    view = PoolView()
    with ShmPool(1, 64) as pool:
        view.map(pool.name)
        assert view.frame(_header(pool, *pool.write(_frame(1))), copy=False) is not None
        view.close()  # a subscriber closed while the publisher runs on
        assert pool.write(_frame(2)) is not None
