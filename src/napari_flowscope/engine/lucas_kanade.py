"""Dense Lucas-Kanade flow for one pyramid level, reference side precomputed.

The classic dense Lucas-Kanade solves, at every pixel, the 2 x 2 system

    J w = b,   J = G_sigma * [[Ix Ix, Ix Iy], [Ix Iy, Iy Iy]],
               b = G_sigma * [Ix r, Iy r],   r = Ix u + Iy v - It,

with ``It = moving(x + w(x)) - reference(x)``: the linearisation of
``moving(x + w_new) ~ warped(x) + grad(x) . (w_new - w(x))`` at every pixel
of the window, which stays correct when neighbours have a different flow.
The gradients are those of the *reference* (inverse-compositional style,
Baker & Matthews 2004), so ``J`` and its inverse depend on the reference
only and are computed once.  Each warp then costs one remap, one Gaussian
blur of the two-channel ``[Ix r, Iy r]`` and a few multiplications.

``J`` is regularised as ``J + LAMBDA I`` (Tikhonov) so that flat regions
get a small update instead of an exploding one.
"""

from __future__ import annotations

import threading
import types

import cv2
import numpy as np

from ._fill import PushPullFill

__all__ = [
    'LucasKanadeLevel',
    'gradients',
    'min_eigenvalue',
    'structure_tensor',
]

# Tikhonov weight, in (contrast-normalised intensity / px) ** 2, where
# textured regions have eigenvalues of 1e-2 to 1: it only matters where
# the image is flat.
_TIKHONOV = np.float32(1e-5)
# Pixels whose window holds less than this (weighted) fraction of reliable
# pixels are filled from wider neighbourhoods.
_MIN_SUPPORT = np.float32(0.05)
# Windows at least this wide (px) are computed at half resolution.
_HALF_RESOLUTION_SIGMA = 2.0


def gradients(image):
    """Scharr derivatives ``(Ix, Iy)`` of a float32 image, per pixel."""
    ix = cv2.Scharr(image, cv2.CV_32F, 1, 0, scale=1 / 32)
    iy = cv2.Scharr(image, cv2.CV_32F, 0, 1, scale=1 / 32)
    return ix, iy


def structure_tensor(ix, iy, sigma):
    """Gaussian-weighted structure tensor components ``(Jxx, Jxy, Jyy)``."""
    return (
        _blur(ix * ix, sigma),
        _blur(ix * iy, sigma),
        _blur(iy * iy, sigma),
    )


def min_eigenvalue(jxx, jxy, jyy):
    """Smaller eigenvalue of a field of symmetric 2 x 2 matrices (>= 0)."""
    half_trace = (jxx + jyy) * np.float32(0.5)
    half_difference = (jxx - jyy) * np.float32(0.5)
    root = np.sqrt(half_difference * half_difference + jxy * jxy)
    return np.maximum(half_trace - root, np.float32(0))


class LucasKanadeLevel:
    """Reference-side quantities of one pyramid level.

    Parameters
    ----------
    reference : ndarray, shape (H, W), float32
        Normalised reference image of this level.
    sigma : float
        Standard deviation (px) of the Gaussian window.
    reliability : ndarray, shape (H, W), float32, optional
        Reliability map to use instead of the smallest eigenvalue of this
        level's own structure tensor (e.g. one computed on a differently
        normalised reference).
    reliability_threshold : float or None
        Given for the finest level only.  Pixels whose reliability is below
        it are *unreliable*: they receive no update at this level (they
        keep the flow interpolated from the next coarser level, whose
        window is twice as large) and :meth:`average_reliable` replaces
        them by the mean of reliable neighbours.

    Attributes
    ----------
    reliability : ndarray, shape (H, W), float32, or None
        ``reliability`` if given, else (with a threshold) the smallest
        eigenvalue of the structure tensor, else None (read-only).
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
        self.sigma = float(sigma)
        self._thread_local = threading.local()
        ix, iy = gradients(reference)
        jxx, jxy, jyy = structure_tensor(ix, iy, self.sigma)
        if reliability is None and reliability_threshold is not None:
            reliability = min_eigenvalue(jxx, jxy, jyy)
        if reliability is not None:
            reliability = np.array(reliability, dtype=np.float32)
            reliability.flags.writeable = False
        self.reliability = reliability
        jxx += _TIKHONOV
        jyy += _TIKHONOV
        inverse_det = np.float32(1) / (jxx * jyy - jxy * jxy)
        # Pixel-interleaved pairs, like the flow itself: OpenCV blurs a
        # two-channel image three times faster than two one-channel ones,
        # and each operation is one call, not two.
        self._gradient = cv2.merge((ix, iy))
        self._inverse_diagonal = cv2.merge(
            (jyy * inverse_det, jxx * inverse_det)
        )
        off_diagonal = -jxy * inverse_det
        self._inverse_off_diagonal = cv2.merge((off_diagonal, off_diagonal))
        # Flat indices of unreliable pixels (None: all reliable) and the
        # filler that averages the reliable pixels' flow.  The averaging
        # runs at half resolution: the window is wide, the flow smooth.
        self._unreliable = None
        self._fill = None
        if reliability_threshold is None:
            return
        reliable = self.reliability >= np.float32(reliability_threshold)
        if not reliable.any():
            # Nothing to fill from: plain averaging.
            return
        if not reliable.all():
            self._unreliable = np.flatnonzero(~reliable)
        self._fill = PushPullFill(
            _gaussian(
                cv2.pyrDown(reliable.astype(np.float32)),
                _half_resolution_sigma(self.sigma),
            ),
            _MIN_SUPPORT,
            channels=2,
        )

    def solve(self, moving, w, *, warps):
        """Refine the flow ``w`` in place.

        Parameters
        ----------
        moving : ndarray, shape (H, W), float32
            Normalised moving image of this level.
        w : ndarray, shape (H, W, 2), float32
            ``[x, y]`` flow (C-contiguous), updated in place.
        warps : int
            Number of warp-and-solve iterations.
        """
        work = self._workspace()
        temporal, residual, pair, b = (
            work.temporal,
            work.residual,
            work.pair,
            work.b,
        )
        flat_w = w.reshape(-1, 2)
        if self._unreliable is not None:
            kept = flat_w[self._unreliable]
        for _ in range(warps):
            # Where x + w falls outside the frame the warped value would be
            # made up: sample NaN there and zero the temporal difference
            # (trust the current flow).  A zero flow samples nothing
            # outside, but would read NaN on the last row and column, whose
            # bilinear neighbours lie outside with weight 0.
            moved = cv2.norm(w, cv2.NORM_INF) > 0
            cv2.remap(
                moving,
                w,
                None,
                # Bilinear: exact in OpenCV for one channel, whereas its
                # INTER_CUBIC is biased by up to 0.05 px (a linear ramp is
                # not reproduced), which would bias the flow as much.
                cv2.INTER_LINEAR | cv2.WARP_RELATIVE_MAP,
                dst=temporal,
                borderMode=cv2.BORDER_CONSTANT
                if moved
                else cv2.BORDER_REPLICATE,
                borderValue=np.nan,
            )
            # Linearised residual of the whole flow at each window pixel,
            # moving(x + w_new) ~ warped(x) + grad(x) . (w_new - w(x)),
            # so that neighbours with a different flow are used correctly.
            temporal -= self.reference
            cv2.patchNaNs(temporal, 0)
            np.multiply(self._gradient, w, out=pair)
            np.add(pair[..., 0], pair[..., 1], out=residual)
            residual -= temporal
            # numpy is slow at broadcasting over a last axis of length 2,
            # so the residual is duplicated into both channels first.
            cv2.merge((residual, residual), dst=pair)
            np.multiply(self._gradient, pair, out=pair)
            _blur(pair, self.sigma, dst=b)
            # w = J^-1 b, with J^-1 = [[d_x, o], [o, d_y]].
            np.multiply(self._inverse_diagonal, b, out=w)
            np.multiply(self._inverse_off_diagonal, b, out=pair)
            w[..., 0] += pair[..., 1]
            w[..., 1] += pair[..., 0]
        if self._unreliable is not None:
            flat_w[self._unreliable] = kept

    def _workspace(self):
        # Per-thread scratch arrays: one estimator serves several threads,
        # and allocating megabyte temporaries for every operation costs
        # page faults.
        work = getattr(self._thread_local, 'work', None)
        if work is None:
            shape = self.reference.shape
            work = types.SimpleNamespace(
                temporal=np.empty(shape, np.float32),
                residual=np.empty(shape, np.float32),
                pair=np.empty((*shape, 2), np.float32),
                b=np.empty((*shape, 2), np.float32),
            )
            self._thread_local.work = work
        return work

    def average_reliable(self, w):
        """Gaussian average of the reliable pixels' flow (normalised).

        The per-pixel solutions are noisy; averaging them over the window
        again (``sigma``) removes most of that noise for smooth motion, and
        fills unreliable pixels from reliable neighbours.  Unreliable
        regions wider than the window are filled from ever wider
        neighbourhoods (see :class:`PushPullFill`).

        Parameters
        ----------
        w : ndarray, shape (H, W, 2), float32

        Returns
        -------
        ndarray, shape (H, W, 2), float32
            A new array.
        """
        if self._unreliable is not None:
            w = w.copy()
            w.reshape(-1, 2)[self._unreliable] = 0
        # At half resolution, like the wide windows of _blur.
        half = _gaussian(cv2.pyrDown(w), _half_resolution_sigma(self.sigma))
        if self._fill is not None:
            half = self._fill(half)
        return cv2.pyrUp(half, dstsize=w.shape[1::-1])


def _blur(image, sigma, dst=None):
    """Gaussian window of standard deviation ``sigma`` (px).

    Wide windows on large images run at half resolution: ``cv2.pyrDown``
    and ``cv2.pyrUp`` each add a variance of about 1 px^2, so a blur of
    ``sqrt(sigma^2 - 2) / 2`` half-resolution pixels in between gives the
    same width for a third of the work (measured: equal or lower endpoint
    errors on the synthetic sequences).
    """
    height, width = image.shape[:2]
    if sigma < _HALF_RESOLUTION_SIGMA or min(height, width) < 32:
        return _gaussian(image, sigma, dst)
    return cv2.pyrUp(
        _gaussian(cv2.pyrDown(image), _half_resolution_sigma(sigma)),
        dst=dst,
        dstsize=(width, height),
    )


def _half_resolution_sigma(sigma):
    """Half-resolution blur that is ``sigma`` between pyrDown and pyrUp."""
    return np.sqrt(max(sigma * sigma - 2, 0.25)) / 2


def _gaussian(image, sigma, dst=None):
    # The window is truncated at 2 sigma (OpenCV's float default is 4):
    # on synthetic motion, sigma=4 truncated at 2 sigma is both faster and
    # more accurate than sigma=3 truncated at 3 sigma.
    size = 2 * int(np.ceil(2 * sigma)) + 1
    return cv2.GaussianBlur(
        image, (size, size), sigma, dst=dst, borderType=cv2.BORDER_REFLECT
    )
