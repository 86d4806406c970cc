"""Filling a masked flow field from its reliable pixels (push-pull)."""

from __future__ import annotations

import cv2
import numpy as np


class PushPullFill:
    """Normalised averaging of a field from a weight map, holes filled.

    Where the (blurred) weight ``support`` is at least ``min_support`` the
    result is ``numerator / support``, a normalised convolution.  Holes
    (less support) take the value interpolated from coarser Gaussian
    pyramid levels of numerator and support, i.e. a normalised convolution
    over ever wider windows ("push-pull"), so even a large untextured
    region gets the motion of the textured pixels around it.

    Parameters
    ----------
    support : ndarray, shape (H, W), float32
        Blurred weights (e.g. a Gaussian-blurred reliability mask); not
        all zero.
    min_support : float
        Least support of a pixel averaged at its own level.
    """

    def __init__(self, support, min_support):
        self._min_support = np.float32(min_support)
        self._supports = [support]
        while (
            self._supports[-1].min() < self._min_support
            and min(self._supports[-1].shape) > 1
        ):
            self._supports.append(cv2.pyrDown(self._supports[-1]))
        finest = support >= self._min_support
        self._holes = np.flatnonzero(~finest)
        self._inverse_support = np.where(
            finest, np.float32(1) / np.maximum(support, self._min_support), 0
        ).astype(np.float32)
        self._coarse_ok = [s >= self._min_support for s in self._supports]

    def __call__(self, numerator):
        """Fill ``numerator / support``.

        Parameters
        ----------
        numerator : ndarray, shape (H, W, C), float32
            Blurred weighted field (same blur as ``support``).

        Returns
        -------
        ndarray, shape (H, W, C), float32
        """
        result = numerator * self._inverse_support[..., None]
        if not self._holes.size:
            return result
        numerators = [numerator]
        for _ in self._supports[1:]:
            numerators.append(cv2.pyrDown(numerators[-1]))
        coarse = _ratio(numerators[-1], self._supports[-1])
        for level in range(len(self._supports) - 2, 0, -1):
            height, width = self._supports[level].shape
            upsampled = cv2.pyrUp(coarse, dstsize=(width, height))
            own = _ratio(numerators[level], self._supports[level])
            coarse = np.where(
                self._coarse_ok[level][..., None], own, upsampled
            )
        height, width = self._supports[0].shape
        upsampled = cv2.pyrUp(coarse, dstsize=(width, height))
        channels = result.shape[-1]
        flat_result = result.reshape(-1, channels)
        flat_result[self._holes] = upsampled.reshape(-1, channels)[self._holes]
        return result


def _ratio(numerator, support):
    safe = np.maximum(support, np.float32(1e-12))
    ratio = numerator / safe[..., None]
    ratio[support <= 0] = 0
    return ratio
