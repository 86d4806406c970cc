"""Temporal smoothing of stacks."""

import numpy as np
import pytest

from napari_flowscope.engine import smooth_temporal
from napari_flowscope.engine.smoothing import NOTEBOOK_KERNEL, TEMPORAL_KERNEL


def impulse(length, at, frame_shape=(3, 2)):
    stack = np.zeros((length, *frame_shape), np.float32)
    stack[at] = 1
    return stack


def test_notebook_kernel_is_normalised_to_sum_to_one():
    assert NOTEBOOK_KERNEL == (0.036, 0.249, 0.431, 0.249, 0.036)
    np.testing.assert_allclose(
        TEMPORAL_KERNEL, np.array(NOTEBOOK_KERNEL) / 1.001, rtol=1e-6
    )
    assert TEMPORAL_KERNEL.sum() == pytest.approx(1.0, abs=1e-6)


def test_impulse_response_is_the_kernel():
    smoothed = smooth_temporal(impulse(9, 4))
    assert smoothed.dtype == np.float32
    np.testing.assert_allclose(smoothed[2:7, 0, 0], TEMPORAL_KERNEL, rtol=1e-6)
    assert not smoothed[[0, 1, 7, 8]].any()


def test_ends_are_reflected_without_repeating_the_edge_frame():
    # mirror: frame -1 is frame 1, so an impulse at t=1 is seen twice by t=0
    smoothed = smooth_temporal(impulse(6, 1))
    assert smoothed[0, 0, 0] == pytest.approx(2 * TEMPORAL_KERNEL[1])
    smoothed = smooth_temporal(impulse(6, 0))
    assert smoothed[0, 0, 0] == pytest.approx(TEMPORAL_KERNEL[2])


def test_constants_and_linear_trends_are_preserved():
    t = np.arange(12, dtype=np.float32)[:, None, None]
    ramp = np.broadcast_to(3 * t + 1, (12, 4, 5))
    smoothed = smooth_temporal(ramp)
    # symmetric kernel summing to 1: linear signals pass unchanged
    np.testing.assert_allclose(smoothed[2:-2], ramp[2:-2], rtol=1e-5)
    constant = np.full((5, 2, 2), 7, np.uint16)
    np.testing.assert_allclose(smooth_temporal(constant), 7.0)
    np.testing.assert_allclose(smooth_temporal(constant, sigma_t=2), 7.0)


def test_channel_axis_and_flow_stacks():
    stack = np.random.default_rng(0).random((7, 4, 5, 2)).astype(np.float32)
    smoothed = smooth_temporal(stack)
    assert smoothed.shape == stack.shape
    np.testing.assert_allclose(
        smoothed[..., 1], smooth_temporal(stack[..., 1]), rtol=1e-6
    )


def test_gaussian_sigma_t_matches_a_sampled_gaussian():
    sigma = 1.5
    smoothed = smooth_temporal(impulse(21, 10), sigma_t=sigma)[:, 0, 0]
    offsets = np.arange(21) - 10
    expected = np.exp(-(offsets**2) / (2 * sigma**2))
    expected /= expected.sum()
    np.testing.assert_allclose(smoothed, expected, atol=1e-4)
    assert smoothed.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize('sigma_t', [0, -1, float('nan')])
def test_invalid_sigma_t_raises(sigma_t):
    with pytest.raises(ValueError, match='sigma_t must be a positive'):
        smooth_temporal(np.zeros((4, 2, 2)), sigma_t=sigma_t)


def test_frames_without_time_axis_raise():
    with pytest.raises(ValueError, match=r'\(T, H, W\)'):
        smooth_temporal(np.zeros((4, 4)))


@pytest.mark.parametrize('length', [1, 2, 3])
def test_short_stacks_keep_constants_and_their_mean(length):
    stack = np.full((length, 2, 2), 5.0, np.float32)
    np.testing.assert_allclose(smooth_temporal(stack), 5.0, rtol=1e-6)
    stack[0] = 1
    # a convex combination of frames stays within their range
    smoothed = smooth_temporal(stack)
    assert smoothed.shape == stack.shape
    assert smoothed.min() >= 1 - 1e-6 and smoothed.max() <= 5 + 1e-6
