"""The coarse-to-fine driver shared by all flow methods.

Level 0 is the full-resolution image; level ``k`` is ``cv2.pyrDown`` applied
``k`` times, so coarse pixel ``i`` sits on fine pixel ``2 i`` and a flow
value doubles from one level to the next finer one.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    'MIN_LEVEL_SIZE',
    'build_pyramid',
    'coarse_to_fine',
    'downsample_flow',
    'level_count',
    'upsample_flow',
]

#: The pyramid stops before a level's shorter side would drop below this.
MIN_LEVEL_SIZE = 8


def level_count(shape, levels):
    """Number of usable pyramid levels for an image of ``shape``.

    At most ``levels``; fewer when halving further would make the shorter
    side smaller than :data:`MIN_LEVEL_SIZE` pixels (always at least 1).
    """
    count = 1
    size = min(shape[:2])
    while count < levels and (size + 1) // 2 >= MIN_LEVEL_SIZE:
        size = (size + 1) // 2
        count += 1
    return count


def build_pyramid(image, levels):
    """Gaussian pyramid, finest level first.

    Parameters
    ----------
    image : ndarray, shape (H, W), float32
    levels : int
        Number of levels (see :func:`level_count`).

    Returns
    -------
    list of ndarray
        ``levels`` images; level ``k`` has shape ``ceil(H / 2**k)`` by
        ``ceil(W / 2**k)``.
    """
    pyramid = [image]
    for _ in range(levels - 1):
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    return pyramid


def upsample_flow(w, shape):
    """Flow of one level interpolated to the next finer level.

    Parameters
    ----------
    w : ndarray, shape (h, w, 2), float32
        Flow at the coarse level, in its pixels.
    shape : tuple of int
        ``(H, W)`` of the finer level (``h == ceil(H / 2)``); odd sizes are
        handled exactly.

    Returns
    -------
    ndarray, shape (H, W, 2), float32
        ``cv2.pyrUp`` interpolation (coarse pixel ``i`` lands on fine pixel
        ``2 i``, matching ``cv2.pyrDown``), multiplied by 2.
    """
    height, width = shape[:2]
    finer = cv2.pyrUp(w, dstsize=(width, height))
    finer *= np.float32(2)
    return finer


def downsample_flow(w, shape, level):
    """Full-resolution flow expressed at pyramid level ``level``.

    Parameters
    ----------
    w : ndarray, shape (H, W, 2), float32
    shape : tuple of int
        ``(h, w)`` of the target level.
    level : int
        Target level (values are divided by ``2 ** level``).

    Returns
    -------
    ndarray, shape (h, w, 2), float32
        Area-averaged (anti-aliased) flow.
    """
    if level == 0:
        return np.array(w, dtype=np.float32, order='C', copy=True)
    coarse = cv2.resize(
        np.ascontiguousarray(w, dtype=np.float32),
        (shape[1], shape[0]),
        interpolation=cv2.INTER_AREA,
    )
    coarse *= np.float32(0.5**level)
    return coarse


def coarse_to_fine(shapes, solve_level, *, init=None):
    """Run a per-level solver from the coarsest to the finest level.

    Parameters
    ----------
    shapes : sequence of tuple of int
        ``(h, w)`` of each level, finest first.
    solve_level : callable
        ``solve_level(level, w) -> w``: refines the float32 ``(h, w, 2)``
        flow ``w`` of level ``level`` (in that level's pixels; it may be
        modified in place) and returns the refined flow.
    init : ndarray, shape (H, W, 2), optional
        Initial full-resolution flow (warm start); zero when omitted.

    Returns
    -------
    ndarray, shape (H, W, 2), float32
        The finest level's flow.
    """
    coarsest = len(shapes) - 1
    height, width = shapes[coarsest]
    if init is None:
        w = np.zeros((height, width, 2), np.float32)
    else:
        w = downsample_flow(init, shapes[coarsest], coarsest)
    for level in range(coarsest, -1, -1):
        if level < coarsest:
            w = upsample_flow(w, shapes[level])
        w = solve_level(level, w)
    return w
