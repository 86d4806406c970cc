"""Pyramid levels of a volume with anisotropic voxels.

Every level halves Y and X (like the 2-D pyramid, down to 8 px).  Z is
halved only when its voxels are not much thicker than the in-plane pixels
will be after halving, and never below :data:`MIN_PLANES` planes: on a
typical stack whose planes are 3-5 times further apart than its pixels,
the first levels keep every plane and the coarse ones become isotropic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_flowscope.engine.pyramid import MIN_LEVEL_SIZE

from .filters import downsample

__all__ = ['MIN_PLANES', 'VolumeLevel', 'build_pyramid', 'plan_levels']

#: Z is never halved to fewer planes than this.
MIN_PLANES = 4
# Z is halved when its spacing is at most this many times the in-plane
# spacing, so that after halving both it stays within a factor sqrt(2).
_ISOTROPY = math.sqrt(2)


@dataclass(frozen=True)
class VolumeLevel:
    """Geometry of one pyramid level.

    Attributes
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` voxels.
    spacing : tuple of float
        ``(z, y, x)`` voxel size in the units of the full-resolution
        spacing.
    halved_z : bool
        Whether Z was halved from the next finer level (always False for
        level 0).
    """

    shape: tuple
    spacing: tuple
    halved_z: bool = False

    def window(self, sigma):
        """Per-axis Gaussian sigma (voxels) of a window ``sigma`` in-plane
        pixels wide, isotropic in physical units."""
        pixel = min(self.spacing[1:])
        return tuple(sigma * pixel / size for size in self.spacing)


def plan_levels(shape, spacing, levels):
    """The levels of a pyramid, finest first.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` of the volume.
    spacing : tuple of float
        ``(z, y, x)`` voxel size (any unit; only ratios matter).
    levels : int
        Largest number of levels; fewer when halving Y or X further would
        leave fewer than 8 px.

    Returns
    -------
    list of VolumeLevel
    """
    current = VolumeLevel(tuple(shape), tuple(float(s) for s in spacing))
    planned = [current]
    while len(planned) < levels:
        depth, height, width = current.shape
        if (min(height, width) + 1) // 2 < MIN_LEVEL_SIZE:
            break
        dz, dy, dx = current.spacing
        halve_z = (depth + 1) // 2 >= MIN_PLANES and dz <= _ISOTROPY * min(
            dy, dx
        )
        current = VolumeLevel(
            (
                (depth + 1) // 2 if halve_z else depth,
                (height + 1) // 2,
                (width + 1) // 2,
            ),
            (dz * 2 if halve_z else dz, dy * 2, dx * 2),
            halve_z,
        )
        planned.append(current)
    return planned


def build_pyramid(volume, planned):
    """Gaussian pyramid of ``volume`` following ``planned`` levels.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X), float32
    planned : list of VolumeLevel

    Returns
    -------
    list of ndarray
        One volume per level, finest first.
    """
    pyramid = [np.ascontiguousarray(volume, dtype=np.float32)]
    for level in planned[1:]:
        pyramid.append(downsample(pyramid[-1], halve_z=level.halved_z))
    return pyramid
