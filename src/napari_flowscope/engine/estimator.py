"""Public flow estimation: :class:`FlowEstimator` and :func:`estimate_flow`."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ._normalize import (
    as_float32,
    check_frame,
    local_contrast,
    match_statistics,
    normalize,
)
from .lucas_kanade import (
    LucasKanadeLevel,
    gradients,
    min_eigenvalue,
    structure_tensor,
)
from .params import FlowParams
from .pyramid import build_pyramid, coarse_to_fine, level_count

__all__ = ['FlowEstimator', 'FlowField', 'estimate_flow']

#: Lucas-Kanade warps added at every level but the two finest.  Those
#: levels cost a sixteenth of the finest or less, and the extra
#: linearisations make noisy, large motions converge (2-photon data).
COARSE_EXTRA_WARPS = 2


@dataclass(frozen=True)
class FlowField:
    """A dense displacement field and its reliability.

    Attributes
    ----------
    w : ndarray, shape (H, W, 2), float32
        ``[u, v] = [x, y]`` displacement in pixels such that
        ``moving(x + w(x)) ~ reference(x)``.
    reliability : ndarray, shape (H, W), float32
        Smallest eigenvalue of the Gaussian-weighted structure tensor of the
        normalised reference (see :func:`estimate_flow`); 0 where nothing
        can be measured.  For Lucas-Kanade it depends on the reference
        only, so all estimates of one :class:`FlowEstimator` share one
        read-only array.
    """

    w: np.ndarray
    reliability: np.ndarray


class FlowEstimator:
    """Flow from many moving frames to one fixed reference.

    Everything that depends only on the reference (normalisation, pyramid,
    gradients, structure tensor and its inverse, reliability) is computed
    once here, so :meth:`estimate` costs only the moving side.  One
    estimator may be used from several threads at once.  See
    :func:`estimate_flow` for the method and the reliability scale.

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
        self.shape = reference.shape
        self.reference, self._constant = normalize(reference)
        self._lucas_kanade = params.method == 'lucas_kanade'
        if not self._lucas_kanade:
            mean, std = cv2.meanStdDev(self.reference)
            self._mean, self._std = float(mean[0, 0]), float(std[0, 0])
        levels = level_count(self.shape, params.levels)
        self._pyramid = build_pyramid(self._prepare(self.reference), levels)
        self._shapes = [level.shape for level in self._pyramid]
        self._lk_levels = None
        if self._lucas_kanade and not self._constant:
            # Reliability keeps its documented scale: it is measured on the
            # globally normalised reference, not on the contrast-normalised
            # images that Lucas-Kanade matches.
            reliability = min_eigenvalue(
                *structure_tensor(*gradients(self.reference), params.sigma)
            )
            self._lk_levels = [
                LucasKanadeLevel(
                    image,
                    sigma=params.sigma,
                    reliability=reliability if index == 0 else None,
                    reliability_threshold=(
                        params.reliability_threshold if index == 0 else None
                    ),
                )
                for index, image in enumerate(self._pyramid)
            ]

    def _prepare(self, normalized):
        # Lucas-Kanade matches locally contrast-normalised images, so that
        # bleaching and uneven or moving illumination do not read as
        # motion; the variational solver normalises on its own.
        if self._lucas_kanade and not self._constant:
            return local_contrast(normalized)
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
        moving = check_frame(moving, 'moving')
        if moving.shape != self.shape:
            raise ValueError(
                f'moving has shape {moving.shape} but the reference has '
                f'shape {self.shape}'
            )
        if init is not None:
            init = np.asarray(init, dtype=np.float32)
            if init.shape != (*self.shape, 2):
                raise ValueError(
                    f'init must have shape {(*self.shape, 2)}; '
                    f'got {init.shape}'
                )
            if not np.isfinite(init).all():
                raise ValueError('init contains NaN or infinite values')
        if self._lucas_kanade:
            # Local contrast normalisation ignores gain and offset, so the
            # moving frame needs no intensity matching.
            moving, moving_constant = as_float32(moving)
        else:
            moving, moving_constant = match_statistics(
                moving, self._mean, self._std
            )
        if self._constant or moving_constant:
            return FlowField(
                w=np.zeros((*self.shape, 2), np.float32),
                reliability=np.zeros(self.shape, np.float32),
            )
        moving_pyramid = build_pyramid(
            self._prepare(moving), len(self._pyramid)
        )
        if self.params.method == 'lucas_kanade':
            solve = self._lucas_kanade_solver(moving_pyramid)
        else:
            solve = self._variational_solver(moving_pyramid)
        w, reliability = coarse_to_fine(self._shapes, solve, init=init)
        return FlowField(w=w, reliability=reliability)

    def _lucas_kanade_solver(self, moving_pyramid):
        warps = self.params.warps

        def solve(level, w):
            lk_level = self._lk_levels[level]
            lk_level.solve(
                moving_pyramid[level],
                w,
                warps=warps if level < 2 else warps + COARSE_EXTRA_WARPS,
            )
            if level == 0:
                w = lk_level.average_reliable(w)
            # Only the finest level's reliability is kept by the driver; it
            # depends on the reference alone, so every estimate shares it.
            return w, lk_level.reliability if level == 0 else None

        return solve

    def _variational_solver(self, moving_pyramid):
        # Imported here so the engine works without the variational module.
        from .variational import solve_level

        def solve(level, w):
            w, reliability = solve_level(
                self._pyramid[level],
                moving_pyramid[level],
                w,
                params=self.params,
            )
            return (
                np.asarray(w, dtype=np.float32),
                np.asarray(reliability, dtype=np.float32),
            )

        return solve


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
        (see :func:`napari_flowscope.engine.warp`), and ``reliability``
        float32 (H, W).

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

    When either frame is constant the flow and the reliability are all
    zero.

    Raises
    ------
    ValueError
        For frames that are not 2-D, differ in shape, have a non-real dtype
        or contain NaN or infinity, and for an ``init`` of the wrong shape
        or with NaN or infinity.
    """
    return FlowEstimator(reference, params).estimate(moving, init=init)
