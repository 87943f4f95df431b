"""What a pool reader checks before it returns a frame or maps a file: the descriptor's size, the file's size and
header."""

from __future__ import annotations

import os
import secrets
import struct
from pathlib import Path

import numpy as np
import pytest

from streamfuse.shm_pool import POOL_PREFIX, PoolError, PoolReader, ShmPool, shm_supported

pytestmark = pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
SHM = Path("/dev/shm")


def test_a_descriptor_whose_size_is_not_the_frames_gets_nothing() -> None:
    with ShmPool(2, 128) as pool:
        reader = PoolReader(pool.name)
        try:
            slot, gen = pool.write(np.full(64, 3, np.uint8))
            for nbytes in (32, 65, 128):  # the right generation, the wrong size: never a cut or padded frame
                assert reader.read(slot, gen, nbytes, copy=True) is None
            np.testing.assert_array_equal(reader.read(slot, gen, 64, copy=True), 3)
        finally:
            reader.close()


def test_a_pool_file_longer_than_its_header_says_is_refused() -> None:
    with ShmPool(2, 64) as pool:
        path = SHM / pool.name
        os.truncate(path, path.stat().st_size + 64)  # the header no longer describes the file
        with pytest.raises(PoolError, match="not a streamfuse pool"):
            PoolReader(pool.name)


@pytest.mark.parametrize("word", [4, 5, 6], ids=["ring_offset", "ring_entries", "entry_bytes"])
def test_a_pool_whose_ring_is_not_where_its_slots_say_is_refused(word: int) -> None:
    # a version-2 header's ring words follow from its slots: any other value (a forged pool) would have a reader
    # take a ring somewhere in the slots, or past the end of the file
    name = f"{POOL_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"  # this test's own file
    with ShmPool(2, 64) as pool:
        data = bytearray((SHM / pool.name).read_bytes())
    struct.pack_into("<q", data, 8 * word, struct.unpack_from("<q", data, 8 * word)[0] + 64)
    (SHM / name).write_bytes(data)
    try:
        with pytest.raises(PoolError, match="not a streamfuse pool"):
            PoolReader(name)
    finally:
        (SHM / name).unlink()


def test_a_running_publishers_pool_is_not_stale_to_a_run_in_another_pid_namespace(monkeypatch) -> None:
    # a container sharing /dev/shm, to which this pid means no process, freed the pool its same-host consumers read
    from streamfuse.capture import shm_ring
    from streamfuse.shm_pool import remove_stale_pools

    alive = shm_ring.process_alive
    monkeypatch.setattr(shm_ring, "process_alive", lambda pid: pid != os.getpid() and alive(pid))  # as seen there
    with ShmPool(2, 64) as pool:
        assert pool.name not in remove_stale_pools()
        assert (SHM / pool.name).exists()


def test_a_reader_in_another_pid_namespace_sees_the_publisher_alive_until_it_is_gone(monkeypatch) -> None:
    # a consumer in a container sharing /dev/shm, where the pool's pid is no process, left the ring of a running
    # publisher at every wait ("left by its publisher") and never read it
    monkeypatch.setattr("streamfuse.shm_pool.process_alive", lambda pid: False)  # as seen there
    pool = ShmPool(2, 64)
    reader = PoolReader(pool.name)
    try:
        assert reader.writer_alive()
        pool.close()
        assert not reader.writer_alive()
    finally:
        reader.close()
        pool.close()
