"""Input checks and robust intensity normalisation of frames."""

from __future__ import annotations

import cv2
import numpy as np

from ._filters import gaussian, gaussian_window

# Percentiles mapped to 0 and 1.  Robust to hot pixels and saturation; when
# they coincide (a sparse image that is mostly background) the extremes are
# used instead.
_LOW_PERCENTILE = 0.5
_HIGH_PERCENTILE = 99.5
# Percentiles are estimated on a regular subsample of at most this many
# pixels, which keeps normalisation well under a millisecond at 512 x 512.
_MAX_SAMPLES = 1 << 14
#: Default floor of the local deviation in :func:`local_normalize`, as a
#: fraction of the image's mean local deviation.
LOCAL_FLOOR = 0.2
_TINY = np.finfo(np.float32).tiny
# Frames whose magnitude is outside this range are rescaled (by a power of
# two, which is exact) so that squared intensities neither overflow nor
# underflow in float32.
_MAGNITUDE_RANGE = (1e-10, 1e15)
# A frame whose standard deviation is below this fraction of its mean is
# constant to float32 precision.
_CONSTANT_RELATIVE_STD = 1e-6


def check_frame(image, name):
    """Validate a 2-D real frame and return it as an array.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, is smaller than 2 x 2, has a non-real
        dtype, or contains NaN or infinity.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(
            f'{name} must be a 2-D (H, W) image; got shape {image.shape}'
        )
    if min(image.shape) < 2:
        raise ValueError(
            f'{name} must be at least 2 x 2 pixels; got shape {image.shape}'
        )
    return check_real(image, name)


def check_real(image, name):
    """Raise unless ``image`` (an array of any dimension) has an integer
    or floating dtype and only finite values; return it.

    The frame and volume checks share it after their shape checks.
    """
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer)
        or np.issubdtype(image.dtype, np.floating)
    ):
        raise ValueError(
            f'{name} must have an integer or floating dtype; got {image.dtype}'
        )
    if np.issubdtype(image.dtype, np.floating) and not _all_finite(image):
        raise ValueError(f'{name} contains NaN or infinite values')
    return image


def check_init(init, shape):
    """A warm-start flow as float32, checked against ``shape``.

    Parameters
    ----------
    init : array_like or None
    shape : tuple of int
        Expected shape, ``(H, W, 2)`` for frames, ``(Z, Y, X, 3)`` for
        volumes.

    Returns
    -------
    ndarray, float32, or None (for ``init=None``)
    """
    if init is None:
        return None
    init = np.asarray(init, dtype=np.float32)
    if init.shape != tuple(shape):
        raise ValueError(
            f'init must have shape {tuple(shape)}; got {init.shape}'
        )
    if not np.isfinite(init).all():
        raise ValueError('init contains NaN or infinite values')
    return init


def _all_finite(image):
    # Any NaN or infinity makes the sum non-finite: a cheap screen, which
    # overflow can trip; only then look for the culprit.
    with np.errstate(over='ignore', invalid='ignore'):
        if np.isfinite(image.sum()):
            return True
    return bool(np.isfinite(image).all())


def intensity_range(image):
    """Robust ``(low, high)`` intensity range of a frame (floats)."""
    step = max(1, int(np.ceil(np.sqrt(image.size / _MAX_SAMPLES))))
    sample = image[::step, ::step]
    low, high = np.percentile(sample, (_LOW_PERCENTILE, _HIGH_PERCENTILE))
    if high <= low:
        low, high = image.min(), image.max()
    return float(low), float(high)


def normalize(image, low=None, high=None):
    """Map intensities affinely so that ``low -> 0`` and ``high -> 1``.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Any real dtype.
    low, high : float, optional
        Intensity range; default :func:`intensity_range` of ``image``.

    Returns
    -------
    normalized : ndarray, shape (H, W), float32
        All zeros when the range is empty (a constant frame).
    is_constant : bool
        True when the range is empty.
    """
    if low is None or high is None:
        low, high = intensity_range(image)
    normalized = image.astype(np.float32, copy=True)
    if not high > low:
        normalized.fill(0)
        return normalized, True
    normalized -= np.float32(low)
    normalized *= np.float32(1.0 / (high - low))
    return normalized, False


def match_statistics(image, mean, std):
    """Map ``image`` affinely onto a given mean and standard deviation.

    Whole-image statistics are far more stable than percentiles of a
    subsample, so matching a moving frame to the normalised reference this
    way leaves almost no gain error (which would bias the flow) while
    still cancelling global bleaching.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Any real dtype.
    mean, std : float
        Target statistics.

    Returns
    -------
    matched : ndarray, shape (H, W), float32
        All zeros for a constant frame.
    is_constant : bool
    """
    matched = image.astype(np.float32, copy=True)
    own_mean, own_std = (float(s[0, 0]) for s in cv2.meanStdDev(matched))
    if not own_std > _CONSTANT_RELATIVE_STD * abs(own_mean):
        matched.fill(0)
        return matched, True
    gain = std / own_std
    matched *= np.float32(gain)
    matched += np.float32(mean - own_mean * gain)
    return matched, False


def local_normalize(image, *, sigma, floor=LOCAL_FLOOR, presmooth=0.0):
    """Locally normalised image: zero local mean, unit local deviation.

    The one local normalisation of the engine.  Smooth illumination
    changes (bleaching, a moving lamp, vignetting) multiply and offset
    intensities locally; after this normalisation they cancel, so
    brightness constancy holds again.

    Parameters
    ----------
    image : ndarray, shape (H, W), float32
    sigma : float
        Standard deviation (px) of the Gaussian window of the local mean
        and variance.
    floor : float
        The local variance is floored at ``floor ** 2`` times its image
        mean, so flat, noisy regions are not amplified to full contrast.
    presmooth : float
        Standard deviation (px) of a Gaussian applied first, against
        noise (0: none).

    Returns
    -------
    ndarray, shape (H, W), float32
        A new array.
    """
    if presmooth > 0:
        image = gaussian(image, presmooth)
    # OpenCV arithmetic: it releases the GIL for threads registering other
    # frames.
    centred = cv2.subtract(image, gaussian_window(image, sigma))
    variance = gaussian_window(cv2.multiply(centred, centred), sigma)
    cv2.max(variance, 0, dst=variance)
    # The floor is relative, so the result does not depend on the scale of
    # the input; ``tiny`` only guards an all-zero variance.
    floor = floor**2 * cv2.mean(variance)[0] + float(_TINY)
    cv2.add(variance, floor, dst=variance)
    cv2.sqrt(variance, dst=variance)
    return cv2.divide(centred, variance)


def as_float32(image):
    """Contiguous float32 copy of a frame, and whether it is constant.

    Frames whose magnitude is outside 1e-10 to 1e15 are rescaled by a
    power of two, so that squared intensities stay finite and normal in
    float32.

    Returns
    -------
    image : ndarray, shape (H, W), float32
    is_constant : bool
    """
    converted = np.ascontiguousarray(image, dtype=np.float32)
    low, high = cv2.minMaxLoc(converted)[:2]
    magnitude = max(abs(low), abs(high))
    if magnitude > 0 and not (
        _MAGNITUDE_RANGE[0] <= magnitude <= _MAGNITUDE_RANGE[1]
    ):
        scale = np.float32(2.0 ** -np.ceil(np.log2(magnitude)))
        converted = converted * scale
    return converted, not high > low
