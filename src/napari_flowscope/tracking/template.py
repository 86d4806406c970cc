"""Align many small templates to a frame at once.

Frame-to-frame Lucas-Kanade compares each frame with the one before, so its
small per-step errors add up along a track. Matching every track against a
fixed picture of its feature (its *template*, cut from the frame where the
track started or last renewed it) does not accumulate error: this is the
template-update strategy with drift correction of Matthews, Ishikawa and
Baker [1]_. :mod:`~napari_flowscope.tracking.drift` decides when a template
is renewed; this module only cuts templates and aligns them.

The alignment is a Gauss-Newton (forward-additive Lucas-Kanade [2]_) fit of
a translation together with an intensity gain and offset, ``frame(p + x) ~
gain * template(x) + offset``, so that bleaching and uneven illumination do
not pull the point. Pixels are weighted by a Gaussian centred on the
feature, which keeps the background around a small spot from dominating.
All points are solved together: each iteration samples every patch in one
vectorised bilinear gather and solves N 4 x 4 systems.

References
----------
.. [1] I. Matthews, T. Ishikawa and S. Baker, "The template update problem",
   IEEE TPAMI 26(6), 810-815, 2004. :DOI:`10.1109/TPAMI.2004.16`
.. [2] S. Baker and I. Matthews, "Lucas-Kanade 20 years on: a unifying
   framework", IJCV 56(3), 221-255, 2004.
   :DOI:`10.1023/B:VISI.0000011205.11775.fd`
"""

from dataclasses import dataclass

import numpy as np

# Largest move of one Gauss-Newton step (px): a step that wants to go
# further is chasing noise or a neighbour, not refining.
_MAX_STEP = 1.0
# The frame's patch must keep at least this fraction of the template's
# weighted variance (or the reverse): a feature that has vanished leaves a
# flat patch whose alignment means nothing.
_MIN_VARIANCE_RATIO = 1e-3


@dataclass(frozen=True)
class Templates:
    """One small image per point, cut around the point at whole pixels.

    Attributes
    ----------
    patches : ndarray, shape (N, K, K), float32
        Pixel values around each point, ``K = 2 * radius + 1``, not
        resampled (resampling would blur the template).
    fractions : ndarray, shape (N, 2), float32
        ``[y, x]`` of each point minus the pixel at the patch centre, in
        [-0.5, 0.5]: template pixel ``(i, j)`` lies at offset
        ``(i - radius, j - radius) - fraction`` from the point.
    """

    patches: np.ndarray
    fractions: np.ndarray

    @property
    def radius(self):
        return (self.patches.shape[-1] - 1) // 2

    def __len__(self):
        return len(self.fractions)

    def __getitem__(self, index):
        return Templates(self.patches[index], self.fractions[index])

    def replaced(self, where, new):
        """A copy whose templates at boolean ``where`` come from ``new``."""
        patches, fractions = self.patches.copy(), self.fractions.copy()
        patches[where] = new.patches
        fractions[where] = new.fractions
        return Templates(patches, fractions)

    @staticmethod
    def concatenate(parts):
        return Templates(
            np.concatenate([part.patches for part in parts]),
            np.concatenate([part.fractions for part in parts]),
        )


def cut_templates(frame, points, *, radius):
    """Templates of ``points`` in ``frame``.

    Parameters
    ----------
    frame : ndarray, shape (Y, X)
        Any real dtype; used as float32. Outside the frame the nearest edge
        pixel is repeated.
    points : ndarray, shape (N, 2)
        ``[y, x]`` positions.
    radius : int
        Half-size of the square templates (px).

    Returns
    -------
    Templates
    """
    points = np.asarray(points, np.float32).reshape(-1, 2)
    centres = np.rint(points)
    patches = patches_at(
        np.asarray(frame, np.float32), centres - radius, 2 * radius + 1
    )
    return Templates(patches, (points - centres).astype(np.float32))


def align_templates(
    frame, templates, start, *, sigma, max_iterations=20, epsilon=0.01
):
    """Where each template fits best in ``frame``, near ``start``.

    Parameters
    ----------
    frame : ndarray, shape (Y, X)
        Any real dtype; used as float32. Outside the frame the nearest edge
        pixel is repeated.
    templates : Templates
        N templates (see :func:`cut_templates`).
    start : ndarray, shape (N, 2)
        ``[y, x]`` first guesses; the fit finds the template from up to
        about ``sigma`` away.
    sigma : float
        Gaussian weight of the pixels (px from the point).
    max_iterations : int, optional
        Most Gauss-Newton steps.
    epsilon : float, optional
        A point stops once its step is shorter than this (px).

    Returns
    -------
    positions : ndarray, shape (N, 2), float32
        ``[y, x]`` best fits.
    converged : ndarray, shape (N,), bool
        The fit is usable: finite, with a positive gain (not a
        contrast-inverted match) and a frame patch that is not flat.
    score : ndarray, shape (N,), float32
        Weighted zero-mean normalised cross-correlation of the template with
        the frame at ``positions``, in [-1, 1]: 1 is a perfect match up to
        gain and offset.
    """
    frame = np.asarray(frame, np.float32)
    positions = np.array(start, np.float32).reshape(-1, 2)
    n = len(positions)
    if n == 0:
        return positions, np.zeros(0, bool), np.zeros(0, np.float32)
    template = templates.patches.reshape(n, -1)
    radius = templates.radius
    size = 2 * radius + 1
    # Template pixel (i, j) lies at point - fraction + (i, j) - radius; the
    # frame is sampled with a one-pixel rim so that central differences
    # give the gradient inside.
    origin = -templates.fractions - radius
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    dy = offsets[None, :, None] - templates.fractions[:, 0, None, None]
    dx = offsets[None, None, :] - templates.fractions[:, 1, None, None]
    weight = np.exp(-(dy**2 + dx**2) / (2 * sigma**2)).reshape(n, -1)
    weight /= weight.sum(axis=1, keepdims=True)
    inner = (slice(None), slice(1, -1), slice(1, -1))
    moving = np.ones(n, bool)
    gain = np.ones(n, np.float32)
    ridge = np.eye(4, dtype=np.float32)
    for _ in range(max_iterations):
        index = np.flatnonzero(moving)
        if not len(index):
            break
        patch = patches_at(
            frame, positions[index] + origin[index] - 1, size + 2
        )
        m = len(index)
        # frame(p + d + x) ~ frame(p + x) + grad . d = gain T(x) + offset,
        # linear in (d, gain, offset): weighted least squares per point.
        jacobian = np.stack(
            [
                0.5 * (patch[:, 2:, 1:-1] - patch[:, :-2, 1:-1]),
                0.5 * (patch[:, 1:-1, 2:] - patch[:, 1:-1, :-2]),
                -templates.patches[index],
                -np.ones_like(templates.patches[index]),
            ],
            axis=-1,
        ).reshape(m, -1, 4)
        # Batched matrix products: far faster than einsum for many small
        # systems.
        weighted = (jacobian * weight[index, :, None]).transpose(0, 2, 1)
        normal = weighted @ jacobian
        target = -(weighted @ patch[inner].reshape(m, -1, 1))[..., 0]
        # A relative ridge keeps flat patches solvable; they are flagged by
        # their variance below.
        scale = np.trace(normal, axis1=1, axis2=2)[:, None, None]
        normal += (1e-6 * scale + 1e-12) * ridge
        solution = np.linalg.solve(normal, target[..., None])[..., 0]
        delta = solution[:, :2]
        length = np.hypot(delta[:, 0], delta[:, 1])
        delta *= np.minimum(1.0, _MAX_STEP / np.maximum(length, 1e-12))[
            :, None
        ]
        positions[index] += delta
        gain[index] = solution[:, 2]
        moving[index] = length >= epsilon
    values = patches_at(frame, positions + origin, size).reshape(n, -1)
    score, variance_ratio = _weighted_correlation(template, values, weight)
    # Running out of iterations is not a failure (the last steps may
    # oscillate by a few hundredths of a pixel on a flat-topped feature);
    # a negative gain (a contrast-inverted match) or a flat patch is.
    converged = (
        np.isfinite(positions).all(axis=1)
        & (gain > 0)
        & (variance_ratio >= _MIN_VARIANCE_RATIO)
    )
    return positions, converged, score


def _weighted_correlation(a, b, weight):
    """Weighted ZNCC of the rows of ``a`` and ``b`` (weights summing to 1
    per row), and the ratio of the smaller weighted variance to the
    larger."""
    a = a - np.sum(weight * a, axis=1, keepdims=True)
    b = b - np.sum(weight * b, axis=1, keepdims=True)
    var_a = np.sum(weight * a * a, axis=1)
    var_b = np.sum(weight * b * b, axis=1)
    covariance = np.sum(weight * a * b, axis=1)
    scale = np.sqrt(var_a * var_b)
    score = np.divide(
        covariance, scale, out=np.zeros_like(covariance), where=scale > 0
    )
    larger = np.maximum(var_a, var_b)
    ratio = np.divide(
        np.minimum(var_a, var_b),
        larger,
        out=np.zeros_like(larger),
        where=larger > 0,
    )
    return score.astype(np.float32), ratio


def patches_at(image, corners, size):
    """Square patches whose first pixel lies at float ``corners``.

    Patch ``i`` holds ``image`` sampled bilinearly at ``corners[i] + (j,
    k)`` for ``j, k`` in ``range(size)``. All pixels of a patch share one
    sub-pixel fraction, so each patch is one integer gather blended with
    four weights (exact, unlike OpenCV's remap, which rounds coordinates
    to 1/32 px). Outside the image the nearest edge pixel is repeated.

    Parameters
    ----------
    image : ndarray, shape (Y, X), float32
    corners : ndarray, shape (N, 2)
        ``[y, x]`` of each patch's first pixel.
    size : int

    Returns
    -------
    ndarray, shape (N, size, size), float32
    """
    height, width = image.shape
    corners = np.asarray(corners, np.float64).reshape(-1, 2)
    whole = np.floor(corners)
    fy, fx = (corners - whole).astype(np.float32).T[:, :, None, None]
    steps = np.arange(size + 1)
    rows = np.clip(whole[:, 0, None].astype(np.intp) + steps, 0, height - 1)
    columns = np.clip(whole[:, 1, None].astype(np.intp) + steps, 0, width - 1)
    block = image[rows[:, :, None], columns[:, None, :]]
    top = block[:, :-1, :-1] * (1 - fx) + block[:, :-1, 1:] * fx
    bottom = block[:, 1:, :-1] * (1 - fx) + block[:, 1:, 1:] * fx
    return top * (1 - fy) + bottom * fy
