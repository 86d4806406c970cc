"""Pyramidal Lucas-Kanade tracking of particles with known trajectories."""

import numpy as np
import pytest

from napari_flowscope import track_features
from napari_flowscope.tracking import TrackingParams, Tracks, iter_tracks


def positions_of(tracks, track_id):
    """``(t, [y, x])`` of one track, sorted by time."""
    rows = tracks.data[tracks.data[:, 0] == track_id]
    return rows[:, 1].astype(int), rows[:, 2:].astype(np.float64)


def test_seeded_particles_are_tracked_within_a_tenth_of_a_pixel(
    moving_particles,
):
    stack, truth = moving_particles
    tracks = track_features(stack, seeds=truth[0])

    np.testing.assert_array_equal(tracks.track_ids, [0, 1])
    for track_id in (0, 1):
        times, positions = positions_of(tracks, track_id)
        np.testing.assert_array_equal(times, np.arange(20))
        error = np.linalg.norm(positions - truth[:, track_id], axis=1)
        assert error.max() < 0.1, error
    true_speed = np.linalg.norm(np.diff(truth, axis=0), axis=2)
    speed = tracks.features['speed'].reshape(2, 20)
    np.testing.assert_allclose(speed[:, 1:], true_speed.T, atol=0.1)
    np.testing.assert_array_equal(speed[:, 0], 0)


def test_detected_corners_follow_the_true_displacement(moving_particles):
    stack, truth = moving_particles
    tracks = track_features(stack, params=TrackingParams(min_distance=5))

    assert len(tracks.track_ids) == 2
    for track_id in tracks.track_ids:
        times, positions = positions_of(tracks, track_id)
        np.testing.assert_array_equal(times, np.arange(20))
        # Corners are found at integer pixels near the spot centres.
        nearest = np.argmin(np.linalg.norm(truth[0] - positions[0], axis=1))
        assert np.linalg.norm(truth[0, nearest] - positions[0]) < 1
        moved = positions - positions[0]
        true_moved = truth[:, nearest] - truth[0, nearest]
        assert np.abs(moved - true_moved).max() < 0.1


def test_tracks_start_exactly_at_the_seeds(moving_particles):
    stack, truth = moving_particles
    seeds = np.array([[0, *truth[0, 0]], [5, *truth[5, 1]]], dtype=np.float32)
    tracks = track_features(stack, seeds=seeds)

    for track_id, (t, y, x) in enumerate(seeds):
        times, positions = positions_of(tracks, track_id)
        assert times[0] == t
        np.testing.assert_array_equal(times, np.arange(t, 20))
        np.testing.assert_array_equal(positions[0], np.float32([y, x]))
    assert np.isnan(tracks.features['fb_error'][tracks.data[:, 1] == 0][0])


def test_seeds_without_time_start_in_the_first_frame(moving_particles):
    stack, truth = moving_particles
    seed = truth[0, :1].astype(np.float32)
    tracks = track_features(stack[:3], seeds=seed)

    np.testing.assert_array_equal(tracks.data[0], [0, 0, *seed[0]])


def a_particle_vanishes_beside_a_neighbour(make_frame):
    """Particle A sits at (40, 40) for 5 frames, then vanishes; its
    neighbour B, 7 px away at (40, 47), and a far particle stay."""
    shape = (96, 128)
    neighbour, far = (40, 47, 2.0, 200.0), (70, 100, 2.0, 200.0)
    before = make_frame(shape, [(40, 40, 2.0, 200.0), neighbour, far])
    after = make_frame(shape, [neighbour, far])
    return np.stack([before] * 5 + [after] * 3)


def test_forward_backward_check_drops_a_point_that_jumps(make_frame):
    stack = a_particle_vanishes_beside_a_neighbour(make_frame)
    seeds = [[40.0, 40.0], [70.0, 100.0]]

    unchecked = track_features(
        stack, seeds=seeds, params=TrackingParams(fb_threshold=None)
    )
    times, positions = positions_of(unchecked, 0)
    # Without the check, A latches onto its neighbour...
    np.testing.assert_array_equal(times, np.arange(8))
    assert np.linalg.norm(positions[5] - [40, 40]) > 5

    checked = track_features(
        stack, seeds=seeds, params=TrackingParams(fb_threshold=1.0)
    )
    times, positions = positions_of(checked, 0)
    # ...with it, A's track ends in the last frame A was really there:
    # tracked back, the neighbour stays put, 5+ px from where A started.
    np.testing.assert_array_equal(times, np.arange(5))
    np.testing.assert_allclose(positions, 40, atol=0.01)
    # The far particle is unaffected and its round trips are tiny.
    times, _ = positions_of(checked, 1)
    np.testing.assert_array_equal(times, np.arange(8))
    fb_error = checked.features['fb_error'][checked.data[:, 1] > 0]
    assert np.nanmax(fb_error) < 0.05


def test_redetection_replaces_lost_points(make_frame):
    shape = (96, 128)
    keeper = (70, 100, 2.0, 200.0)
    lost = (30, 30, 2.0, 200.0)
    newcomer = (30, 90, 2.0, 200.0)
    stack = np.stack(
        [make_frame(shape, [keeper, lost])] * 4
        + [make_frame(shape, [keeper, newcomer])] * 6
    )
    params = TrackingParams(max_corners=2, min_distance=5)

    without = track_features(stack, params=params)
    assert len(without.track_ids) == 2
    assert without.data[:, 1][without.data[:, 0] == 1].max() < 4

    tracks = track_features(
        stack,
        params=TrackingParams(max_corners=2, min_distance=5, redetect_every=3),
    )
    np.testing.assert_array_equal(tracks.track_ids, [0, 1, 2])
    # The keeper is followed throughout and never detected twice (min
    # distance to live points); the lost particle's track ends; the
    # newcomer gets a fresh id at the first re-detection after it appears.
    by_start = {}
    for track_id in tracks.track_ids:
        times, positions = positions_of(tracks, track_id)
        by_start[track_id] = (times, positions)
    keeper_id = next(
        i for i, (_, p) in by_start.items() if np.allclose(p[0], (70, 100))
    )
    np.testing.assert_array_equal(by_start[keeper_id][0], np.arange(10))
    times, positions = by_start[2]
    np.testing.assert_array_equal(times, np.arange(6, 10))
    np.testing.assert_allclose(positions, [[30, 90]] * 4, atol=0.05)
    lost_id = ({0, 1} - {keeper_id}).pop()
    assert by_start[lost_id][0].max() < 4


def test_detection_is_limited_to_the_mask(make_frame):
    shape = (96, 128)
    stack = np.stack(
        [make_frame(shape, [(30, 30, 2.0, 200.0), (60, 90, 2.0, 40.0)])] * 3
    )
    everywhere = track_features(stack, params=TrackingParams(min_distance=5))
    assert len(everywhere.track_ids) == 2

    mask = np.zeros(shape, bool)
    mask[40:80, 70:110] = True
    inside = track_features(
        stack, mask=mask, params=TrackingParams(min_distance=5)
    )
    np.testing.assert_allclose(inside.data[:, 2:], [[60, 90]] * 3, atol=0.05)

    bright = track_features(
        stack,
        params=TrackingParams(min_distance=5, mask_percentile=99.8),
    )
    np.testing.assert_allclose(bright.data[:, 2:], [[30, 30]] * 3, atol=0.05)


def test_16_bit_stack_with_a_hot_pixel_tracks_alike(moving_particles):
    stack, truth = moving_particles
    stack16 = (stack * 20).astype(np.uint16)
    stack16[:, 5, 5] = 65535
    tracks = track_features(stack16, seeds=truth[0])

    for track_id in (0, 1):
        _, positions = positions_of(tracks, track_id)
        error = np.linalg.norm(positions - truth[:, track_id], axis=1)
        assert error.max() < 0.1


def test_iter_tracks_streams_one_step_per_frame(moving_particles):
    stack, truth = moving_particles
    steps = list(iter_tracks(stack[:6], seeds=truth[0]))

    assert [step.t for step in steps] == list(range(6))
    for step in steps:
        np.testing.assert_array_equal(step.track_ids, [0, 1])
        np.testing.assert_array_equal(step.data[:, 1], step.t)
    assembled = Tracks.from_steps(steps)
    np.testing.assert_array_equal(
        assembled.data, track_features(stack[:6], seeds=truth[0]).data
    )


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'seeds': [[0, 200.0, 10.0]]}, 'inside'),
        ({'seeds': [[9, 20.0, 10.0]]}, 'seed times'),
        ({'seeds': [[1.0, 2.0, 3.0, 4.0]]}, r'\(N, 2\)'),
        ({'mask': np.ones((5, 5), bool)}, 'mask must be'),
        ({'mask': np.ones((2, 96, 128), bool)}, 'mask must be'),
    ],
)
def test_bad_inputs_are_rejected(moving_particles, kwargs, message):
    stack, _ = moving_particles
    with pytest.raises(ValueError, match=message):
        track_features(stack[:3], **kwargs)


def test_a_stack_must_be_three_dimensional():
    with pytest.raises(ValueError, match=r'\(T, Y, X\)'):
        track_features(np.zeros((32, 32), np.float32))
