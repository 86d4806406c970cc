"""Output layers of volume runs: vectors (N, 2, 4) and roles per frame
dimensionality."""

import numpy as np

from napari_flowscope._qt.layers import (
    MAX_VECTORS,
    SPECS,
    FieldMap,
    FrameFields,
    VectorStyle,
    frame_vectors,
    output_limits,
)


def test_volume_vectors_start_in_the_volume_and_stay_few():
    w = np.zeros((1, 1, 1, 3), np.float32)
    w[..., :] = (1.0, 2.0, 0.5)
    huge = np.broadcast_to(w, (200, 512, 512, 3))  # no memory behind it
    data, lengths = frame_vectors(
        huge, 7, style=VectorStyle(step=2), spacing=(2.0, 1.0, 1.0)
    )
    assert data.shape[1:] == (2, 4)
    assert 0 < len(data) <= MAX_VECTORS
    assert (data[:, 0, 0] == 7).all() and (data[:, 1, 0] == 0).all()
    np.testing.assert_array_equal(data[0, 1, 1:], [0.5, 2.0, 1.0])
    np.testing.assert_allclose(lengths, np.sqrt(1 + 4 + 1))


def test_speed_heatmap_and_limits_of_a_volume_count_z_physically():
    w = np.zeros((2, 4, 8, 8, 3), np.float32)
    w[..., 2] = 1.0  # one plane, 3 px deep
    fields = FrameFields(
        w, np.ones(w.shape[:-1], np.float32), spacing=(3.0, 1.0, 1.0)
    )

    class Sink:  # what a MemorySink of a volume run offers
        reliability = fields.reliability
        spacing = (3.0, 1.0, 1.0)

    Sink.w = w
    speed = FieldMap(SPECS['displacement'].values, w.shape[:-1], Sink)
    np.testing.assert_allclose(speed[1], 3.0)
    vz = FieldMap(SPECS['vz'].values, w.shape[:-1], Sink)
    np.testing.assert_array_equal(vz[0], 1.0)
    limits = output_limits(fields, ['displacement', 'vz'])
    assert limits['displacement'] == (0.0, 5.0) and limits['vz'] == (-5.0, 5.0)
