"""Per-frame statistics of a motion-correction run, and their units.

Two motions are reported, never mixed up:

* **displacement from the reference**: the length of ``w(x)``, how far the
  content of the reference position ``x`` is in this frame (drift
  accumulates here);
* **velocity**: the length of ``w_t(x) - w_{t-1}(x)``, how far that same
  content moved since the previous frame.  Both fields are indexed by the
  reference position, so their difference follows one piece of material
  from frame to frame.

Both are computed in pixels and pixels per frame; :class:`MotionUnits`
expresses them in the stack's physical units when it has them.  The share of
trusted pixels tells whether the match of a frame can be believed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_flowscope.engine import COLLAPSED_TRUSTED_FRACTION
from napari_flowscope.engine.volume import displacement_length

__all__ = [
    'FrameStats',
    'MotionUnits',
    'displacement_magnitude',
    'normalized_cross_correlation',
    'velocity_magnitude',
]

STAT_NAMES = (
    'mean_displacement',
    'max_displacement',
    'mean_velocity',
    'max_velocity',
    'ncc_before',
    'ncc_after',
    'trusted_fraction',
)
#: Statistics that are lengths (px) and speeds (px / frame).
DISPLACEMENT_STATS = ('mean_displacement', 'max_displacement')
VELOCITY_STATS = ('mean_velocity', 'max_velocity')


@dataclass(frozen=True)
class FrameStats:
    """Statistics of ``n`` consecutive frames.

    Attributes
    ----------
    mean_displacement, max_displacement : ndarray, shape (n,), float32
        Mean and maximum over the frame of the displacement from the
        reference ``|w(x)|``, in px.
    mean_velocity, max_velocity : ndarray, shape (n,), float32
        Mean and maximum over the frame of the frame-to-frame motion
        ``|w_t(x) - w_{t-1}(x)|``, in px / frame.  NaN for the first frame
        of a run (it has no previous frame).
    ncc_before, ncc_after : ndarray, shape (n,), float32
        Normalised cross-correlation (-1 to 1) of each frame with the
        reference it was registered to, before and after correction.
    trusted_fraction : ndarray, shape (n,), float32
        Share (0 to 1) of the textured pixels (reliability at or above the
        threshold) whose displacement is trusted (confidence >= 0.5), see
        :func:`napari_flowscope.engine.trusted_fraction`; NaN when the
        reference has no textured pixel.
    """

    mean_displacement: np.ndarray
    max_displacement: np.ndarray
    mean_velocity: np.ndarray
    max_velocity: np.ndarray
    ncc_before: np.ndarray
    ncc_after: np.ndarray
    trusted_fraction: np.ndarray

    def __post_init__(self):
        for name in STAT_NAMES:
            value = np.asarray(getattr(self, name), dtype=np.float32)
            object.__setattr__(self, name, value.reshape(-1))

    def __len__(self):
        return self.mean_displacement.shape[0]

    @classmethod
    def empty(cls, n_frames: int) -> FrameStats:
        """Stats of ``n_frames`` frames, all NaN (filled in place)."""
        return cls(
            *(np.full(n_frames, np.nan, np.float32) for _ in STAT_NAMES)
        )

    @classmethod
    def concatenate(cls, parts) -> FrameStats:
        """Join the stats of consecutive batches."""
        parts = list(parts)
        return cls(
            *(
                np.concatenate([getattr(part, name) for part in parts])
                if parts
                else np.zeros(0, np.float32)
                for name in STAT_NAMES
            )
        )

    @property
    def collapsed(self) -> np.ndarray:
        """Frames whose match collapsed, bool ``(n,)``.

        True where :attr:`trusted_fraction` is below
        :data:`napari_flowscope.engine.COLLAPSED_TRUSTED_FRACTION` (0.3):
        most of what could be measured did not match (motion beyond the
        pyramid's reach, an unrelated frame, noise).  False where the
        fraction is NaN.
        """
        return self.trusted_fraction < np.float32(COLLAPSED_TRUSTED_FRACTION)

    def as_columns(self) -> dict[str, np.ndarray]:
        """The statistics by name, in file-column order (px, px / frame)."""
        return {name: getattr(self, name) for name in STAT_NAMES}


def displacement_magnitude(w, *, spacing=None):
    """Length of the displacement from the reference, per pixel.

    Parameters
    ----------
    w : array_like, shape (..., Y, X, 2) or (..., Z, Y, X, 3)
        ``[x, y]`` flow in px, or ``[x, y, z]`` flow of volumes in voxels.
    spacing : tuple of float, optional
        Volumes: ``(z, y, x)`` voxel size, so that z counts as a distance
        (:func:`napari_flowscope.engine.volume.displacement_length`).

    Returns
    -------
    ndarray, shape of ``w`` without its last axis, float32
        ``|w|`` in (in-plane) px.
    """
    return displacement_length(w, spacing=spacing)


def velocity_magnitude(w, *, previous=None, spacing=None):
    """Frame-to-frame motion ``|w_t - w_{t-1}|``, per pixel.

    Parameters
    ----------
    w : array_like, shape (n, Y, X, 2) or (n, Z, Y, X, 3)
        Flow of ``n`` consecutive frames (see :func:`displacement_magnitude`).
    previous : array_like, shape of ``w[0]``, optional
        Flow of the frame before ``w[0]``; without it the first row is NaN.
    spacing : tuple of float, optional
        Volumes: ``(z, y, x)`` voxel size.

    Returns
    -------
    ndarray, shape of ``w`` without its last axis, float32
        In (in-plane) px / frame.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim not in (4, 5) or w.shape[-1] != w.ndim - 2:
        raise ValueError(
            f'w must have shape (n, Y, X, 2) or (n, Z, Y, X, 3); got {w.shape}'
        )
    out = np.empty(w.shape[:-1], np.float32)
    if previous is None:
        out[:1] = np.nan
    else:
        step = w[:1] - np.asarray(previous, dtype=np.float32)
        out[:1] = displacement_length(step, spacing=spacing)
    if len(w) > 1:
        out[1:] = displacement_length(w[1:] - w[:-1], spacing=spacing)
    return out


# Unit spellings after formats.normalise_unit, and how to show them.
_LENGTH_UNITS = {
    'pm': 'pm',
    'nm': 'nm',
    'um': 'µm',
    'mm': 'mm',
    'cm': 'cm',
    'm': 'm',
    'meter': 'm',
    'centimeter': 'cm',
    'picometer': 'pm',
}
_TIME_UNITS = {
    'us': 'µs',
    'ms': 'ms',
    's': 's',
    'min': 'min',
    'h': 'h',
    'microsecond': 'µs',
}


@dataclass(frozen=True)
class MotionUnits:
    """The units displacement and velocity are reported in.

    Physical units are used when the stack has them: a length unit and one
    pixel size for x and y (square pixels) make displacements µm (say)
    instead of px; a time unit makes velocities per second (say) instead of
    per frame.  Build it with :meth:`from_scale`.

    Attributes
    ----------
    pixel_size : float
        Length units per pixel (1 for px).
    length_unit : str
        ``'px'`` or a length such as ``'µm'``.
    frame_interval : float
        Time units per frame (1 for frames).
    time_unit : str
        ``'frame'`` or a time such as ``'s'``.
    """

    pixel_size: float = 1.0
    length_unit: str = 'px'
    frame_interval: float = 1.0
    time_unit: str = 'frame'

    @classmethod
    def from_scale(cls, scale=None, units=None) -> MotionUnits:
        """Units from a ``(t, y, x)`` scale and units, as napari has them.

        Parameters
        ----------
        scale : sequence of 3 or 4 float, optional
            Frame interval and pixel size along ``(t, y, x)`` or ``(t,
            z, y, x)`` (volumes), e.g. a layer's ``scale``.
        units : sequence of 3 or 4 str, optional
            e.g. ``('s', 'um', 'um')`` or napari's ``('second',
            'micrometer', 'micrometer')``; ``'pixel'`` means none.

        Returns
        -------
        MotionUnits
            px when the y and x units are not lengths or the pixels are
            not square; per frame when the time unit is not a time.
        """
        from napari_flowscope.formats import normalise_unit

        if scale is None or units is None:
            return cls()
        if len(scale) not in (3, 4) or len(units) != len(scale):
            raise ValueError(
                'scale and units must have 3 entries (t, y, x) or 4 (t, z, '
                f'y, x); got {scale!r} and {units!r}'
            )
        # Volume displacements are lengths in in-plane pixels, so the
        # in-plane pixel size converts them too.
        interval, size_y, size_x = (float(scale[i]) for i in (0, -2, -1))
        time_unit, unit_y, unit_x = (
            normalise_unit(str(units[i])) for i in (0, -2, -1)
        )
        values = {}
        length = _LENGTH_UNITS.get(unit_x)
        if (
            length is not None
            and unit_y == unit_x
            and np.isclose(size_y, size_x, rtol=1e-6, atol=0)
            and size_x > 0
        ):
            values.update(pixel_size=size_x, length_unit=length)
        time = _TIME_UNITS.get(time_unit)
        if time is not None and interval > 0:
            values.update(frame_interval=interval, time_unit=time)
        return cls(**values)

    @property
    def calibrated(self) -> bool:
        """Whether displacements are in a physical length."""
        return self.length_unit != 'px'

    @property
    def timed(self) -> bool:
        """Whether velocities are per unit of time (not per frame)."""
        return self.time_unit != 'frame'

    @property
    def displacement_unit(self) -> str:
        """e.g. ``'µm'`` or ``'px'``."""
        return self.length_unit

    @property
    def velocity_unit(self) -> str:
        """e.g. ``'µm/s'`` or ``'px/frame'``."""
        return f'{self.length_unit}/{self.time_unit}'

    def displacement(self, values):
        """Displacements in px to :attr:`displacement_unit` (float32)."""
        return np.asarray(values, np.float32) * np.float32(self.pixel_size)

    def velocity(self, values):
        """Velocities in px / frame to :attr:`velocity_unit` (float32)."""
        factor = self.pixel_size / self.frame_interval
        return np.asarray(values, np.float32) * np.float32(factor)

    def times(self, n_frames: int):
        """Time of each frame in :attr:`time_unit`, float32 ``(n,)``."""
        frames = np.arange(n_frames, dtype=np.float32)
        return frames * np.float32(self.frame_interval)

    def table(self, stats: FrameStats) -> dict[str, np.ndarray]:
        """``stats`` as the columns of ``stats.csv``, in these units.

        Displacement and velocity columns are converted and their names
        end in the unit (``mean_displacement_um``,
        ``mean_velocity_um_per_s``, ``mean_velocity_px_per_frame``); a
        ``time_<unit>`` column follows ``frame`` when the frame interval is
        known; every other statistic is copied unchanged, and ``collapsed``
        (1 for a frame whose match collapsed, else 0) comes last.
        """
        length = _ascii(self.length_unit)
        rate = f'{length}_per_{_ascii(self.time_unit)}'
        columns = {'frame': np.arange(len(stats))}
        if self.timed:
            columns[f'time_{_ascii(self.time_unit)}'] = self.times(len(stats))
        for name, values in stats.as_columns().items():
            if name in DISPLACEMENT_STATS:
                columns[f'{name}_{length}'] = self.displacement(values)
            elif name in VELOCITY_STATS:
                columns[f'{name}_{rate}'] = self.velocity(values)
            else:
                columns[name] = values
        columns['collapsed'] = stats.collapsed.astype(np.uint8)
        return columns


def _ascii(unit):
    return unit.replace('µ', 'u')


class ReferenceCorrelation:
    """Normalised cross-correlation of images with one fixed reference.

    The reference's centring and norm are computed once, since every frame
    of a run is compared with the same reference (twice: before and after
    correction).

    Parameters
    ----------
    reference : ndarray, shape (Y, X)
        Any real dtype.
    """

    def __init__(self, reference: np.ndarray):
        # float32 with numpy's pairwise summation: accurate to ~1e-6 here,
        # ten times faster than float64 copies, and deterministic (unlike
        # BLAS dot products, whose rounding can depend on memory alignment).
        centred = np.asarray(reference, dtype=np.float32)
        self._centred = centred - centred.mean(dtype=np.float32)
        self._norm = float(np.square(self._centred).sum())

    def __call__(self, image: np.ndarray) -> float:
        """Pearson correlation with the reference, -1 to 1.

        0 when either image is constant.
        """
        centred = np.asarray(image, dtype=np.float32)
        centred = centred - centred.mean(dtype=np.float32)
        denominator = np.sqrt(float(np.square(centred).sum()) * self._norm)
        if denominator == 0:
            return 0.0
        return float((centred * self._centred).sum()) / denominator


def normalized_cross_correlation(
    image: np.ndarray, reference: np.ndarray
) -> float:
    """Zero-mean normalised cross-correlation of two images.

    Parameters
    ----------
    image, reference : ndarray, shape (Y, X)
        Images of equal shape, any real dtype.

    Returns
    -------
    float
        Pearson correlation of the pixel values, -1 to 1; 0 when either
        image is constant.
    """
    return ReferenceCorrelation(reference)(image)
