"""Per-level variational flow for volumes (robust data term + alpha).

The 3-D counterpart of :mod:`napari_flowscope.engine.variational`, with
the same energy

    E(w) = sum_c gamma_c psi(|N_c,moving(p + w) - N_c,reference(p)|^2)
           + alpha * psi(|grad w|^2)

over four data channels: the locally normalised volume ``N`` and its
three derivatives (gradient constancy), Charbonnier penalisers, warping
and linearisation, lagged robust weights and red-black successive
over-relaxation (one 3 x 3 system per voxel), a median filter of the
increments and an affine initial increment.  The smoothness term is
isotropic in physical units: on voxels ``r`` times thicker than wide, a
flow difference between planes weighs ``1 / r^2`` as much, and the z
component (in voxels) ``r^2`` as much as the in-plane ones.

Warps are trilinear (:func:`~.warp.sample_linear`), not cubic as in 2-D:
a cubic B-spline warp of a volume costs about twenty times more, for a
bias of a few hundredths of a voxel.
"""

from __future__ import annotations

import cv2
import numpy as np

# The 2-D solver's constants (see engine/variational.py for their why).
from napari_flowscope.engine.variational import (
    _BRIGHTNESS_WEIGHT,
    _DATA_EPSILON,
    _GRADIENT_WEIGHT,
    _MAX_STEP,
    _MEDIAN_KSIZE,
    _MIN_SOLVED_SIZE,
    _NORMALISATION_FLOOR,
    _NORMALISATION_SHARE,
    _NORMALISATION_SIGMA,
    _PRESMOOTHING_SIGMA,
    _SMOOTHNESS_EPSILON,
    _SOR_OMEGA,
    _SWEEPS_PER_REWEIGHT,
)

from .filters import blur, filter_z
from .warp import sample_linear

__all__ = ['solve_level']

_DERIVATIVE = np.array([1, -8, 0, 8, -1], np.float32) / 12


def solve_level(reference, moving, w, *, params, spacing):
    """Refine the planar flow of one pyramid level.

    Parameters
    ----------
    reference, moving : ndarray, shape (Z, Y, X), float32
        Normalised volumes of one pyramid level.
    w : ndarray, shape (3, Z, Y, X), float32
        Initial ``[x, y, z]`` flow at this level, in its voxels.
    params : FlowParams
        Uses ``alpha``, ``warps`` and ``iterations``.
    spacing : tuple of float
        ``(z, y, x)`` voxel size of this level.

    Returns
    -------
    ndarray, shape (3, Z, Y, X), float32
        The refined flow (a new array).  Levels whose planes are smaller
        than 8 px return ``w`` unchanged.
    """
    w = np.array(w, dtype=np.float32, copy=True)
    if min(reference.shape[1:]) < _MIN_SOLVED_SIZE:
        return w
    pixel = min(spacing[1:])
    # Physical size of a voxel step along (z, y, x) and of a unit of each
    # flow component [x, y, z], both in in-plane pixels.
    steps = tuple(size / pixel for size in spacing)
    units = (steps[2], steps[1], steps[0])
    window = tuple(
        min(
            _NORMALISATION_SIGMA / step,
            n * _NORMALISATION_SHARE,
        )
        for step, n in zip(steps, reference.shape, strict=True)
    )
    presmoothing = tuple(_PRESMOOTHING_SIGMA / step for step in steps)
    reference_channels = _channels(
        _normalise_locally(reference, presmoothing, window)
    )
    moving = _normalise_locally(moving, presmoothing, window)
    alpha = np.float32(params.alpha)
    depth, height, width = reference.shape
    warped = np.empty(reference.shape, np.float32)
    outside = np.empty(reference.shape, bool)
    for _ in range(params.warps):
        sample_linear(moving, w, out=warped, outside=outside)
        # Replicated border values are made up: no data term there.
        inside = (~outside).astype(np.float32)
        terms = _linearise(reference_channels, _channels(warped), inside)
        increment = _solve_increment(
            terms, w, alpha, params.iterations, steps, units
        )
        for component, change in zip(w, increment, strict=True):
            for plane, plane_change in zip(component, change, strict=True):
                plane += np.clip(
                    cv2.medianBlur(plane_change, _MEDIAN_KSIZE),
                    -_MAX_STEP,
                    _MAX_STEP,
                )
    return w


def _normalise_locally(volume, presmoothing, window):
    """Zero mean, unit variance in a Gaussian window (bleaching-invariant)."""
    volume = blur(volume, presmoothing)
    centred = volume - blur(volume, window)
    variance = blur(centred * centred, window)
    floor = _NORMALISATION_FLOOR**2 * float(variance.mean()) + 1e-12
    variance += np.float32(floor)
    centred /= np.sqrt(variance, out=variance)
    return centred


def _derivatives(volume):
    """Five-point central differences ``(d/dx, d/dy, d/dz)`` per voxel."""
    dx = np.empty_like(volume)
    dy = np.empty_like(volume)
    row = _DERIVATIVE[None, :]
    for plane, plane_dx, plane_dy in zip(volume, dx, dy, strict=True):
        cv2.filter2D(
            plane, -1, row, dst=plane_dx, borderType=cv2.BORDER_REFLECT
        )
        cv2.filter2D(
            plane, -1, row.T, dst=plane_dy, borderType=cv2.BORDER_REFLECT
        )
    dz = filter_z(volume, _DERIVATIVE[:, None])
    return dx, dy, dz


def _channels(volume):
    """``(value, d/dx, d/dy, d/dz)`` of the volume and of its derivatives."""
    first = _derivatives(volume)
    return [(volume, *first)] + [
        (derivative, *_derivatives(derivative)) for derivative in first
    ]


def _linearise(reference_channels, warped_channels, inside):
    """Per channel ``(gamma, Ix, Iy, Iz, It)``; gradients averaged."""
    weights = (
        _BRIGHTNESS_WEIGHT,
        _GRADIENT_WEIGHT,
        _GRADIENT_WEIGHT,
        _GRADIENT_WEIGHT,
    )
    half = np.float32(0.5)
    return [
        (
            gamma * inside,
            half * (reference[1] + warped[1]),
            half * (reference[2] + warped[2]),
            half * (reference[3] + warped[3]),
            warped[0] - reference[0],
        )
        for gamma, reference, warped in zip(
            weights, reference_channels, warped_channels, strict=True
        )
    ]


def _solve_increment(terms, w, alpha, iterations, steps, units):
    """Red-black SOR for the increment ``dw`` of the planar flow ``w``.

    With the robust weights frozen, the Euler-Lagrange equations at each
    voxel read ``(A + s K) dw = b + s L(w + dw) - s diag(K) dw`` with the
    data tensor ``A``, ``b``, the smoothness weight ``s = alpha psi'``,
    ``L`` the weighted neighbour differences of each component and ``K``
    their total weight; each half-sweep solves them on one colour.
    """
    shape = w.shape[1:]
    increment = _affine_increment(terms, shape)
    red = (np.indices(shape).sum(axis=0) % 2).astype(np.float32)
    relax = (_SOR_OMEGA * red, _SOR_OMEGA * (1 - red))
    # Neighbour weights along (z, y, x) of an x or y component; the z
    # component's are units_z^2 times larger (its unit is a z voxel).
    neighbour = tuple(np.float32(1 / (step * step)) for step in steps)
    component_scale = tuple(np.float32(unit * unit) for unit in units)
    total = np.float32(2 * sum(neighbour))
    sums = np.empty((3, *shape), np.float32)
    step = np.empty((3, *shape), np.float32)
    scratch = np.empty(shape, np.float32)
    sweeps = 0
    while sweeps < iterations:
        system, b = _data_system(terms, increment)
        smooth = alpha * _smoothness_weight(w + increment, steps, units)
        diagonal = [smooth * (total * scale) for scale in component_scale]
        inverse = _inverse_3x3(
            system[0] + diagonal[0],
            system[1],
            system[2],
            system[3] + diagonal[1],
            system[4],
            system[5] + diagonal[2],
        )
        # Constant part of the right-hand side: b + s (L w).
        constant = [
            b[c]
            + smooth
            * (component_scale[c] * _laplacian(w[c], neighbour, total))
            for c in range(3)
        ]
        for _ in range(min(_SWEEPS_PER_REWEIGHT, iterations - sweeps)):
            for colour_relax in relax:
                for c in range(3):
                    _neighbour_sum(increment[c], neighbour, out=sums[c])
                    sums[c] *= smooth
                    sums[c] *= component_scale[c]
                    sums[c] += constant[c]
                _multiply(inverse, sums, out=step, scratch=scratch)
                step -= increment
                step *= colour_relax
                increment += step
            sweeps += 1
    return increment


def _multiply(inverse, vector, *, out, scratch):
    """``out = M^-1 vector`` per voxel, M^-1 as 6 symmetric entries."""
    i_xx, i_xy, i_xz, i_yy, i_yz, i_zz = inverse
    rows = ((i_xx, i_xy, i_xz), (i_xy, i_yy, i_yz), (i_xz, i_yz, i_zz))
    for target, row in zip(out, rows, strict=True):
        np.multiply(row[0], vector[0], out=target)
        target += np.multiply(row[1], vector[1], out=scratch)
        target += np.multiply(row[2], vector[2], out=scratch)


def _inverse_3x3(a, b, c, d, e, f):
    """Inverse of symmetric ``[[a, b, c], [b, d, e], [c, e, f]]`` fields."""
    cofactors = (
        d * f - e * e,
        c * e - b * f,
        b * e - c * d,
        a * f - c * c,
        b * c - a * e,
        a * d - b * b,
    )
    determinant = a * cofactors[0] + b * cofactors[1] + c * cofactors[2]
    inverse_determinant = np.float32(1) / np.maximum(
        determinant, np.float32(1e-12)
    )
    return tuple(cofactor * inverse_determinant for cofactor in cofactors)


def _neighbour_sum(field, weights, out):
    """Weighted sum of the 6 neighbours, borders replicated (Neumann)."""
    weight_z, weight_y, weight_x = weights
    kernel = np.array(
        [[0, weight_y, 0], [weight_x, 0, weight_x], [0, weight_y, 0]],
        np.float32,
    )
    for plane, target in zip(field, out, strict=True):
        cv2.filter2D(
            plane, -1, kernel, dst=target, borderType=cv2.BORDER_REPLICATE
        )
    if len(field) > 1:
        out[1:] += weight_z * field[:-1]
        out[:-1] += weight_z * field[1:]
    out[0] += weight_z * field[0]
    out[-1] += weight_z * field[-1]
    return out


def _laplacian(field, weights, total):
    """Weighted neighbour differences ``sum_n k_n (f_n - f)``."""
    out = np.empty_like(field)
    _neighbour_sum(field, weights, out)
    out -= total * field
    return out


def _data_system(terms, increment):
    """Robustly weighted normal equations of the linearised data term.

    Returns
    -------
    system : list of 6 ndarray
        ``(A_xx, A_xy, A_xz, A_yy, A_yz, A_zz)``.
    b : list of 3 ndarray
    """
    du, dv, dz = increment
    system = [np.zeros_like(du) for _ in range(6)]
    b = [np.zeros_like(du) for _ in range(3)]
    scale = np.float32(1 / _DATA_EPSILON**2)
    for gamma, ix, iy, iz, it in terms:
        residual = ix * du + iy * dv + iz * dz + it
        weight = gamma / np.sqrt(1 + scale * residual * residual)
        wix, wiy, wiz = weight * ix, weight * iy, weight * iz
        system[0] += wix * ix
        system[1] += wix * iy
        system[2] += wix * iz
        system[3] += wiy * iy
        system[4] += wiy * iz
        system[5] += wiz * iz
        b[0] -= wix * it
        b[1] -= wiy * it
        b[2] -= wiz * it
    return system, b


def _smoothness_weight(w, steps, units):
    """Charbonnier weight ``psi'`` of the physical flow gradient."""
    magnitude = np.zeros(w.shape[1:], np.float32)
    for component, unit in zip(w, units, strict=True):
        for axis, step in enumerate(steps):
            derivative = np.gradient(component, axis=axis) * np.float32(
                unit / step
            )
            magnitude += derivative * derivative
    return 1 / np.sqrt(1 + np.float32(1 / _SMOOTHNESS_EPSILON**2) * magnitude)


def _affine_increment(terms, shape):
    """Least-squares affine increment of the linearised data (3, Z, Y, X).

    Each component is ``a0 + a1 x + a2 y + a3 z`` in centred, scaled
    voxel coordinates, fitted on every second voxel along each axis and
    clipped to the largest step; zero when the fit is ill-posed.
    """
    depth, height, width = shape
    scale = np.float32(max(shape) / 2)
    coordinates = [
        (np.arange(0, n, 2, dtype=np.float32) - (n - 1) / 2) / scale
        for n in shape
    ]
    z = coordinates[0][:, None, None]
    y = coordinates[1][None, :, None]
    x = coordinates[2][None, None, :]
    normal = np.zeros((12, 12))
    rhs = np.zeros(12)
    for gamma, ix, iy, iz, it in terms:
        gamma, ix, iy, iz, it = (
            a[::2, ::2, ::2] for a in (gamma, ix, iy, iz, it)
        )
        basis = [
            gradient * coordinate
            for gradient in (ix, iy, iz)
            for coordinate in (np.float32(1), x, y, z)
        ]
        for i, first in enumerate(basis):
            weighted = gamma * first
            rhs[i] -= float(np.vdot(weighted, it))
            for j in range(i, 12):
                normal[i, j] += float(np.vdot(weighted, basis[j]))
    increment = np.zeros((3, *shape), np.float32)
    normal = np.triu(normal) + np.triu(normal, 1).T
    trace = np.trace(normal)
    if not trace > 0:
        return increment
    try:
        a = np.linalg.solve(normal + 1e-9 * trace * np.eye(12), rhs)
    except np.linalg.LinAlgError:
        return increment
    if not np.isfinite(a).all():
        return increment
    z, y, x = (
        (np.arange(n, dtype=np.float32) - (n - 1) / 2) / scale for n in shape
    )
    for c in range(3):
        a0, ax, ay, az = (np.float32(value) for value in a[4 * c : 4 * c + 4])
        increment[c] = (
            a0
            + ax * x[None, None, :]
            + ay * y[None, :, None]
            + az * z[:, None, None]
        )
    np.clip(increment, -_MAX_STEP, _MAX_STEP, out=increment)
    return increment
