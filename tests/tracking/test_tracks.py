"""Tracks containers: summaries, CSV round trip, parameters."""

import numpy as np
import pytest

from napari_flowscope import track_features
from napari_flowscope.tracking import TrackingParams, Tracks
from napari_flowscope.tracking.intensity import (
    stack_intensity_range,
    to_uint8,
)


def known_tracks():
    # Track 7: (0, 0) -> (3, 4) -> (3, 4) and track 2: one point.
    data = np.array(
        [[7, 0, 0, 0], [7, 1, 3, 4], [7, 2, 3, 4], [2, 4, 10.5, 1.25]],
        np.float32,
    )
    features = {
        'speed': np.array([0, 5, 0, 0], np.float32),
        'fb_error': np.array([np.nan, 0.01, 0.02, np.nan], np.float32),
    }
    return Tracks._sorted(data, features)


def test_tracks_are_sorted_by_id_then_time_with_features_aligned():
    tracks = known_tracks()
    np.testing.assert_array_equal(tracks.data[:, 0], [2, 7, 7, 7])
    np.testing.assert_array_equal(tracks.data[:, 1], [4, 0, 1, 2])
    np.testing.assert_array_equal(tracks.features['speed'], [0, 0, 5, 0])
    np.testing.assert_array_equal(tracks.track_ids, [2, 7])


def test_summary_of_known_tracks():
    summary = known_tracks().summary()
    np.testing.assert_array_equal(summary.track_id, [2, 7])
    np.testing.assert_array_equal(summary.length, [1, 3])
    np.testing.assert_allclose(summary.mean_speed, [0, 2.5])
    np.testing.assert_allclose(summary.net_displacement, [0, 5])


def test_summary_matches_tracked_particles(moving_particles):
    stack, truth = moving_particles
    summary = track_features(stack, seeds=truth[0]).summary()
    true_net = np.linalg.norm(truth[-1] - truth[0], axis=1)
    np.testing.assert_allclose(summary.net_displacement, true_net, atol=0.1)
    true_speed = np.linalg.norm(np.diff(truth, axis=0), axis=2).mean(axis=0)
    np.testing.assert_allclose(summary.mean_speed, true_speed, atol=0.02)


def test_tracks_round_trip_through_csv(tmp_path, moving_particles):
    stack, truth = moving_particles
    tracks = track_features(stack[:8], seeds=truth[0])
    path = tracks.to_csv(tmp_path / 'tracks.csv')

    header = path.read_text().splitlines()[0]
    assert header == 'track_id,t,y,x,speed,fb_error,match'
    loaded = Tracks.from_csv(path)
    np.testing.assert_array_equal(loaded.data, tracks.data)
    assert loaded.data.dtype == np.float32
    assert list(loaded.features) == ['speed', 'fb_error', 'match']
    for name, values in tracks.features.items():
        np.testing.assert_array_equal(loaded.features[name], values)


def test_reading_a_csv_with_wrong_columns_fails(tmp_path):
    path = tmp_path / 'points.csv'
    path.write_text('t,y,x\n0,1,2\n')
    with pytest.raises(ValueError, match='track_id, t, y, x'):
        Tracks.from_csv(path)


def test_empty_tracks_round_trip(tmp_path):
    tracks = Tracks.from_steps([])
    loaded = Tracks.from_csv(tracks.to_csv(tmp_path / 'empty.csv'))
    assert loaded.data.shape == (0, 4)
    assert loaded.summary().track_id.shape == (0,)


def test_params_round_trip_and_validation():
    params = TrackingParams(mode='dense_flow', fb_threshold=None)
    assert TrackingParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match='mode'):
        TrackingParams(mode='farneback')
    with pytest.raises(ValueError, match='max_corners'):
        TrackingParams(max_corners=0)
    with pytest.raises(TypeError, match='unknown'):
        TrackingParams.from_dict({'window': 3})


def test_uint8_conversion_uses_one_robust_range_for_the_stack():
    stack = np.zeros((3, 100, 100), np.uint16)
    stack[:] = np.arange(100)[None, None, :] * 10  # 0 .. 990
    stack[1] += 100  # a brighter frame stays brighter
    stack[0, 0, 0] = 65535  # one hot pixel does not set the range
    low, high = stack_intensity_range(stack, (0.5, 99.9))
    assert high < 2000
    images = [to_uint8(frame, low, high) for frame in stack]
    assert images[1].mean() > images[0].mean() + 20
    assert images[0][0, 0] == 255 and images[0][5, 0] == 0
