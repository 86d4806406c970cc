"""Dense 3-D flow: :class:`VolumeFlowEstimator` and
:func:`estimate_volume_flow`."""

from __future__ import annotations

import cv2
import numpy as np

from napari_flowscope.engine._normalize import (
    as_float32,
    check_init,
    check_real,
    intensity_range,
    match_statistics,
    normalize,
)
from napari_flowscope.engine.estimator import FlowField
from napari_flowscope.engine.params import FlowParams

from .confidence import VolumeConfidence
from .filters import (
    CONTRAST_SIGMA,
    downsample,
    gradients,
    local_contrast,
    upsample_flow,
)
from .lucas_kanade import (
    LucasKanadeVolumeLevel,
    min_eigenvalue,
    structure_tensor,
)
from .pyramid import build_pyramid, plan_levels
from .variational import solve_level as solve_variational_level

__all__ = ['VolumeFlowEstimator', 'check_spacing', 'estimate_volume_flow']

#: Lucas-Kanade warps added at every level but the two finest (cheap
#: there; makes noisy, large motions converge).
COARSE_EXTRA_WARPS = 2


class VolumeFlowEstimator:
    """Flow from many moving volumes to one fixed reference volume.

    Everything that depends only on the reference (normalisation,
    pyramid, gradients, structure tensor and its inverse, reliability) is
    computed once here; :meth:`estimate` costs only the moving side.  One
    estimator may be used from several threads at once.  See
    :func:`estimate_volume_flow` for the method.

    Parameters
    ----------
    reference : array_like, shape (Z, Y, X)
        Reference volume, any real dtype, at least 2 planes.
    params : FlowParams, optional
        Default ``FlowParams()`` (the ``'balanced'`` preset); ``sigma`` is
        in in-plane pixels.
    spacing : tuple of float, optional
        ``(z, y, x)`` voxel size (any unit, only ratios matter); default
        isotropic ``(1, 1, 1)``.

    Attributes
    ----------
    reference : ndarray, shape (Z, Y, X), float32
        The normalised reference (robust 0.5 and 99.5 percentiles mapped
        to 0 and 1).
    params : FlowParams
    spacing : tuple of float
    shape : tuple of int
    reliability : ndarray, shape (Z, Y, X), float32
        Read-only, shared by every estimate (it depends on the reference
        only).
    """

    def __init__(self, reference, params=None, *, spacing=None):
        if params is None:
            params = FlowParams()
        if not isinstance(params, FlowParams):
            raise ValueError(
                f'params must be a FlowParams or None; got {type(params)}'
            )
        reference = check_volume(reference, 'reference')
        self.params = params
        self.shape = reference.shape
        self.spacing = check_spacing(spacing)
        low, high = intensity_range(reference.reshape(-1, self.shape[-1]))
        self.reference, self._constant = normalize(reference, low, high)
        self._levels = plan_levels(self.shape, self.spacing, params.levels)
        self._lucas_kanade = params.method == 'lucas_kanade'
        self._solver_levels = None
        self._reference_pyramid = None
        self.reliability = np.zeros(self.shape, np.float32)
        if self._constant:
            return
        self.reliability = self._reliability()
        self.reliability.flags.writeable = False
        self._confidence = VolumeConfidence(
            self.reference,
            self.reliability,
            params.reliability_threshold,
            self._levels[0],
        )
        if self._lucas_kanade:
            pyramid = build_pyramid(
                self._prepare(self.reference), self._levels
            )
            self._solver_levels = [
                LucasKanadeVolumeLevel(
                    image,
                    sigma=level.window(params.sigma),
                    reliability=self.reliability if index == 0 else None,
                    reliability_threshold=(
                        params.reliability_threshold if index == 0 else None
                    ),
                )
                for index, (image, level) in enumerate(
                    zip(pyramid, self._levels, strict=True)
                )
            ]
        else:
            # The variational solver normalises locally on its own; the
            # moving volume is matched to these global statistics.
            flat = self.reference.reshape(-1, self.shape[-1])
            mean, std = cv2.meanStdDev(flat)
            self._mean, self._std = float(mean[0, 0]), float(std[0, 0])
            self._reference_pyramid = build_pyramid(
                self.reference, self._levels
            )

    def _prepare(self, volume):
        # Lucas-Kanade matches locally contrast-normalised volumes, so that
        # bleaching and uneven excitation do not read as motion.
        return local_contrast(volume, self._levels[0].window(CONTRAST_SIGMA))

    def _reliability(self):
        """Smallest eigenvalue of the structure tensor of the normalised
        reference, gradients per in-plane pixel of physical distance (so
        the scale is that of the 2-D engine's reliability)."""
        level = self._levels[0]
        pixel = min(level.spacing[1:])
        factors = (
            pixel / level.spacing[2],
            pixel / level.spacing[1],
            pixel / level.spacing[0],
        )
        gradient = [
            component * np.float32(factor)
            for component, factor in zip(
                gradients(self.reference), factors, strict=True
            )
        ]
        return min_eigenvalue(
            *structure_tensor(gradient, level.window(self.params.sigma))
        )

    @property
    def levels(self):
        """The pyramid levels (:class:`~.pyramid.VolumeLevel`), finest
        first."""
        return list(self._levels)

    def estimate(self, moving, *, init=None):
        """Flow from the reference to ``moving``.

        Parameters
        ----------
        moving : array_like, shape (Z, Y, X)
            Any real dtype.
        init : array_like, shape (Z, Y, X, 3), optional
            Warm start, e.g. the previous volume's flow.

        Returns
        -------
        FlowField
            ``w`` float32 (Z, Y, X, 3), ``reliability`` and ``confidence``
            float32 (Z, Y, X).
        """
        moving = check_volume(moving, 'moving')
        if moving.shape != self.shape:
            raise ValueError(
                f'moving has shape {moving.shape} but the reference has '
                f'shape {self.shape}'
            )
        init = check_init(init, (*self.shape, 3))
        flat = moving.reshape(-1, self.shape[-1])
        if self._lucas_kanade:
            # Local contrast normalisation ignores gain and offset, so the
            # moving volume needs no intensity matching.
            flat, moving_constant = as_float32(flat)
        else:
            flat, moving_constant = match_statistics(
                flat, self._mean, self._std
            )
        if self._constant or moving_constant:
            return FlowField(
                w=np.zeros((*self.shape, 3), np.float32),
                reliability=np.zeros(self.shape, np.float32),
                confidence=np.zeros(self.shape, np.float32),
            )
        moving = flat.reshape(self.shape)
        w = self._initial_flow(init)
        coarsest = len(self._levels) - 1
        if self._lucas_kanade:
            pyramid = build_pyramid(self._prepare(moving), self._levels)
        else:
            pyramid = build_pyramid(moving, self._levels)
        warps = self.params.warps
        for index in range(coarsest, -1, -1):
            level = self._levels[index]
            if index < coarsest:
                w = upsample_flow(
                    w,
                    level.shape,
                    halve_z=self._levels[index + 1].halved_z,
                )
            if self._lucas_kanade:
                self._solver_levels[index].solve(
                    pyramid[index],
                    w,
                    warps=warps if index < 2 else warps + COARSE_EXTRA_WARPS,
                )
            else:
                w = solve_variational_level(
                    self._reference_pyramid[index],
                    pyramid[index],
                    w,
                    params=self.params,
                    spacing=level.spacing,
                )
        if self._lucas_kanade:
            w = self._solver_levels[0].average_reliable(w)
        return FlowField(
            w=interleave(w),
            reliability=self.reliability,
            confidence=self._confidence(moving, w),
        )

    def _initial_flow(self, init):
        """Planar flow at the coarsest level: zero, or ``init`` brought
        down the pyramid (values scaled with each halving)."""
        if init is None:
            return np.zeros((3, *self._levels[-1].shape), np.float32)
        w = np.ascontiguousarray(np.moveaxis(init, -1, 0))
        for level in self._levels[1:]:
            w = np.stack([downsample(c, halve_z=level.halved_z) for c in w])
            w[:2] *= np.float32(0.5)
            if level.halved_z:
                w[2] *= np.float32(0.5)
        return w


def interleave(planar):
    """Planar ``(3, Z, Y, X)`` flow as ``(Z, Y, X, 3)`` (new array)."""
    out = np.empty((*planar.shape[1:], 3), np.float32)
    for z, target in enumerate(out):
        cv2.merge((planar[0, z], planar[1, z], planar[2, z]), dst=target)
    return out


def estimate_volume_flow(
    reference, moving, params=None, *, spacing=None, init=None
):
    """Dense 3-D optical flow from ``reference`` to ``moving``.

    Parameters
    ----------
    reference, moving : array_like, shape (Z, Y, X)
        Volumes of any real dtype with at least 2 planes.  Intensities are
        normalised as in 2-D (:func:`napari_flowscope.engine.estimate_flow`).
    params : FlowParams, optional
        The same parameters and presets as in 2-D; ``sigma`` is the window
        in in-plane pixels (its extent along Z follows ``spacing``),
        ``levels`` the largest number of pyramid levels.
    spacing : tuple of float, optional
        ``(z, y, x)`` voxel size, e.g. ``(2.0, 0.3, 0.3)`` um: windows and
        the pyramid are isotropic in physical units.  Default isotropic.
    init : array_like, shape (Z, Y, X, 3), optional
        Initial flow (warm start).

    Returns
    -------
    FlowField
        ``w`` float32 (Z, Y, X, 3) ``[x, y, z]`` displacement in voxels
        such that ``registered(p) = moving(p + w(p)) ~ reference(p)``
        (see :func:`napari_flowscope.engine.warp_volume`), and
        ``reliability`` float32 (Z, Y, X).

    Notes
    -----
    **Reliability** is the smallest eigenvalue of the 3 x 3 structure
    tensor of the normalised reference, with gradients per in-plane pixel
    of physical distance, so it is on the scale of the 2-D reliability
    and the same ``reliability_threshold`` applies.  Gradients that are
    only strong along two axes (a sheet) or one (a fibre) give a small
    value: motion along the sheet or fibre cannot be measured.

    **Lucas-Kanade** matches locally contrast-normalised volumes coarse to
    fine with warping, as in 2-D with 3 x 3 systems per voxel.  Voxels
    below the reliability threshold receive no update at full resolution;
    the final flow is a Gaussian average over half the window in which
    reliable voxels weigh 20 times more than the others, so unreliable
    voxels near texture take its motion and those far from any keep their
    coarse-level estimate.  (In 2-D, unreliable pixels are filled from
    ever wider neighbourhoods instead; in sparse volumes the coarse
    estimate proved about twice as accurate, see docs/benchmarks.md.)

    **Pyramid**: every level halves Y and X; Z is halved only once its
    voxels are no thicker than about the in-plane pixels and never below
    4 planes, so a stack with few, widely spaced planes keeps them all.

    Raises
    ------
    ValueError
        For volumes that are not 3-D, have fewer than 2 planes or 2 x 2
        pixels, differ in shape, have a non-real dtype or contain NaN or
        infinity; for a bad ``spacing`` or ``init``.
    """
    return VolumeFlowEstimator(reference, params, spacing=spacing).estimate(
        moving, init=init
    )


def check_volume(volume, name):
    """Validate a 3-D real volume and return it as an array."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(
            f'{name} must be a 3-D (Z, Y, X) volume; got shape {volume.shape}'
        )
    if volume.shape[0] < 2 or min(volume.shape[1:]) < 2:
        raise ValueError(
            f'{name} must have at least 2 planes of 2 x 2 pixels; got shape '
            f'{volume.shape}'
        )
    return check_real(volume, name)


def check_spacing(spacing):
    """``(z, y, x)`` voxel size as floats; default ``(1.0, 1.0, 1.0)``."""
    if spacing is None:
        return (1.0, 1.0, 1.0)
    try:
        values = tuple(float(value) for value in spacing)
    except (TypeError, ValueError):
        raise ValueError(
            f'spacing must be three positive numbers (z, y, x); got '
            f'{spacing!r}'
        ) from None
    if len(values) != 3 or not all(
        np.isfinite(value) and value > 0 for value in values
    ):
        raise ValueError(
            f'spacing must be three positive numbers (z, y, x); got '
            f'{spacing!r}'
        )
    return values
