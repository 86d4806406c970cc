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

At full resolution the solver adapts to the noise of the frames.  The
residual of the first warp, relative to the local contrast of the
(locally normalised) frames, measures it: clean frames get one more warp,
which recovers fine detail, noisy ones do not (it would fit the noise).
The per-pixel solutions are then averaged with weights that grow with the
reference's texture, over a window chosen per pixel from the noise (see
:class:`~napari_flowscope.engine._averaging.AdaptiveAverage`), which also
fills untextured regions from their textured surroundings.
"""

from __future__ import annotations

import cv2
import numpy as np

from ._averaging import AdaptiveAverage
from ._filters import gaussian_window
from ._scratch import ThreadScratch
from .confidence import texture_score
from .reliability import gradients, structure_tensor

__all__ = [
    'CLEAN_NOISE',
    'COARSE_EXTRA_WARPS',
    'LucasKanadeLevel',
    'LucasKanadeSolver',
    'residual_noise',
]

#: Warps added at every level but the two finest.  Those levels cost a
#: sixteenth of the finest or less, and the extra linearisations make noisy,
#: large motions converge (2-photon data).
COARSE_EXTRA_WARPS = 1

#: Frames whose residual noise (relative to the local contrast) is below
#: this get one more warp at full resolution.  Measured: the Middlebury
#: photographs 0.15-0.2, photon-limited frames with 1000 photons at the
#: brightest pixel 0.22-0.33, with 100 photons 0.5-0.65.
CLEAN_NOISE = 0.35

# Tikhonov weight, in (contrast-normalised intensity / px) ** 2, where
# textured regions have eigenvalues of 1e-2 to 1: it only matters where
# the image is flat.
_TIKHONOV = np.float32(1e-5)
# Exchanges the two channels of a pixel-interleaved pair (cv2.transform).
_SWAP = np.array([[0, 1], [1, 0]], np.float32)
# Every this many pixels along each axis enter the noise estimate.
_NOISE_STRIDE = 4


class LucasKanadeSolver:
    """The ``'lucas_kanade'`` level solver (see :mod:`.methods`).

    Parameters
    ----------
    params : FlowParams
        Uses ``sigma`` (window), ``warps`` and ``reliability_threshold``.
    reliability : ndarray, shape (H, W), float32
        Full-resolution reliability of the reference: each pixel's flow
        counts in the final averaging with its texture score
        ``r / (r + reliability_threshold)``, so untextured regions take the
        flow of their textured surroundings.
    """

    def __init__(self, params, reliability):
        self.sigma = float(params.sigma)
        self.warps = int(params.warps)
        self.reliability_threshold = float(params.reliability_threshold)
        self.reliability = reliability

    def prepare(self, reference_level, *, level):
        average = None
        if level == 0:
            weights = texture_score(
                self.reliability, self.reliability_threshold
            )
            if weights.any():
                average = AdaptiveAverage(weights, self.sigma)
        return LucasKanadeLevel(
            reference_level,
            sigma=self.sigma,
            warps=(
                self.warps + COARSE_EXTRA_WARPS if level >= 2 else self.warps
            ),
            average=average,
        )

    def solve(self, state, moving_level, w):
        if state.average is None:
            state.solve(moving_level, w)
            return w
        # Full resolution: measure the noise on the first warp's residual.
        state.solve(moving_level, w, warps=1)
        noise = residual_noise(state.residual())
        more = self.warps - 1 + (noise < CLEAN_NOISE)
        if more:
            state.solve(moving_level, w, warps=more)
        return state.average(w, noise)


def residual_noise(residual):
    """Noise of two frames from the residual of their match.

    Parameters
    ----------
    residual : ndarray, shape (H, W), float32
        ``moving(x + w(x)) - reference(x)`` of locally normalised frames;
        exact zeros (samples outside the frame) are left out.

    Returns
    -------
    float
        Robust standard deviation (1.4826 x median absolute value) of the
        residual over sqrt(2): the noise of one frame in units of the
        local contrast (0 for identical frames).
    """
    sample = np.abs(residual[::_NOISE_STRIDE, ::_NOISE_STRIDE]).ravel()
    sample = sample[sample > 0]
    if not sample.size:
        return 0.0
    return float(np.median(sample)) * 1.4826 / np.sqrt(2)


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
    average : AdaptiveAverage, optional
        The full-resolution level's final averaging (None elsewhere, and
        for a reference without texture).
    """

    def __init__(self, reference, *, sigma, warps, average=None):
        self.reference = reference
        self.sigma = float(sigma)
        self.warps = int(warps)
        self.average = average
        shape = reference.shape
        self._scratch = ThreadScratch(
            temporal=(shape, np.float32),
            pair=((*shape, 2), np.float32),
            swap=((*shape, 2), np.float32),
            b=((*shape, 2), np.float32),
        )
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

    def solve(self, moving, w, *, warps=None):
        """Refine the flow ``w`` in place.

        Parameters
        ----------
        moving : ndarray, shape (H, W), float32
            Normalised moving image of this level.
        w : ndarray, shape (H, W, 2), float32
            ``[x, y]`` flow (C-contiguous), updated in place.
        warps : int, optional
            Warp-and-solve iterations (default: the level's).
        """
        work = self._workspace()
        temporal, pair, swap, b = (
            work.temporal,
            work.pair,
            work.swap,
            work.b,
        )
        for _ in range(self.warps if warps is None else warps):
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
            cv2.subtract(temporal, self.reference, dst=temporal)
            cv2.patchNaNs(temporal, 0)
            # OpenCV calls throughout: they release the GIL, so threads
            # registering other frames run meanwhile.  Pairs are [x, y]
            # channels; swapping and adding puts a sum into both.
            cv2.multiply(self._gradient, w, dst=pair)
            cv2.transform(pair, _SWAP, dst=swap)
            cv2.add(pair, swap, dst=pair)
            cv2.merge((temporal, temporal), dst=swap)
            cv2.subtract(pair, swap, dst=pair)
            cv2.multiply(self._gradient, pair, dst=pair)
            gaussian_window(pair, self.sigma, dst=b)
            # w = J^-1 b, with J^-1 = [[d_x, o], [o, d_y]].
            cv2.multiply(self._inverse_diagonal, b, dst=w)
            cv2.multiply(self._inverse_off_diagonal, b, dst=pair)
            cv2.transform(pair, _SWAP, dst=swap)
            cv2.add(w, swap, dst=w)

    def _workspace(self):
        return self._scratch.get()

    def residual(self):
        """This thread's residual of the last warp of :meth:`solve`.

        ``moving(x + w(x)) - reference(x)`` for the flow before the last
        update; 0 where ``x + w(x)`` fell outside the frame.
        """
        return self._workspace().temporal
