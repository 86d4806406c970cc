"""Carry points through dense flow fields measured against a reference.

The session's flow follows the project convention
``registered_t(x) = frame_t(x + w_t(x)) ~ reference(x)``: the content at
reference position ``x`` is found at ``x + w_t(x)`` in frame t. A point
seeded in the reference at ``p`` is therefore at ``p + w_t(p)`` in frame t,
with ``w_t`` sampled at ``p`` by bilinear interpolation (sub-pixel). No
errors accumulate from frame to frame: every frame is one lookup from the
reference.

With flow measured between consecutive frames instead (frame t against
frame t - 1, ``flow_reference='previous'``), the same lookup moves a point
from its position in frame t - 1 to frame t, and the steps are chained.

A point first seen in frame t at ``q`` (a seed, or a corner found by
re-detection) is first taken back to the reference by solving
``p + w_t(p) = q`` with the fixed-point iteration ``p <- q - w_t(p)``, which
converges where the field is smooth (its gradient is below 1 per pixel, true
of any motion that does not fold the image onto itself).
"""

import numpy as np
from scipy.ndimage import map_coordinates

_INVERSION_ITERATIONS = 20


def sample_flow(w, points):
    """Bilinear sample of a flow field at sub-pixel points.

    Parameters
    ----------
    w : ndarray, shape (Y, X, 2)
        ``[x, y]`` displacement.
    points : ndarray, shape (N, 2)
        ``[y, x]`` positions; outside the grid the nearest edge value is used.

    Returns
    -------
    ndarray, shape (N, 2), float32
        ``[dy, dx]`` displacement at each point (row/column order, like the
        points).
    """
    coordinates = np.asarray(points, np.float64).T
    dx = map_coordinates(w[..., 0], coordinates, order=1, mode='nearest')
    dy = map_coordinates(w[..., 1], coordinates, order=1, mode='nearest')
    return np.stack([dy, dx], axis=1).astype(np.float32)


def advect(w, reference_points):
    """Positions in a frame of points seeded in the reference.

    Parameters
    ----------
    w : ndarray, shape (Y, X, 2)
        ``[x, y]`` flow of the frame against the reference.
    reference_points : ndarray, shape (N, 2)
        ``[y, x]`` in the reference.

    Returns
    -------
    ndarray, shape (N, 2), float32
        ``p + w(p)`` as ``[y, x]``.
    """
    points = np.asarray(reference_points, np.float32)
    return points + sample_flow(w, points)


def to_reference(w, points):
    """Reference positions of points observed in a frame (inverse of advect).

    Parameters
    ----------
    w : ndarray, shape (Y, X, 2)
        ``[x, y]`` flow of the frame against the reference.
    points : ndarray, shape (N, 2)
        ``[y, x]`` in the frame.

    Returns
    -------
    ndarray, shape (N, 2), float32
        ``p`` with ``p + w(p) = points`` (to the fixed-point iteration's
        accuracy, far below 1e-3 px for smooth fields).
    """
    target = np.asarray(points, np.float32)
    estimate = target.copy()
    for _ in range(_INVERSION_ITERATIONS):
        estimate = target - sample_flow(w, estimate)
    return estimate
