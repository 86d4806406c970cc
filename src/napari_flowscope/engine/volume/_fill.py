"""Normalised averaging of a volume field, reliable voxels weighted up."""

from __future__ import annotations

import numpy as np

from .filters import blur

__all__ = ['ReliableAverage']

#: Weight of an unreliable voxel's own flow against a reliable one's.
UNRELIABLE_WEIGHT = 0.05


class ReliableAverage:
    """Gaussian average of a field in which reliable voxels dominate.

    ``blur(field * weight) / blur(weight)`` with weight 1 on reliable
    voxels and :data:`UNRELIABLE_WEIGHT` elsewhere: near texture a voxel
    takes the texture's flow, far from any it keeps (the average of) its
    own flow, which the solver left at the coarser levels' estimate.

    Unlike the 2-D engine's push-pull filling from ever wider
    neighbourhoods, this keeps the coarse estimate of large untextured
    regions: on sparse volumes (Golgi puncta, nuclei on a dark
    background; ``benchmarks/bench_volume.py``) the coarse estimate,
    measured with windows that reach the nearby texture, was about twice
    as accurate as filling from the textured voxels around, which may lie
    far away in a deforming sample.

    Parameters
    ----------
    reliable : ndarray, shape (Z, Y, X), bool
    sigma : tuple of float
        Per-axis window ``(z, y, x)`` in voxels.
    """

    def __init__(self, reliable, sigma):
        self.sigma = tuple(sigma)
        self._weight = None
        self._inverse = None
        if not reliable.all():
            self._weight = np.where(
                reliable, np.float32(1), np.float32(UNRELIABLE_WEIGHT)
            )
            self._inverse = np.float32(1) / blur(self._weight, self.sigma)

    def __call__(self, field):
        """Average ``field``.

        Parameters
        ----------
        field : ndarray, shape (C, Z, Y, X), float32
            Planar components (e.g. the three flow components).

        Returns
        -------
        ndarray, shape (C, Z, Y, X), float32
            A new array.
        """
        result = np.empty(field.shape, np.float32)
        for component, target in zip(field, result, strict=True):
            if self._weight is None:
                blur(component, self.sigma, out=target)
            else:
                blur(component * self._weight, self.sigma, out=target)
                target *= self._inverse
        return result
