"""Normalised averaging of a volume field from its reliable voxels."""

from __future__ import annotations

import numpy as np

from .filters import blur, downsample, upsample

__all__ = ['ReliableAverage']


class ReliableAverage:
    """Gaussian average of a field over reliable voxels, holes filled.

    Where the blurred reliability mask (the *support*) reaches
    ``min_support`` the result is the normalised convolution
    ``blur(field * mask) / blur(mask)``.  Holes, regions with less
    support, take the value interpolated from coarser pyramid levels of
    numerator and support ("push-pull"), so even a large untextured region
    gets the motion of the textured voxels around it.

    Parameters
    ----------
    reliable : ndarray, shape (Z, Y, X), bool
        Not all False.
    sigma : tuple of float
        Per-axis window ``(z, y, x)`` in voxels.
    min_support : float
        Least support of a voxel averaged at its own level.
    """

    def __init__(self, reliable, sigma, min_support):
        self.sigma = tuple(sigma)
        self._mask = None if reliable.all() else reliable.astype(np.float32)
        support = (
            np.ones(reliable.shape, np.float32)
            if self._mask is None
            else blur(self._mask, self.sigma)
        )
        min_support = np.float32(min_support)
        supports = [support]
        halvings = []
        while (
            supports[-1].min() < min_support
            and max(supports[-1].shape[1:]) > 1
        ):
            halve_z = supports[-1].shape[0] > 1
            halvings.append(halve_z)
            supports.append(downsample(supports[-1], halve_z=halve_z))
        self._halvings = halvings
        self._supports = supports
        self._inverse = [_inverse(level, min_support) for level in supports]
        self._enough = [level >= min_support for level in supports]
        self._holes = np.flatnonzero(~self._enough[0])

    def __call__(self, field):
        """Average ``field`` over the reliable voxels.

        Parameters
        ----------
        field : ndarray, shape (C, Z, Y, X), float32
            Planar components (e.g. the three flow components).

        Returns
        -------
        ndarray, shape (C, Z, Y, X), float32
            A new array.
        """
        numerator = np.empty(field.shape, np.float32)
        for component, target in zip(field, numerator, strict=True):
            values = (
                component if self._mask is None else component * self._mask
            )
            blur(values, self.sigma, out=target)
        result = numerator * self._inverse[0]
        if not self._holes.size:
            return result
        numerators = [numerator]
        for halve_z in self._halvings:
            numerators.append(
                np.stack(
                    [downsample(c, halve_z=halve_z) for c in numerators[-1]]
                )
            )
        filled = numerators[-1] * self._inverse[-1]
        for level in range(len(self._supports) - 2, -1, -1):
            upsampled = upsample(
                filled,
                self._supports[level].shape,
                halve_z=self._halvings[level],
            )
            if level == 0:
                filled = upsampled
                break
            filled = np.where(
                self._enough[level],
                numerators[level] * self._inverse[level],
                upsampled,
            )
        flat_result = result.reshape(len(result), -1)
        flat_result[:, self._holes] = filled.reshape(len(filled), -1)[
            :, self._holes
        ]
        return result


def _inverse(support, min_support):
    # 1 / support where it is usable, 0 elsewhere (the coarsest level may
    # keep a few empty voxels when reliable voxels are rare).
    usable = support >= min_support
    inverse = np.zeros_like(support)
    np.divide(1, support, out=inverse, where=usable)
    if not usable.all() and support.max() > 0:
        positive = support > 0
        np.divide(1, support, out=inverse, where=positive & ~usable)
    return inverse
