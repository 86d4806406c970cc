"""Gaussian particles on known trajectories, rendered analytically."""

import numpy as np
import pytest


def render_spots(shape, spots, *, background=10.0):
    """One float32 frame of Gaussian spots ``(y, x, sigma, amplitude)``.

    Each spot is ``amplitude * exp(-r**2 / (2 sigma**2))`` evaluated at the
    pixel centres, so sub-pixel positions are exact.
    """
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    frame = np.full(shape, background, np.float32)
    for cy, cx, sigma, amplitude in spots:
        r2 = (y - cy) ** 2 + (x - cx) ** 2
        frame += amplitude * np.exp(-r2 / (2 * sigma**2))
    return frame


def spots_stack(shape, trajectories, *, sigma=2.0, amplitude=200.0):
    """Stack (T, Y, X) of spots at ``trajectories`` (T, N, 2) ``[y, x]``."""
    return np.stack(
        [
            render_spots(shape, [(*c, sigma, amplitude) for c in centres])
            for centres in trajectories
        ]
    )


@pytest.fixture
def moving_particles():
    """A particle on a straight line and one on a circle, 20 frames.

    Returns ``(stack (20, 96, 128) float32, truth (20, 2, 2) [y, x])``.
    """
    t = np.arange(20, dtype=np.float64)
    linear = np.stack([20.3 + 0.7 * t, 30.6 - 0.45 * t], axis=1)
    angle = 0.2 * t
    circular = np.stack(
        [60.2 + 8 * np.sin(angle), 88.7 + 8 * np.cos(angle)], axis=1
    )
    truth = np.stack([linear, circular], axis=1)
    return spots_stack((96, 128), truth), truth


@pytest.fixture
def make_spots():
    """The renderer :func:`spots_stack`, for tests that script their own."""
    return spots_stack


@pytest.fixture
def make_frame():
    """The renderer :func:`render_spots` (per-spot sigma and amplitude)."""
    return render_spots
