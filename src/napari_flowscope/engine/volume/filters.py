"""Separable filters on volumes ``(Z, Y, X)``.

The in-plane passes run OpenCV per Z plane; the pass along Z runs once
over the whole volume seen as a ``(Z, Y * X)`` image (one OpenCV call, a
vertical filter whose "rows" are whole planes).  Sigmas are per axis, in
voxels, so windows can be isotropic in physical units on anisotropic
voxels.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    'blur',
    'downsample',
    'gaussian_kernel',
    'gradients',
    'local_contrast',
    'upsample',
    'upsample_flow',
]

# In-plane windows at least this wide (px) are computed at half
# resolution (pyrDown, blur, pyrUp), as in the 2-D engine.
_HALF_RESOLUTION_SIGMA = 2.0
_HALF_RESOLUTION_MIN_SIZE = 32
# Windows narrower than this along Z (planes) are not applied at all.
_MIN_Z_SIGMA = 0.3
# cv2.pyrDown's kernel, used along Z.
_PYRAMID_KERNEL = np.array([1, 4, 6, 4, 1], np.float32) / 16
# Smoothing across the derivative direction of the Scharr operator.
_SCHARR_SMOOTHING = np.array([3, 10, 3], np.float32) / 16
_ONE = np.ones((1, 1), np.float32)
# Local contrast normalisation: window (px) and variance floor, as in the
# 2-D engine (``engine._normalize.local_contrast``).
CONTRAST_SIGMA = 2.0
_CONTRAST_FLOOR = 0.2
_TINY = np.finfo(np.float32).tiny


def gaussian_kernel(sigma):
    """Normalised 1-D Gaussian truncated at 2 sigma (float32, column)."""
    radius = max(1, int(np.ceil(2 * sigma)))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)[:, None]


def filter_z(volume, kernel, *, border=cv2.BORDER_REFLECT):
    """Correlate along axis 0 with a 1-D ``kernel`` (new array).

    Parameters
    ----------
    volume : ndarray, shape (Z, ...), float32, C-contiguous
    kernel : ndarray, shape (K, 1), float32
    """
    if volume.shape[0] == 1:
        return volume * kernel.sum()
    flat = volume.reshape(volume.shape[0], -1)
    out = cv2.sepFilter2D(flat, -1, _ONE, kernel, borderType=border)
    return out.reshape(volume.shape)


def blur(volume, sigma, *, out=None):
    """Gaussian window of per-axis standard deviations ``sigma``.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X), float32
    sigma : tuple of float
        ``(sigma_z, sigma_y, sigma_x)`` in voxels; each truncated at 2
        sigma, borders reflected.
    out : ndarray, shape (Z, Y, X), float32, optional

    Returns
    -------
    ndarray, shape (Z, Y, X), float32

    Notes
    -----
    Wide in-plane windows on large planes run at half resolution:
    ``cv2.pyrDown`` and ``cv2.pyrUp`` each add a variance of about 1 px^2,
    so a blur of ``sqrt(sigma^2 - 2) / 2`` half-resolution pixels in
    between gives the same width for a third of the work.
    """
    sigma_z, sigma_y, sigma_x = (float(s) for s in sigma)
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    z_kernel = gaussian_kernel(sigma_z) if sigma_z >= _MIN_Z_SIGMA else None
    if out is None:
        out = np.empty_like(volume)
    height, width = volume.shape[1:]
    if (
        min(sigma_y, sigma_x) >= _HALF_RESOLUTION_SIGMA
        and min(height, width) >= _HALF_RESOLUTION_MIN_SIZE
    ):
        # The pass along Z commutes with the in-plane ones, so it runs on
        # the half-resolution planes: a quarter of the work.
        half = np.empty(
            (volume.shape[0], (height + 1) // 2, (width + 1) // 2),
            np.float32,
        )
        for plane, target in zip(volume, half, strict=True):
            cv2.pyrDown(plane, dst=target, dstsize=target.shape[::-1])
        if z_kernel is not None:
            half = filter_z(half, z_kernel)
        half_x = _half_resolution_sigma(sigma_x)
        half_y = _half_resolution_sigma(sigma_y)
        size = (_kernel_size(half_x), _kernel_size(half_y))
        for plane, target in zip(half, out, strict=True):
            cv2.pyrUp(
                cv2.GaussianBlur(
                    plane,
                    size,
                    half_x,
                    sigmaY=half_y,
                    borderType=cv2.BORDER_REFLECT,
                ),
                dst=target,
                dstsize=(width, height),
            )
        return out
    if z_kernel is not None:
        volume = filter_z(volume, z_kernel)
    size = (_kernel_size(sigma_x), _kernel_size(sigma_y))
    for plane, target in zip(volume, out, strict=True):
        cv2.GaussianBlur(
            plane,
            size,
            sigma_x,
            dst=target,
            sigmaY=sigma_y,
            borderType=cv2.BORDER_REFLECT,
        )
    return out


def _kernel_size(sigma):
    return 2 * max(1, int(np.ceil(2 * sigma))) + 1


def _half_resolution_sigma(sigma):
    return float(np.sqrt(max(sigma * sigma - 2, 0.25)) / 2)


def gradients(volume):
    """Scharr-like derivatives ``(Ix, Iy, Iz)`` per voxel.

    Each derivative is the central difference ``[-1, 0, 1] / 2`` along
    its axis smoothed by ``[3, 10, 3] / 16`` along the other two (in 2-D
    exactly ``cv2.Scharr`` with scale 1/32).  Along Z the first and last
    planes use one-sided differences, since volumes often have few planes.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X), float32

    Returns
    -------
    tuple of ndarray, each shape (Z, Y, X), float32
    """
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    depth = volume.shape[0]
    ix = np.empty_like(volume)
    iy = np.empty_like(volume)
    for plane, dx, dy in zip(volume, ix, iy, strict=True):
        cv2.Scharr(plane, cv2.CV_32F, 1, 0, dst=dx, scale=1 / 32)
        cv2.Scharr(plane, cv2.CV_32F, 0, 1, dst=dy, scale=1 / 32)
    smoothing = _SCHARR_SMOOTHING[:, None]
    if depth > 1:
        ix = filter_z(ix, smoothing, border=cv2.BORDER_REFLECT_101)
        iy = filter_z(iy, smoothing, border=cv2.BORDER_REFLECT_101)
    difference = np.zeros_like(volume)
    if depth > 2:
        np.subtract(volume[2:], volume[:-2], out=difference[1:-1])
        difference[1:-1] *= np.float32(0.5)
    if depth > 1:
        np.subtract(volume[1], volume[0], out=difference[0])
        np.subtract(volume[-1], volume[-2], out=difference[-1])
    iz = np.empty_like(volume)
    for plane, target in zip(difference, iz, strict=True):
        cv2.sepFilter2D(
            plane,
            cv2.CV_32F,
            _SCHARR_SMOOTHING,
            _SCHARR_SMOOTHING,
            dst=target,
            borderType=cv2.BORDER_REFLECT_101,
        )
    return ix, iy, iz


def local_contrast(volume, sigma):
    """Locally normalised volume: zero local mean, unit local deviation.

    The 3-D counterpart of :func:`napari_flowscope.engine._normalize.
    local_contrast`: smooth illumination changes (bleaching, uneven
    excitation with depth) cancel.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X), float32
    sigma : tuple of float
        Per-axis window ``(z, y, x)`` in voxels.

    Returns
    -------
    ndarray, shape (Z, Y, X), float32
    """
    centred = volume - blur(volume, sigma)
    variance = blur(centred * centred, sigma)
    np.maximum(variance, 0, out=variance)
    # Relative floor: flat, noisy regions are not blown up to full
    # contrast, and the result does not depend on the input's scale.
    variance += np.float32(_CONTRAST_FLOOR**2 * float(variance.mean())) + _TINY
    centred /= np.sqrt(variance, out=variance)
    return centred


def downsample(volume, *, halve_z):
    """One pyramid level down: ``cv2.pyrDown`` in-plane, optionally in Z.

    Coarse voxel ``i`` sits on fine voxel ``2 i`` along every halved
    axis, as with ``cv2.pyrDown``.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X), float32
    halve_z : bool
        Also smooth with ``[1, 4, 6, 4, 1] / 16`` along Z and keep every
        second plane (``ceil(Z / 2)`` planes).

    Returns
    -------
    ndarray, shape (Z' , ceil(Y / 2), ceil(X / 2)), float32
    """
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    if halve_z:
        volume = filter_z(
            volume, _PYRAMID_KERNEL[:, None], border=cv2.BORDER_REFLECT_101
        )[::2]
    height, width = volume.shape[1:]
    out = np.empty(
        (volume.shape[0], (height + 1) // 2, (width + 1) // 2), np.float32
    )
    for plane, target in zip(volume, out, strict=True):
        cv2.pyrDown(plane, dst=target, dstsize=target.shape[::-1])
    return out


def upsample(volume, shape, *, halve_z):
    """One pyramid level up: ``cv2.pyrUp`` in-plane, linear along Z.

    Parameters
    ----------
    volume : ndarray, shape (..., z, y, x), float32
        Leading axes (e.g. flow components) are carried along.
    shape : tuple of int
        ``(Z, Y, X)`` of the finer level.
    halve_z : bool
        Whether Z was halved between the two levels (coarse plane ``i``
        sits on fine plane ``2 i``).

    Returns
    -------
    ndarray, shape (..., Z, Y, X), float32
    """
    depth, height, width = shape
    leading = volume.shape[:-3]
    coarse = volume.reshape(-1, *volume.shape[-3:])
    coarse_depth = coarse.shape[1]
    planes = np.empty((len(coarse), coarse_depth, height, width), np.float32)
    for stack, target in zip(coarse, planes, strict=True):
        for plane, out in zip(stack, target, strict=True):
            cv2.pyrUp(plane, dst=out, dstsize=(width, height))
    if not halve_z:
        return planes.reshape(*leading, coarse_depth, height, width)
    finer = np.empty((len(coarse), depth, height, width), np.float32)
    finer[:, 0::2] = planes[:, : (depth + 1) // 2]
    odd = finer[:, 1::2]
    following = np.minimum(np.arange(1, odd.shape[1] + 1), coarse_depth - 1)
    np.add(planes[:, : odd.shape[1]], planes[:, following], out=odd)
    odd *= np.float32(0.5)
    return finer.reshape(*leading, depth, height, width)


def upsample_flow(w, shape, *, halve_z):
    """Flow of one level interpolated to the next finer level.

    Parameters
    ----------
    w : ndarray, shape (3, z, y, x), float32
        Planar ``[x, y, z]`` flow at the coarse level, in its voxels.
    shape : tuple of int
        ``(Z, Y, X)`` of the finer level.
    halve_z : bool
        Whether Z was halved between the two levels.

    Returns
    -------
    ndarray, shape (3, Z, Y, X), float32
        :func:`upsample` of each component, multiplied by the factor of
        its axis (2, or 1 for z when Z was not halved).
    """
    finer = upsample(w, shape, halve_z=halve_z)
    finer[:2] *= np.float32(2)
    if halve_z:
        finer[2] *= np.float32(2)
    return finer
