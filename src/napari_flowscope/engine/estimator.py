"""Public flow estimation: :class:`FlowEstimator` and :func:`estimate_flow`."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ._normalize import (
    as_float32,
    check_frame,
    check_init,
    local_normalize,
    match_statistics,
    normalize,
)
from .confidence import (
    CONFIDENCE_THRESHOLD,
    CONFIDENCE_WINDOW,
    LocalCorrelation,
    combine_scores,
    consistency_score,
    match_score,
    standardize,
    texture_score,
)
from .methods import get_method
from .motion_models import GlobalMotion, motion_field
from .params import FlowParams
from .pyramid import (
    build_pyramid,
    coarse_to_fine,
    downsample_flow,
    level_count,
)
from .reliability import reliability_map

__all__ = ['FlowEstimator', 'FlowField', 'estimate_flow']

#: Window (px) of the local normalisation of ``'local'`` methods.  Chosen
#: on the benchmark: against 3.2 px, 6 px keeps noisy 2-photon frames with
#: 12 px motion registered (SIMA: worst frame NCC 0.60 -> 0.76) and dark,
#: bleached photon-limited frames on track, for 0.01 px more error on the
#: Middlebury Grove2 photograph.
LOCAL_WINDOW = 6.0


@dataclass(frozen=True)
class FlowField:
    """A dense displacement field, its reliability and its confidence.

    Attributes
    ----------
    w : ndarray, shape (H, W, 2), float32
        ``[u, v] = [x, y]`` displacement in pixels such that
        ``moving(x + w(x)) ~ reference(x)``.
    reliability : ndarray, shape (H, W), float32
        Smallest eigenvalue of the Gaussian-weighted structure tensor of the
        normalised reference (see :func:`estimate_flow`); 0 where nothing
        can be measured.  It depends on the reference only, so all
        estimates of one :class:`FlowEstimator` share one read-only array.
    confidence : ndarray, shape (H, W), float32
        0 to 1: whether this estimate actually matched, combined with the
        texture reliability; ``>= CONFIDENCE_THRESHOLD`` (0.5) means
        "trust this displacement" (see
        :mod:`napari_flowscope.engine.confidence`).
    """

    w: np.ndarray
    reliability: np.ndarray
    confidence: np.ndarray


class FlowEstimator:
    """Flow from many moving frames to one fixed reference.

    Everything that depends only on the reference (normalisation, pyramid,
    each level's solver state, reliability, the reference side of the
    confidence) is computed once here, so :meth:`estimate` costs only the
    moving side.  One estimator may be used from several threads at once.
    See :func:`estimate_flow` for the methods and the reliability scale.

    Parameters
    ----------
    reference : array_like, shape (H, W)
        Reference frame, any real dtype.
    params : FlowParams, optional
        Default ``FlowParams()`` (the ``'balanced'`` preset).

    Attributes
    ----------
    reference : ndarray, shape (H, W), float32
        The normalised reference (robust 0.5 and 99.5 percentiles mapped
        to 0 and 1).
    reliability : ndarray, shape (H, W), float32
        The reference's texture reliability (read-only).
    params : FlowParams
    """

    def __init__(self, reference, params=None):
        if params is None:
            params = FlowParams()
        if not isinstance(params, FlowParams):
            raise ValueError(
                f'params must be a FlowParams or None; got {type(params)}'
            )
        reference = check_frame(reference, 'reference')
        self.params = params
        self.method = get_method(params.method)
        self.shape = reference.shape
        self.reference, self._constant = normalize(reference)
        # Methods whose flow can fit itself to an unrelated frame are
        # trusted only where a backward estimate undoes them.
        self._check_consistency = self.method.forward_backward
        self._input = reference if self._check_consistency else None
        self._local = self.method.intensities == 'local'
        if not self._local:
            mean, std = cv2.meanStdDev(self.reference)
            self._mean, self._std = float(mean[0, 0]), float(std[0, 0])
        levels = level_count(self.shape, params.levels)
        # Reliability keeps its documented scale: it is measured on the
        # globally normalised reference, whatever the solver matches.
        reliability = (
            np.zeros(self.shape, np.float32)
            if self._constant
            else reliability_map(self.reference, params.sigma)
        )
        reliability.flags.writeable = False
        self.reliability = reliability
        self._pyramid = build_pyramid(self._prepare(self.reference), levels)
        self._shapes = [level.shape for level in self._pyramid]
        self._solver = self.method.make_solver(params, reliability)
        self._states = None
        if not self._constant:
            self._states = [
                self._solver.prepare(image, level=index)
                for index, image in enumerate(self._pyramid)
            ]
            # The match is judged on the plain (globally normalised)
            # frames, where noise in dim regions is not blown up, and at
            # half resolution: pyrDown smooths photon noise, and the wide
            # window costs a quarter.
            self._correlation = LocalCorrelation(
                cv2.pyrDown(self.reference), window=CONFIDENCE_WINDOW / 2
            )
            self._texture = texture_score(
                reliability, params.reliability_threshold
            )
        self._motion = None
        if params.motion_model != 'dense' and not self._constant:
            self._motion = GlobalMotion(
                self.reference, model=params.motion_model
            )

    def _prepare(self, normalized):
        if self._local and not self._constant:
            return local_normalize(normalized, sigma=LOCAL_WINDOW)
        return normalized

    def estimate(self, moving, *, init=None):
        """Flow from the reference to ``moving``.

        Parameters
        ----------
        moving : array_like, shape (H, W)
            Any real dtype.
        init : array_like, shape (H, W, 2), optional
            Warm start, e.g. the previous frame's flow.

        Returns
        -------
        FlowField
        """
        checked = moving = check_frame(moving, 'moving')
        if moving.shape != self.shape:
            raise ValueError(
                f'moving has shape {moving.shape} but the reference has '
                f'shape {self.shape}'
            )
        init = check_init(init, (*self.shape, 2))
        if self._local:
            # Local normalisation ignores gain and offset, so the moving
            # frame needs no intensity matching.
            moving, moving_constant = as_float32(moving)
        else:
            moving, moving_constant = match_statistics(
                moving, self._mean, self._std
            )
        if self._constant or moving_constant:
            return FlowField(
                w=np.zeros((*self.shape, 2), np.float32),
                reliability=self.reliability,
                confidence=np.zeros(self.shape, np.float32),
            )
        moving_pyramid = build_pyramid(
            self._prepare(moving), len(self._pyramid)
        )
        half_moving = cv2.pyrDown(moving)
        solver, states = self._solver, self._states

        def solve_level(level, w):
            return solver.solve(states[level], moving_pyramid[level], w)

        if self._motion is not None:
            w = self._global_motion(solve_level, moving, half_moving, init)
        else:
            w = coarse_to_fine(self._shapes, solve_level, init=init)
            w = np.ascontiguousarray(w, dtype=np.float32)
        confidence = self._confidence(w, half_moving)
        if self._check_consistency and self._motion is None:
            # The flow back from the moving frame must undo this one.
            backward = FlowEstimator(checked, self.params)
            backward._check_consistency = False
            np.minimum(
                confidence,
                consistency_score(w, backward.estimate(self._input).w),
                out=confidence,
            )
        return FlowField(
            w=w, reliability=self.reliability, confidence=confidence
        )

    def _global_motion(self, solve_level, moving, half_moving, init):
        """A global model's field (see :mod:`.motion_models`).

        The model is fitted to the flow at half resolution, each vector
        weighted by its confidence (0 below the trust threshold), and then
        refined on the images at full resolution: the finest and costliest
        flow level would only add noise to the fit.
        """
        if len(self._shapes) == 1:
            w = coarse_to_fine(self._shapes, solve_level, init=init)
            half_w = cv2.pyrDown(w) * np.float32(0.5)
        else:
            if init is not None:
                init = downsample_flow(init, self._shapes[1], 1)
            half_w = coarse_to_fine(
                self._shapes[1:],
                lambda level, w: solve_level(level + 1, w),
                init=init,
            )
        half_w = np.ascontiguousarray(half_w, dtype=np.float32)
        # pyrDown: half-resolution pixel i sits on full-resolution pixel 2 i
        confidence = combine_scores(
            self._half_match(half_w, half_moving), self._texture[::2, ::2]
        )
        weights = np.where(
            confidence >= CONFIDENCE_THRESHOLD, confidence, np.float32(0)
        )
        matrix = self._motion.estimate(
            half_w, moving, weights=weights, level=1
        )
        return motion_field(matrix, self.shape)

    def _confidence(self, w, moving):
        """Match score of the half-resolution warp, with the texture score.

        ``moving`` is the half-resolution moving frame.
        """
        height, width = moving.shape
        half_w = cv2.pyrDown(w, dstsize=(width, height))
        half_w *= np.float32(0.5)
        match = cv2.pyrUp(
            self._half_match(half_w, moving), dstsize=self.shape[::-1]
        )
        return combine_scores(match, self._texture)

    def _half_match(self, half_w, moving):
        """Match score at half resolution of the half-resolution flow."""
        height, width = moving.shape
        warped = cv2.remap(
            standardize(moving),
            half_w,
            None,
            cv2.INTER_LINEAR | cv2.WARP_RELATIVE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        # Nothing was compared where x + w(x) lies outside the moving frame
        # (by more than half a pixel, where bilinear samples still agree).
        x = half_w[..., 0] + np.arange(width, dtype=np.float32)
        y = half_w[..., 1] + np.arange(height, dtype=np.float32)[:, None]
        inside = (x >= -0.5) & (x <= width - 0.5)
        inside &= (y >= -0.5) & (y <= height - 0.5)
        return match_score(self._correlation(warped), inside)


def estimate_flow(reference, moving, params=None, *, init=None):
    """Dense optical flow from ``reference`` to ``moving``.

    Parameters
    ----------
    reference, moving : array_like, shape (H, W)
        Frames of any real dtype (uint8, uint16, float, ...).  The reference
        is normalised by its robust intensity range (0.5 and 99.5
        percentiles mapped to 0 and 1), so one ``reliability_threshold``
        works across dtypes; global bleaching cancels (Lucas-Kanade
        normalises contrast locally, the variational method matches the
        moving frame's mean and deviation to the reference).
    params : FlowParams, optional
        Default ``FlowParams()`` (the ``'balanced'`` preset).
    init : array_like, shape (H, W, 2), optional
        Initial flow (warm start), e.g. the previous frame's.

    Returns
    -------
    FlowField
        ``w`` float32 (H, W, 2) ``[x, y]`` displacement such that
        ``registered(x) = moving(x + w(x)) ~ reference(x)``
        (see :func:`napari_flowscope.engine.warp`), ``reliability`` and
        ``confidence``, each float32 (H, W).

    Notes
    -----
    **Reliability** is the smaller eigenvalue of the structure tensor
    ``G_sigma * (grad I grad I^T)`` of the normalised reference ``I``
    (Scharr gradients, Gaussian window of standard deviation ``sigma``), in
    (normalised intensity / px) ** 2.  Gradients of random directions and
    rms magnitude ``g`` per px give about ``g ** 2 / 2``: textured
    fluorescence typically 1e-3 to 1e-2, camera noise on a flat background
    1e-6 to 3e-5, a uniform region 0.  The default threshold 1e-4
    corresponds to gradients of about 1.4 % of the intensity range per px.
    A straight edge, however strong, has a small eigenvalue: motion along
    it cannot be measured (the aperture problem).

    **Lucas-Kanade** (the default method) matches locally
    contrast-normalised frames (zero mean and unit deviation in a window
    of a few px), so bleaching and smooth, even moving, illumination changes do
    not read as motion, and estimates coarse to fine with warping.  Pixels
    whose reliability is below ``params.reliability_threshold`` receive no
    update at full resolution; the final flow is then the Gaussian average
    (window ``sigma``) of the reliable pixels' flow, which also fills the
    unreliable ones, and regions without reliable pixels nearby are filled
    from ever wider neighbourhoods.  So no pixel gets the unstable
    solution of an ill-conditioned system.

    **Confidence** (0 to 1, ``>= 0.5`` trusted) says whether this
    estimate matched: the local correlation between the reference and the
    moving frame warped with ``w``, combined with the reliability (see
    :mod:`napari_flowscope.engine.confidence`).  Unlike the reliability
    it drops where the match failed: motion beyond the pyramid's reach,
    an unrelated frame, noise, content that left the frame.

    **Methods** come from the method table
    (:mod:`napari_flowscope.engine.methods`); ``params.method`` picks one.

    When either frame is constant the flow and the confidence are all
    zero (the reliability is the reference's: zero for a constant one).

    Raises
    ------
    ValueError
        For frames that are not 2-D, differ in shape, have a non-real dtype
        or contain NaN or infinity, and for an ``init`` of the wrong shape
        or with NaN or infinity.
    """
    return FlowEstimator(reference, params).estimate(moving, init=init)
