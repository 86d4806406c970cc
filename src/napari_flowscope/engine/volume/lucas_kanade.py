"""Dense Lucas-Kanade flow for one pyramid level of a volume.

The 3-D counterpart of :mod:`napari_flowscope.engine.lucas_kanade`: at
every voxel the 3 x 3 system

    J w = b,   J = G * (grad I grad I^T),   b = G * (grad I r),
               r = grad I . w - It,   It = moving(p + w(p)) - reference(p)

is solved, with ``G`` a Gaussian window (per-axis widths, isotropic in
physical units) and the gradients of the *reference*, so ``J`` and its
inverse are computed once per reference.  ``J`` is regularised as
``J + LAMBDA I`` so that flat regions get a small update.  Flows are kept
planar, ``(3, Z, Y, X)`` holding ``[x, y, z]`` components, so that every
operation is one contiguous numpy or OpenCV pass.
"""

from __future__ import annotations

import numpy as np

from napari_flowscope.engine._scratch import ThreadScratch

from ._fill import ReliableAverage
from .filters import blur, gradients
from .warp import sample_linear

__all__ = [
    'LucasKanadeVolumeLevel',
    'min_eigenvalue',
    'structure_tensor',
]

# As in 2-D: Tikhonov weight in (contrast-normalised intensity / voxel)^2.
_TIKHONOV = np.float32(1e-5)
_TINY = np.float32(1e-30)
# The final averaging window, as a share of the Lucas-Kanade window.  A
# 3-D window holds sigma^3 voxels rather than sigma^2 pixels, so the
# per-voxel solutions are already far less noisy than in 2-D and a
# narrower average keeps smooth deformations sharper (synthetic volumes:
# mean error 0.077 instead of 0.095 voxel at equal noise, see
# docs/benchmarks.md).
_AVERAGE_SHARE = 0.5


def structure_tensor(gradient, sigma):
    """Windowed structure tensor ``(Jxx, Jxy, Jxz, Jyy, Jyz, Jzz)``.

    Parameters
    ----------
    gradient : tuple of 3 ndarray, each shape (Z, Y, X), float32
        ``(Ix, Iy, Iz)``.
    sigma : tuple of float
        Per-axis window ``(z, y, x)`` in voxels.
    """
    ix, iy, iz = gradient
    return tuple(
        blur(first * second, sigma)
        for first, second in (
            (ix, ix),
            (ix, iy),
            (ix, iz),
            (iy, iy),
            (iy, iz),
            (iz, iz),
        )
    )


def min_eigenvalue(jxx, jxy, jxz, jyy, jyz, jzz):
    """Smallest eigenvalue of a field of symmetric 3 x 3 matrices (>= 0).

    Closed form: the trigonometric solution of the characteristic cubic.
    In float32 its absolute error is about ``sqrt(eps)`` times the spread
    of the eigenvalues (1e-6 for contrast-normalised data), far below any
    useful reliability threshold.

    Returns
    -------
    ndarray, float32
    """
    a, b, c, d, e, f = (
        np.asarray(value, np.float32)
        for value in (jxx, jxy, jxz, jyy, jyz, jzz)
    )
    q = (a + d + f) / np.float32(3)
    a, d, f = a - q, d - q, f - q
    p = np.sqrt(
        (a * a + d * d + f * f + np.float32(2) * (b * b + c * c + e * e))
        / np.float32(6)
    )
    # det((J - q I) / p) / 2 = cos(3 angle)
    half_det = (
        a * (d * f - e * e) - b * (b * f - e * c) + c * (b * e - d * c)
    ) / (np.float32(2) * np.maximum(p, _TINY) ** 3)
    np.clip(half_det, -1, 1, out=half_det)
    angle = np.arccos(half_det) / np.float32(3)
    smallest = q + np.float32(2) * p * np.cos(
        angle + np.float32(2 * np.pi / 3)
    )
    return np.maximum(smallest, 0, out=smallest)


class LucasKanadeVolumeLevel:
    """Reference-side quantities of one pyramid level of a volume.

    Parameters
    ----------
    reference : ndarray, shape (Z, Y, X), float32
        Contrast-normalised reference of this level.
    sigma : tuple of float
        Per-axis window ``(z, y, x)`` in voxels.
    reliability : ndarray, shape (Z, Y, X), float32, optional
        Given for the finest level: voxels below ``reliability_threshold``
        receive no update there (they keep the flow interpolated from the
        coarser level) and count little in :meth:`average_reliable`.
    reliability_threshold : float, optional
    """

    def __init__(
        self,
        reference,
        *,
        sigma,
        reliability=None,
        reliability_threshold=None,
    ):
        self.reference = reference
        self.sigma = tuple(float(s) for s in sigma)
        shape = reference.shape
        self._scratch = ThreadScratch(
            temporal=(shape, np.float32),
            residual=(shape, np.float32),
            outside=(shape, bool),
            b=((3, *shape), np.float32),
        )
        self.gradient = gradients(reference)
        jxx, jxy, jxz, jyy, jyz, jzz = structure_tensor(
            self.gradient, self.sigma
        )
        for diagonal in (jxx, jyy, jzz):
            diagonal += _TIKHONOV
        # J^-1 = adjugate / determinant (J is symmetric).
        cofactors = (
            jyy * jzz - jyz * jyz,
            jxz * jyz - jxy * jzz,
            jxy * jyz - jxz * jyy,
            jxx * jzz - jxz * jxz,
            jxy * jxz - jxx * jyz,
            jxx * jyy - jxy * jxy,
        )
        determinant = (
            jxx * cofactors[0] + jxy * cofactors[1] + jxz * cofactors[2]
        )
        inverse_determinant = np.float32(1) / determinant
        # (i_xx, i_xy, i_xz, i_yy, i_yz, i_zz)
        self._inverse = tuple(
            cofactor * inverse_determinant for cofactor in cofactors
        )
        self._average_sigma = tuple(s * _AVERAGE_SHARE for s in self.sigma)
        self.reliability = None
        self._unreliable = None
        self._average = None
        if reliability is None:
            return
        reliability = np.array(reliability, dtype=np.float32)
        reliability.flags.writeable = False
        self.reliability = reliability
        reliable = reliability >= np.float32(reliability_threshold)
        if reliable.any() and not reliable.all():
            self._unreliable = np.flatnonzero(~reliable)
        # With nothing reliable, every voxel counts alike.
        self._average = ReliableAverage(
            reliable if reliable.any() else ~reliable, self._average_sigma
        )

    def solve(self, moving, w, *, warps):
        """Refine the planar flow ``w`` in place.

        Parameters
        ----------
        moving : ndarray, shape (Z, Y, X), float32
            Contrast-normalised moving volume of this level.
        w : ndarray, shape (3, Z, Y, X), float32
            ``[x, y, z]`` flow, updated in place.
        warps : int
            Warp-and-solve iterations.
        """
        work = self._workspace()
        temporal, residual, outside, b = (
            work.temporal,
            work.residual,
            work.outside,
            work.b,
        )
        ix, iy, iz = self.gradient
        i_xx, i_xy, i_xz, i_yy, i_yz, i_zz = self._inverse
        flat_w = w.reshape(3, -1)
        if self._unreliable is not None:
            kept = flat_w[:, self._unreliable]
        for _ in range(warps):
            sample_linear(moving, w, out=temporal, outside=outside)
            temporal -= self.reference
            # Samples from outside the volume are made up: no temporal
            # difference there (trust the current flow).
            np.copyto(temporal, 0, where=outside)
            # Linearised residual of the whole flow at each window voxel.
            np.multiply(ix, w[0], out=residual)
            residual += np.multiply(iy, w[1], out=b[0])
            residual += np.multiply(iz, w[2], out=b[0])
            residual -= temporal
            for gradient, target in zip(self.gradient, b, strict=True):
                np.multiply(gradient, residual, out=temporal)
                blur(temporal, self.sigma, out=target)
            # w = J^-1 b
            np.multiply(i_xx, b[0], out=w[0])
            w[0] += np.multiply(i_xy, b[1], out=temporal)
            w[0] += np.multiply(i_xz, b[2], out=temporal)
            np.multiply(i_xy, b[0], out=w[1])
            w[1] += np.multiply(i_yy, b[1], out=temporal)
            w[1] += np.multiply(i_yz, b[2], out=temporal)
            np.multiply(i_xz, b[0], out=w[2])
            w[2] += np.multiply(i_yz, b[1], out=temporal)
            w[2] += np.multiply(i_zz, b[2], out=temporal)
        if self._unreliable is not None:
            flat_w[:, self._unreliable] = kept

    def _workspace(self):
        return self._scratch.get()

    def average_reliable(self, w):
        """Gaussian average of the reliable voxels' flow (normalised).

        Averaging the per-voxel solutions over half the window again
        removes most of their noise for smooth motion; unreliable voxels
        take the flow of reliable neighbours, or keep their coarse-level
        estimate far from any (see :class:`ReliableAverage`).

        Parameters
        ----------
        w : ndarray, shape (3, Z, Y, X), float32

        Returns
        -------
        ndarray, shape (3, Z, Y, X), float32
            A new array.
        """
        return self._average(w)
