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
