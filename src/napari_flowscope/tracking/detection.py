"""Where to start tracks: Shi-Tomasi corners or user-given seeds."""

import cv2
import numpy as np


def detect_features(
    image,
    *,
    max_corners=200,
    quality_level=0.01,
    min_distance=7.0,
    block_size=7,
    mask=None,
    avoid=None,
):
    """Shi-Tomasi "good features to track" in one 8-bit frame.

    Parameters
    ----------
    image : ndarray, shape (Y, X), uint8
        See :func:`napari_flowscope.tracking.intensity.to_uint8`.
    max_corners : int, optional
        Most corners returned (strongest first). Must be >= 1: OpenCV reads
        0 as "no limit".
    quality_level : float, optional
        Corners weaker than this fraction of the strongest one are rejected.
    min_distance : float, optional
        Minimum distance (px) between returned corners, and between a
        returned corner and any point in ``avoid``.
    block_size : int, optional
        Side (px) of the structure-tensor window.
    mask : ndarray, shape (Y, X), bool, optional
        Detect only where True.
    avoid : ndarray, shape (N, 2), optional
        ``[y, x]`` points already tracked; no corner is returned within
        ``min_distance`` of them.

    Returns
    -------
    ndarray, shape (M, 2), float32
        ``[y, x]`` corner positions (integer pixel centres), M <= max_corners.
    """
    if max_corners < 1:
        return np.empty((0, 2), np.float32)
    allowed = np.full(image.shape, 255, np.uint8)
    if mask is not None:
        allowed[~np.asarray(mask, dtype=bool)] = 0
    if avoid is not None and len(avoid) and min_distance > 0:
        radius = int(np.ceil(min_distance))
        for y, x in np.rint(avoid).astype(int):
            cv2.circle(allowed, (int(x), int(y)), radius, 0, thickness=-1)
    corners = cv2.goodFeaturesToTrack(
        image,
        maxCorners=int(max_corners),
        qualityLevel=float(quality_level),
        minDistance=float(min_distance),
        mask=allowed,
        blockSize=int(block_size),
    )
    if corners is None:
        return np.empty((0, 2), np.float32)
    return corners.reshape(-1, 2)[:, ::-1].astype(np.float32)


def split_seeds(seeds):
    """Seed points as napari Points data, split into times and positions.

    Parameters
    ----------
    seeds : array_like, shape (N, 2) or (N, 3)
        ``[y, x]`` (all in the first frame) or ``[t, y, x]``; ``t`` is
        rounded to the nearest frame, as napari shows a point on the slice
        nearest to it.

    Returns
    -------
    times : ndarray, shape (N,), int
    positions : ndarray, shape (N, 2), float32
        ``[y, x]``.
    """
    seeds = np.asarray(seeds, dtype=np.float64)
    if seeds.ndim != 2 or seeds.shape[1] not in (2, 3):
        raise ValueError(
            f'seeds must be (N, 2) [y, x] or (N, 3) [t, y, x]; '
            f'got shape {seeds.shape}'
        )
    if not np.isfinite(seeds).all():
        raise ValueError('seeds contain NaN or infinite values')
    if seeds.shape[1] == 2:
        return np.zeros(len(seeds), int), seeds.astype(np.float32)
    return np.rint(seeds[:, 0]).astype(int), seeds[:, 1:].astype(np.float32)
