"""Confidence of 3-D flow: the 2-D engine's definition, on volumes.

As in :class:`napari_flowscope.engine.FlowEstimator`, the match is judged
on the globally normalised volumes at half resolution in-plane (the
pyramid's blur smooths photon noise, the wide window costs a quarter),
with a correlation window of ``CONFIDENCE_WINDOW`` in-plane pixels that
spans the same physical distance along Z; windows are separable OpenCV
filters (:func:`~.filters.blur`).
"""

from __future__ import annotations

import numpy as np

from napari_flowscope.engine.confidence import (
    CONFIDENCE_WINDOW,
    LocalCorrelation,
    combine_scores,
    match_score,
    standardize,
    texture_score,
)

from .filters import blur, downsample, upsample
from .warp import sample_linear

__all__ = ['VolumeConfidence']


class VolumeConfidence:
    """Confidence of flows against one reference volume.

    Parameters
    ----------
    reference : ndarray, shape (Z, Y, X), float32
        The normalised reference.
    reliability : ndarray, shape (Z, Y, X), float32
    reliability_threshold : float
    level : VolumeLevel
        The full-resolution pyramid level (its spacing sets the window).
    """

    def __init__(self, reference, reliability, reliability_threshold, level):
        self.shape = reference.shape
        window = level.window(CONFIDENCE_WINDOW)
        self._window = (window[0], window[1] / 2, window[2] / 2)
        self._correlation = LocalCorrelation(
            _half(reference), window=self._window, blur=blur
        )
        self._texture = texture_score(reliability, reliability_threshold)

    def __call__(self, moving, w):
        """Confidence (0-1) of the flow ``w`` of ``moving``.

        Parameters
        ----------
        moving : ndarray, shape (Z, Y, X), float32
        w : ndarray, shape (3, Z, Y, X), float32
            Planar ``[x, y, z]`` flow.

        Returns
        -------
        ndarray, shape (Z, Y, X), float32
        """
        half_moving = _half(moving)
        depth, height, width = half_moving.shape
        half_w = np.stack(
            [downsample(component, halve_z=False) for component in w]
        )
        half_w[:2] *= np.float32(0.5)
        warped = sample_linear(half_moving, half_w)
        # Nothing was compared where p + w(p) lies outside the moving
        # volume (by more than half a voxel, where samples still agree).
        inside = np.ones(half_moving.shape, bool)
        for component, (axis, size) in zip(
            half_w, list(enumerate((depth, height, width)))[::-1], strict=True
        ):
            position = component + np.arange(size, dtype=np.float32).reshape(
                [size if a == axis else 1 for a in range(3)]
            )
            inside &= (position >= -0.5) & (position <= size - 0.5)
        match = match_score(self._correlation(warped), inside)
        match = upsample(match, self.shape, halve_z=False)
        return combine_scores(match, self._texture)


def _half(volume):
    """Standardised volume at half resolution in-plane."""
    return downsample(standardize(volume), halve_z=False)
