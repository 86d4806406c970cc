"""Synthetic time-lapses with exactly known motion.

Every generator returns a :class:`SyntheticSequence` whose ``flow`` follows the
project's convention: ``stack[t](x + flow[t](x)) == reference(x)``, with
``flow[..., 0]`` the x (column) and ``flow[..., 1]`` the y (row) displacement.

Frames are rendered by sampling a band-limited texture at the inverse of the
motion, so the ground truth is exact up to cubic interpolation of a texture
whose finest features are a few pixels wide (about 1e-3 of the intensity
range). They double as test fixtures, benchmark sequences and sample data.
"""

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

__all__ = [
    'SpotSequence',
    'SyntheticSequence',
    'VolumeSequence',
    'affine_drift',
    'bleaching_tissue',
    'drifting_spots',
    'drifting_tissue',
    'drifting_volume',
    'drift_with_crawling_cell',
    'large_translation',
    'moving_disk',
    'nonrigid_motion',
    'rigid_drift',
    'rotating_particles',
    'tissue_texture',
    'volume_texture',
]

# A displacement model maps reference positions (x, y) and a frame index to
# the [u, v] displacement of that position in that frame.
DisplacementModel = Callable[
    [np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]
]


@dataclass(frozen=True)
class SyntheticSequence:
    """A time-lapse with its ground-truth flow.

    Attributes
    ----------
    stack : ndarray, shape (T, H, W), float32
        The frames, intensities roughly in [0, 1].
    flow : ndarray, shape (T, H, W, 2), float32
        Ground truth ``[x, y]`` displacement of each frame against
        ``reference``: ``stack[t](x + flow[t](x)) == reference(x)``.
    reference : ndarray, shape (H, W), float32
        The frame the flow is measured against (``stack[0]`` unless stated).
    valid : ndarray, shape (H, W), bool
        Where the ground truth is observable: textured pixels away from the
        border, where content moves in from outside the field of view.
    name : str
        Short description used in benchmark tables.
    """

    stack: np.ndarray
    flow: np.ndarray
    reference: np.ndarray
    valid: np.ndarray
    name: str


@dataclass(frozen=True)
class SpotSequence:
    """Moving spots with their exact positions in every frame.

    Attributes
    ----------
    stack : ndarray, shape (T, H, W), float32
        Photon counts (Poisson draws), or their expectation when made
        without noise.
    positions : ndarray, shape (T, N, 2), float64
        True ``[y, x]`` centre of every spot in every frame.
    sigma : ndarray, shape (N,), float32
        Gaussian sigma (px) of each spot.
    peak : ndarray, shape (T, N), float32
        Expected photons at each spot's centre above the background.
    drift : ndarray, shape (T, 2), float64
        ``[y, x]`` global drift shared by the background and all spots.
    name : str
        Short description used in benchmark tables.
    """

    stack: np.ndarray
    positions: np.ndarray
    sigma: np.ndarray
    peak: np.ndarray
    drift: np.ndarray
    name: str


def tissue_texture(shape, *, seed=0, feature_size=2.5):
    """Fluorescence-like texture: bright puncta on a dimmer tissue background.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the texture.
    seed : int, optional
        Seed of the random generator; the texture is deterministic.
    feature_size : float, optional
        Gaussian sigma (px) of the smallest features. Values below about 1.5
        make the texture alias and the ground truth inexact.

    Returns
    -------
    texture : ndarray, shape (H, W), float32
        Intensities scaled to [0.05, 0.95].
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    puncta = (rng.random(shape) > 0.985).astype(np.float32)
    puncta *= rng.uniform(0.5, 1.0, shape).astype(np.float32)
    puncta = cv2.GaussianBlur(puncta, (0, 0), feature_size)
    tissue = cv2.GaussianBlur(
        rng.standard_normal(shape).astype(np.float32), (0, 0), 2 * feature_size
    )
    cells = cv2.GaussianBlur(
        rng.standard_normal(shape).astype(np.float32),
        (0, 0),
        4 * feature_size,
    )
    texture = (
        puncta / puncta.max()
        + 0.25 * _unit_range(tissue)
        + 0.35 * _unit_range(cells)
    )
    return (0.05 + 0.9 * _unit_range(texture)).astype(np.float32)


def rigid_drift(
    *, n_frames=20, shape=(256, 256), max_shift=5.0, max_rotation=2.0, seed=0
):
    """Smooth random drift plus a slow rotation about the image centre.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    shape : tuple of int, optional
        Frame shape ``(H, W)``.
    max_shift : float, optional
        Largest translation (px) reached by the drift.
    max_rotation : float, optional
        Largest rotation angle (degrees).
    seed : int, optional
        Seed for texture and trajectory.

    Returns
    -------
    SyntheticSequence
    """
    rng = np.random.default_rng(seed)
    shifts = _smooth_walk(rng, n_frames, 2, max_shift)
    angles = np.deg2rad(_smooth_walk(rng, n_frames, 1, max_rotation)[:, 0])
    centre = ((shape[1] - 1) / 2, (shape[0] - 1) / 2)

    def displacement(x, y, t):
        return _rigid(x, y, angles[t], shifts[t], centre)

    return _render(
        tissue_texture(shape, seed=seed),
        displacement,
        n_frames,
        margin=int(np.ceil(max_shift + np.deg2rad(max_rotation) * max(shape))),
        name='rigid drift + rotation',
    )


def affine_drift(
    *,
    n_frames=8,
    shape=(256, 256),
    max_shift=4.0,
    max_strain=0.02,
    seed=0,
    noise=0.0,
):
    """A smooth random affine motion: drift, scaling, shear and rotation.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    shape : tuple of int, optional
        Frame shape ``(H, W)``.
    max_shift : float, optional
        Largest translation (px).
    max_strain : float, optional
        Largest entry of the linear part minus the identity (e.g. 0.02 =
        2 % scaling or shear), about the image centre.
    seed : int, optional
        Seed for texture and trajectory.
    noise : float, optional
        Standard deviation of additive Gaussian noise (intensity units).

    Returns
    -------
    SyntheticSequence
        ``flow[t](x) = A_t (x - c) + c + s_t - x`` with ``c`` the centre.
    """
    rng = np.random.default_rng(seed)
    shifts = _smooth_walk(rng, n_frames, 2, max_shift)
    strains = _smooth_walk(rng, n_frames, 4, max_strain)
    centre = ((shape[1] - 1) / 2, (shape[0] - 1) / 2)

    def displacement(x, y, t):
        a, b, c, d = strains[t]
        dx, dy = x - centre[0], y - centre[1]
        u = a * dx + b * dy + shifts[t][0]
        v = c * dx + d * dy + shifts[t][1]
        return u.astype(np.float32), v.astype(np.float32)

    sequence = _render(
        tissue_texture(shape, seed=seed),
        displacement,
        n_frames,
        margin=int(np.ceil(max_shift + 2 * max_strain * max(shape))) + 1,
        name='affine drift',
    )
    return _with_noise(sequence, noise, seed)


def drift_with_crawling_cell(
    *, n_frames=8, shape=(192, 192), max_shift=4.0, radius=24, seed=0
):
    """Rigid drift of the whole field while one cell crawls across it.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    shape : tuple of int, optional
        Frame shape ``(H, W)``.
    max_shift : float, optional
        Largest drift (px).
    radius : float, optional
        Radius (px) of the region that moves on its own (the "cell"); it
        moves 1 px per frame along x on top of the drift, its motion fading
        out over about 12 px at its edge (so the motion stays invertible).
    seed : int, optional
        Seed for texture and drift.

    Returns
    -------
    SyntheticSequence
        ``flow`` is the true motion, cell included; the drift alone is
        the flow outside the cell (``valid`` marks the drift-only region
        away from the border).
    """
    rng = np.random.default_rng(seed)
    shifts = _smooth_walk(rng, n_frames, 2, max_shift)
    height, width = shape
    centre = (width / 3, height / 2)

    def displacement(x, y, t):
        distance = np.hypot(x - centre[0], y - centre[1])
        inside = (0.5 + 0.5 * np.tanh((radius - distance) / 6)) * t
        u = shifts[t][0] + inside
        v = np.full_like(y, shifts[t][1])
        return u.astype(np.float32), v.astype(np.float32)

    sequence = _render(
        tissue_texture(shape, seed=seed),
        displacement,
        n_frames,
        margin=int(np.ceil(max_shift + n_frames)) + 1,
        name='drift + crawling cell',
    )
    y, x = np.mgrid[0:height, 0:width]
    far = np.hypot(x - centre[0], y - centre[1]) > radius + n_frames + 20
    return SyntheticSequence(
        stack=sequence.stack,
        flow=sequence.flow,
        reference=sequence.reference,
        valid=sequence.valid & far,
        name=sequence.name,
    )


def _with_noise(sequence, noise, seed):
    if noise == 0:
        return sequence
    stack = _add_noise(sequence.stack, noise, seed)
    return SyntheticSequence(
        stack=stack,
        flow=sequence.flow,
        reference=stack[0],
        valid=sequence.valid,
        name=f'{sequence.name}, noise {noise:g}',
    )


def nonrigid_motion(
    *, n_frames=20, shape=(256, 256), max_displacement=5.0, seed=0
):
    """Smooth non-rigid deformation whose amplitude varies from 0 to the max.

    The field is a sum of a few long-wavelength sinusoids, so its gradient
    stays well below one and the motion is invertible.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    shape : tuple of int, optional
        Frame shape ``(H, W)``.
    max_displacement : float, optional
        Largest displacement magnitude (px) over the sequence.
    seed : int, optional
        Seed for texture and field.

    Returns
    -------
    SyntheticSequence
    """
    rng = np.random.default_rng(seed + 1)
    field = _sinusoid_field(rng, shape, n_modes=4)
    amplitude = (
        max_displacement
        * np.sin(np.linspace(0, np.pi / 2, n_frames))
        * np.where(np.arange(n_frames) % 2 == 0, 1.0, -0.6)
    )
    amplitude[0] = 0.0

    def displacement(x, y, t):
        u, v = field(x, y)
        return amplitude[t] * u, amplitude[t] * v

    return _render(
        tissue_texture(shape, seed=seed),
        displacement,
        n_frames,
        margin=int(np.ceil(max_displacement)) + 2,
        name='smooth non-rigid 0-5 px',
    )


def large_translation(*, n_frames=8, shape=(256, 256), shift=15.0, seed=0):
    """Translation growing linearly to ``shift`` px along the diagonal.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    shape : tuple of int, optional
        Frame shape ``(H, W)``.
    shift : float, optional
        Magnitude (px) of the last frame's translation.
    seed : int, optional
        Seed for the texture.

    Returns
    -------
    SyntheticSequence
    """
    direction = np.array([np.cos(0.6), np.sin(0.6)])
    steps = np.linspace(0.0, shift, n_frames)

    def displacement(x, y, t):
        u, v = steps[t] * direction
        return np.full_like(x, u), np.full_like(y, v)

    return _render(
        tissue_texture(shape, seed=seed),
        displacement,
        n_frames,
        margin=int(np.ceil(shift)) + 1,
        name='large translation 15 px',
    )


def drifting_tissue(*, n_frames=40, shape=(192, 192), seed=0, noise=0.0):
    """Rigid drift combined with smooth non-rigid deformation.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    shape : tuple of int, optional
        Frame shape ``(H, W)``.
    seed : int, optional
        Seed for texture, drift and deformation.
    noise : float, optional
        Standard deviation of additive Gaussian noise (intensity units).

    Returns
    -------
    SyntheticSequence
    """
    return _drift_and_deform(
        n_frames=n_frames,
        shape=shape,
        seed=seed,
        noise=noise,
        name='drift + non-rigid',
    )


def bleaching_tissue(
    *, n_frames=40, shape=(192, 192), seed=0, noise=0.0, bleach_to=0.45
):
    """Drifting, deforming tissue under bleaching and moving illumination.

    Intensity decays exponentially to ``bleach_to`` of its initial value and
    a broad illumination gradient, fixed to the microscope rather than the
    sample, sweeps across the field: brightness constancy does not hold.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    shape : tuple of int, optional
        Frame shape ``(H, W)``.
    seed : int, optional
        Seed for texture and motion.
    noise : float, optional
        Standard deviation of additive Gaussian noise (intensity units).
    bleach_to : float, optional
        Intensity factor of the last frame relative to the first.

    Returns
    -------
    SyntheticSequence
    """
    sequence = _drift_and_deform(
        n_frames=n_frames, shape=shape, seed=seed, noise=0.0, name=''
    )
    height, width = shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.arange(n_frames, dtype=np.float32)
    decay = bleach_to ** (t / max(n_frames - 1, 1))
    phase = np.linspace(0.0, np.pi, n_frames, dtype=np.float32)
    lamp = np.stack(
        [
            1.0 + 0.35 * np.cos(2 * np.pi * (x + 0.5 * y) / (1.5 * width) + p)
            for p in phase
        ]
    )
    stack = sequence.stack * decay[:, None, None] * lamp
    stack = _add_noise(stack, noise, seed)
    return SyntheticSequence(
        stack=stack.astype(np.float32),
        flow=sequence.flow,
        reference=stack[0].astype(np.float32),
        valid=sequence.valid,
        name='bleaching + moving illumination',
    )


def moving_disk(*, n_frames=20, size=60, radius=8.0, step=(1.0, 1.0)):
    """The teaching notebook's bright disk moving diagonally on black.

    The disk edge is anti-aliased with an analytic profile, so sub-pixel
    positions are exact. The flow is only observable near the edge; ``valid``
    marks the disk and a two-pixel rim.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    size : int, optional
        Width and height of the square frames.
    radius : float, optional
        Disk radius (px).
    step : tuple of float, optional
        ``(dx, dy)`` displacement per frame (px).

    Returns
    -------
    SyntheticSequence
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    start = np.array([size / 3, size / 3], dtype=np.float32)
    step = np.asarray(step, dtype=np.float32)
    frames, flows = [], []
    for t in range(n_frames):
        cx, cy = start + t * step
        distance = np.hypot(x - cx, y - cy)
        frames.append(_soft_edge(radius - distance))
        flows.append(np.broadcast_to(t * step, (size, size, 2)))
    distance0 = np.hypot(x - start[0], y - start[1])
    return SyntheticSequence(
        stack=np.stack(frames).astype(np.float32),
        flow=np.stack(flows).astype(np.float32),
        reference=frames[0].astype(np.float32),
        valid=distance0 <= radius + 2,
        name='moving disk',
    )


def rotating_particles(
    *,
    n_frames=36,
    size=128,
    n_particles=3,
    orbit_radius=30.0,
    degrees_per_frame=10.0,
    sigma=3.0,
):
    """Gaussian particles rotating on a circle about the image centre.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    size : int, optional
        Width and height of the square frames.
    n_particles : int, optional
        Number of particles, evenly spaced on the circle.
    orbit_radius : float, optional
        Radius of the circle (px).
    degrees_per_frame : float, optional
        Angular speed.
    sigma : float, optional
        Gaussian sigma of each particle (px).

    Returns
    -------
    SyntheticSequence
        ``valid`` marks pixels within ``2 * sigma`` of a particle in the
        reference; the flow is the rigid rotation everywhere. Against frame 0
        the rotation grows without bound, so identical particles become
        ambiguous; between consecutive frames the flow is always ``flow[1]``.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = ((size - 1) / 2, (size - 1) / 2)
    start_angles = np.linspace(0, 2 * np.pi, n_particles, endpoint=False)
    step = np.deg2rad(degrees_per_frame)
    frames, flows = [], []
    for t in range(n_frames):
        angles = start_angles + t * step
        frame = np.zeros((size, size), np.float32)
        for angle in angles:
            px = centre[0] + orbit_radius * np.cos(angle)
            py = centre[1] + orbit_radius * np.sin(angle)
            frame += np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2))
        frames.append(frame)
        u, v = _rigid(x, y, t * step, (0.0, 0.0), centre)
        flows.append(np.stack([u, v], axis=-1))
    reference = frames[0]
    return SyntheticSequence(
        stack=np.stack(frames).astype(np.float32),
        flow=np.stack(flows).astype(np.float32),
        reference=reference,
        valid=reference > np.exp(-2.0),
        name='rotating particles',
    )


def drifting_spots(
    *,
    n_frames=50,
    shape=(256, 256),
    n_spots=40,
    sigma=(1.5, 3.0),
    speed=(0.5, 3.0),
    peak_photons=(100.0, 500.0),
    background_photons=60.0,
    drift=8.0,
    min_separation=10.0,
    noise=True,
    seed=0,
):
    """Fluorescent spots wandering over drifting, unevenly lit tissue.

    Each spot moves with its own smooth random velocity (speed and heading
    vary smoothly; spots bounce off a margin so they stay in view) on top
    of a global drift that also carries the textured background. Spots
    pass each other but never closer than ``min_separation``, so which spot
    is which is never ambiguous. A fixed illumination profile (brightest
    off-centre, down to half at the far corner) dims the background and
    each spot as a whole, so a spot's brightness changes as it travels.
    Spots are rendered analytically as Gaussians sampled at pixel centres
    (the illumination scales a spot's amplitude, not its shape, so its
    centre stays exactly at ``positions``); the background is resampled
    with cubic splines and only needs to look right. Speeds are lower than
    ``speed[0]`` only in the frames where a spot bounces.

    Parameters
    ----------
    n_frames : int, optional
        Number of frames ``T``.
    shape : tuple of int, optional
        Frame shape ``(H, W)``.
    n_spots : int, optional
        Number of spots ``N``.
    sigma : tuple of float, optional
        Range of the spots' Gaussian sigma (px), drawn uniformly.
    speed : tuple of float, optional
        Range (px/frame) of each spot's own speed, before the drift.
    peak_photons : tuple of float, optional
        Range of the expected photons at a spot's centre (above the
        background) in every frame, illumination included.
    background_photons : float, optional
        Expected photons of the brightest background texture under full
        illumination.
    drift : float, optional
        Largest excursion (px) of the global drift.
    min_separation : float, optional
        Closest approach (px) of two spot centres in any frame.
    noise : bool, optional
        Draw Poisson counts (True) or return the expected counts.
    seed : int, optional
        Seed of the texture, the trajectories and the noise.

    Returns
    -------
    SpotSequence

    Examples
    --------
    >>> spots = drifting_spots(n_frames=5, shape=(64, 64), n_spots=3)
    >>> spots.stack.shape, spots.positions.shape
    ((5, 64, 64), (5, 3, 2))
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    illumination = _illumination(shape, rng)
    margin = 3 * sigma[1] + 2
    low = np.array([margin, margin])
    span = np.array([height, width]) - 2 * margin - drift * 2
    if np.any(span <= 0):
        raise ValueError(f'shape {shape} is too small for the spots')

    global_drift = _smooth_walk(rng, n_frames, 2, drift)
    positions = (
        _separated_paths(
            rng,
            n_frames=n_frames,
            n_spots=n_spots,
            speed=speed,
            low=low + drift,
            span=span,
            min_separation=min_separation,
        )
        + global_drift[:, None]
    )

    sigmas = rng.uniform(*sigma, n_spots)
    # Brightness before illumination, so that the lit peak stays in range.
    dimmest = float(illumination.min())
    brightness = rng.uniform(
        max(peak_photons[0] / dimmest, peak_photons[0]),
        peak_photons[1],
        n_spots,
    )
    pad = int(np.ceil(drift)) + 4
    texture = background_photons * tissue_texture(
        (height + 2 * pad, width + 2 * pad), seed=seed
    )
    coefficients = ndi.spline_filter(texture, order=3, mode='mirror')
    rows = np.arange(height, dtype=np.float64)
    columns = np.arange(width, dtype=np.float64)
    frames, peaks = [], []
    for t in range(n_frames):
        background = ndi.shift(
            coefficients,
            global_drift[t],
            order=3,
            mode='mirror',
            prefilter=False,
            output=np.float32,
        )[pad : pad + height, pad : pad + width]
        peaks.append(brightness * _sample(illumination, positions[t]))
        spots = _gaussian_spots(rows, columns, positions[t], sigmas, peaks[-1])
        frames.append(illumination * background + spots)
    expected = np.stack(frames).astype(np.float32)
    stack = rng.poisson(expected).astype(np.float32) if noise else expected
    return SpotSequence(
        stack=stack,
        positions=positions,
        sigma=sigmas.astype(np.float32),
        peak=np.stack(peaks).astype(np.float32),
        drift=global_drift,
        name='drifting spots',
    )


def _separated_paths(
    rng, *, n_frames, n_spots, speed, low, span, min_separation
):
    """Smooth random paths, (T, N, 2) ``[y, x]``, kept ``min_separation``
    apart: candidates are drawn in batches and kept, in order, when they
    stay clear of every path kept before."""
    kept = np.empty((n_frames, 0, 2))
    for _ in range(200):
        for path in _random_paths(
            rng, n_frames=n_frames, n_paths=64, speed=speed, span=span
        ).transpose(1, 0, 2):
            gaps = np.linalg.norm(kept - path[:, None], axis=2)
            if not gaps.size or gaps.min() >= min_separation:
                kept = np.concatenate([kept, path[:, None]], axis=1)
                if kept.shape[1] == n_spots:
                    return low + kept
    raise ValueError(
        f'could not place {n_spots} spots {min_separation} px apart; use '
        f'fewer spots, a larger frame or a smaller separation'
    )


def _random_paths(rng, *, n_frames, n_paths, speed, span):
    """Paths with smooth random speed and heading that bounce inside a box
    of size ``span`` (its corner at 0), (T, n_paths, 2) ``[y, x]``."""
    own_speed = speed[0] + (speed[1] - speed[0]) * _smooth_unit(
        rng, (n_frames, n_paths)
    )
    turn = 0.25 * (2 * _smooth_unit(rng, (n_frames, n_paths)) - 1)
    heading = rng.uniform(0, 2 * np.pi, n_paths) + np.cumsum(turn, axis=0)
    velocity = own_speed[..., None] * np.stack(
        [np.sin(heading), np.cos(heading)], axis=-1
    )
    travelled = rng.uniform(0, 1, (n_paths, 2)) * span + np.concatenate(
        [np.zeros((1, n_paths, 2)), np.cumsum(velocity[:-1], axis=0)]
    )
    # Fold the free path into the box: the spot bounces off its walls.
    return (1 - np.abs((travelled / span) % 2 - 1)) * span


def _illumination(shape, rng):
    """Smooth illumination in [0.5, 1], brightest at a random spot."""
    height, width = shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8, 2) * (height, width)
    distance2 = ((y - cy) / height) ** 2 + ((x - cx) / width) ** 2
    profile = np.exp(-distance2 / 0.5)
    profile = (profile - profile.min()) / (profile.max() - profile.min())
    return (0.5 + 0.5 * profile).astype(np.float32)


def _gaussian_spots(rows, columns, centres, sigmas, amplitudes):
    """Sum of Gaussians as one separable matrix product, (H, W)."""
    along_y = np.exp(-((rows[:, None] - centres[:, 0]) ** 2) / (2 * sigmas**2))
    along_x = np.exp(
        -((columns[:, None] - centres[:, 1]) ** 2) / (2 * sigmas**2)
    )
    return (along_y * amplitudes) @ along_x.T


def _sample(image, points):
    """Bilinear samples of ``image`` at ``[y, x]`` points, (N,)."""
    return ndi.map_coordinates(image, points.T, order=1, mode='nearest')


def _smooth_unit(rng, shape):
    """Smooth random values in (0, 1) along the first axis, spread evenly."""
    from scipy.special import ndtr

    smooth = ndi.gaussian_filter1d(rng.standard_normal(shape), 4.0, axis=0)
    return ndtr(smooth / smooth.std())


def _drift_and_deform(*, n_frames, shape, seed, noise, name):
    rng = np.random.default_rng(seed + 2)
    shifts = _smooth_walk(rng, n_frames, 2, 6.0)
    field = _sinusoid_field(rng, shape, n_modes=3)
    amplitude = 2.0 * np.sin(np.linspace(0, 3 * np.pi, n_frames))

    def displacement(x, y, t):
        u, v = field(x, y)
        return (
            shifts[t, 0] + amplitude[t] * u,
            shifts[t, 1] + amplitude[t] * v,
        )

    sequence = _render(
        tissue_texture(shape, seed=seed),
        displacement,
        n_frames,
        margin=9,
        name=name,
    )
    if noise == 0:
        return sequence
    stack = _add_noise(sequence.stack, noise, seed)
    return SyntheticSequence(
        stack=stack,
        flow=sequence.flow,
        reference=stack[0],
        valid=sequence.valid,
        name=sequence.name,
    )


def _render(reference, displacement, n_frames, *, margin, name):
    """Frames ``M_t`` with ``M_t(x + w_t(x)) = reference(x)``.

    ``M_t(p) = reference(g(p))`` where ``g`` inverts ``x -> x + w_t(x)``;
    ``g`` is found by the fixed-point iteration ``g = p - w_t(g)``, which
    converges because the displacement gradients are well below one.
    """
    height, width = reference.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    coefficients = ndi.spline_filter(reference, order=3, mode='mirror')
    frames, flows = [], []
    for t in range(n_frames):
        u, v = displacement(x, y, t)
        flows.append(np.stack([u, v], axis=-1).astype(np.float32))
        gx, gy = x - u, y - v
        # Displacement gradients stay well below 1, so the iteration
        # contracts; stop once it moves points by less than 1e-5 px.
        for _ in range(30):
            du, dv = displacement(gx, gy, t)
            step = max(
                float(np.abs(x - du - gx).max()),
                float(np.abs(y - dv - gy).max()),
            )
            gx, gy = x - du, y - dv
            if step < 1e-5:
                break
        # Cubic B-spline sampling: OpenCV 5's INTER_CUBIC remap does not
        # even reproduce a linear ramp (it samples 0.25 px as 0.297 px), which
        # biased the ground truth by up to 0.05 px.
        frames.append(
            ndi.map_coordinates(
                coefficients,
                [gy, gx],
                order=3,
                mode='mirror',
                prefilter=False,
                output=np.float32,
            )
        )
    valid = np.zeros((height, width), bool)
    valid[margin : height - margin, margin : width - margin] = True
    stack = np.stack(frames).astype(np.float32)
    return SyntheticSequence(
        stack=stack,
        flow=np.stack(flows),
        reference=stack[0],
        valid=valid,
        name=name,
    )


def _rigid(x, y, angle, shift, centre):
    """Displacement of a rotation by ``angle`` about ``centre`` + shift."""
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = x - centre[0], y - centre[1]
    u = cos * dx - sin * dy + centre[0] + shift[0] - x
    v = sin * dx + cos * dy + centre[1] + shift[1] - y
    return u.astype(np.float32), v.astype(np.float32)


def _sinusoid_field(rng, shape, *, n_modes):
    """A smooth vector field with maximum magnitude 1 over ``shape``."""
    height, width = shape
    scale = max(height, width)
    # float32 throughout: numpy's float32 sine is vectorised, and the field
    # is evaluated a few hundred times per sequence
    angular = 2 * np.pi * rng.uniform(0.4, 1.2, (n_modes, 2, 2)) / scale
    angular = angular.astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, (n_modes, 2)).astype(np.float32)
    weights = rng.uniform(0.5, 1.0, (n_modes, 2)).astype(np.float32)

    def field(x, y):
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        components = []
        for axis in range(2):
            value = np.zeros_like(x)
            for mode in range(n_modes):
                kx, ky = angular[mode, axis]
                value += weights[mode, axis] * np.sin(
                    kx * x + ky * y + phases[mode, axis]
                )
            components.append(value)
        return components[0], components[1]

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    peak = np.max(np.hypot(*field(x, y)))

    def normalised(x, y):
        u, v = field(x, y)
        return u / peak, v / peak

    return normalised


def _smooth_walk(rng, n_frames, n_dims, maximum):
    """A smooth trajectory starting at 0 whose largest excursion is max."""
    steps = rng.standard_normal((n_frames, n_dims))
    steps = cv2.GaussianBlur(
        steps.astype(np.float32), (1, 0), sigmaX=0.1, sigmaY=2.0
    ).astype(np.float64)
    walk = np.cumsum(steps, axis=0)
    walk -= walk[0]
    peak = np.max(np.abs(walk))
    return walk * (maximum / peak) if peak > 0 else walk


def _unit_range(image):
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else image * 0


def _soft_edge(signed_distance):
    """Anti-aliased step: 1 inside, 0 outside, about 1 px wide."""
    return (0.5 + 0.5 * np.tanh(signed_distance / 0.7)).astype(np.float32)


def _add_noise(stack, noise, seed):
    if noise == 0:
        return stack.astype(np.float32)
    rng = np.random.default_rng(seed + 3)
    return (stack + noise * rng.standard_normal(stack.shape)).astype(
        np.float32
    )


# --------------------------------------------------------------------------
# volumes (T, Z, Y, X)


@dataclass(frozen=True)
class VolumeSequence:
    """A volumetric time-lapse with its ground-truth 3-D flow.

    Attributes
    ----------
    stack : ndarray, shape (T, Z, Y, X), float32
        The volumes, intensities roughly in [0, 1].
    flow : ndarray, shape (T, Z, Y, X, 3), float32
        Ground truth ``[x, y, z]`` displacement in voxels of each volume
        against ``reference``: ``stack[t](p + flow[t](p)) == reference(p)``.
    reference : ndarray, shape (Z, Y, X), float32
        ``stack[0]``.
    valid : ndarray, shape (Z, Y, X), bool
        Voxels whose content stays inside every volume (away from the
        faces through which content enters and leaves).
    spacing : tuple of float
        ``(z, y, x)`` voxel size in in-plane pixels.
    name : str
    """

    stack: np.ndarray
    flow: np.ndarray
    reference: np.ndarray
    valid: np.ndarray
    spacing: tuple
    name: str


def volume_texture(
    shape, *, spacing=(1.0, 1.0, 1.0), seed=0, feature_size=2.0
):
    """Fluorescence-like 3-D texture: puncta on a dimmer tissue background.

    Features are round in physical units (``feature_size`` in-plane
    pixels), but never narrower than 1.5 voxels along any axis, so the
    texture stays band-limited on anisotropic voxels (like a microscope's
    axially elongated point-spread function).

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)``.
    spacing : tuple of float, optional
        ``(z, y, x)`` voxel size in in-plane pixels.
    seed : int, optional
    feature_size : float, optional
        Gaussian sigma (in-plane pixels) of the smallest features.

    Returns
    -------
    ndarray, shape (Z, Y, X), float32
        Intensities scaled to [0.05, 0.95].
    """
    rng = np.random.default_rng(seed)
    pixel = min(spacing[1:])

    def sigmas(width):
        return [max(width * pixel / size, 1.5) for size in spacing]

    puncta = (rng.random(shape) > 0.99).astype(np.float32)
    puncta *= rng.uniform(0.5, 1.0, shape).astype(np.float32)
    puncta = ndi.gaussian_filter(puncta, sigmas(feature_size), mode='wrap')
    tissue = ndi.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32),
        sigmas(2 * feature_size),
        mode='wrap',
    )
    cells = ndi.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32),
        sigmas(4 * feature_size),
        mode='wrap',
    )
    texture = (
        _unit_range(puncta)
        + 0.35 * _unit_range(tissue)
        + 0.45 * _unit_range(cells)
    )
    return (0.05 + 0.9 * _unit_range(texture)).astype(np.float32)


def drifting_volume(
    *,
    n_frames=6,
    shape=(24, 96, 96),
    spacing=(1.0, 1.0, 1.0),
    shift=(4.0, -3.0, 2.5),
    deformation=1.5,
    noise=0.0,
    seed=0,
    texture=None,
):
    """A volume drifting in all three axes while deforming smoothly.

    The motion is defined on the *moving* grid: volume ``t`` shows the
    reference's content at ``q - d_t(q)``, with ``d_t`` a translation
    growing linearly to ``shift`` plus a smooth deformation (sinusoids
    whose amplitude oscillates up to ``deformation``; wavelengths of
    0.8 to 2.5 times the volume's extent, at least 128 px).  Rendering is then
    direct sampling (cubic B-splines of a band-limited texture), and the
    ground truth on the reference grid solves ``w(p) = d(p + w(p))``,
    found by fixed-point iteration.

    Parameters
    ----------
    n_frames : int, optional
    shape : tuple of int, optional
        ``(Z, Y, X)`` of each volume.
    spacing : tuple of float, optional
        ``(z, y, x)`` voxel size in in-plane pixels; motion and texture
        are isotropic in these physical units.
    shift : tuple of float, optional
        ``(x, y, z)`` translation of the last volume, in voxels.
    deformation : float, optional
        Largest magnitude (in-plane pixels) of the deformation.
    noise : float, optional
        Standard deviation of additive Gaussian noise (intensity units).
    seed : int, optional
    texture : array_like, shape (Z, Y, X), optional
        What moves, e.g. a real z-stack (its voxels are ``spacing``); its
        shape replaces ``shape`` and its intensities are scaled to
        [0, 1] by their 0.1 and 99.9 percentiles.  Default
        :func:`volume_texture`.

    Returns
    -------
    VolumeSequence
    """
    spacing = tuple(float(size) for size in spacing)
    if texture is not None:
        texture = np.asarray(texture, np.float32)
        low, high = np.percentile(texture, (0.1, 99.9))
        texture = (texture - low) / np.float32(max(high - low, 1e-12))
        shape = texture.shape
    rng = np.random.default_rng(seed + 4)
    # Physical (in-plane pixel) coordinates of the voxel centres, (z, y, x).
    axes = [
        np.arange(n, dtype=np.float32) * np.float32(size)
        for n, size in zip(shape, spacing, strict=True)
    ]
    grid = np.meshgrid(*axes, indexing='ij')
    # Wavelengths scale with the volume, but not below those of a 128 px
    # one: a small test volume would otherwise be strained unrealistically.
    extent = max(
        128.0, *(n * size for n, size in zip(shape, spacing, strict=True))
    )
    field = _sinusoid_field_3d(rng, grid, extent, n_modes=3)
    # Physical displacement per frame: (x, y, z) translation + deformation.
    steps = np.linspace(0.0, 1.0, n_frames)
    translation = np.outer(steps, np.asarray(shift) * np.array(spacing[::-1]))
    amplitude = deformation * np.sin(np.linspace(0, 1.5 * np.pi, n_frames))
    amplitude[0] = 0.0

    def displacement(z, y, x, t):
        fx, fy, fz = field(z, y, x)
        return (
            translation[t, 0] + amplitude[t] * fx,
            translation[t, 1] + amplitude[t] * fy,
            translation[t, 2] + amplitude[t] * fz,
        )

    if texture is None:
        texture = volume_texture(shape, spacing=spacing, seed=seed)
    coefficients = ndi.spline_filter(texture, order=3, mode='mirror')
    z, y, x = grid
    frames, flows = [], []
    for t in range(n_frames):
        dx, dy, dz = displacement(z, y, x, t)
        # moving(q) = texture(q - d(q)), sampled in voxel coordinates.
        frames.append(
            ndi.map_coordinates(
                coefficients,
                [
                    (z - dz) / np.float32(spacing[0]),
                    (y - dy) / np.float32(spacing[1]),
                    (x - dx) / np.float32(spacing[2]),
                ],
                order=3,
                mode='mirror',
                prefilter=False,
                output=np.float32,
            )
        )
        # Ground truth on the reference grid: w = d(p + w), a contraction
        # because the deformation gradients stay well below one.
        wx, wy, wz = dx, dy, dz
        for _ in range(50):
            nx, ny, nz = displacement(z + wz, y + wy, x + wx, t)
            change = max(
                float(np.abs(nx - wx).max()),
                float(np.abs(ny - wy).max()),
                float(np.abs(nz - wz).max()),
            )
            wx, wy, wz = nx, ny, nz
            if change < 1e-6:
                break
        flows.append(
            np.stack(
                [wx / spacing[2], wy / spacing[1], wz / spacing[0]], axis=-1
            ).astype(np.float32)
        )
    stack = np.stack(frames)
    if noise:
        stack = _add_noise(stack, noise, seed)
    flow = np.stack(flows)
    # Content leaves through the faces: keep voxels whose displaced
    # position stays one voxel inside every volume.
    valid = np.ones(shape, bool)
    for axis, index in enumerate(np.indices(shape)[::-1]):
        position = index + flow[..., axis]
        inside = (position >= 1) & (position <= shape[2 - axis] - 2)
        valid &= inside.all(axis=0)
    return VolumeSequence(
        stack=stack.astype(np.float32),
        flow=flow,
        reference=stack[0].astype(np.float32),
        valid=valid,
        spacing=spacing,
        name='drifting + deforming volume',
    )


def _sinusoid_field_3d(rng, grid, extent, *, n_modes):
    """A smooth 3-D vector field of largest magnitude 1 on ``grid``."""
    angular = (
        2 * np.pi * rng.uniform(0.4, 1.2, (3, n_modes, 3)) / extent
    ).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, (3, n_modes)).astype(np.float32)
    weights = rng.uniform(0.5, 1.0, (3, n_modes)).astype(np.float32)

    def raw(z, y, x):
        components = []
        for axis in range(3):
            value = np.zeros(np.shape(x), np.float32)
            for mode in range(n_modes):
                kz, ky, kx = angular[axis, mode]
                value += weights[axis, mode] * np.sin(
                    kz * z + ky * y + kx * x + phases[axis, mode]
                )
            components.append(value)
        return components

    peak = float(np.sqrt(sum(c * c for c in raw(*grid))).max())

    def field(z, y, x):
        return [component / peak for component in raw(z, y, x)]

    return field
