"""Per-frame statistics of a motion-correction run: speed, NCC, trust."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_flowscope.engine import COLLAPSED_TRUSTED_FRACTION

__all__ = ['FrameStats', 'normalized_cross_correlation']

STAT_NAMES = (
    'mean_speed',
    'max_speed',
    'ncc_before',
    'ncc_after',
    'trusted_fraction',
)


@dataclass(frozen=True)
class FrameStats:
    """Statistics of ``n`` consecutive frames.

    Attributes
    ----------
    mean_speed, max_speed : ndarray, shape (n,), float32
        Mean and maximum length (px) of the flow vectors of each frame.
    ncc_before, ncc_after : ndarray, shape (n,), float32
        Normalised cross-correlation (-1 to 1) of each frame with the
        reference it was registered to, before and after correction.
    trusted_fraction : ndarray, shape (n,), float32
        Share (0 to 1) of the textured pixels (reliability at or above the
        threshold) whose displacement is trusted (confidence >= 0.5), see
        :func:`napari_flowscope.engine.trusted_fraction`; NaN when the
        reference has no textured pixel.
    """

    mean_speed: np.ndarray
    max_speed: np.ndarray
    ncc_before: np.ndarray
    ncc_after: np.ndarray
    trusted_fraction: np.ndarray

    def __post_init__(self):
        for name in STAT_NAMES:
            value = np.asarray(getattr(self, name), dtype=np.float32)
            object.__setattr__(self, name, value.reshape(-1))

    def __len__(self):
        return self.mean_speed.shape[0]

    @classmethod
    def empty(cls, n_frames: int) -> FrameStats:
        """Stats of ``n_frames`` frames, all NaN (filled in place)."""
        return cls(
            *(
                np.full(n_frames, np.nan, np.float32)
                for _ in range(len(STAT_NAMES))
            )
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
        """The stored statistics by name, in file-column order."""
        return {name: getattr(self, name) for name in STAT_NAMES}


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
