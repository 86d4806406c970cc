"""Displacement from the reference and velocity, in px or physical units."""

import numpy as np
import pytest

from napari_flowscope.session import (
    FrameStats,
    MotionSession,
    MotionUnits,
    velocity_magnitude,
)


def test_displacement_and_velocity_stats_follow_the_flow(drifting_uint16):
    """Per-frame stats are the mean and max of |w_t| and |w_t - w_t-1|,
    also across batch boundaries (batch size 5 over 24 frames)."""
    sink = MotionSession(drifting_uint16, batch_size=5, n_threads=2).run()
    w = sink.w.astype(np.float64)
    displacement = np.hypot(w[..., 0], w[..., 1])
    step = np.diff(w, axis=0)
    velocity = np.hypot(step[..., 0], step[..., 1])
    stats = sink.stats
    np.testing.assert_allclose(
        stats.mean_displacement, displacement.mean(axis=(1, 2)), rtol=1e-4
    )
    np.testing.assert_allclose(
        stats.max_displacement, displacement.max(axis=(1, 2)), rtol=1e-5
    )
    assert np.isnan(stats.mean_velocity[0]) and np.isnan(stats.max_velocity[0])
    np.testing.assert_allclose(
        stats.mean_velocity[1:], velocity.mean(axis=(1, 2)), rtol=1e-4
    )
    np.testing.assert_allclose(
        stats.max_velocity[1:], velocity.max(axis=(1, 2)), rtol=1e-5
    )
    # drift accumulates in the displacement, not in the velocity
    assert stats.mean_displacement[-1] > 3 * np.nanmean(stats.mean_velocity)

    maps = velocity_magnitude(sink.w[5:10], previous=sink.w[4])
    np.testing.assert_allclose(maps, velocity[4:9], rtol=1e-5, atol=1e-6)
    assert np.isnan(velocity_magnitude(sink.w[:2])[0]).all()


@pytest.mark.parametrize(
    ('scale', 'units', 'displacement_unit', 'velocity_unit', 'factors'),
    [
        (None, None, 'px', 'px/frame', (1, 1)),
        ((2, 0.5, 0.5), ('s', 'um', 'um'), 'µm', 'µm/s', (0.5, 0.25)),
        (
            (0.1, 0.2, 0.2),
            ('second', 'micrometer', 'micrometer'),
            'µm',
            'µm/s',
            (0.2, 2.0),
        ),
        ((3, 0.5, 0.5), ('min', 'nm', 'nm'), 'nm', 'nm/min', (0.5, 0.5 / 3)),
        # no time unit: per frame; no length unit: px
        ((2, 0.5, 0.5), ('pixel', 'um', 'um'), 'µm', 'µm/frame', (0.5, 0.5)),
        ((2, 0.5, 0.5), ('s', 'pixel', 'pixel'), 'px', 'px/s', (1, 0.5)),
        # non-square pixels have no single pixel size
        ((2, 0.5, 0.4), ('s', 'um', 'um'), 'px', 'px/s', (1, 0.5)),
    ],
)
def test_units_from_scale(
    scale, units, displacement_unit, velocity_unit, factors
):
    motion_units = MotionUnits.from_scale(scale, units)
    assert motion_units.displacement_unit == displacement_unit
    assert motion_units.velocity_unit == velocity_unit
    np.testing.assert_allclose(
        motion_units.displacement([2.0]), 2 * factors[0]
    )
    np.testing.assert_allclose(motion_units.velocity([2.0]), 2 * factors[1])


def test_stats_table_columns_carry_units():
    values = np.arange(21, dtype=np.float32).reshape(7, 3)
    values[-1] = [0.9, 0.1, np.nan]  # trusted fractions
    stats = FrameStats(*values)
    table = MotionUnits().table(stats)
    assert list(table) == [
        'frame',
        'mean_displacement_px',
        'max_displacement_px',
        'mean_velocity_px_per_frame',
        'max_velocity_px_per_frame',
        'ncc_before',
        'ncc_after',
        'trusted_fraction',
        'collapsed',
    ]
    np.testing.assert_array_equal(
        table['max_velocity_px_per_frame'], [9, 10, 11]
    )
    np.testing.assert_array_equal(table['collapsed'], [0, 1, 0])


def test_volume_velocity_counts_z_as_a_distance():
    w = np.zeros((2, 3, 4, 5, 3), np.float32)
    w[1, ..., 2] = 1.0  # one voxel along z between the frames
    # z voxels twice the in-plane pixel size: 2 px
    velocity = velocity_magnitude(w, spacing=(2.0, 1.0, 1.0))
    assert velocity.shape == (2, 3, 4, 5)
    assert np.isnan(velocity[0]).all()
    np.testing.assert_allclose(velocity[1], 2.0)
