"""The coarse-to-fine driver: level shapes, flow resampling, init scaling."""

import numpy as np
import pytest

from napari_flowscope.engine.pyramid import (
    build_pyramid,
    coarse_to_fine,
    downsample_flow,
    upsample_flow,
)


def test_pyramid_shapes_halve_with_odd_sizes_rounded_up():
    image = np.zeros((101, 67), np.float32)
    shapes = [level.shape for level in build_pyramid(image, 4)]
    assert shapes == [(101, 67), (51, 34), (26, 17), (13, 9)]


@pytest.mark.parametrize('fine_shape', [(40, 30), (41, 31), (40, 31)])
def test_upsampling_a_linear_field_is_exact_and_doubles_it(fine_shape):
    coarse_shape = ((fine_shape[0] + 1) // 2, (fine_shape[1] + 1) // 2)
    y, x = np.mgrid[0 : coarse_shape[0], 0 : coarse_shape[1]]
    coarse = np.dstack([0.1 * x + 0.5, -0.05 * y + 0.02 * x]).astype(
        np.float32
    )
    fine = upsample_flow(coarse, fine_shape)
    assert fine.shape == (*fine_shape, 2) and fine.dtype == np.float32
    # fine pixel p sits at coarse position p / 2; values double
    fy, fx = np.mgrid[0 : fine_shape[0], 0 : fine_shape[1]] / 2.0
    expected = 2 * np.dstack([0.1 * fx + 0.5, -0.05 * fy + 0.02 * fx])
    interior = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(fine[interior], expected[interior], atol=1e-5)


def test_upsampling_a_constant_field_doubles_it_everywhere():
    coarse = np.broadcast_to(np.float32([1.5, -0.25]), (9, 7, 2)).copy()
    fine = upsample_flow(coarse, (17, 13))
    np.testing.assert_allclose(fine, np.broadcast_to([3.0, -0.5], fine.shape))


def test_downsampling_divides_by_the_level_scale():
    w = np.broadcast_to(np.float32([8.0, -4.0]), (64, 48, 2))
    coarse = downsample_flow(w, (16, 12), 2)
    assert coarse.shape == (16, 12, 2)
    np.testing.assert_allclose(
        coarse, np.broadcast_to([2.0, -1.0], (16, 12, 2))
    )
    same = downsample_flow(w, (64, 48), 0)
    np.testing.assert_array_equal(same, w)
    assert same is not w


def test_coarse_to_fine_visits_levels_coarse_first_with_scaled_init():
    shapes = [(40, 30), (20, 15), (10, 8)]
    seen = []

    def solve_level(level, w):
        seen.append((level, w.shape, w[..., 0].mean(), w[..., 1].mean()))
        return w

    init = np.broadcast_to(np.float32([8.0, -4.0]), (40, 30, 2))
    w = coarse_to_fine(shapes, solve_level, init=init)
    assert [entry[:2] for entry in seen] == [
        (2, (10, 8, 2)),
        (1, (20, 15, 2)),
        (0, (40, 30, 2)),
    ]
    np.testing.assert_allclose(
        [entry[2:] for entry in seen], [(2.0, -1.0), (4.0, -2.0), (8.0, -4.0)]
    )
    np.testing.assert_allclose(w, init, rtol=1e-6)
