"""What a pool reader checks before it returns a frame or maps a file: the descriptor's size, the file's size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from streamfuse.shm_pool import PoolError, PoolReader, ShmPool, shm_supported

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
