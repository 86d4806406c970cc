"""Per-level variational optical-flow solver (robust data term + alpha).

One pyramid level of a coarse-to-fine, warping variational method in the
spirit of Brox et al. (2004) and Sun, Roth & Black (2010).  The energy is

    E(w) = sum_c gamma_c psi(|N_c,moving(x + w) - N_c,reference(x)|^2)
           + alpha * psi(|grad u|^2 + |grad v|^2)

over three data channels ``c``: the *locally normalised* image ``N`` (zero
mean and unit variance in a Gaussian window, so multiplicative bleaching
and slowly varying illumination cancel) and its two spatial derivatives
(gradient constancy).  Both penalisers are Charbonnier functions scaled so
that ``psi'(0) = 1``: quadratic (Horn-Schunck-like) for small arguments and
L1 / total-variation-like beyond their epsilon.

Each outer *warp* warps the moving image with the current flow (cubic
B-splines) and linearises the data term.  The flow increment is then
solved with lagged robust weights by red-black successive over-relaxation
(one 2 x 2 system per pixel; whole-array numpy / OpenCV operations),
median filtered, and added.  The increment is first initialised with the
least-squares affine increment: translation, rotation and scaling are the
smoothest modes, which relaxation sweeps are slowest to find.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from ._normalize import local_normalize

__all__ = ['VariationalSolver']

# Weights gamma of the brightness channel (N) and of each gradient channel
# (dN/dx, dN/dy).
_BRIGHTNESS_WEIGHT = np.float32(0.5)
_GRADIENT_WEIGHT = np.float32(0.5)
# Charbonnier epsilons: data residuals in units of the locally normalised
# image, flow gradients in px / px.
_DATA_EPSILON = 0.05
_SMOOTHNESS_EPSILON = 0.05
# Gaussian pre-smoothing (px at the level) against noise; window (px) of
# the local intensity normalisation, at most this share of the level's
# shorter side (on coarse levels a fixed window would span the whole
# illumination pattern, which then dominates the data term); floor of the
# local standard deviation as a fraction of the image's mean local standard
# deviation (stops the noise of flat regions being blown up).
_PRESMOOTHING_SIGMA = 0.8
_NORMALISATION_SIGMA = 4.0
_NORMALISATION_SHARE = 1 / 8
_NORMALISATION_FLOOR = 0.2
# Levels whose shorter side is below this (px) are too small for the
# 5-tap derivatives and the 5 x 5 median; their flow is passed through.
_MIN_SOLVED_SIZE = 8
# Largest increment (px) per warp: beyond about a pixel the linearisation
# says nothing, and weakly textured pixels would jump to a far minimum.
_MAX_STEP = 1.0
_MEDIAN_KSIZE = 5
_SOR_OMEGA = np.float32(1.9)
# The robust weights are lagged: recomputed every this many sweeps.
_SWEEPS_PER_REWEIGHT = 8
# Five-point central difference (Sun et al. 2010).
_DERIVATIVE = np.array([[1, -8, 0, 8, -1]], np.float32) / 12
# Sum of the four neighbours; with replicated borders this is a reflecting
# (Neumann) boundary for the smoothness term.
_NEIGHBOURS = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float32)


class VariationalSolver:
    """The ``'variational'`` level solver (see :mod:`.methods`).

    Parameters
    ----------
    params : FlowParams
        Uses ``alpha`` (smoothness weight), ``warps`` (linearisations) and
        ``iterations`` (relaxation sweeps per warp).
    reliability : ndarray, shape (H, W), float32
        Not used: smoothness fills untextured regions.
    """

    def __init__(self, params, reliability=None):
        self.alpha = np.float32(params.alpha)
        self.warps = int(params.warps)
        self.iterations = int(params.iterations)

    def prepare(self, reference_level, *, level):
        """The reference's data channels (None for a level too small)."""
        reference = np.ascontiguousarray(reference_level, dtype=np.float32)
        if min(reference.shape) < _MIN_SOLVED_SIZE:
            return None
        return _channels(_normalise(reference))

    def solve(self, state, moving_level, w):
        """Refine ``w``; levels whose shorter side is below 8 px pass it."""
        if state is None:
            return np.array(w, dtype=np.float32, copy=True)
        reference_channels = state
        moving = np.ascontiguousarray(moving_level, dtype=np.float32)
        height, width = moving.shape
        u = np.ascontiguousarray(w[..., 0], dtype=np.float32)
        v = np.ascontiguousarray(w[..., 1], dtype=np.float32)
        # Cubic B-spline warps: bilinear ones blur by an amount that
        # depends on the sub-pixel position, and OpenCV 5's bicubic remap
        # does not reproduce a ramp; either biases the fixed point by
        # 0.01-0.03 px.
        coefficients = ndimage.spline_filter(
            _normalise(moving), order=3, mode='nearest', output=np.float32
        )
        grid_x = np.broadcast_to(
            np.arange(width, dtype=np.float32), (height, width)
        )
        grid_y = np.broadcast_to(
            np.arange(height, dtype=np.float32)[:, None], (height, width)
        )
        for _ in range(self.warps):
            map_x = grid_x + u
            map_y = grid_y + v
            warped = ndimage.map_coordinates(
                coefficients,
                (map_y, map_x),
                order=3,
                mode='nearest',
                prefilter=False,
                output=np.float32,
            )
            # Replicated border values are made up: no data term there.
            inside = (
                (map_x >= 0)
                & (map_x <= width - 1)
                & (map_y >= 0)
                & (map_y <= height - 1)
            ).astype(np.float32)
            terms = _linearise(reference_channels, _channels(warped), inside)
            du, dv = _solve_increment(terms, u, v, self.alpha, self.iterations)
            u = u + np.clip(
                cv2.medianBlur(du, _MEDIAN_KSIZE), -_MAX_STEP, _MAX_STEP
            )
            v = v + np.clip(
                cv2.medianBlur(dv, _MEDIAN_KSIZE), -_MAX_STEP, _MAX_STEP
            )
        return cv2.merge((u, v))


def _normalise(image):
    """Locally normalised level (bleaching-invariant), noise pre-smoothed.

    On coarse levels a fixed window would span the whole illumination
    pattern, which then dominates the data term, so the window is at most
    a share of the level's shorter side.
    """
    sigma = min(_NORMALISATION_SIGMA, min(image.shape) * _NORMALISATION_SHARE)
    return local_normalize(
        image,
        sigma=sigma,
        floor=_NORMALISATION_FLOOR,
        presmooth=_PRESMOOTHING_SIGMA,
    )


def _derivatives(image):
    dx = cv2.filter2D(image, -1, _DERIVATIVE, borderType=cv2.BORDER_REFLECT)
    dy = cv2.filter2D(image, -1, _DERIVATIVE.T, borderType=cv2.BORDER_REFLECT)
    return dx, dy


def _channels(image):
    """``(value, d/dx, d/dy)`` of the image and of its two derivatives."""
    dx, dy = _derivatives(image)
    return [
        (image, dx, dy),
        (dx, *_derivatives(dx)),
        (dy, *_derivatives(dy)),
    ]


def _linearise(reference_channels, warped_channels, inside):
    """Per channel ``(gamma, Ix, Iy, It)``; gradients averaged over both."""
    weights = (_BRIGHTNESS_WEIGHT, _GRADIENT_WEIGHT, _GRADIENT_WEIGHT)
    half = np.float32(0.5)
    return [
        (
            gamma * inside,
            half * (reference[1] + warped[1]),
            half * (reference[2] + warped[2]),
            warped[0] - reference[0],
        )
        for gamma, reference, warped in zip(
            weights, reference_channels, warped_channels, strict=True
        )
    ]


def _solve_increment(terms, u, v, alpha, iterations):
    """Red-black SOR for the increment ``(du, dv)`` of the flow ``(u, v)``.

    With the robust weights frozen, the Euler-Lagrange equations at each
    pixel read ``(A + 4 s I) dw = b + s (sum_n (w + dw)_n - 4 w)`` with the
    data tensor ``A``, ``b`` and the smoothness weight ``s = alpha psi'``;
    each half-sweep solves them on one colour of the checkerboard.
    """
    height, width = u.shape
    du = np.empty((height, width), np.float32)
    dv = np.empty((height, width), np.float32)
    du[...], dv[...] = _affine_increment(terms, (height, width))
    red = (np.indices((height, width)).sum(axis=0) % 2).astype(np.float32)
    # Over-relaxation factor on one colour, zero on the other.
    relax = (_SOR_OMEGA * red, _SOR_OMEGA * (1 - red))
    r1, r2, step_u, step_v, scratch = (
        np.empty((height, width), np.float32) for _ in range(5)
    )
    four = np.float32(4)
    sweeps = 0
    while sweeps < iterations:
        a11, a12, a22, b1, b2 = _data_system(terms, du, dv)
        smooth = alpha * _smoothness_weight(u + du, v + dv)
        m11 = a11 + four * smooth
        m22 = a22 + four * smooth
        inverse_det = 1 / np.maximum(m11 * m22 - a12 * a12, np.float32(1e-9))
        # M^-1 of the per-pixel 2 x 2 system.
        p11 = m22 * inverse_det
        p12 = -a12 * inverse_det
        p22 = m11 * inverse_det
        c1 = b1 + smooth * (_neighbour_sum(u) - four * u)
        c2 = b2 + smooth * (_neighbour_sum(v) - four * v)
        for _ in range(min(_SWEEPS_PER_REWEIGHT, iterations - sweeps)):
            for colour_relax in relax:
                # In-place arithmetic: these arrays are the hot loop.
                _neighbour_sum(du, out=r1)
                r1 *= smooth
                r1 += c1
                _neighbour_sum(dv, out=r2)
                r2 *= smooth
                r2 += c2
                np.multiply(p11, r1, out=step_u)
                step_u += np.multiply(p12, r2, out=scratch)
                step_u -= du
                np.multiply(p22, r2, out=step_v)
                step_v += np.multiply(p12, r1, out=scratch)
                step_v -= dv
                du += np.multiply(colour_relax, step_u, out=step_u)
                dv += np.multiply(colour_relax, step_v, out=step_v)
            sweeps += 1
    return du, dv


def _affine_increment(terms, shape):
    """Least-squares affine increment ``(du, dv)`` of the linearised data.

    ``du = a0 + a1 x + a2 y`` and ``dv = b0 + b1 x + b2 y`` with centred,
    scaled coordinates, fitted on every second pixel in each direction;
    clipped to the largest step.  Zero when the fit is ill-posed.
    """
    height, width = shape
    scale = np.float32(max(height, width) / 2)
    x = (np.arange(0, width, 2, dtype=np.float32) - (width - 1) / 2) / scale
    y = (np.arange(0, height, 2, dtype=np.float32) - (height - 1) / 2) / scale
    x = x[None, :]
    y = y[:, None]
    normal = np.zeros((6, 6))
    rhs = np.zeros(6)
    for gamma, ix, iy, it in terms:
        gamma, ix, iy, it = (a[::2, ::2] for a in (gamma, ix, iy, it))
        basis = (ix, ix * x, ix * y, iy, iy * x, iy * y)
        for i, first in enumerate(basis):
            weighted = gamma * first
            rhs[i] -= float(np.vdot(weighted, it))
            for j in range(i, 6):
                normal[i, j] += float(np.vdot(weighted, basis[j]))
    normal = np.triu(normal) + np.triu(normal, 1).T
    trace = np.trace(normal)
    if not trace > 0:
        return 0, 0
    try:
        a = np.linalg.solve(normal + 1e-9 * trace * np.eye(6), rhs)
    except np.linalg.LinAlgError:
        return 0, 0
    if not np.isfinite(a).all():
        return 0, 0
    x = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / scale
    y = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / scale
    du = np.float32(a[0]) + np.float32(a[1]) * x[None, :]
    du = du + np.float32(a[2]) * y[:, None]
    dv = np.float32(a[3]) + np.float32(a[4]) * x[None, :]
    dv = dv + np.float32(a[5]) * y[:, None]
    return (
        np.clip(du, -_MAX_STEP, _MAX_STEP),
        np.clip(dv, -_MAX_STEP, _MAX_STEP),
    )


def _data_system(terms, du, dv):
    """Robustly weighted normal equations of the linearised data term."""
    a11 = np.zeros_like(du)
    a12 = np.zeros_like(du)
    a22 = np.zeros_like(du)
    b1 = np.zeros_like(du)
    b2 = np.zeros_like(du)
    scale = np.float32(1 / _DATA_EPSILON**2)
    for gamma, ix, iy, it in terms:
        residual = ix * du + iy * dv + it
        weight = gamma / np.sqrt(1 + scale * residual * residual)
        wix = weight * ix
        wiy = weight * iy
        a11 += wix * ix
        a12 += wix * iy
        a22 += wiy * iy
        b1 -= wix * it
        b2 -= wiy * it
    return a11, a12, a22, b1, b2


def _smoothness_weight(u, v):
    """Charbonnier weight ``psi'`` of the flow gradient magnitude."""
    ux, uy = _derivatives(u)
    vx, vy = _derivatives(v)
    magnitude = ux * ux + uy * uy + vx * vx + vy * vy
    return 1 / np.sqrt(1 + np.float32(1 / _SMOOTHNESS_EPSILON**2) * magnitude)


def _neighbour_sum(field, out=None):
    return cv2.filter2D(
        field, -1, _NEIGHBOURS, dst=out, borderType=cv2.BORDER_REPLICATE
    )
