"""Patch inverse search with variational refinement (DIS), one solver.

Dense Inverse Search (Kroeger, Timofte, Dai & Van Gool, "Fast Optical Flow
using Dense Inverse Search", ECCV 2016) matches overlapping patches coarse
to fine by inverse-compositional Lucas-Kanade, densifies them with
weights that fall with each patch's photometric error at the pixel (so a
patch straddling a motion boundary hardly spreads its flow across it),
and refines the dense field variationally (brightness and gradient
constancy, smoothness).  The building block is OpenCV's
``cv2.DISOpticalFlow``, here run at full resolution with denser patches
and more refinement than OpenCV's presets: measured on the Middlebury
pairs, the best of the engine's presets on sharp, textured images with
large motion (docs/benchmarks.md).  On noisy fluorescence frames the
``'lucas_kanade'`` method is more accurate.

OpenCV's implementation takes 8-bit frames: the engine's robust global
normalisation (0.5-99.5 percentiles of the reference to 0-1, the moving
frame matched to its mean and deviation) is mapped to 0-255 first.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ['PatchSearchSolver']

# Gradient-descent iterations of each patch's inverse search (OpenCV's
# medium preset).
_PATCH_ITERATIONS = 25


class PatchSearchSolver:
    """The ``'patch_search'`` level solver (see :mod:`.methods`).

    DIS runs its own coarse-to-fine pyramid, so it runs once, at the
    engine's full-resolution level, starting from the flow that level
    receives (zero, or the warm start ``init``); coarser levels of the
    engine's pyramid pass the flow through (use ``levels=1``).

    Parameters
    ----------
    params : FlowParams
        ``sigma`` sets the patch size (``2 sigma`` px, at least 4) and the
        stride between patches (``0.75 sigma`` px, at least 1);
        ``iterations`` the variational refinement iterations per scale;
        ``alpha`` the weight of its smoothness term (on 0-255 intensities;
        OpenCV's default is 20).
    reliability : ndarray, shape (H, W), float32
        Not used.
    """

    def __init__(self, params, reliability=None):
        self.patch_size = max(4, round(2 * params.sigma))
        self.patch_stride = max(
            1, min(self.patch_size, round(0.75 * params.sigma))
        )
        self.iterations = int(params.iterations)
        self.alpha = float(params.alpha)

    def prepare(self, reference_level, *, level):
        """The 8-bit reference at full resolution (None elsewhere)."""
        if level:
            return None
        return _to_uint8(reference_level)

    def solve(self, state, moving_level, w):
        if state is None:
            return w
        search = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        search.setFinestScale(0)
        search.setPatchSize(self.patch_size)
        search.setPatchStride(self.patch_stride)
        search.setGradientDescentIterations(_PATCH_ITERATIONS)
        search.setVariationalRefinementIterations(self.iterations)
        search.setVariationalRefinementAlpha(self.alpha)
        # A flow given to calc is its starting point.
        initial = cv2.norm(w, cv2.NORM_INF) > 0
        flow = np.ascontiguousarray(w, np.float32) if initial else None
        return search.calc(state, _to_uint8(moving_level), flow)


def _to_uint8(image):
    """0-1 normalised intensities to 0-255, rounded and clipped."""
    scaled = image * np.float32(255)
    scaled += np.float32(0.5)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)
