"""Bright objects larger than a template: their size and their centre.

A template a few pixels across tracks what it sees. On a spot that fits in
it, that is the spot; on a nucleus or cell body larger than the template,
it is the texture under the point (nucleoli, chromatin), which moves inside
the object as the object deforms, so a template-corrected track slides
away from the object's centre over a few dozen frames. For such objects
the centre itself is measurable: the intensity-weighted centroid of the
object above its surroundings, in a disc the size of the object.

:func:`blob_scales` measures the size of the bright blob under each point
(the scale at which the scale-normalised Laplacian of Gaussian peaks [1]_:
``sigma = R / sqrt(2)`` for a disc of radius ``R``, the Gaussian's own
``sigma`` for a Gaussian spot); :func:`blob_centroids` finds the centroids
by mean shift. Both are vectorised over points and read only patches
around them.

References
----------
.. [1] T. Lindeberg, "Feature detection with automatic scale selection",
   IJCV 30(2), 79-116, 1998. :DOI:`10.1023/A:1008045108935`
"""

import cv2
import numpy as np

from .template import patches_at

# Scales (px) at which the Laplacian is evaluated: four per octave, from
# spots of a pixel to objects of about 45 px radius.
SCALES = 2.0 ** np.arange(0.0, 5.01, 0.25)
# The background of an object is the median of the ring this many px wide
# just outside its disc.
_RING_WIDTH = 4
# Points at which each of four circles across that ring is sampled.
_RING_SAMPLES = 48
# Each pyramid level is blurred by cv2.pyrDown's 5-tap kernel (variance 1
# in the pixels of the level it came from) before it is decimated; a level
# is used for a scale once the scale is this many of its pixels.
_MIN_LEVEL_SCALE = 1.5


def blob_scales(frame, points, *, scales=SCALES):
    """Scale of the bright blob under each point.

    Parameters
    ----------
    frame : ndarray, shape (Y, X)
        Any real dtype; used as float32.
    points : ndarray, shape (N, 2)
        ``[y, x]`` positions.
    scales : ndarray, shape (S,), optional
        Increasing scales (px) to try.

    Returns
    -------
    sigma : ndarray, shape (N,), float32
        Scale at which ``-sigma**2 * laplacian(gaussian(frame, sigma))``
        is largest at the point, refined between the tried scales.
    response : ndarray, shape (N,), float32
        That largest response, in the frame's intensity units: about 0.74
        times the contrast of a uniform disc, 0.5 times the amplitude of a
        Gaussian spot, near zero or negative on texture and dark features.
    peaked : ndarray, shape (N,), bool
        The largest response lies strictly inside the tried scales (at
        either end, the point is on no blob of a size that was tried).

    Notes
    -----
    Each scale is evaluated on the Gaussian pyramid level where it spans
    at least 1.5 of the level's pixels, with the blur the pyramid already
    applied subtracted, so every scale costs the same small patch.
    """
    frame = np.asarray(frame, np.float32)
    points = np.asarray(points, np.float32).reshape(-1, 2)
    n = len(points)
    if n == 0:
        empty = np.zeros(0, np.float32)
        return empty, empty.copy(), np.zeros(0, bool)
    levels = [frame]
    responses = []
    for scale in scales:
        level = max(0, int(np.floor(np.log2(scale / _MIN_LEVEL_SCALE))))
        while len(levels) <= level and min(levels[-1].shape) >= 2:
            levels.append(cv2.pyrDown(levels[-1]))
        level = min(level, len(levels) - 1)
        factor = 2.0**level
        # Blur of level L in original px: variances 4**l for l < L add up.
        blur = np.sqrt((4.0**level - 1) / 3)
        sigma = np.sqrt(scale**2 - blur**2) / factor
        half = int(np.ceil(3 * sigma))
        # Level pixel i lies at original pixel i * factor.
        patch = patches_at(levels[level], points / factor - half, 2 * half + 1)
        offsets = np.arange(-half, half + 1, dtype=np.float32)
        gaussian = np.exp(-(offsets**2) / (2 * sigma**2))
        gaussian /= gaussian.sum()
        second = gaussian * (offsets**2 - sigma**2) / sigma**4
        laplacian = np.einsum(
            'nij,i,j->n', patch, second, gaussian
        ) + np.einsum('nij,i,j->n', patch, gaussian, second)
        responses.append(-(scale**2) * laplacian / factor**2)
    responses = np.stack(responses)
    best = np.argmax(responses, axis=0)
    index = np.arange(n)
    # A parabola through the best scale and its neighbours (in log scale).
    middle = np.clip(best, 1, len(scales) - 2)
    below, at, above = (responses[middle + k, index] for k in (-1, 0, 1))
    curvature = below - 2 * at + above
    safe = np.where(curvature < 0, curvature, -1.0)
    shift = np.where(curvature < 0, 0.5 * (below - above) / safe, 0.0)
    step = np.log(scales[1] / scales[0])
    sigma = np.exp(np.log(scales[middle]) + np.clip(shift, -1, 1) * step)
    peaked = (best > 0) & (best < len(scales) - 1)
    return (
        sigma.astype(np.float32),
        responses[best, index].astype(np.float32),
        peaked,
    )


def blob_centroids(frame, points, *, radii, max_iterations=10, epsilon=0.01):
    """Intensity-weighted centres of the objects under ``points``.

    Mean shift: the centre of each disc of radius ``radii`` moves to the
    centroid of the intensity inside it above the background, the median of
    the 4 px ring around the disc, until it moves less than ``epsilon``.

    Parameters
    ----------
    frame : ndarray, shape (Y, X)
        Any real dtype; used as float32. Outside the frame the nearest edge
        pixel is repeated.
    points : ndarray, shape (N, 2)
        ``[y, x]`` starting positions.
    radii : float or ndarray, shape (N,)
        Radius (px) of each object's disc.
    max_iterations : int, optional
    epsilon : float, optional
        Stop once the centre moves less than this (px).

    Returns
    -------
    centres : ndarray, shape (N, 2), float32
        ``[y, x]``; the starting position where nothing stands above the
        background.
    mass : ndarray, shape (N,), float32
        Summed intensity above the background in the final disc (0 where
        nothing stands out).
    """
    frame = np.asarray(frame, np.float32)
    centres = np.array(points, np.float32).reshape(-1, 2)
    n = len(centres)
    mass = np.zeros(n, np.float32)
    radii = np.broadcast_to(np.asarray(radii, np.float32), (n,))
    # Discs of similar size share one patch size; a few large ones do not
    # inflate the patches of many small ones.
    order = np.argsort(radii)
    groups = np.split(
        order, np.flatnonzero(np.diff(np.ceil(np.log2(radii[order])))) + 1
    )
    for group in groups:
        if len(group):
            centres[group], mass[group] = _mean_shift(
                frame, centres[group], radii[group], max_iterations, epsilon
            )
    return centres, mass


def _mean_shift(frame, centres, radii, max_iterations, epsilon):
    half = int(np.ceil(radii.max()))
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    disc = squared <= radii[:, None, None] ** 2
    # The ring is sampled at a fixed number of points, so that its median
    # is one vectorised call whatever the radii.
    angles = np.linspace(0, 2 * np.pi, _RING_SAMPLES, endpoint=False)
    ring_radii = radii[:, None] + np.linspace(0.5, _RING_WIDTH, 4)[None]
    ring = np.stack(
        [
            ring_radii[:, :, None] * np.sin(angles),
            ring_radii[:, :, None] * np.cos(angles),
        ],
        axis=-1,
    ).reshape(len(radii), -1, 2)
    mass = np.zeros(len(centres), np.float32)
    active = np.ones(len(centres), bool)
    for _ in range(max_iterations):
        index = np.flatnonzero(active)
        if not len(index):
            break
        patch = patches_at(frame, centres[index] - half, 2 * half + 1)
        background = np.median(
            sample(frame, centres[index, None] + ring[index]), axis=1
        )
        weight = (
            np.clip(patch - background[:, None, None], 0, None) * disc[index]
        )
        total = weight.sum(axis=(1, 2))
        safe = np.maximum(total, np.finfo(np.float32).tiny)
        shift = np.stack(
            [
                (weight.sum(axis=2) @ offsets) / safe,
                (weight.sum(axis=1) @ offsets) / safe,
            ],
            axis=1,
        )
        shift[total <= 0] = 0
        centres[index] += shift
        mass[index] = total
        active[index] = (total > 0) & (np.hypot(*shift.T) >= epsilon)
    return centres, mass


def sample(image, coordinates):
    """``image`` sampled bilinearly at float ``coordinates`` (..., 2)
    ``[y, x]``; outside the image the nearest edge pixel is repeated."""
    height, width = image.shape
    coordinates = np.asarray(coordinates, np.float32)
    y = np.clip(coordinates[..., 0], 0, height - 1)
    x = np.clip(coordinates[..., 1], 0, width - 1)
    top = np.minimum(np.floor(y).astype(np.intp), height - 2)
    left = np.minimum(np.floor(x).astype(np.intp), width - 2)
    fy, fx = y - top, x - left
    if height == 1 or width == 1:
        return image[np.rint(y).astype(np.intp), np.rint(x).astype(np.intp)]
    upper = image[top, left] * (1 - fx) + image[top, left + 1] * fx
    lower = image[top + 1, left] * (1 - fx) + image[top + 1, left + 1] * fx
    return upper * (1 - fy) + lower * fy
