"""A lazy stack far larger than memory, for tests that must read only the
frames they need (tests/session, tests/qt)."""

import numpy as np
import pytest

from napari_flowscope import synthetic


def huge_rolling_stack():
    """(40 000, 512, 512) float32 dask array, 39 GiB, one frame per chunk.

    Frame ``t`` is a tissue texture moved by ``t % 5`` px along x (a
    wrap-around roll), so frame 23 457 is the texture moved by 2 px.
    """
    da = pytest.importorskip('dask.array')
    texture = synthetic.tissue_texture((512, 512)).astype(np.float32)

    def frame(block_info=None):
        t = block_info[None]['chunk-location'][0]
        return np.roll(texture, t % 5, axis=1)[np.newaxis]

    return da.map_blocks(
        frame, chunks=((1,) * 40_000, (512,), (512,)), dtype=np.float32
    )
