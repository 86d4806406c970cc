"""Analytic test images for the engine: exact sub-pixel motion, no resampling.

Images are sums of Gaussian blobs evaluated at the true positions, so a
moving frame with content displaced by ``d`` is exact to float precision:
``moving(x) = reference(x - d)``, hence the flow ``w = +d``.
"""

import numpy as np
import pytest


def render_blobs(
    shape,
    shift=(0.0, 0.0),
    *,
    n_blobs=400,
    sigma=2.5,
    seed=0,
    avoid=None,
):
    """Blob image with its content displaced by ``shift = (dx, dy)``.

    ``avoid=(cx, cy, radius)`` leaves a disc (moving with the content)
    free of blob centres, i.e. an untextured region.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    centre_x = rng.uniform(-10, width + 10, n_blobs)
    centre_y = rng.uniform(-10, height + 10, n_blobs)
    amplitude = rng.uniform(0.3, 1.0, n_blobs)
    if avoid is not None:
        ax, ay, radius = avoid
        keep = np.hypot(centre_x - ax, centre_y - ay) > radius
        centre_x, centre_y, amplitude = (
            centre_x[keep],
            centre_y[keep],
            amplitude[keep],
        )
    dx, dy = shift
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros(shape)
    for a, cx, cy in zip(amplitude, centre_x + dx, centre_y + dy, strict=True):
        # Only a window around each blob matters (exp(-18) beyond 6 sigma).
        r0, r1 = max(0, int(cy - 6 * sigma)), int(cy + 6 * sigma) + 1
        c0, c1 = max(0, int(cx - 6 * sigma)), int(cx + 6 * sigma) + 1
        if r1 <= 0 or c1 <= 0:
            continue
        image[r0:r1, c0:c1] += a * np.exp(
            -((x[r0:r1, c0:c1] - cx) ** 2 + (y[r0:r1, c0:c1] - cy) ** 2)
            / (2 * sigma**2)
        )
    return image.astype(np.float32)


@pytest.fixture
def blobs():
    """Factory: ``blobs(shape, shift=(dx, dy), **options)``."""
    return render_blobs


def endpoint_error(w, truth):
    """Per-pixel Euclidean error between two ``(..., 2)`` flows."""
    difference = np.asarray(w, np.float64) - np.asarray(truth, np.float64)
    return np.hypot(difference[..., 0], difference[..., 1])


@pytest.fixture
def epe():
    return endpoint_error
