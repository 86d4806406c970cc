"""One frame-to-frame step of pyramidal Lucas-Kanade with a round trip."""

import cv2
import numpy as np


def lk_step(
    previous,
    current,
    points,
    *,
    win_size=21,
    max_level=3,
    max_iterations=30,
    epsilon=0.01,
    fb_threshold=1.0,
):
    """Follow points from one 8-bit frame to the next.

    Parameters
    ----------
    previous, current : ndarray, shape (Y, X), uint8
        Consecutive frames.
    points : ndarray, shape (N, 2)
        ``[y, x]`` positions in ``previous``.
    win_size, max_level, max_iterations, epsilon
        As in :class:`~napari_flowscope.tracking.TrackingParams`.
    fb_threshold : float or None, optional
        Maximum forward-backward error (px); None skips the backward pass.

    Returns
    -------
    moved : ndarray, shape (N, 2), float32
        ``[y, x]`` positions in ``current``.
    valid : ndarray, shape (N,), bool
        OpenCV converged (forward and, if checked, backward), the point is
        inside ``current`` and its forward-backward error is within the
        threshold.
    fb_error : ndarray, shape (N,), float32
        Distance (px) between each point and the point tracked forward and
        back again; NaN when not checked, infinite when the backward pass
        failed.

    Notes
    -----
    The forward-backward check (Kalal et al., "Forward-backward error:
    automatic detection of tracking failures", ICPR 2010) catches matches
    that are consistent in one direction only, such as a point that latches
    onto a neighbour when its own feature vanishes.
    """
    n = len(points)
    if n == 0:
        empty = np.empty((0, 2), np.float32)
        return empty, np.zeros(0, bool), np.zeros(0, np.float32)
    start = np.ascontiguousarray(points[:, ::-1], np.float32).reshape(-1, 1, 2)
    options = {
        'winSize': (int(win_size), int(win_size)),
        'maxLevel': int(max_level),
        'criteria': (
            cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS,
            int(max_iterations),
            float(epsilon),
        ),
    }
    forward, status, _ = cv2.calcOpticalFlowPyrLK(
        previous, current, start, None, **options
    )
    valid = status.ravel() == 1
    fb_error = np.full(n, np.nan, np.float32)
    if fb_threshold is not None:
        back, back_status, _ = cv2.calcOpticalFlowPyrLK(
            current, previous, forward, None, **options
        )
        fb_error = np.linalg.norm((back - start).reshape(n, 2), axis=1)
        fb_error = fb_error.astype(np.float32)
        fb_error[back_status.ravel() != 1] = np.inf
        valid &= fb_error <= fb_threshold
    moved = forward.reshape(n, 2)[:, ::-1].astype(np.float32)
    valid &= inside(moved, current.shape)
    return moved, valid, fb_error


def inside(points, frame_shape):
    """Points ``[y, x]`` within the pixel centres of a frame, (N,) bool."""
    height, width = frame_shape
    y, x = points[:, 0], points[:, 1]
    return (y >= 0) & (y <= height - 1) & (x >= 0) & (x <= width - 1)
