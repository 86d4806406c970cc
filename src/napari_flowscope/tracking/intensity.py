"""8-bit images for OpenCV's tracker, robust to outliers.

``cv2.goodFeaturesToTrack`` and ``cv2.calcOpticalFlowPyrLK`` take 8-bit
images. Microscopy frames are usually 12- or 16-bit, or float, with a few hot
or saturated pixels, so a plain ``astype(uint8)`` either wraps or crushes the
signal into a handful of grey levels. Instead, one intensity range is
estimated for the whole stack from percentiles of a subsample of its frames,
and every frame is mapped affinely with that same range (``low -> 0``,
``high -> 255``, clipped, rounded). One range for all frames keeps the
brightness-constancy assumption of Lucas-Kanade intact; a per-frame range
would turn photobleaching into apparent contrast changes. The high percentile
defaults to 99.99 rather than 99.5 because clipping the peaks of sparse
bright features (beads, nuclei) flattens them and biases their sub-pixel
positions.
"""

import numpy as np

# Enough to estimate extreme percentiles well; small enough that a
# 2048 x 2048 x 16-frame sample costs milliseconds.
_MAX_FRAMES = 16
_MAX_PIXELS = 1 << 22


def stack_intensity_range(stack, percentiles=(0.5, 99.99)):
    """Robust ``(low, high)`` intensity range of a stack.

    Parameters
    ----------
    stack : array_like, shape (T, Y, X)
        NumPy, memory-mapped or dask array; at most 16 evenly spaced frames
        are read.
    percentiles : tuple of float, optional
        Percentiles mapped to 0 and 255.

    Returns
    -------
    low, high : float
        ``high > low`` always (a constant stack gets ``high = low + 1``).
    """
    n_frames = len(stack)
    picks = np.unique(
        np.linspace(0, n_frames - 1, min(n_frames, _MAX_FRAMES)).round()
    ).astype(int)
    frame_size = int(np.prod(np.shape(stack)[1:]))
    step = max(1, int(np.ceil(np.sqrt(len(picks) * frame_size / _MAX_PIXELS))))
    sample = np.stack(
        [np.asarray(stack[int(t)])[::step, ::step] for t in picks]
    )
    low, high = np.percentile(sample, percentiles)
    if not high > low:
        # Mostly flat images: fall back to the full span of the sample.
        low, high = float(sample.min()), float(sample.max())
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


def to_uint8(frame, low, high):
    """Map ``[low, high]`` affinely onto ``[0, 255]``, clip and round.

    Parameters
    ----------
    frame : array_like, shape (Y, X)
        Any real dtype.
    low, high : float
        From :func:`stack_intensity_range`; ``high > low``.

    Returns
    -------
    ndarray, shape (Y, X), uint8
    """
    scaled = np.asarray(frame, dtype=np.float32) - np.float32(low)
    scaled *= np.float32(255.0 / (high - low))
    np.clip(scaled, 0, 255, out=scaled)
    return np.rint(scaled).astype(np.uint8)


def percentile_mask(frame, percentile):
    """Pixels brighter than ``percentile`` of the frame's own intensities.

    Returns
    -------
    ndarray, shape (Y, X), bool
    """
    frame = np.asarray(frame)
    return frame > np.percentile(frame, percentile)
