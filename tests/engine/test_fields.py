"""Flow-derived fields and decimation to napari vector grids."""

import numpy as np
import pytest

from napari_flowscope.engine import (
    VectorGrid,
    curl,
    decimate_flow,
    divergence,
    flow_to_row_col,
    speed,
)


def analytic(shape, u, v):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return np.stack([u(x, y), v(x, y)], axis=-1).astype(np.float32)


def test_speed_is_the_vector_length():
    w = np.broadcast_to(np.float32([3, -4]), (5, 6, 2))
    result = speed(w)
    assert result.shape == (5, 6) and result.dtype == np.float32
    np.testing.assert_allclose(result, 5.0)


def test_expansion_has_divergence_2_and_no_curl():
    w = analytic((12, 9), lambda x, y: x, lambda x, y: y)
    np.testing.assert_allclose(divergence(w), 2.0, atol=1e-6)
    np.testing.assert_allclose(curl(w), 0.0, atol=1e-6)


def test_rotation_has_curl_2_and_no_divergence():
    # w = (-y, x): rotation from +x towards +y
    w = analytic((12, 9), lambda x, y: -y, lambda x, y: x)
    np.testing.assert_allclose(curl(w), 2.0, atol=1e-6)
    np.testing.assert_allclose(divergence(w), 0.0, atol=1e-6)


def test_shear_components_separate_axes():
    # u = 3 y: du/dy = 3 enters curl only, with a minus sign
    w = analytic((10, 10), lambda x, y: 3 * y, lambda x, y: 0 * x)
    np.testing.assert_allclose(curl(w), -3.0, atol=1e-6)
    np.testing.assert_allclose(divergence(w), 0.0, atol=1e-6)


def test_stacks_are_handled_frame_by_frame():
    frame = analytic((8, 7), lambda x, y: 0.5 * x, lambda x, y: 0.25 * y)
    stack = np.stack([frame, 2 * frame, 0 * frame])
    result = divergence(stack)
    assert result.shape == (3, 8, 7) and result.dtype == np.float32
    np.testing.assert_allclose(result[:, 3, 3], [0.75, 1.5, 0.0], atol=1e-6)
    assert speed(stack).shape == (3, 8, 7)


def test_flow_to_row_col_swaps_components():
    w = np.zeros((2, 4, 5, 2), np.float64)
    w[..., 0], w[..., 1] = 1.0, -2.0  # x, y
    row_col = flow_to_row_col(w)
    assert row_col.shape == w.shape and row_col.dtype == np.float32
    np.testing.assert_array_equal(row_col[..., 0], -2.0)  # dy
    np.testing.assert_array_equal(row_col[..., 1], 1.0)  # dx
    assert row_col.flags['C_CONTIGUOUS']


@pytest.mark.parametrize(
    'function', [speed, divergence, curl, flow_to_row_col]
)
def test_wrong_component_count_raises(function):
    # (..., 3) is a volume's flow for flow_to_row_col: 4 is wrong for all
    with pytest.raises(ValueError, match=r'\(\.\.\., '):
        function(np.zeros((4, 4, 4)))


def test_decimation_uses_the_opencv_draw_flow_grid():
    w = analytic((10, 13), lambda x, y: x, lambda x, y: 100 + y)
    grid = decimate_flow(w, step=4)
    assert isinstance(grid, VectorGrid)
    rows, cols = [2, 6], [2, 6, 10]
    expected = np.array([(r, c) for r in rows for c in cols], np.float32)
    np.testing.assert_array_equal(grid.positions, expected)
    # displacement is [dy, dx] = [100 + y, x] at each grid point
    np.testing.assert_array_equal(
        grid.displacements, np.stack([100 + expected[:, 0], expected[:, 1]], 1)
    )
    np.testing.assert_allclose(
        grid.speed, np.hypot(100 + expected[:, 0], expected[:, 1])
    )
    assert grid.positions.dtype == grid.displacements.dtype == np.float32


def test_cell_averaging_gives_the_cell_mean():
    w = analytic((8, 12), lambda x, y: x, lambda x, y: 2 * y)
    grid = decimate_flow(w, step=4, average=True)
    # cells [0, 4) and [4, 8) have mean coordinate 1.5 and 5.5
    np.testing.assert_allclose(grid.displacements[:, 1], [1.5, 5.5, 9.5] * 2)
    np.testing.assert_allclose(
        grid.displacements[:, 0], [3.0] * 3 + [11.0] * 3
    )


def test_partial_edge_cells_average_only_their_pixels():
    w = analytic((7, 7), lambda x, y: x, lambda x, y: 0 * y)
    grid = decimate_flow(w, step=4, average=True)
    # grid points at 2 and 6; the second cell holds only x = 4, 5, 6
    np.testing.assert_allclose(grid.positions[:, 1], [2, 6, 2, 6])
    np.testing.assert_allclose(
        grid.displacements[:, 1], [1.5, 5.0] * 2, rtol=1e-6
    )


def test_masks_by_reliability_intensity_and_speed():
    shape = (8, 8)
    w = analytic(shape, lambda x, y: 0 * x + 1, lambda x, y: 0 * y)
    w[:4, 4:] = 0.1  # slow top-right quadrant
    reliability = np.ones(shape, np.float32)
    reliability[4:, :4] = 0  # unreliable bottom-left
    image = np.ones(shape, np.float32)
    image[4:, 4:] = -1  # dark bottom-right
    grid = decimate_flow(
        w,
        step=4,
        reliability=reliability,
        reliability_threshold=0.5,
        image=image,
        intensity_percentile=50,
        min_speed=0.5,
    )
    np.testing.assert_array_equal(grid.positions, [[2, 2]])
    everything = decimate_flow(w, step=4)
    assert len(everything.positions) == 4


def test_decimation_arguments_are_validated():
    w = np.zeros((8, 8, 2), np.float32)
    with pytest.raises(ValueError, match='step must be an integer >= 1'):
        decimate_flow(w, step=0)
    with pytest.raises(ValueError, match='reliability must have shape'):
        decimate_flow(w, step=2, reliability=np.ones((4, 4)))
    with pytest.raises(ValueError, match='needs an image'):
        decimate_flow(w, step=2, intensity_percentile=10)
    with pytest.raises(ValueError, match=r'w must have shape \(H, W, 2\)'):
        decimate_flow(np.zeros((2, 8, 8, 2)), step=2)
