"""What a pool reader checks before it returns a frame or maps a file: the descriptor's size, the file's size and
header."""

from __future__ import annotations

import os
import secrets
import stat
import struct
from pathlib import Path

import numpy as np
import pytest

from streamfuse.shm_pool import POOL_PREFIX, NotAPool, PoolError, PoolReader, ShmPool, shm_supported

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


def test_a_pool_whose_slots_start_inside_its_ring_is_refused() -> None:
    # a forged header that moves the slots 64 bytes back, into the ring, and a file cut to match: the reader would
    # hand out ring bytes as frame pixels
    name = f"{POOL_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"  # this test's own file
    with ShmPool(2, 64) as pool:
        data = bytearray((SHM / pool.name).read_bytes())
    struct.pack_into("<q", data, 8 * 3, struct.unpack_from("<q", data, 8 * 3)[0] - 64)
    (SHM / name).write_bytes(data[:-64])
    try:
        with pytest.raises(PoolError, match="not a streamfuse pool"):
            PoolReader(name)
    finally:
        (SHM / name).unlink()


def test_a_pool_is_its_owners_only() -> None:
    # another user's process on the host could otherwise map it and read every frame
    with ShmPool(2, 64) as pool:
        assert stat.S_IMODE((SHM / pool.name).stat().st_mode) == 0o600


def test_a_frame_a_byte_longer_than_a_slot_is_refused() -> None:
    with ShmPool(1, 64) as pool:
        with pytest.raises(ValueError, match="^frame of 65 bytes does not fit the pool's 64-byte slots$"):
            pool.loan(65)
        assert pool.loan(64)[1].size == 64


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_a_folder_under_a_pools_name_is_refused_at_once(kind: str) -> None:
    # a forged message naming it: opening a FIFO waited forever for a writer, a folder failed to map with an OSError
    # the subscriber did not expect
    path = SHM / f"{POOL_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"  # this test's own
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir()
        for child in "ab":  # a folder big enough to pass for a pool's header
            (path / child).touch()
    try:
        with pytest.raises(NotAPool, match="is not a streamfuse pool \\(not a regular file\\)$"):
            PoolReader(path.name)
    finally:
        if kind == "fifo":
            path.unlink()
        else:
            for child in "ab":
                (path / child).unlink()
            path.rmdir()


def test_a_running_publishers_pool_is_not_stale_to_a_run_in_another_pid_namespace(monkeypatch) -> None:
    # a container sharing /dev/shm, to which this pid means no process, freed the pool its same-host consumers read
    from streamfuse import shm_owners
    from streamfuse.shm_pool import remove_stale_pools

    alive = shm_owners.process_alive
    monkeypatch.setattr(shm_owners, "process_alive", lambda pid: pid != os.getpid() and alive(pid))  # as seen there
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
