"""Small synthetic stacks and a read-counting array for the session tests."""

import threading

import numpy as np
import pytest

from napari_flowscope import synthetic


@pytest.fixture(scope='session')
def drifting():
    """24 frames of 80 x 80 drifting, deforming tissue (float32)."""
    return synthetic.drifting_tissue(n_frames=24, shape=(80, 80), seed=3)


@pytest.fixture(scope='session')
def drifting_uint16(drifting):
    return np.round(drifting.stack * 4000).astype(np.uint16)


class CountingArray:
    """Array-like that records every ``[start:stop]`` read along time.

    Only what a session may use is provided (shape, dtype, ndim, basic
    slicing), so any attempt to read the data another way fails loudly.
    """

    def __init__(self, data):
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.reads = []
        self._lock = threading.Lock()

    def __getitem__(self, index):
        first = index[0] if isinstance(index, tuple) else index
        start, stop, _ = first.indices(self.shape[0])
        if stop > start:
            with self._lock:
                self.reads.append((start, stop))
        return self._data[index]

    def frames_read(self):
        counts = np.zeros(self.shape[0], int)
        for start, stop in self.reads:
            counts[start:stop] += 1
        return counts


@pytest.fixture
def counting():
    return CountingArray
