"""Lazy inputs (dask, zarr, memory maps) are read batch by batch."""

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_flowscope.session import MotionSession, compensate


@pytest.fixture(scope='module')
def expected(drifting_uint16):
    return compensate(drifting_uint16, 0, batch_size=4)


@pytest.mark.parametrize('temporal_smoothing', [None, True])
def test_dask_input_is_never_fully_materialised(
    drifting_uint16, counting, temporal_smoothing
):
    source = counting(drifting_uint16)
    stack = da.from_array(source, chunks=(4, 80, 80))
    session = MotionSession(
        stack, batch_size=4, temporal_smoothing=temporal_smoothing
    )
    sink = session.run()

    assert source.reads, 'the dask graph never reached the source'
    longest = max(stop - start for start, stop in source.reads)
    assert longest <= 4
    # Every frame once (the halo frames of temporal smoothing included),
    # plus frame 0 once more for the reference.
    expected_counts = np.ones(len(drifting_uint16), int)
    expected_counts[0] = 2
    np.testing.assert_array_equal(source.frames_read(), expected_counts)
    reference = compensate(
        drifting_uint16, 0, batch_size=4, temporal_smoothing=temporal_smoothing
    )
    np.testing.assert_array_equal(sink.w, reference[1])


def test_zarr_input_matches_numpy(drifting_uint16, expected):
    stack = zarr.create_array(
        store=zarr.storage.MemoryStore(),
        shape=drifting_uint16.shape,
        chunks=(5, 80, 80),
        dtype=drifting_uint16.dtype,
    )
    stack[:] = drifting_uint16
    registered, w = compensate(stack, 0, batch_size=4)
    np.testing.assert_array_equal(w, expected[1])
    np.testing.assert_array_equal(registered, expected[0])


def test_memmap_input_matches_numpy(drifting_uint16, expected, tmp_path):
    path = tmp_path / 'stack.npy'
    np.save(path, drifting_uint16)
    stack = np.load(path, mmap_mode='r')
    registered, w = compensate(stack, 0, batch_size=4)
    np.testing.assert_array_equal(w, expected[1])
    np.testing.assert_array_equal(registered, expected[0])


def test_reads_are_one_batch_at_a_time(drifting_uint16, counting):
    source = counting(drifting_uint16)
    MotionSession(source, batch_size=6).run()
    assert source.reads == [(0, 1), (0, 6), (6, 12), (12, 18), (18, 24)]


@pytest.mark.parametrize('mode', ['r+', 'c'])
def test_unsaved_changes_to_a_memmap_survive(
    drifting_uint16, expected, tmp_path, mode
):
    """Releasing mapped pages after each batch must not lose writes."""
    path = tmp_path / 'stack.npy'
    np.save(path, np.zeros_like(drifting_uint16))
    stack = np.load(path, mmap_mode=mode)
    stack[:] = drifting_uint16  # changed in memory, not flushed
    registered, w = compensate(stack, 0, batch_size=4)
    np.testing.assert_array_equal(w, expected[1])
    np.testing.assert_array_equal(np.asarray(stack), drifting_uint16)
