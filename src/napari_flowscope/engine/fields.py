"""Derived quantities of flow fields and their reduction to vector grids.

All functions take ``[x, y]`` flow, shape ``(..., H, W, 2)``, as produced by
the engine.  :func:`flow_to_row_col` is the one place that converts to
napari's row/column order.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    'VectorGrid',
    'curl',
    'decimate_flow',
    'divergence',
    'flow_to_row_col',
    'speed',
]


@dataclass(frozen=True)
class VectorGrid:
    """Flow vectors sampled on a regular grid, in napari's row/col order.

    Attributes
    ----------
    positions : ndarray, shape (N, 2), float32
        ``[y, x]`` pixel position of each vector's start.
    displacements : ndarray, shape (N, 2), float32
        ``[dy, dx]`` displacement (a projection, not an end point).
    speed : ndarray, shape (N,), float32
        Length of each displacement in pixels.
    """

    positions: np.ndarray
    displacements: np.ndarray
    speed: np.ndarray


def _check_flow(w):
    w = np.asarray(w)
    if w.ndim < 3 or w.shape[-1] != 2:
        raise ValueError(f'flow must have shape (..., H, W, 2); got {w.shape}')
    return w.astype(np.float32, copy=False)


def flow_to_row_col(w):
    """Reorder ``[x, y]`` flow to napari's ``[dy, dx]`` (row, column).

    Volume flow ``[x, y, z]`` becomes ``[dz, dy, dx]``.

    Parameters
    ----------
    w : array_like, shape (..., 2) or (..., 3)

    Returns
    -------
    ndarray, same shape, float32
        ``w[..., ::-1]`` as a new array.
    """
    w = np.asarray(w)
    if w.ndim < 1 or w.shape[-1] not in (2, 3):
        raise ValueError(
            f'flow must have shape (..., 2) or (..., 3); got {w.shape}'
        )
    return np.ascontiguousarray(w[..., ::-1], dtype=np.float32)


def speed(w):
    """Displacement magnitude ``sqrt(u**2 + v**2)``.

    Parameters
    ----------
    w : array_like, shape (..., H, W, 2)

    Returns
    -------
    ndarray, shape (..., H, W), float32
    """
    w = _check_flow(w)
    u, v = w[..., 0], w[..., 1]
    # np.hypot guards against overflow that pixel displacements never reach,
    # at five times the cost in float32
    return np.sqrt(u * u + v * v)


def divergence(w):
    """``du/dx + dv/dy`` by central differences (one-sided at edges).

    Parameters
    ----------
    w : array_like, shape (..., H, W, 2)

    Returns
    -------
    ndarray, shape (..., H, W), float32
        Per pixel; expansion is positive.
    """
    w = _check_flow(w)
    return (
        np.gradient(w[..., 0], axis=-1) + np.gradient(w[..., 1], axis=-2)
    ).astype(np.float32, copy=False)


def curl(w):
    """``dv/dx - du/dy`` by central differences (one-sided at edges).

    Positive for a rotation from +x towards +y (counter-clockwise in
    x-right, y-up axes; clockwise as displayed with y pointing down).

    Parameters
    ----------
    w : array_like, shape (..., H, W, 2)

    Returns
    -------
    ndarray, shape (..., H, W), float32
    """
    w = _check_flow(w)
    return (
        np.gradient(w[..., 1], axis=-1) - np.gradient(w[..., 0], axis=-2)
    ).astype(np.float32, copy=False)


def decimate_flow(
    w,
    *,
    step,
    average=False,
    reliability=None,
    reliability_threshold=0.0,
    image=None,
    intensity_percentile=None,
    min_speed=0.0,
):
    """Sample a dense flow on a regular grid and drop uninteresting vectors.

    The grid is OpenCV's ``draw_flow`` grid: rows ``step // 2, step // 2 +
    step, ...`` and likewise for columns.

    Parameters
    ----------
    w : array_like, shape (H, W, 2)
        ``[x, y]`` flow of one frame.
    step : int
        Grid spacing in pixels (>= 1).
    average : bool
        If True each vector is the mean flow of its ``step x step`` cell
        (cells are ``[k step, (k + 1) step)``, cut at the frame edge);
        otherwise the flow at the grid point.
    reliability : array_like, shape (H, W), optional
        Reliability map; with ``reliability_threshold`` drops grid points
        whose reliability is below the threshold.
    reliability_threshold : float
    image : array_like, shape (H, W), optional
        Intensity image; with ``intensity_percentile`` drops grid points
        darker than that percentile of ``image`` (e.g. background).
    intensity_percentile : float, optional
        In [0, 100].
    min_speed : float
        Drops vectors shorter than this (px).

    Returns
    -------
    VectorGrid
        Kept vectors in row-major grid order.
    """
    w = _check_flow(w)
    if w.ndim != 3:
        raise ValueError(f'w must have shape (H, W, 2); got {w.shape}')
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f'step must be an integer >= 1; got {step!r}')
    step = int(step)
    height, width = w.shape[:2]
    rows = np.arange(step // 2, height, step)
    cols = np.arange(step // 2, width, step)
    if average:
        vectors = _cell_means(w, step, len(rows), len(cols))
    else:
        vectors = w[np.ix_(rows, cols)]
    keep = np.ones((len(rows), len(cols)), bool)
    if reliability is not None:
        reliability = _check_map(reliability, (height, width), 'reliability')
        keep &= reliability[np.ix_(rows, cols)] >= reliability_threshold
    if intensity_percentile is not None:
        check_intensity_percentile(image, intensity_percentile)
        image = _check_map(image, (height, width), 'image')
        cutoff = np.percentile(image, intensity_percentile)
        keep &= image[np.ix_(rows, cols)] >= cutoff
    lengths = np.hypot(vectors[..., 0], vectors[..., 1])
    if min_speed > 0:
        keep &= lengths >= min_speed
    grid_y, grid_x = np.meshgrid(rows, cols, indexing='ij')
    positions = np.stack([grid_y[keep], grid_x[keep]], axis=1)
    displacements = flow_to_row_col(vectors[keep])
    return VectorGrid(
        positions=positions.astype(np.float32),
        displacements=displacements.reshape(-1, 2),
        speed=lengths[keep].astype(np.float32),
    )


def _cell_means(w, step, n_rows, n_cols):
    # Cells are [k step, (k + 1) step); partial cells at the far edges
    # average only the pixels they hold (zero padding, divided by the
    # fraction of real pixels).
    height, width = n_rows * step, n_cols * step
    pad_rows = max(0, height - w.shape[0])
    pad_cols = max(0, width - w.shape[1])
    padded = cv2.copyMakeBorder(
        np.ascontiguousarray(w), 0, pad_rows, 0, pad_cols, cv2.BORDER_CONSTANT
    )[:height, :width]
    means = cv2.resize(padded, (n_cols, n_rows), interpolation=cv2.INTER_AREA)
    if pad_rows or pad_cols:
        filled = np.zeros((height, width), np.float32)
        filled[: w.shape[0], : w.shape[1]] = 1
        fraction = cv2.resize(
            filled, (n_cols, n_rows), interpolation=cv2.INTER_AREA
        )
        means /= fraction[..., None]
    return means


def check_intensity_percentile(image, intensity_percentile):
    """Raise unless an intensity mask can be made: an image is given and
    the percentile is within 0-100 (frames and volumes)."""
    if image is None:
        raise ValueError('intensity_percentile needs an image')
    if not 0 <= intensity_percentile <= 100:
        raise ValueError(
            'intensity_percentile must be in [0, 100]; '
            f'got {intensity_percentile!r}'
        )


def _check_map(values, shape, name):
    values = np.asarray(values)
    if values.shape != shape:
        raise ValueError(f'{name} must have shape {shape}; got {values.shape}')
    return values
