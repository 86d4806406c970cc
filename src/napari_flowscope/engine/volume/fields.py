"""Derived quantities of volume flow fields and their vector grids."""

from __future__ import annotations

import numpy as np

from napari_flowscope.engine.fields import (
    VectorGrid,
    check_intensity_percentile,
    flow_to_row_col,
)

__all__ = ['decimate_volume_flow', 'displacement_length', 'vector_steps']


def displacement_length(w, *, spacing=None):
    """Length of each displacement, in in-plane pixels.

    Parameters
    ----------
    w : array_like, shape (..., 2) or (..., 3)
        ``[x, y]`` or ``[x, y, z]`` flow (pixels, voxels).
    spacing : tuple of float, optional
        ``(z, y, x)`` voxel size of 3-D flow: the z component counts with
        the z spacing over the in-plane pixel size, so the length is a
        distance.  Default isotropic.

    Returns
    -------
    ndarray, shape (...), float32
    """
    w = np.asarray(w, np.float32)
    if w.ndim < 1 or w.shape[-1] not in (2, 3):
        raise ValueError(
            f'flow must have shape (..., 2) or (..., 3); got {w.shape}'
        )
    squares = w[..., 0] * w[..., 0] + w[..., 1] * w[..., 1]
    if w.shape[-1] == 3:
        factor = 1.0 if spacing is None else spacing[0] / min(spacing[1:])
        z = w[..., 2] * np.float32(factor)
        squares += z * z
    return np.sqrt(squares)


def vector_steps(step, spacing=None):
    """Grid steps ``(z, y, x)`` in voxels for an in-plane step in pixels.

    Along Z the step spans about the same physical distance (at least one
    plane).
    """
    step = max(int(step), 1)
    if spacing is None:
        return (step, step, step)
    pixel = min(spacing[1:])
    return (max(1, round(step * pixel / spacing[0])), step, step)


def decimate_volume_flow(
    w,
    *,
    steps,
    spacing=None,
    reliability=None,
    reliability_threshold=0.0,
    image=None,
    intensity_percentile=None,
    min_length=0.0,
):
    """Sample a volume flow on a regular grid and drop uninteresting vectors.

    The 3-D counterpart of :func:`napari_flowscope.engine.decimate_flow`:
    grid points ``step // 2, step // 2 + step, ...`` along each axis.

    Parameters
    ----------
    w : array_like, shape (Z, Y, X, 3)
        ``[x, y, z]`` flow of one volume.
    steps : tuple of int
        Grid spacing ``(z, y, x)`` in voxels (see :func:`vector_steps`).
    spacing : tuple of float, optional
        ``(z, y, x)`` voxel size, for the lengths.
    reliability : array_like, shape (Z, Y, X), optional
        With ``reliability_threshold``: drops less reliable points.
    reliability_threshold : float
    image : array_like, shape (Z, Y, X), optional
        With ``intensity_percentile``: drops points darker than that
        percentile of ``image`` (background).
    intensity_percentile : float, optional
    min_length : float
        Drops vectors shorter than this (in-plane pixels).

    Returns
    -------
    VectorGrid
        ``positions`` (N, 3) ``[z, y, x]``, ``displacements`` (N, 3)
        ``[dz, dy, dx]`` voxels, ``speed`` (N,) lengths in in-plane
        pixels (:func:`displacement_length`); row-major grid order.
    """
    w = np.asarray(w, np.float32)
    if w.ndim != 4 or w.shape[-1] != 3:
        raise ValueError(f'w must have shape (Z, Y, X, 3); got {w.shape}')
    axes = [
        np.arange(max(int(step), 1) // 2, size, max(int(step), 1))
        for size, step in zip(w.shape[:3], steps, strict=True)
    ]
    grid = np.ix_(*axes)
    vectors = w[grid]
    keep = np.ones(vectors.shape[:3], bool)
    if reliability is not None:
        keep &= np.asarray(reliability)[grid] >= reliability_threshold
    if intensity_percentile is not None:
        check_intensity_percentile(image, intensity_percentile)
        image = np.asarray(image)
        cutoff = np.percentile(image[:, ::2, ::2], intensity_percentile)
        keep &= image[grid] >= cutoff
    lengths = displacement_length(vectors, spacing=spacing)
    if min_length > 0:
        keep &= lengths >= min_length
    positions = np.stack(
        [coordinate[keep] for coordinate in np.meshgrid(*axes, indexing='ij')],
        axis=1,
    )
    return VectorGrid(
        positions=positions.astype(np.float32),
        displacements=flow_to_row_col(vectors[keep]).reshape(-1, 3),
        speed=lengths[keep].astype(np.float32),
    )
