"""Filling a masked field from its reliable pixels (push-pull)."""

from __future__ import annotations

import cv2
import numpy as np

_MAP_WIDTH = 4096


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
        Blurred weights (e.g. a Gaussian-blurred reliability mask), not all
        zero.
    min_support : float
        Least support of a pixel averaged at its own level.
    channels : int
        Number of channels ``C`` of the fields to fill.
    """

    def __init__(self, support, min_support, *, channels):
        min_support = np.float32(min_support)
        supports = [support]
        while supports[-1].min() < min_support and min(supports[-1].shape) > 1:
            supports.append(cv2.pyrDown(supports[-1]))
        self._supports = supports
        # Repeated over the channels: numpy broadcasts slowly over a short
        # last axis.
        self._inverse = [
            _repeat(_inverse(level, min_support), channels)
            for level in supports
        ]
        self._enough = [
            _repeat(level >= min_support, channels) for level in supports
        ]
        self._holes = np.flatnonzero(supports[0] < min_support)
        # Where the holes sit on the next coarser level (pyrDown puts fine
        # pixel p at coarse position p / 2), to interpolate just there.
        rows, cols = np.divmod(self._holes, support.shape[1])
        self._hole_x = _as_map(cols / 2)
        self._hole_y = _as_map(rows / 2)

    def __call__(self, numerator):
        """Fill ``numerator / support``.

        Parameters
        ----------
        numerator : ndarray, shape (H, W, C), float32
            Blurred weighted field (the same blur as ``support``), e.g. the
            two flow components.

        Returns
        -------
        ndarray, shape (H, W, C), float32
        """
        result = numerator * self._inverse[0]
        if not self._holes.size:
            return result
        numerators = [numerator]
        for _ in self._supports[1:]:
            numerators.append(cv2.pyrDown(numerators[-1]))
        filled = numerators[-1] * self._inverse[-1]
        for level in range(len(self._supports) - 2, 0, -1):
            height, width = self._supports[level].shape
            upsampled = cv2.pyrUp(filled, dstsize=(width, height))
            filled = np.where(
                self._enough[level],
                numerators[level] * self._inverse[level],
                upsampled,
            )
        # Only the holes of the finest level need the coarse value.  One
        # channel at a time: OpenCV's multi-channel remap rounds positions
        # to 1/32 px.
        holes = result.reshape(-1, result.shape[-1])
        for channel in range(result.shape[-1]):
            holes[self._holes, channel] = cv2.remap(
                np.ascontiguousarray(filled[..., channel]),
                self._hole_x,
                self._hole_y,
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            ).ravel()[: self._holes.size]
        return result


def _repeat(image, channels):
    return np.repeat(image[..., np.newaxis], channels, axis=-1)


def _inverse(support, min_support):
    # 1 / support where it is usable, 0 elsewhere (the coarsest level of a
    # pyramid may keep a few empty pixels when reliable pixels are rare).
    usable = support >= min_support
    inverse = np.zeros_like(support)
    np.divide(1, support, out=inverse, where=usable)
    if not usable.all() and support.max() > 0:
        # subnormal support (a Gaussian tail far from any weight) counts as
        # none: its inverse overflows to inf, and 0 * inf is NaN
        positive = support >= np.finfo(support.dtype).tiny
        np.divide(1, support, out=inverse, where=positive & ~usable)
    return inverse


def _as_map(positions):
    # cv2.remap maps must stay below 32767 px a side: fold the list of
    # positions into rows of at most _MAP_WIDTH (padding repeats position 0).
    width = max(1, min(positions.size, _MAP_WIDTH))
    padded = np.zeros(-(-positions.size // width) * width, np.float32)
    padded[: positions.size] = positions
    return padded.reshape(-1, width)
