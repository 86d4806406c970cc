"""Apply a flow field to a frame: ``registered(x) = moving(x + w(x))``."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ['warp']

_INTERPOLATIONS = {'linear': cv2.INTER_LINEAR, 'cubic': cv2.INTER_CUBIC}
# cv2.remap (OpenCV 5) samples multi-channel float images on a 1/32 px
# fixed-point grid but single-channel ones exactly, so channels are
# remapped one at a time (every channel then matches a 2-D warp).
_MAX_REMAP_CHANNELS = 1


def warp(image, w, *, interpolation='linear'):
    """Register ``image`` onto the reference grid with the flow ``w``.

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, C)
        Moving frame, any real dtype, optionally with a trailing channel
        axis.
    w : array_like, shape (H, W, 2)
        ``[x, y]`` displacement with ``moving(x + w(x)) ~ reference(x)``,
        as returned by :func:`napari_flowscope.engine.estimate_flow`.
    interpolation : {'linear', 'cubic'}
        Bilinear or bicubic sampling.

    Returns
    -------
    ndarray, shape of ``image``, float32
        ``image(x + w(x))``.  Positions outside the frame take the value of
        the nearest edge pixel (border replicated), so the output has no
        NaN and no artificial dark rim.

    Raises
    ------
    ValueError
        On shape mismatch, an unknown interpolation, or a non-finite ``w``.
    """
    try:
        flag = _INTERPOLATIONS[interpolation]
    except (KeyError, TypeError):
        raise ValueError(
            f"interpolation must be 'linear' or 'cubic'; got {interpolation!r}"
        ) from None
    image = np.asarray(image)
    w = np.asarray(w, dtype=np.float32)
    if image.ndim not in (2, 3):
        raise ValueError(
            f'image must be (H, W) or (H, W, C); got shape {image.shape}'
        )
    height, width = image.shape[:2]
    if w.shape != (height, width, 2):
        raise ValueError(
            f'w must have shape {(height, width, 2)} for an image of shape '
            f'{image.shape}; got {w.shape}'
        )
    if not np.isfinite(w).all():
        raise ValueError('w contains NaN or infinite values')
    map_x = w[..., 0] + np.arange(width, dtype=np.float32)
    map_y = w[..., 1] + np.arange(height, dtype=np.float32)[:, None]
    image = image.astype(np.float32, copy=False)

    def remap(plane):
        return cv2.remap(
            np.ascontiguousarray(plane),
            map_x,
            map_y,
            flag,
            borderMode=cv2.BORDER_REPLICATE,
        )

    if image.ndim == 2:
        return remap(image)
    channels = image.shape[2]
    out = np.empty(image.shape, np.float32)
    for start in range(0, channels, _MAX_REMAP_CHANNELS):
        stop = min(start + _MAX_REMAP_CHANNELS, channels)
        out[..., start:stop] = remap(image[..., start:stop]).reshape(
            height, width, stop - start
        )
    return out
