"""Noise measurement and noise-adaptive averaging of Lucas-Kanade flow."""

import numpy as np
import pytest

from napari_flowscope.engine._averaging import AdaptiveAverage
from napari_flowscope.engine.lucas_kanade import residual_noise

SHAPE = (128, 160)


def test_residual_noise_is_the_noise_of_one_frame():
    rng = np.random.default_rng(0)
    # the difference of two frames, each with noise 0.3
    residual = rng.normal(0, 0.3 * np.sqrt(2), SHAPE).astype(np.float32)
    residual[:, :20] = 0  # samples outside the frame do not count
    assert residual_noise(residual) == pytest.approx(0.3, rel=0.05)
    assert residual_noise(np.zeros(SHAPE, np.float32)) == 0


def test_noisy_frames_average_smooth_motion_widely():
    rng = np.random.default_rng(1)
    truth = np.broadcast_to(np.float32([1.5, -0.5]), (*SHAPE, 2))
    noisy = truth + rng.normal(0, 0.3, (*SHAPE, 2)).astype(np.float32)
    average = AdaptiveAverage(np.ones(SHAPE, np.float32), 4.0)
    inner = np.s_[16:-16, 16:-16]

    narrow = np.abs(average(noisy, 0.0) - truth)[inner].mean()
    adaptive = np.abs(average(noisy, 0.5) - truth)[inner].mean()

    assert adaptive < narrow / 2


def test_clean_frames_keep_a_motion_boundary():
    w = np.zeros((*SHAPE, 2), np.float32)
    w[:, SHAPE[1] // 2 :, 0] = 2.0
    average = AdaptiveAverage(np.ones(SHAPE, np.float32), 4.0)

    result = average(w, 0.02)

    # 12 px from the boundary the flow is the same as without averaging
    np.testing.assert_allclose(result[:, : SHAPE[1] // 2 - 12], 0, atol=0.02)
    np.testing.assert_allclose(
        result[:, SHAPE[1] // 2 + 12 :, 0], 2, atol=0.02
    )


def test_untextured_regions_take_the_flow_around_them():
    weights = np.ones(SHAPE, np.float32)
    weights[40:90, 50:110] = 0  # no texture: its own estimates are junk
    w = np.broadcast_to(np.float32([0.7, 0.2]), (*SHAPE, 2)).copy()
    w[40:90, 50:110] = 9.0
    result = AdaptiveAverage(weights, 4.0)(w, 0.1)
    hole = result[50:80, 60:100].reshape(-1, 2)
    np.testing.assert_allclose(hole.min(axis=0), [0.7, 0.2], atol=0.01)
    np.testing.assert_allclose(hole.max(axis=0), [0.7, 0.2], atol=0.01)
