"""Texture reliability: how well the reference constrains the motion.

The reliability of a pixel is the smaller eigenvalue of the
Gaussian-weighted structure tensor ``G_sigma * (grad I grad I^T)`` of the
reference ``I`` normalised to its robust intensity range (the seed
notebook's measure; Shi & Tomasi 1994).  It depends on the reference only:
it says where motion *can* be measured, not whether a given estimate
matched (that is :mod:`napari_flowscope.engine.confidence`).
"""

from __future__ import annotations

import cv2
import numpy as np

from ._filters import gaussian_window

__all__ = [
    'gradients',
    'min_eigenvalue',
    'reliability_map',
    'structure_tensor',
]


def gradients(image):
    """Scharr derivatives ``(Ix, Iy)`` of a float32 image, per pixel."""
    ix = cv2.Scharr(image, cv2.CV_32F, 1, 0, scale=1 / 32)
    iy = cv2.Scharr(image, cv2.CV_32F, 0, 1, scale=1 / 32)
    return ix, iy


def structure_tensor(ix, iy, sigma):
    """Gaussian-weighted structure tensor components ``(Jxx, Jxy, Jyy)``.

    Parameters
    ----------
    ix, iy : ndarray, shape (H, W), float32
        Image derivatives along x (columns) and y (rows).
    sigma : float
        Standard deviation (px) of the Gaussian window.

    Returns
    -------
    tuple of ndarray, each shape (H, W), float32
    """
    return (
        gaussian_window(ix * ix, sigma),
        gaussian_window(ix * iy, sigma),
        gaussian_window(iy * iy, sigma),
    )


def min_eigenvalue(jxx, jxy, jyy):
    """Smaller eigenvalue of a field of symmetric 2 x 2 matrices (>= 0)."""
    half_trace = (jxx + jyy) * np.float32(0.5)
    half_difference = (jxx - jyy) * np.float32(0.5)
    root = np.sqrt(half_difference * half_difference + jxy * jxy)
    return np.maximum(half_trace - root, np.float32(0))


def reliability_map(reference, sigma):
    """Reliability of every pixel of a normalised reference.

    Parameters
    ----------
    reference : ndarray, shape (H, W), float32
        Reference with its robust intensity range mapped to 0-1.
    sigma : float
        Window (px) of the structure tensor.

    Returns
    -------
    ndarray, shape (H, W), float32
        Smallest eigenvalue of the structure tensor, in (normalised
        intensity / px) ** 2; 0 where the image is flat.
    """
    return min_eigenvalue(*structure_tensor(*gradients(reference), sigma))
