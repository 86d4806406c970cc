"""Noise-adaptive averaging of a per-pixel flow estimate.

A per-pixel Lucas-Kanade solution is noisy; averaging it over a window
removes the noise but also the detail of non-rigid motion.  How wide the
window should be depends on the noise and on the motion, so
:class:`AdaptiveAverage` forms three weighted averages (normalised
convolutions, Knutsson & Westin 1993) of growing width and keeps, at every
pixel, the widest one that still agrees with the narrower ones within a
tolerance proportional to the noise: the "intersection of confidence
intervals" rule of adaptive kernel estimation (Goldenshluger & Nemirovski
1997; Katkovnik 1999).  Clean frames keep the narrow window everywhere;
on noisy frames smooth motion (drift, rotation) is averaged widely, while
places where the motion varies keep the narrow window.
"""

from __future__ import annotations

import cv2
import numpy as np

from ._fill import PushPullFill
from ._filters import gaussian

__all__ = ['AVERAGING_SCALES', 'AdaptiveAverage']

#: Widths of the three averages, in units of the window ``sigma``.
AVERAGING_SCALES = (1.0, 2.5, 6.0)
#: A wider average replaces the narrower one where they differ by less
#: than this many pixels per unit of noise (noise in units of the local
#: image contrast): 1 for the middle scale, 0.5 for the widest.
_TOLERANCES = (1.0, 0.5)
# Pixels whose support is below this share of the largest support are
# filled from wider neighbourhoods.
_MIN_SUPPORT = 0.05


def _level_sigma(width, level):
    """Blur (px at pyramid ``level``) giving a Gaussian of ``width`` px.

    Each ``cv2.pyrDown`` / ``cv2.pyrUp`` pair between full resolution and
    ``level`` adds a variance of about ``2 * 4 ** j`` full-resolution px^2
    at level ``j``; the blur at ``level`` supplies the rest.
    """
    added = 2 * sum(4**j for j in range(level))
    scale = 2**level
    return np.sqrt(max(width * width - added, 0.25 * scale * scale)) / scale


class AdaptiveAverage:
    """Weighted, noise-adaptive averaging of full-resolution flow fields.

    Parameters
    ----------
    weights : ndarray, shape (H, W), float32
        Weight of each pixel's own estimate (e.g. a texture score, 0 to
        1); not all zero.
    sigma : float
        Width (px) of the narrowest average.
    """

    def __init__(self, weights, sigma):
        self.shape = weights.shape
        weights = np.ascontiguousarray(weights, np.float32)
        self._weights = cv2.merge((weights, weights))
        half = cv2.pyrDown(weights)
        self._levels = []
        level_weights = half
        for index, scale in enumerate(AVERAGING_SCALES):
            level = index + 1  # half, quarter, eighth resolution
            if index:
                if min(level_weights.shape) < 2:
                    break  # tiny frames: fewer scales
                level_weights = cv2.pyrDown(level_weights)
            blur = _level_sigma(scale * sigma, level)
            support = gaussian(level_weights, blur)
            fill = PushPullFill(
                support,
                np.float32(_MIN_SUPPORT * float(support.max())),
                channels=2,
            )
            self._levels.append((blur, fill, support.shape))

    def __call__(self, w, noise):
        """Average ``w`` for frames of the given noise.

        Parameters
        ----------
        w : ndarray, shape (H, W, 2), float32
            Per-pixel flow.
        noise : float
            Noise of the frames relative to their local contrast (0 for
            clean frames: the narrowest average everywhere).

        Returns
        -------
        ndarray, shape (H, W, 2), float32
        """
        numerator = cv2.pyrDown(cv2.multiply(w, self._weights))
        averages = []
        for index, (blur, fill, _) in enumerate(self._levels):
            if index:
                numerator = cv2.pyrDown(numerator)
            average = fill(gaussian(numerator, blur))
            # back to half resolution, one level at a time
            for level in range(index - 1, -1, -1):
                height, width = self._levels[level][2]
                average = cv2.pyrUp(average, dstsize=(width, height))
            averages.append(average)
        result = averages[0]
        if noise > 0:
            for wider, tolerance in zip(
                averages[1:], _TOLERANCES, strict=True
            ):
                difference = wider - result
                # numpy, not cv2.magnitude: its SIMD path rounds
                # differently depending on the buffers' alignment, which
                # would make results differ between identical calls.
                squared = difference * difference
                distance = np.sqrt(squared[..., 0] + squared[..., 1])
                # 1 where the averages agree, 0 beyond the tolerance
                share = 1 - distance * np.float32(1 / (tolerance * noise))
                np.clip(share, 0, 1, out=share)
                result = result + difference * cv2.merge((share, share))
        height, width = self.shape
        return cv2.pyrUp(result, dstsize=(width, height))
