"""Sub-pixel centres of spot-like features by a 2-D Gaussian fit.

A template match places a point where it was relative to the feature when
the template was cut, so any error in the frame the template came from
(noise, a first click beside the centre) stays with the track. For round
spots (beads, vesicles, puncta) the centre itself is measurable: a
least-squares fit of ``amplitude * exp(-r**2 / (2 s**2)) + background``
around the point, weighted like the template so neighbours count little.
All points are fitted together (Levenberg-Marquardt, vectorised over
points; only the few iterations loop in Python).
"""

import numpy as np

from .template import patches_at

_ITERATIONS = 15
# A fit whose centre moves less than this (px) in an accepted step is done.
_SETTLED = 1e-3
# A fit that moves the point further than this (px) from the template's
# answer, or whose width is outside these bounds (px), found something
# other than the spot it was given: the template's answer is kept.
_MAX_SHIFT = 1.0
_MIN_WIDTH = 0.5
# The spot must stand out of what the model leaves unexplained (noise,
# texture) by this factor, or there is no spot.
_MIN_CONTRAST = 3.0


def fit_spots(frame, points, *, radius, sigma):
    """Centres of Gaussian spots near ``points``.

    Parameters
    ----------
    frame : ndarray, shape (Y, X)
        Any real dtype; used as float64 for the fit.
    points : ndarray, shape (N, 2)
        ``[y, x]`` positions within about a pixel of the spot centres.
    radius : int
        Half-size (px) of the square window fitted around each point.
    sigma : float
        Gaussian weight (px) of the window's pixels.

    Returns
    -------
    centres : ndarray, shape (N, 2), float32
        ``[y, x]``: the fitted centre where ``fitted``, else the point.
    fitted : ndarray, shape (N,), bool
        The fit found a bright spot (amplitude three times the fit's
        weighted RMS residual, width between 0.5 px and ``radius``) less
        than 1 px from the point.
    """
    points = np.asarray(points, np.float32).reshape(-1, 2)
    n = len(points)
    if n == 0:
        return points.copy(), np.zeros(0, bool)
    centres = np.rint(points)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    dy = np.broadcast_to(offsets[:, None], (2 * radius + 1,) * 2).ravel()
    dx = np.broadcast_to(offsets[None, :], (2 * radius + 1,) * 2).ravel()
    values = (
        patches_at(
            np.asarray(frame, np.float32), centres - radius, 2 * radius + 1
        )
        .reshape(n, -1)
        .astype(np.float64)
    )
    start = (points - centres).astype(np.float64)
    weight = np.exp(
        -((dy - start[:, :1]) ** 2 + (dx - start[:, 1:]) ** 2) / (2 * sigma**2)
    )
    background = np.percentile(values, 10, axis=1)
    # amplitude, y, x, width, background
    estimate = np.column_stack(
        [
            values.max(axis=1) - background,
            start,
            np.full(n, min(2.0, radius / 2)),
            background,
        ]
    )
    damping = np.full(n, 1e-2)
    cost = _cost(estimate, dy, dx, values, weight)
    active = np.ones(n, bool)
    identity = np.eye(5)
    for _ in range(_ITERATIONS):
        index = np.flatnonzero(active)
        if not len(index):
            break
        jacobian, residual = _linearised(
            estimate[index], dy, dx, values[index]
        )
        weighted = (jacobian * weight[index, :, None]).transpose(0, 2, 1)
        normal = weighted @ jacobian
        gradient = (weighted @ residual[..., None])[..., 0]
        diagonal = np.diagonal(normal, axis1=1, axis2=2)
        damped = normal + damping[index, None, None] * (
            identity * (diagonal[:, None, :] + 1e-12)
        )
        step = np.linalg.solve(damped, gradient[..., None])[..., 0]
        trial = estimate[index] + step
        trial_cost = _cost(trial, dy, dx, values[index], weight[index])
        better = trial_cost < cost[index]
        estimate[index[better]] = trial[better]
        cost[index[better]] = trial_cost[better]
        damping[index] = np.where(
            better, damping[index] * 0.3, damping[index] * 10
        )
        # Done once the centre has settled, or when no step helps.
        settled = better & (np.hypot(step[:, 1], step[:, 2]) < _SETTLED)
        active[index] = ~settled & (damping[index] < 1e6)
    amplitude, y, x, width = estimate[:, :4].T
    shift = np.hypot(y - start[:, 0], x - start[:, 1])
    misfit = np.sqrt(cost / weight.sum(axis=1))
    fitted = (
        (amplitude > _MIN_CONTRAST * misfit)
        & (np.abs(width) >= _MIN_WIDTH)
        & (np.abs(width) <= radius)
        & (shift < _MAX_SHIFT)
        & np.isfinite(shift)
    )
    found = (centres + np.column_stack([y, x])).astype(np.float32)
    return np.where(fitted[:, None], found, points), fitted


def _model(estimate, dy, dx):
    amplitude, y, x, width, background = estimate.T
    squared = (dy - y[:, None]) ** 2 + (dx - x[:, None]) ** 2
    gaussian = np.exp(-squared / (2 * width[:, None] ** 2))
    return (
        amplitude[:, None] * gaussian + background[:, None],
        gaussian,
        (squared),
    )


def _cost(estimate, dy, dx, values, weight):
    model, _, _ = _model(estimate, dy, dx)
    cost = np.sum(weight * (values - model) ** 2, axis=1)
    return np.where(np.isfinite(cost), cost, np.inf)


def _linearised(estimate, dy, dx, values):
    """Jacobian (N, M, 5) of the model and the residual (N, M)."""
    amplitude, y, x, width, _ = estimate.T
    model, gaussian, squared = _model(estimate, dy, dx)
    scaled = (amplitude / width**2)[:, None] * gaussian
    jacobian = np.stack(
        [
            gaussian,
            scaled * (dy - y[:, None]),
            scaled * (dx - x[:, None]),
            scaled * squared / width[:, None],
            np.ones_like(gaussian),
        ],
        axis=-1,
    )
    return jacobian, values - model
