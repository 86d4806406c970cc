"""Temporal smoothing of stacks (of frames or of flow fields)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ['NOTEBOOK_KERNEL', 'TEMPORAL_KERNEL', 'smooth_temporal']

#: The teaching notebook's 5-tap temporal kernel
#: ``[0.036, 0.249, 0.431, 0.249, 0.036]``, divided by its sum (1.001) so
#: that smoothing does not brighten the stack by 0.1 %.
NOTEBOOK_KERNEL = (0.036, 0.249, 0.431, 0.249, 0.036)
TEMPORAL_KERNEL = np.array(NOTEBOOK_KERNEL, np.float32) / np.float32(
    sum(NOTEBOOK_KERNEL)
)


def smooth_temporal(stack, *, sigma_t=None):
    """Smooth a stack along its first (time) axis.

    Parameters
    ----------
    stack : array_like, shape (T, H, W) or (T, H, W, C)
        Frames or flow fields (e.g. ``(T, H, W, 2)``); any real dtype.
    sigma_t : float, optional
        Standard deviation of a Gaussian in frames.  ``None`` (default)
        uses the notebook's 5-tap kernel
        ``[0.036, 0.249, 0.431, 0.249, 0.036]`` (normalised to sum to 1).

    Returns
    -------
    ndarray, shape of ``stack``, float32
        Ends are handled by reflection (``d c b | a b c d | c b a``), so a
        constant stack stays constant.

    Raises
    ------
    ValueError
        If ``stack`` has fewer than 3 dimensions or ``sigma_t`` is not
        positive and finite.
    """
    stack = np.asarray(stack)
    if stack.ndim < 3:
        raise ValueError(
            f'stack must be (T, H, W) or (T, H, W, C); got shape {stack.shape}'
        )
    stack = stack.astype(np.float32, copy=False)
    if sigma_t is None:
        return ndi.correlate1d(
            stack, TEMPORAL_KERNEL, axis=0, mode='mirror', output=np.float32
        )
    sigma_t = float(sigma_t)
    if not np.isfinite(sigma_t) or sigma_t <= 0:
        raise ValueError(
            f'sigma_t must be a positive finite number of frames or None; '
            f'got {sigma_t!r}'
        )
    return ndi.gaussian_filter1d(
        stack, sigma_t, axis=0, mode='mirror', output=np.float32
    )
