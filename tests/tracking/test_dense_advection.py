"""Points carried through dense flow fields with the session's convention."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from napari_flowscope import track_features
from napari_flowscope.synthetic import moving_disk, rotating_particles
from napari_flowscope.tracking import (
    TrackingParams,
    advect,
    sample_flow,
    to_reference,
)

DENSE = TrackingParams(mode='dense_flow')
CHAINED = TrackingParams(mode='dense_flow', flow_reference='previous')


def rotated(points, angle, centre):
    """``[y, x]`` points rotated by ``angle`` about ``centre`` (x, y)."""
    x = points[:, 1] - centre[0]
    y = points[:, 0] - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack(
        [centre[1] + sin * x + cos * y, centre[0] + cos * x - sin * y], axis=1
    )


def test_sample_flow_interpolates_bilinearly_in_row_column_order():
    w = np.zeros((4, 5, 2), np.float32)
    w[..., 0] = np.arange(5)  # dx grows along columns
    w[..., 1] = 10 * np.arange(4)[:, None]  # dy grows along rows
    sampled = sample_flow(w, np.array([[1.5, 2.25]]))
    np.testing.assert_allclose(sampled, [[15.0, 2.25]], atol=1e-6)


def test_advect_moves_reference_points_by_the_flow_and_back():
    # A point at reference position p is at p + w(p) in the frame.
    w = np.zeros((32, 32, 2), np.float32)
    w[..., 0], w[..., 1] = 1.5, -0.25
    points = np.array([[10.2, 12.7], [3.0, 30.0]], np.float32)
    np.testing.assert_allclose(
        advect(w, points), points + [-0.25, 1.5], atol=1e-6
    )
    y, x = np.mgrid[:32, :32].astype(np.float32)
    w[..., 0] = 0.05 * (y - 16)  # a shear: the inverse needs iterating
    moved = advect(w, points)
    np.testing.assert_allclose(to_reference(w, moved), points, atol=1e-4)


def test_dense_mode_follows_a_known_rotation_field():
    sequence = rotating_particles(n_frames=12, degrees_per_frame=4.0)
    size = sequence.stack.shape[1]
    centre = ((size - 1) / 2, (size - 1) / 2)
    angles = np.deg2rad(np.arange(0, 360, 120))
    start = np.stack(
        [centre[1] + 30 * np.sin(angles), centre[0] + 30 * np.cos(angles)],
        axis=1,
    )
    # One seed in the reference, one first seen in frame 5 (taken back to
    # the reference through the inverse of w_5), off the pixel grid.
    late = rotated(start[1:2] + 0.3, np.deg2rad(20), centre)
    seeds = np.concatenate([np.c_[0, start[:1]], np.c_[5, late]]).astype(
        np.float32
    )
    tracks = track_features(
        sequence.stack, seeds=seeds, flow=sequence.flow, params=DENSE
    )

    rows0 = tracks.data[tracks.data[:, 0] == 0]
    np.testing.assert_array_equal(rows0[:, 1], np.arange(12))
    expected = np.concatenate(
        [rotated(start[:1], np.deg2rad(4 * t), centre) for t in range(12)]
    )
    # The rotation field is affine, so bilinear sampling is exact.
    np.testing.assert_allclose(rows0[:, 2:], expected, atol=1e-3)

    rows1 = tracks.data[tracks.data[:, 0] == 1]
    np.testing.assert_array_equal(rows1[:, 1], np.arange(5, 12))
    np.testing.assert_array_equal(rows1[0, 2:], seeds[1, 1:])
    expected = np.concatenate(
        [
            rotated(start[1:2] + 0.3, np.deg2rad(4 * t), centre)
            for t in range(5, 12)
        ]
    )
    np.testing.assert_allclose(rows1[:, 2:], expected, atol=1e-3)
    assert np.isnan(tracks.features['fb_error']).all()
    np.testing.assert_allclose(
        tracks.features['speed'][1:12],
        2 * 30 * np.sin(np.deg2rad(2)),
        atol=1e-3,
    )


def test_dense_mode_accepts_flow_in_batches():
    sequence = rotating_particles(n_frames=7)
    seeds = [[63.5, 93.5]]
    whole = track_features(
        sequence.stack, seeds=seeds, flow=sequence.flow, params=DENSE
    )
    chunks = [sequence.flow[:3], sequence.flow[3:]]
    batches = [SimpleNamespace(w=chunk) for chunk in chunks]
    for flow in (iter(chunks), iter(batches)):
        tracks = track_features(
            sequence.stack, seeds=seeds, flow=flow, params=DENSE
        )
        np.testing.assert_array_equal(tracks.data, whole.data)


def test_dense_mode_leaves_points_that_move_out_of_the_frame():
    stack = np.zeros((4, 16, 16), np.float32)
    flow = np.zeros((4, 16, 16, 2), np.float32)
    flow[..., 0] = np.arange(4)[:, None, None] * 3.0  # 3 px/frame in x
    tracks = track_features(stack, seeds=[[8.0, 8.0]], flow=flow, params=DENSE)
    np.testing.assert_allclose(tracks.data[:, 3], [8, 11, 14])


def test_dense_mode_rejects_short_or_misshapen_flow():
    sequence = rotating_particles(n_frames=4)
    with pytest.raises(ValueError, match='no field for frame 3'):
        track_features(
            sequence.stack,
            seeds=[[63.5, 93.5]],
            flow=sequence.flow[:3],
            params=DENSE,
        )
    with pytest.raises(ValueError, match=r'\(Y, X, 2\)'):
        track_features(
            sequence.stack,
            seeds=[[63.5, 93.5]],
            flow=sequence.flow[:, :64],
            params=DENSE,
        )


def test_dense_mode_computes_the_flow_with_a_session():
    # A disk moving 1 px/frame diagonally; its centre is tracked through the
    # flow the session measures against frame 0.
    sequence = moving_disk(n_frames=8)
    centre = np.argwhere(sequence.stack[0] > 0.5).mean(axis=0)
    tracks = track_features(sequence.stack, seeds=[centre], params=DENSE)
    truth = centre + np.arange(8)[:, None] * [1.0, 1.0]
    np.testing.assert_array_equal(tracks.data[:, 1], np.arange(8))
    assert np.abs(tracks.data[:, 2:] - truth).max() < 0.3


def test_chained_mode_steps_through_consecutive_flows():
    # Between consecutive frames the rotation field is always flow[1].
    sequence = rotating_particles(n_frames=12, degrees_per_frame=4.0)
    size = sequence.stack.shape[1]
    centre = ((size - 1) / 2, (size - 1) / 2)
    steps = np.broadcast_to(sequence.flow[1], sequence.flow.shape)
    seed = np.array([[63.5 + 0.3, 93.5 - 0.2]])
    # Without drift correction the flow alone moves the point.
    tracks = track_features(
        sequence.stack,
        seeds=seed,
        flow=steps,
        params=replace(CHAINED, drift_correction='off'),
    )
    expected = np.concatenate(
        [rotated(seed, np.deg2rad(4 * t), centre) for t in range(12)]
    )
    np.testing.assert_allclose(tracks.data[:, 2:], expected, atol=1e-3)


def test_chained_mode_estimates_consecutive_flows():
    sequence = moving_disk(n_frames=8)
    centre = np.argwhere(sequence.stack[0] > 0.5).mean(axis=0)
    tracks = track_features(sequence.stack, seeds=[centre], params=CHAINED)
    truth = centre + np.arange(8)[:, None] * [1.0, 1.0]
    assert np.abs(tracks.data[:, 2:] - truth).max() < 0.3
