"""Confidence: did this estimate actually match?

:func:`match_confidence` combines two scores, each 0.5 at its own decision
boundary, by taking the smaller one, so that ``confidence >= 0.5`` means
*both* "the reference is textured enough to measure motion here" and "the
moving frame, warped with the estimated flow, looks like the reference
here":

* the **texture score** ``r / (r + t)`` of the reliability ``r`` (see
  :mod:`napari_flowscope.engine.reliability`) and the reliability
  threshold ``t`` (1 everywhere when ``t == 0``);
* the **match score**, a ramp of the local zero-mean normalised
  cross-correlation ``rho`` between the reference and the registered frame
  in a Gaussian window of :data:`CONFIDENCE_WINDOW` px: 0 at
  ``rho <= 0.4``, 0.5 at :data:`MATCH_CORRELATION` and 1 at ``rho >= 0.9``;
  0 where ``x + w(x)`` falls outside the moving frame (nothing was
  compared there).

The correlation is local, so gain and offset changes (bleaching, uneven
illumination) do not lower it, and it is computed on slightly smoothed
images (a ``cv2.pyrDown`` level, i.e. a ~1 px Gaussian), so that
photon noise lowers it little.  A window of 10 px holds several
independent Lucas-Kanade windows, so a flow that has merely fitted itself
to an unrelated image (motion beyond the pyramid's reach, a different
field of view, pure noise) reaches ``rho`` of 0.2 on average and rarely
above 0.6, while correctly matched texture scores 0.9 to 1 (measured on
the Middlebury pairs, photon-limited synthetic sequences and such
failures; see docs/benchmarks.md).

Everything here works on arrays of any dimension (2-D frames or 3-D
volumes), so a volume engine can report the same confidence.
"""

from __future__ import annotations

import cv2
import numpy as np

from ._filters import gaussian_nd

__all__ = [
    'COLLAPSED_TRUSTED_FRACTION',
    'CONSISTENCY_TOLERANCE',
    'CONFIDENCE_THRESHOLD',
    'CONFIDENCE_WINDOW',
    'MATCH_CORRELATION',
    'LocalCorrelation',
    'combine_scores',
    'consistency_score',
    'match_confidence',
    'match_score',
    'standardize',
    'texture_score',
    'trusted_fraction',
]

#: A displacement is trusted when its confidence is at least this.
CONFIDENCE_THRESHOLD = 0.5
#: A frame whose :func:`trusted_fraction` is below this is flagged: its
#: match collapsed (good pairs measured 0.8 to 1, noisy 2-photon frames
#: about 0.45; motion beyond reach, unrelated frames and noise below 0.1).
COLLAPSED_TRUSTED_FRACTION = 0.3
#: Standard deviation (px, full resolution) of the correlation window.
#: Measured against 8 px on the benchmark's confidence table: the
#: ``'fast'`` preset's 3 px windows fit an out-of-reach shift locally, and
#: 12 % of it was trusted at 8 px, 7 % at 10 px (every preset lower);
#: good pairs, the share of their trusted pixels that are wrong and noisy
#: 2-photon frames (SIMA) kept or gained trusted pixels.
CONFIDENCE_WINDOW = 10.0
#: Round-trip miss (px) of forward-backward consistency that scores 0.5
#: (methods that check it, see :func:`consistency_score`).
CONSISTENCY_TOLERANCE = 0.5
#: Local correlation that gives a match score of 0.5.
MATCH_CORRELATION = 0.65
# Width of the match ramp: rho from MATCH_CORRELATION - half to + half
# maps onto scores 0 to 1.
_MATCH_RAMP = 0.5
# Local variances below this fraction of the image's mean local variance
# count as flat: their correlation is noise over noise.
_FLAT_VARIANCE = 1e-3


class LocalCorrelation:
    """Local normalised cross-correlation with one fixed reference.

    The reference's local mean and variance are computed once.

    Parameters
    ----------
    reference : ndarray, shape (M, N[, P]), float32
        Reference image (or volume), already smoothed as wanted.
    window : float or sequence of float
        Standard deviation (px of ``reference``, or one per axis) of the
        Gaussian window.
    blur : callable, optional
        ``blur(image, window) -> float32 array``, the Gaussian window;
        default :func:`~napari_flowscope.engine._filters.gaussian_nd`
        (volumes pass their faster separable OpenCV filter).
    """

    def __init__(self, reference, *, window, blur=None):
        reference = np.ascontiguousarray(reference, dtype=np.float32)
        self.window = window
        self._blur = gaussian_nd if blur is None else blur
        self._reference = reference
        self._mean = self._blur(reference, self.window)
        variance = self._blur(reference * reference, self.window)
        variance -= self._mean * self._mean
        self._variance = np.maximum(variance, np.float32(0))
        self._floor = np.float32(
            _FLAT_VARIANCE * float(self._variance.mean()) + 1e-30
        )

    def __call__(self, image):
        """Local correlation ``rho`` of ``image`` with the reference.

        Parameters
        ----------
        image : ndarray, shape of the reference, float32
            Must be finite.

        Returns
        -------
        ndarray, shape of the reference, float32
            -1 to 1; 0 where either image is flat in the window.
        """
        image = np.asarray(image, dtype=np.float32)
        mean = self._blur(image, self.window)
        variance = self._blur(image * image, self.window)
        variance -= mean * mean
        np.maximum(variance, 0, out=variance)
        covariance = self._blur(image * self._reference, self.window)
        covariance -= mean * self._mean
        floor = np.float32(_FLAT_VARIANCE * float(variance.mean()) + 1e-30)
        flat = (variance < floor) | (self._variance < self._floor)
        variance *= self._variance
        np.sqrt(variance, out=variance)
        np.maximum(variance, np.float32(1e-30), out=variance)
        rho = np.divide(covariance, variance, out=covariance)
        np.clip(rho, -1, 1, out=rho)
        rho[flat] = 0
        return rho


def match_score(rho, inside=None):
    """Match score 0-1 of local correlations (see the module notes).

    Parameters
    ----------
    rho : ndarray, float32
        Local correlation between reference and registered frame.
    inside : ndarray of bool, shape of ``rho``, optional
        Where ``x + w(x)`` lies inside the moving frame; the score is 0
        elsewhere.

    Returns
    -------
    ndarray, shape of ``rho``, float32
    """
    score = rho - np.float32(MATCH_CORRELATION - _MATCH_RAMP / 2)
    score *= np.float32(1 / _MATCH_RAMP)
    np.clip(score, 0, 1, out=score)
    if inside is not None:
        score[~inside] = 0
    return score


def texture_score(reliability, reliability_threshold):
    """Texture score ``r / (r + t)``: 0.5 exactly at the threshold ``t``.

    Parameters
    ----------
    reliability : ndarray, float32
    reliability_threshold : float
        With 0 every pixel counts as textured (score 1).

    Returns
    -------
    ndarray, shape of ``reliability``, float32
    """
    reliability = np.asarray(reliability, dtype=np.float32)
    if reliability_threshold <= 0:
        return np.ones(reliability.shape, np.float32)
    denominator = reliability + np.float32(reliability_threshold)
    return reliability / denominator


def combine_scores(match, texture):
    """Confidence from a match and a texture score: their minimum."""
    return np.minimum(match, texture).astype(np.float32, copy=False)


def consistency_score(forward, backward):
    """Forward-backward consistency score 0-1 of two 2-D flows.

    ``forward`` maps the reference onto the moving frame, ``backward`` the
    moving frame onto the reference; where both are right,
    ``forward(x) + backward(x + forward(x)) = 0``.  The score is 1 where
    that round trip misses by at most 0.25 px, 0.5 at
    :data:`CONSISTENCY_TOLERANCE` (0.5 px), 0 from 0.75 px (Sundaram, Brox
    & Keutzer 2010 use the same test to find occlusions).

    Parameters
    ----------
    forward, backward : ndarray, shape (H, W, 2), float32

    Returns
    -------
    ndarray, shape (H, W), float32
    """
    forward = np.ascontiguousarray(forward, np.float32)
    back = cv2.remap(
        np.ascontiguousarray(backward, np.float32),
        forward,
        None,
        cv2.INTER_LINEAR | cv2.WARP_RELATIVE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    back += forward
    miss = np.sqrt(back[..., 0] ** 2 + back[..., 1] ** 2)
    score = (np.float32(CONSISTENCY_TOLERANCE + 0.25) - miss) * np.float32(2)
    np.clip(score, 0, 1, out=score)
    return score


def match_confidence(
    reference,
    registered,
    reliability,
    *,
    reliability_threshold,
    inside=None,
    window=CONFIDENCE_WINDOW,
    smoothing=1.0,
):
    """Confidence of a flow estimate, from its result (any dimension).

    Parameters
    ----------
    reference, registered : ndarray, shape (M, N[, P])
        The reference and the moving frame warped onto it with the
        estimated flow, any real dtype (local correlation ignores gain
        and offset).
    reliability : ndarray, shape (M, N[, P]), float32
        Texture reliability of the reference.
    reliability_threshold : float
        Reliability at which the texture score is 0.5.
    inside : ndarray of bool, shape (M, N[, P]), optional
        Where ``x + w(x)`` lies inside the moving frame.
    window : float or sequence of float
        Correlation window (px, or per axis for anisotropic voxels).
    smoothing : float or sequence of float
        Gaussian applied to both images first, against noise (the 2-D
        estimator's half-resolution pyramid level smooths about as much
        as the default).

    Returns
    -------
    ndarray, shape (M, N[, P]), float32
        Confidence 0-1; ``>= CONFIDENCE_THRESHOLD`` means trusted.
    """
    reference = gaussian_nd(standardize(reference), smoothing)
    registered = gaussian_nd(standardize(registered), smoothing)
    rho = LocalCorrelation(reference, window=window)(registered)
    return combine_scores(
        match_score(rho, inside),
        texture_score(reliability, reliability_threshold),
    )


def standardize(image):
    """float32 copy with zero mean and unit deviation (0 if constant).

    Local variances of raw intensities (``E[x^2] - E[x]^2`` of uint16
    values) lose most of their float32 precision; of these, none.
    """
    image = np.asarray(image, np.float32)
    std = float(image.std(dtype=np.float64))
    centred = image - np.float32(image.mean(dtype=np.float64))
    return centred * np.float32(1 / std) if std > 0 else centred


def trusted_fraction(confidence, reliability, reliability_threshold):
    """Share of the textured pixels whose displacement is trusted.

    Parameters
    ----------
    confidence, reliability : ndarray, same shape
    reliability_threshold : float

    Returns
    -------
    float
        Pixels with ``confidence >= CONFIDENCE_THRESHOLD`` over pixels with
        ``reliability >= reliability_threshold`` (0 to 1); NaN when no
        pixel is textured (nothing could be measured).
    """
    textured = np.asarray(reliability) >= np.float32(reliability_threshold)
    n_textured = np.count_nonzero(textured)
    if n_textured == 0:
        return float('nan')
    trusted = np.asarray(confidence) >= np.float32(CONFIDENCE_THRESHOLD)
    return np.count_nonzero(trusted & textured) / n_textured
