"""Global motion models: translation, rigid and affine.

A global model replaces the dense flow by one transform of the whole frame,
the way Fiji's StackReg or Correct 3D Drift correct drift.  It is found in
two steps:

1. **Fit to the dense flow**: the model is fitted to the flow vectors by
   iteratively reweighted least squares, each vector weighted by how much it
   is trusted (confidence) and by Tukey's biweight of its residual, so that
   cells crawling over a drifting background, or a beating heart in a
   still embryo, do not pull the model.
2. **Refinement on the images**: a few Gauss-Newton iterations
   (inverse compositional, Baker & Matthews 2004) minimise the squared
   difference between the reference and the moving frame warped by the
   model, after matching the moving frame's gain and offset to the
   reference's, on the pixels that step 1 found consistent with the model.
   The dense flow is smoothed by its window and limited by its per-pixel
   noise; the whole-frame fit on the intensities is not.

A transform is a ``(2, 3)`` float64 matrix ``A`` mapping a reference pixel
``[x, y]`` to its position in the moving frame, ``A @ [x, y, 1]``; its
flow is ``w(x) = A @ [x, y, 1] - [x, y]`` (:func:`motion_field`), so
``registered(x) = moving(x + w(x))`` as everywhere in the engine.

References
----------
Baker, S. and Matthews, I. (2004). Lucas-Kanade 20 years on: a unifying
framework. International Journal of Computer Vision 56, 221-255.
doi:10.1023/B:VISI.0000011205.11775.fd
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    'GLOBAL_MODELS',
    'MOTION_MODELS',
    'GlobalMotion',
    'MotionFit',
    'MotionRefiner',
    'fit_motion',
    'motion_field',
]

#: Motion models: ``'dense'`` keeps the optical flow as it is.
MOTION_MODELS = ('dense', 'translation', 'rigid', 'affine')
#: The models that are one transform of the whole frame.
GLOBAL_MODELS = MOTION_MODELS[1:]

# Tukey's biweight constant: 95 % efficiency for Gaussian residuals.
_TUKEY = 4.685
# Residual scale floor (px) of the flow fit: flow noise below this is not
# evidence against a vector.
_MIN_FLOW_SCALE = 0.1
# Flow vectors the fit uses at most (a regular subsample).
_MAX_SAMPLES = 1 << 12
_FIT_ITERATIONS = 10
# The fit stops when no pixel moves more than this (px); the refinement
# on the images does the fine work.
_FIT_TOLERANCE = 0.01
# Refinement stops when no pixel moves more than this (px) in an iteration.
_TOLERANCE = 5e-3
_REFINE_ITERATIONS = 10
# An iteration that moves a pixel further than this (px) has diverged.
_MAX_STEP = 4.0
# Half-resolution iterations stop when no pixel moves more than this (in
# full-resolution px); frames smaller than this (px) skip them.
_HALF_TOLERANCE = 0.05
_MIN_HALF_SIZE = 64
# The refined transform is dropped, as diverged, when it matches worse than
# the start by more than this factor (squared difference after gain
# matching).  Not 1: the squared difference of bilinearly interpolated
# frames is lowest near half-pixel shifts, where interpolation averages
# noise away, so the right answer can score a few per cent worse than a
# wrong start.
_WORSE = 1.25
# Pixels within this distance (px) of where the moving frame ends are left
# out of the refinement: updates move the model by less.
_BORDER = 2.0


@dataclass(frozen=True)
class MotionFit:
    """A global transform fitted to a dense flow.

    Attributes
    ----------
    matrix : ndarray, shape (2, 3), float64
        Maps reference pixel ``[x, y, 1]`` to its position in the moving
        frame.
    inliers : ndarray, shape (H, W), bool
        Pixels whose flow agrees with the model (its residual is within
        Tukey's cut-off), trusted or not: the pixels that move with the
        frame.  Judged on the subsample: each sample decides for its block
        of pixels.
    scale : float
        Robust standard deviation (px) of the flow's residuals.
    """

    matrix: np.ndarray
    inliers: np.ndarray
    scale: float


def _check_model(model):
    if model not in GLOBAL_MODELS:
        raise ValueError(
            f'model must be one of {", ".join(map(repr, GLOBAL_MODELS))}; '
            f'got {model!r}'
        )


def fit_motion(w, *, model, weights=None):
    """Fit a global transform to a dense flow, robustly.

    Parameters
    ----------
    w : array_like, shape (H, W, 2)
        ``[x, y]`` flow.
    model : {'translation', 'rigid', 'affine'}
        Rigid is a rotation and a translation; affine adds scaling and
        shear.
    weights : array_like, shape (H, W), optional
        Trust in each vector, >= 0 (e.g. the confidence with untrusted
        pixels set to 0).  Default: all 1.  If no vector has a positive
        weight, all count equally.

    Returns
    -------
    MotionFit

    Notes
    -----
    Iteratively reweighted least squares with Tukey's biweight, on a
    regular subsample of at most 4096 vectors.  Each iteration solves in
    closed form: the weighted mean displacement (translation), the weighted
    Procrustes solution (rigid, Kabsch's rotation in 2-D) or the weighted
    linear least squares (affine).
    """
    _check_model(model)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 3 or w.shape[-1] != 2:
        raise ValueError(f'w must have shape (H, W, 2); got {w.shape}')
    height, width = w.shape[:2]
    if weights is None:
        weights = np.ones((height, width), np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (height, width):
        raise ValueError(
            f'weights must have shape {(height, width)}; got {weights.shape}'
        )
    step = max(1, int(np.sqrt(height * width / _MAX_SAMPLES)))
    grid = np.s_[step // 2 :: step, step // 2 :: step]
    sampled = w[grid]
    grid_shape = sampled.shape[:2]
    rows, cols = np.mgrid[step // 2 : height : step, step // 2 : width : step]
    points = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.float64)
    targets = points + sampled.reshape(-1, 2)
    base = np.clip(weights[grid].ravel().astype(np.float64), 0, None)
    if not base.any():
        base = np.ones_like(base)
    trusted = base > 0
    robust = base
    matrix = None
    for _ in range(_FIT_ITERATIONS):
        previous = matrix
        matrix = _solve(points, targets, robust, model)
        difference = _apply(matrix, points) - targets
        residual = np.hypot(difference[:, 0], difference[:, 1])
        scale = max(
            1.4826 * float(np.median(residual[trusted])), _MIN_FLOW_SCALE
        )
        cut = _TUKEY * scale
        robust = base * np.square(1 - np.square(np.minimum(residual / cut, 1)))
        if not robust.any():
            robust = base
        if (
            previous is not None
            and _largest_change(matrix, previous, (height, width))
            < _FIT_TOLERANCE
        ):
            break
    # Each sample stands for its step x step block.
    agrees = (residual <= cut).reshape(grid_shape).astype(np.uint8)
    agrees = cv2.resize(
        agrees, (width, height), interpolation=cv2.INTER_NEAREST
    )
    return MotionFit(matrix=matrix, inliers=agrees.astype(bool), scale=scale)


def _solve(points, targets, weights, model):
    """Weighted least-squares transform taking ``points`` to ``targets``."""
    # Sums, not BLAS products: deterministic whatever the memory alignment
    # or the number of threads, and no BLAS threads competing with the
    # session's.
    weights = weights[:, None]
    total = weights.sum()
    point_mean = (weights * points).sum(axis=0) / total
    target_mean = (weights * targets).sum(axis=0) / total
    if model == 'translation':
        linear = np.eye(2)
    else:
        a = points - point_mean
        b = targets - target_mean
        if model == 'rigid':
            cross = (
                weights[:, 0] * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
            ).sum()
            dot = (weights[:, 0] * (a * b).sum(axis=1)).sum()
            linear = _rotation(np.arctan2(cross, dot))
        else:
            weighted = a * weights
            moments = (weighted[:, :, None] * a[:, None, :]).sum(axis=0)
            mixed = (weighted[:, :, None] * b[:, None, :]).sum(axis=0)
            # lstsq: a degenerate (collinear) point set still gives a
            # transform, the minimum-norm one
            linear = np.linalg.lstsq(moments, mixed, rcond=None)[0].T
    return np.column_stack([linear, target_mean - linear @ point_mean])


def _rotation(angle):
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


def _apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def _largest_change(matrix, other, shape):
    """Largest distance (px) between the two transforms over the frame."""
    height, width = shape
    corners = np.array(
        [[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]],
        np.float64,
    )
    return float(np.linalg.norm(_apply(matrix - other, corners), axis=1).max())


def motion_field(matrix, shape):
    """The flow of a global transform.

    Parameters
    ----------
    matrix : array_like, shape (2, 3)
        Reference ``[x, y, 1]`` to moving-frame position.
    shape : tuple of int
        ``(H, W)``.

    Returns
    -------
    ndarray, shape (H, W, 2), float32
        ``w(x) = matrix @ [x, y, 1] - [x, y]``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3):
        raise ValueError(f'matrix must have shape (2, 3); got {matrix.shape}')
    height, width = shape[:2]
    linear = matrix[:, :2] - np.eye(2)
    x = np.arange(width, dtype=np.float64)
    y = np.arange(height, dtype=np.float64)
    w = np.empty((height, width, 2), np.float32)
    for component in range(2):
        along_x = (linear[component, 0] * x + matrix[component, 2]).astype(
            np.float32
        )
        along_y = (linear[component, 1] * y).astype(np.float32)
        np.add(along_y[:, None], along_x, out=w[..., component])
    return w


class MotionRefiner:
    """Refines global transforms on the images, for one reference.

    The reference side of the Gauss-Newton iterations (its gradients and
    the steepest-descent images of the model, at full and half resolution)
    is computed once.

    Parameters
    ----------
    reference : array_like, shape (H, W)
        Reference frame, any real dtype (ideally normalised, e.g.
        :attr:`FlowEstimator.reference`).
    model : {'translation', 'rigid', 'affine'}

    Notes
    -----
    Inverse compositional Gauss-Newton (Baker & Matthews 2004) with the
    model's parameters taken about the frame centre, first at half
    resolution (a quarter of the cost) until the transform moves by less
    than 0.05 px, then at full resolution until it moves by less than
    0.005 px.  Its fixed point, where the reference's gradients no longer
    correlate with the difference image, does not move with the
    subpixel-dependent smoothing of bilinear interpolation (a blur is
    symmetric, a gradient antisymmetric), unlike the minimum of the squared
    difference itself, which noise pulls towards half-pixel shifts.  The
    Gauss-Newton matrix is the cross product of the reference's and the
    warped frame's steepest-descent images: noise in the reference's
    gradients inflates the usual ``J^T J`` and slows convergence two- to
    threefold on noisy frames, and it is uncorrelated between the two
    frames.  The moving frame's gain and offset are matched to the
    reference's on the pixels compared, so bleaching does not bias the
    fit.
    """

    def __init__(self, reference, *, model):
        _check_model(model)
        self.model = model
        reference = np.ascontiguousarray(reference, dtype=np.float32)
        self.reference = reference
        self.shape = reference.shape
        self._levels = [_RefinementLevel(reference, model)]
        if min(self.shape) >= _MIN_HALF_SIZE:
            self._levels.append(
                _RefinementLevel(cv2.pyrDown(reference), model)
            )

    def refine(self, moving, matrix, *, mask=None):
        """Refine ``matrix`` so that ``moving`` warped by it matches.

        Parameters
        ----------
        moving : array_like, shape (H, W)
            Moving frame, any real dtype.
        matrix : array_like, shape (2, 3)
            Starting transform (e.g. :func:`fit_motion`'s), within a pixel
            or two of the answer.
        mask : array_like, shape (H, W), optional
            Reference pixels to compare (e.g. :attr:`MotionFit.inliers`);
            default all.

        Returns
        -------
        ndarray, shape (2, 3), float64
            The refined transform; at each resolution, the transform it
            started from when too few pixels can be compared, the images
            have no texture along some parameter, or the iterations make
            the match worse.
        """
        moving = np.ascontiguousarray(moving, dtype=np.float32)
        if moving.shape != self.shape:
            raise ValueError(
                f'moving has shape {moving.shape}; the reference {self.shape}'
            )
        matrix = np.array(matrix, dtype=np.float64)
        mask = None if mask is None else np.asarray(mask, dtype=bool)
        if len(self._levels) > 1:
            # pyrDown: coarse pixel i sits on fine pixel 2 i
            half = self._levels[1].refine(
                cv2.pyrDown(moving),
                _scaled(matrix, 0.5),
                mask=None if mask is None else mask[::2, ::2],
                tolerance=_HALF_TOLERANCE / 2,
            )
            matrix = _scaled(half, 2.0)
        return self._levels[0].refine(
            moving, matrix, mask=mask, tolerance=_TOLERANCE
        )


class _RefinementLevel:
    """Reference side of the iterations at one resolution."""

    def __init__(self, reference, model):
        self.model = model
        self.reference = reference
        self.shape = reference.shape
        height, width = self.shape
        self.centre = np.array([(width - 1) / 2, (height - 1) / 2])
        self.steepest = self.steepest_descent(reference)

    def steepest_descent(self, image):
        """``(K, H * W)`` float32: image gradient times the model's
        Jacobian, one row per parameter."""
        gx = cv2.Scharr(image, cv2.CV_32F, 1, 0, scale=1 / 32)
        gy = cv2.Scharr(image, cv2.CV_32F, 0, 1, scale=1 / 32)
        height, width = self.shape
        x = np.arange(width, dtype=np.float32) - np.float32(self.centre[0])
        y = np.arange(height, dtype=np.float32)[:, None] - np.float32(
            self.centre[1]
        )
        if self.model == 'translation':
            images = [gx, gy]
        elif self.model == 'rigid':
            images = [gx, gy, x * gy - y * gx]
        else:
            images = [x * gx, y * gx, gx, x * gy, y * gy, gy]
        return np.stack(
            [np.broadcast_to(image, self.shape).ravel() for image in images]
        )

    def refine(self, moving, matrix, *, mask, tolerance):
        start = matrix
        compared = self.inside(start)
        if mask is not None:
            compared &= mask
        weights = compared.ravel().astype(np.float32)
        count = float(weights.sum())
        if count < 10 * len(self.steepest):
            return start
        template = self.reference.ravel()
        centred = template - np.float32((template * weights).sum() / count)
        centred *= weights
        template_norm = float(np.sqrt(np.square(centred).sum() / count))
        if template_norm == 0:
            return start
        # Pairwise sums rather than BLAS products keep results identical
        # whatever the thread or memory alignment.  With the gain g and
        # mean m of the warped values v, the error is g v - m g w - c
        # (w the weights, c the centred reference), so its products with
        # the steepest-descent rows need only S v per iteration.
        steepest = self.steepest * weights  # zero where not compared
        steepest_weights = steepest.sum(axis=1, dtype=np.float64)
        steepest_template = (steepest * centred).sum(axis=1, dtype=np.float64)
        template_energy = float(np.square(centred).sum())

        def _cost(values, gain):
            # sum((g (v - m w) - c) ** 2), expanded; the mean term is
            # orthogonal to the centred reference
            return (
                template_energy
                + count * template_norm**2
                - 2 * gain * float((values * centred).sum())
            )

        hessian = first_cost = None
        for _ in range(_REFINE_ITERATIONS):
            warped = self.warp(moving, matrix)
            values = warped.ravel() * weights
            total = float(values.sum())
            mean = total / count
            spread = float(np.square(values).sum()) / count - mean**2
            if spread <= 0:
                return start
            gain = template_norm / np.sqrt(spread)
            if hessian is None:
                first_cost = _cost(values, gain)
                hessian = gain * self.cross_hessian(
                    steepest, self.steepest_descent(warped)
                )
                if not np.isfinite(hessian).all() or (
                    np.linalg.matrix_rank(hessian) < len(hessian)
                ):
                    return start
            gradient = (
                gain * (steepest * values).sum(axis=1, dtype=np.float64)
                - gain * mean * steepest_weights
                - steepest_template
            )
            step = np.linalg.solve(hessian, gradient)
            previous = matrix
            matrix = _compose(matrix, self.inverse_update(step))
            change = _largest_change(matrix, previous, self.shape)
            if not np.isfinite(change) or change > _MAX_STEP:
                return start
            if change < tolerance:
                break
        # the match at the last transform warped (one tiny update earlier)
        if _cost(values, gain) > first_cost * _WORSE:
            return start
        return matrix

    @staticmethod
    def cross_hessian(reference_steepest, moving_steepest):
        """``(K, K)`` float64 sums of products of the two sets of rows."""
        return np.stack(
            [
                (row * moving_steepest).sum(axis=1, dtype=np.float64)
                for row in reference_steepest
            ]
        )

    def warp(self, moving, matrix):
        height, width = self.shape
        return cv2.warpAffine(
            moving,
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )

    def inside(self, matrix):
        """Reference pixels whose moving-frame position lies inside it."""
        height, width = self.shape
        x = np.arange(width, dtype=np.float64)
        y = np.arange(height, dtype=np.float64)[:, None]
        inside = np.ones(self.shape, bool)
        for row, size in zip(matrix, (width, height), strict=True):
            # position along this axis: row @ [x, y, 1], separable in x, y
            along_x = (row[0] * x + row[2]).astype(np.float32)
            along_y = (row[1] * y).astype(np.float32)
            position = along_y + along_x
            inside &= position >= _BORDER
            inside &= position <= size - 1 - _BORDER
        return inside

    def inverse_update(self, step):
        """The inverse of the small transform ``step`` (about the centre)."""
        if self.model == 'translation':
            linear = np.eye(2)
            shift = step
        elif self.model == 'rigid':
            linear = _rotation(step[2])
            shift = step[:2]
        else:
            linear = np.eye(2) + np.array(
                [[step[0], step[1]], [step[3], step[4]]]
            )
            shift = np.array([step[2], step[5]])
        # x -> linear (x - c) + c + shift, as a 3 x 3 matrix, inverted
        forward = np.eye(3)
        forward[:2, :2] = linear
        forward[:2, 2] = self.centre + shift - linear @ self.centre
        return np.linalg.inv(forward)


def _scaled(matrix, factor):
    """The transform in pixels ``factor`` times the size (x -> factor x)."""
    scaled = np.array(matrix, dtype=np.float64)
    scaled[:, 2] *= factor
    return scaled


def _compose(matrix, update):
    """``matrix`` applied after ``update`` (both as affine maps)."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return (full @ update)[:2]


class GlobalMotion:
    """A global motion model for one reference: fit, refine, field.

    Parameters
    ----------
    reference : array_like, shape (H, W)
        The (normalised) reference frame.
    model : {'translation', 'rigid', 'affine'}

    Attributes
    ----------
    model : str
    refiner : MotionRefiner
    """

    def __init__(self, reference, *, model):
        self.model = model
        self.refiner = MotionRefiner(reference, model=model)

    def estimate(self, w, moving, *, weights=None, level=0):
        """The transform that takes the reference to ``moving``.

        Parameters
        ----------
        w : array_like, shape (h, w, 2)
            Dense flow from the reference to ``moving`` at pyramid level
            ``level`` (in that level's pixels).
        moving : array_like, shape (H, W)
            The moving frame, full resolution.
        weights : array_like, shape (h, w), optional
            Trust in each flow vector (see :func:`fit_motion`).
        level : int
            Pyramid level of ``w`` (``cv2.pyrDown`` applied ``level``
            times: its pixel ``i`` sits on full-resolution pixel
            ``2 ** level * i``).

        Returns
        -------
        ndarray, shape (2, 3), float64
            Full-resolution transform.
        """
        fit = fit_motion(w, model=self.model, weights=weights)
        factor = 2**level
        matrix = _scaled(fit.matrix, factor)
        inliers = fit.inliers
        if level:
            height, width = self.refiner.shape
            inliers = cv2.resize(
                inliers.astype(np.uint8),
                (width, height),
                interpolation=cv2.INTER_NEAREST,
            ).astype(bool)
        return self.refiner.refine(moving, matrix, mask=inliers)

    def field(self, w, moving, *, weights=None):
        """The model's flow, float32 ``(H, W, 2)`` (see :meth:`estimate`)."""
        matrix = self.estimate(w, moving, weights=weights)
        return motion_field(matrix, self.refiner.shape)
