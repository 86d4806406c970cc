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
get a small update instead of an exploding one.  At full resolution the
per-pixel solutions are then averaged over the window again, using only the
reliable pixels (see :meth:`LucasKanadeLevel.average_reliable`).
"""

from __future__ import annotations

import threading
import types

import cv2
import numpy as np

from ._fill import PushPullFill
from ._filters import gaussian, gaussian_window, half_resolution_sigma
from .reliability import gradients, structure_tensor

__all__ = ['COARSE_EXTRA_WARPS', 'LucasKanadeLevel', 'LucasKanadeSolver']

#: Warps added at every level but the two finest.  Those levels cost a
#: sixteenth of the finest or less, and the extra linearisations make noisy,
#: large motions converge (2-photon data).
COARSE_EXTRA_WARPS = 2

# Tikhonov weight, in (contrast-normalised intensity / px) ** 2, where
# textured regions have eigenvalues of 1e-2 to 1: it only matters where
# the image is flat.
_TIKHONOV = np.float32(1e-5)
# Pixels whose window holds less than this (weighted) fraction of reliable
# pixels are filled from wider neighbourhoods.
_MIN_SUPPORT = np.float32(0.05)


class LucasKanadeSolver:
    """The ``'lucas_kanade'`` level solver (see :mod:`.methods`).

    Parameters
    ----------
    params : FlowParams
        Uses ``sigma`` (window), ``warps`` and ``reliability_threshold``.
    reliability : ndarray, shape (H, W), float32
        Full-resolution reliability of the reference: pixels below the
        threshold get their flow from reliable neighbours.
    """

    def __init__(self, params, reliability):
        self.sigma = float(params.sigma)
        self.warps = int(params.warps)
        self.reliability_threshold = float(params.reliability_threshold)
        self.reliability = reliability

    def prepare(self, reference_level, *, level):
        coarse = level >= 2
        return LucasKanadeLevel(
            reference_level,
            sigma=self.sigma,
            warps=self.warps + COARSE_EXTRA_WARPS if coarse else self.warps,
            reliable=(
                self.reliability >= np.float32(self.reliability_threshold)
                if level == 0
                else None
            ),
        )

    def solve(self, state, moving_level, w):
        state.solve(moving_level, w)
        if state.reliable is not None:
            w = state.average_reliable(w)
        return w


class LucasKanadeLevel:
    """Reference-side quantities of one pyramid level.

    Parameters
    ----------
    reference : ndarray, shape (H, W), float32
        Normalised reference image of this level.
    sigma : float
        Standard deviation (px) of the Gaussian window.
    warps : int
        Warp-and-solve iterations of :meth:`solve`.
    reliable : ndarray of bool, shape (H, W), optional
        Given for the finest level only: the pixels whose reliability
        reaches the threshold.  :meth:`average_reliable` averages their
        flow and fills the others from them.
    """

    def __init__(self, reference, *, sigma, warps, reliable=None):
        self.reference = reference
        self.sigma = float(sigma)
        self.warps = int(warps)
        self.reliable = reliable
        self._thread_local = threading.local()
        ix, iy = gradients(reference)
        jxx, jxy, jyy = structure_tensor(ix, iy, self.sigma)
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
        if reliable is None or not reliable.any():
            # Nothing to fill from: plain averaging.
            return
        if not reliable.all():
            self._unreliable = np.flatnonzero(~reliable)
        self._fill = PushPullFill(
            gaussian(
                cv2.pyrDown(reliable.astype(np.float32)),
                half_resolution_sigma(self.sigma),
            ),
            _MIN_SUPPORT,
            channels=2,
        )

    def solve(self, moving, w):
        """Refine the flow ``w`` in place.

        Parameters
        ----------
        moving : ndarray, shape (H, W), float32
            Normalised moving image of this level.
        w : ndarray, shape (H, W, 2), float32
            ``[x, y]`` flow (C-contiguous), updated in place.
        """
        work = self._workspace()
        temporal, residual, pair, b = (
            work.temporal,
            work.residual,
            work.pair,
            work.b,
        )
        for _ in range(self.warps):
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
            gaussian_window(pair, self.sigma, dst=b)
            # w = J^-1 b, with J^-1 = [[d_x, o], [o, d_y]].
            np.multiply(self._inverse_diagonal, b, out=w)
            np.multiply(self._inverse_off_diagonal, b, out=pair)
            w[..., 0] += pair[..., 1]
            w[..., 1] += pair[..., 0]

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
        # At half resolution, like the wide windows of gaussian_window.
        half = gaussian(cv2.pyrDown(w), half_resolution_sigma(self.sigma))
        if self._fill is not None:
            half = self._fill(half)
        return cv2.pyrUp(half, dstsize=w.shape[1::-1])
