"""Per-ROI motion statistics against flow fields with known values."""

import numpy as np
import pytest

from napari_flowscope.roi import (
    RoiMotion,
    read_roi_csv,
    roi_masks,
    roi_motion,
    roi_motion_xy,
    shape_mask,
    write_roi_csv,
)

FRAME_SHAPE = (40, 50)


def linear_flow(n_frames=3):
    """w[t, y, x] = ((t + 1) * x / 10, -(t + 1) * y / 20): values known."""
    rows, cols = np.mgrid[: FRAME_SHAPE[0], : FRAME_SHAPE[1]]
    gain = np.arange(1, n_frames + 1, dtype=np.float32)[:, None, None]
    u = gain * cols / 10
    v = -gain * rows / 20
    return np.stack([u, v], axis=-1).astype(np.float32)


def test_rectangle_gives_exact_mean_displacement_and_its_length():
    w = linear_flow()
    # Corners on pixel centres: rows 10..20 and columns 5..15 inclusive.
    rectangle = np.array([[10, 5], [10, 15], [20, 15], [20, 5]])
    motion = roi_motion(w, roi_masks([rectangle], ['rectangle'], FRAME_SHAPE))

    gain = np.array([1, 2, 3])
    np.testing.assert_allclose(motion.dx[:, 0], gain * 10 / 10, rtol=1e-6)
    np.testing.assert_allclose(motion.dy[:, 0], -gain * 15 / 20, rtol=1e-6)
    rows, cols = np.mgrid[10:21, 5:16]
    expected_displacement = [
        np.mean(np.hypot(g * cols / 10, g * rows / 20)) for g in gain
    ]
    np.testing.assert_allclose(
        motion.displacement[:, 0], expected_displacement, rtol=1e-6
    )
    assert motion.dx.dtype == np.float32
    assert motion.dx.shape == (3, 1)


def test_triangle_polygon_covers_the_expected_pixels():
    # Right triangle with legs of 10 px: pixel centres with y + x <= 10.
    triangle = np.array([[0, 0], [0, 10], [10, 0]])
    mask = shape_mask(triangle, 'polygon', FRAME_SHAPE)
    rows, cols = np.nonzero(mask)
    assert mask.sum() == 66
    assert np.all(rows + cols <= 10)

    w = linear_flow(1)
    motion = roi_motion(w, mask[None])
    np.testing.assert_allclose(motion.dx[0, 0], cols.mean() / 10, rtol=1e-6)
    np.testing.assert_allclose(motion.dy[0, 0], -rows.mean() / 20, rtol=1e-6)


def test_ellipse_is_the_inscribed_disk_and_ignores_time_coordinate():
    # A (t, y, x) Shapes vertex array: the t column must not matter.
    box = np.array([[7, 15, 20], [7, 15, 30], [7, 25, 30], [7, 25, 20]])
    mask = shape_mask(box, 'ellipse', FRAME_SHAPE)
    rows, cols = np.mgrid[: FRAME_SHAPE[0], : FRAME_SHAPE[1]]
    expected = (rows - 20) ** 2 + (cols - 25) ** 2 <= 25
    np.testing.assert_array_equal(mask, expected)


def test_rotated_ellipse_matches_its_equation():
    # Bounding box of an ellipse rotated by 45 degrees: semi-axes 6 and 3.
    centre = np.array([20.0, 25.0])
    a = 6 * np.array([1, 1]) / np.sqrt(2)
    b = 3 * np.array([-1, 1]) / np.sqrt(2)
    box = np.array([centre - a - b, centre + a - b, centre + a + b])
    box = np.vstack([box, centre - a + b])
    mask = shape_mask(box, 'ellipse', FRAME_SHAPE)
    offset = np.stack(np.mgrid[: FRAME_SHAPE[0], : FRAME_SHAPE[1]], -1)
    offset = offset - centre
    along_a = offset @ a / 36
    along_b = offset @ b / 9
    np.testing.assert_array_equal(mask, along_a**2 + along_b**2 <= 1)
    assert mask.sum() == pytest.approx(np.pi * 18, rel=0.1)


def test_component_views_give_the_same_curves_as_the_flow():
    w = linear_flow()
    masks = roi_masks(
        [np.array([[3, 4], [3, 30], [25, 30], [25, 4]])],
        ['rectangle'],
        FRAME_SHAPE,
    )
    from_w = roi_motion(w, masks)
    from_views = roi_motion_xy(w[..., 0], w[..., 1], masks)
    for name in ('dx', 'dy', 'displacement'):
        np.testing.assert_array_equal(
            getattr(from_views, name), getattr(from_w, name)
        )


def test_region_outside_the_frame_gives_nan():
    outside = np.array([[100, 100], [100, 120], [120, 120], [120, 100]])
    motion = roi_motion(
        linear_flow(2), roi_masks([outside], ['rectangle'], FRAME_SHAPE)
    )
    assert np.isnan(motion.dx).all()
    assert np.isnan(motion.displacement).all()


def test_shapes_without_area_are_refused():
    with pytest.raises(ValueError, match='area'):
        shape_mask(np.array([[0, 0], [10, 10]]), 'line', FRAME_SHAPE)


def test_mismatched_masks_are_refused():
    with pytest.raises(ValueError, match='do not match'):
        roi_motion(linear_flow(1), np.ones((1, 10, 10), dtype=bool))


def test_csv_round_trip_keeps_values_and_skips_missing_frames(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 3, 2)).astype(np.float32)  # (T, R, 2)
    values[1, 0] = np.nan  # frame 1 of roi 'a' not computed yet
    motion = RoiMotion(
        dx=values[..., 0],
        dy=values[..., 1],
        displacement=np.abs(values[..., 0]),
    )
    times = np.array([0.0, 0.5, 1.0, 1.5])
    path = write_roi_csv(
        tmp_path / 'rois.csv', motion, times=times, names=['a', 'b', 'c']
    )
    table = read_roi_csv(path)

    assert list(table['roi']) == ['a'] * 3 + ['b'] * 4 + ['c'] * 4
    assert list(table['frame']) == [0, 2, 3] + [0, 1, 2, 3] * 2
    by_roi = values.transpose(1, 0, 2)
    keep = ~np.isnan(by_roi[..., 0])
    np.testing.assert_array_equal(table['dx'], by_roi[..., 0][keep])
    np.testing.assert_array_equal(table['dy'], by_roi[..., 1][keep])
    np.testing.assert_array_equal(
        table['displacement'], np.abs(by_roi[..., 0][keep])
    )
    np.testing.assert_array_equal(table['time'], times[table['frame']])
