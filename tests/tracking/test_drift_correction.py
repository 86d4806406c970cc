"""Drift correction keeps long tracks on their feature (pure tier)."""

from dataclasses import replace

import numpy as np
import pytest

from napari_flowscope import track_features
from napari_flowscope.synthetic import drifting_spots
from napari_flowscope.tracking import TrackingParams
from napari_flowscope.tracking.blobs import blob_centroids, blob_scales
from napari_flowscope.tracking.drift import DriftCorrection
from napari_flowscope.tracking.spots import fit_spots
from napari_flowscope.tracking.template import align_templates, cut_templates


@pytest.fixture(scope='module')
def noisy_spots():
    """40 frames of 6 spots (sigma 1.5-3 px, 100-500 photons at the peak,
    Poisson noise) moving 0.5-3 px/frame over drifting, unevenly lit
    texture."""
    return drifting_spots(
        n_frames=40, shape=(128, 128), n_spots=6, drift=4.0, seed=0
    )


def errors(tracks, spots):
    """(T, N) distance of each seeded track to its spot; NaN once lost."""
    n_frames, n_spots = spots.positions.shape[:2]
    error = np.full((n_frames, n_spots), np.nan)
    t = tracks.data[:, 1].astype(int)
    track_id = tracks.data[:, 0].astype(int)
    error[t, track_id] = np.hypot(
        *(tracks.data[:, 2:] - spots.positions[t, track_id]).T
    )
    return error


@pytest.mark.parametrize('mode', ['auto', 'template', 'spot'])
def test_noisy_spots_stay_within_half_a_pixel_for_40_frames(noisy_spots, mode):
    tracks = track_features(
        noisy_spots.stack,
        seeds=noisy_spots.positions[0],
        params=TrackingParams(drift_correction=mode),
    )
    error = errors(tracks, noisy_spots)

    assert np.isfinite(error).all()  # every spot followed to the end
    assert np.nanmax(error) < 0.5
    assert np.nanmedian(error) < 0.15
    match = tracks.features['match'][tracks.data[:, 1] > 0]
    assert np.median(match) > 0.9


def test_without_correction_the_same_tracks_drift_off(noisy_spots):
    # The bound above is not met by frame-to-frame tracking alone: its step
    # errors add up (and one track jumps to other texture).
    tracks = track_features(
        noisy_spots.stack,
        seeds=noisy_spots.positions[0],
        params=TrackingParams(drift_correction='off'),
    )
    error = errors(tracks, noisy_spots)

    assert np.nanmax(error) > 0.5
    assert np.nanmedian(error) > 0.15
    assert np.nanmedian(error[-1]) > 1.0
    assert np.isnan(tracks.features['match']).all()


def gaussian(shape, centre, sigma=(2.0, 2.0), angle=0.0, amplitude=100.0):
    """An elliptical Gaussian spot, (Y, X) float32."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dy, dx = y - centre[0], x - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    along, across = cos * dx + sin * dy, -sin * dx + cos * dy
    exponent = (along / sigma[1]) ** 2 + (across / sigma[0]) ** 2
    return (10 + amplitude * np.exp(-exponent / 2)).astype(np.float32)


def test_alignment_recovers_a_subpixel_shift_despite_gain_and_offset():
    reference = gaussian((40, 40), (20.0, 20.0), sigma=(1.5, 3.0), angle=0.4)
    templates = cut_templates(reference, [[20.2, 19.6]], radius=7)
    moved = 0.5 * gaussian(
        (40, 40), (21.5, 18.3), sigma=(1.5, 3.0), angle=0.4
    ) + np.float32(30)

    position, converged, score = align_templates(
        moved, templates, [[21.0, 19.0]], sigma=3.0
    )

    np.testing.assert_allclose(position[0], [21.7, 17.9], atol=0.01)
    assert converged[0]
    assert score[0] > 0.999


def test_gaussian_fit_finds_the_spot_centre():
    frame = gaussian((32, 32), (15.3, 16.8), sigma=(2.2, 2.2))
    centres, fitted = fit_spots(frame, [[15.0, 16.0]], radius=6, sigma=3.0)
    np.testing.assert_allclose(centres[0], [15.3, 16.8], atol=1e-3)
    assert fitted[0]

    # In photon noise: still close; nothing to fit on bare background,
    # where the point is left where it was.
    noisy = np.random.default_rng(0).poisson(4 * frame).astype(np.float32)
    points = [[15.0, 16.0], [4.0, 4.0], [26.0, 5.0]]
    centres, fitted = fit_spots(noisy, points, radius=6, sigma=3.0)
    np.testing.assert_allclose(centres[0], [15.3, 16.8], atol=0.1)
    assert fitted.tolist() == [True, False, False]
    np.testing.assert_array_equal(centres[1:], points[1:])

    # A neighbour 8 px away, half in the window, moves it by < 0.1 px.
    frame += gaussian((32, 32), (15.0, 25.0)) - 10
    centres, fitted = fit_spots(frame, [[15.0, 16.0]], radius=6, sigma=3.0)
    np.testing.assert_allclose(centres[0], [15.3, 16.8], atol=0.1)
    assert fitted[0]


def test_blob_scale_and_centroid_of_a_spot_and_a_disc():
    y, x = np.mgrid[:96, :96]
    spot = gaussian((96, 96), (40.3, 50.6), sigma=(2.5, 2.5))
    disc = 10 + 100 * (np.hypot(y - 48.2, x - 47.7) <= 15).astype(np.float32)
    sigma, response, peaked = blob_scales(
        np.stack([spot, disc]).reshape(192, 96), [[40.3, 50.6], [144, 48]]
    )
    # A Gaussian's own sigma; R / sqrt(2) for a disc of radius R.
    np.testing.assert_allclose(sigma, [2.5, 15 / np.sqrt(2)], rtol=0.05)
    np.testing.assert_allclose(response, [50, 74], rtol=0.05)
    assert peaked.all()

    centres, mass = blob_centroids(disc, [[45.0, 51.0]], radii=18.0)
    inside = np.hypot(y - 48.2, x - 47.7) <= 15
    np.testing.assert_allclose(
        centres[0], [y[inside].mean(), x[inside].mean()], atol=1e-3
    )
    assert mass[0] == pytest.approx(100 * inside.sum(), rel=1e-3)


def textured_nuclei(n_frames=20, shape=(96, 96), seed=0):
    """Two bright nuclei (discs of radius 12) moving 1.2-1.3 px/frame,
    whose four dark nucleoli drift inside them by 0.25 px/frame; Poisson
    noise. Returns the stack and the (T, 2, 2) nucleus centres."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    start = np.array([[28.0, 28.0], [68.0, 40.0]])
    velocity = np.array([[1.2, 0.3], [-0.3, 1.3]])
    nucleoli = rng.uniform(-4, 4, (2, 4, 2))
    flow = np.array([[0.25, 0.0], [0.0, -0.25]])
    centres = start + np.arange(n_frames)[:, None, None] * velocity
    frames = []
    for t in range(n_frames):
        image = np.full(shape, 10.0)
        for (cy, cx), spots in zip(
            centres[t], nucleoli + t * flow[:, None], strict=True
        ):
            nucleus = 0.5 * (1 - np.tanh(np.hypot(y - cy, x - cx) - 12))
            for dy, dx in spots:
                r2 = (y - cy - dy) ** 2 + (x - cx - dx) ** 2
                nucleus *= 1 - 0.5 * np.exp(-r2 / 4.5)
            image += 120 * nucleus
        frames.append(rng.poisson(image))
    return np.stack(frames).astype(np.float32), centres


@pytest.mark.parametrize('seed', [0, 1])
def test_a_point_on_a_bright_object_follows_its_centre(seed):
    stack, centres = textured_nuclei(seed=seed)

    def errors(mode):
        tracks = track_features(
            stack,
            seeds=centres[0],
            params=TrackingParams(drift_correction=mode),
        )
        t, k = tracks.data[:, 1].astype(int), tracks.data[:, 0].astype(int)
        assert len(tracks) == centres.size // 2  # both followed throughout
        return np.hypot(*(tracks.data[:, 2:] - centres[t, k]).T)

    auto = errors('auto')
    assert auto.max() < 0.75
    assert np.median(auto) < 0.3
    # The template locks onto the nucleoli and drifts with them.
    assert errors('template').max() > 2.0


def turning_bar(n_frames, degrees_per_frame, stop=None):
    """An elongated spot at (32, 32) turning by a fixed angle per frame;
    from frame ``stop`` on it is gone."""
    frames = [
        gaussian(
            (64, 64),
            (32.0, 32.0),
            sigma=(1.5, 5.0),
            angle=np.deg2rad(degrees_per_frame * t),
            amplitude=0.0 if stop is not None and t >= stop else 100.0,
        )
        for t in range(n_frames)
    ]
    return np.stack(frames)


def test_a_changing_feature_is_followed_by_renewing_its_template():
    stack = turning_bar(20, degrees_per_frame=6)
    seeds = [[32.0, 32.0]]
    tracks = track_features(stack, seeds=seeds)

    # Followed throughout, on the bar's centre.
    assert len(tracks) == 20
    np.testing.assert_allclose(tracks.data[:, 2:], 32.0, atol=0.05)
    # The match decays as the bar turns, and recovers at each renewal.
    match = tracks.features['match'][1:]
    renewal = TrackingParams().template_renewal
    assert (match < renewal).sum() >= 2
    assert match.min() > TrackingParams().min_match

    # A template never renewed stops matching once the bar has turned.
    frozen = TrackingParams(template_renewal=0.6, min_match=0.6)
    assert len(track_features(stack, seeds=seeds, params=frozen)) < 20


def test_a_track_ends_where_its_feature_vanishes():
    stack = turning_bar(10, degrees_per_frame=0, stop=6)
    # Even without the forward-backward check.
    params = TrackingParams(fb_threshold=None)
    tracks = track_features(stack, seeds=[[32.0, 32.0]], params=params)
    np.testing.assert_array_equal(tracks.data[:, 1], np.arange(6))

    # Plain Lucas-Kanade still reports a point in the first empty frame.
    plain = replace(params, drift_correction='off')
    tracks = track_features(stack, seeds=[[32.0, 32.0]], params=plain)
    np.testing.assert_array_equal(tracks.data[:, 1], np.arange(7))


def test_a_step_too_far_from_the_template_ends_the_track():
    frame = gaussian((48, 48), (24.0, 24.0))
    params = TrackingParams(max_correction=2.0)
    near, far = [[25.2, 24.3]], [[27.0, 25.5]]

    correction = DriftCorrection(params)
    correction.add(frame, [[24.0, 24.0]])
    positions, kept, _ = correction.correct(frame, near, near, [True])
    np.testing.assert_allclose(positions, [[24.0, 24.0]], atol=0.01)
    assert kept.tolist() == [True] and len(correction) == 1

    # Stepped 3.4 px away and predicted there too: the template fits only
    # further than max_correction away, so the track ends.
    positions, kept, _ = correction.correct(frame, far, far, [True])
    assert kept.tolist() == [False] and len(correction) == 0


def test_a_failed_step_is_retried_from_the_predicted_position():
    frames = [gaussian((48, 48), (20.0 + 1.5 * t, 24.0)) for t in range(3)]
    correction = DriftCorrection(TrackingParams())
    correction.add(frames[0], [[20.0, 24.0]])
    correction.correct(frames[1], [[20.0, 24.0]], [[21.5, 24.0]], [True])

    # The step failed (say, its forward-backward check); moving on at 1.5
    # px/frame, the track is found again where it was predicted.
    positions, kept, score = correction.correct(
        frames[2], [[21.5, 24.0]], [[40.0, 40.0]], [False]
    )
    assert kept.tolist() == [True]
    np.testing.assert_allclose(positions, [[23.0, 24.0]], atol=0.01)
    assert score[0] > 0.99


def test_spot_mode_starts_tracks_on_the_spot_centre():
    stack = np.stack([gaussian((40, 40), (18.4, 21.7))] * 3)
    tracks = track_features(
        stack,
        seeds=[[18.0, 21.0]],
        params=TrackingParams(drift_correction='spot'),
    )
    np.testing.assert_allclose(
        tracks.data[:, 2:], [[18.4, 21.7]] * 3, atol=0.02
    )


@pytest.mark.parametrize(
    ('values', 'message'),
    [
        ({'drift_correction': 'kalman'}, 'drift_correction'),
        ({'template_size': 14}, 'template_size'),
        ({'template_size': 3}, 'template_size'),
        ({'min_match': 0.9}, 'min_match'),
        ({'max_correction': 0}, 'max_correction'),
    ],
)
def test_bad_drift_parameters_are_rejected(values, message):
    with pytest.raises(ValueError, match=message):
        TrackingParams(**values)


def test_drift_parameters_round_trip():
    params = TrackingParams(
        drift_correction='spot',
        template_size=21,
        template_renewal=0.7,
        min_match=0.4,
        max_correction=2.5,
    )
    assert TrackingParams.from_dict(params.to_dict()) == params
    # Settings saved before drift correction existed still load.
    old = params.to_dict()
    for name in (
        'drift_correction',
        'template_size',
        'template_renewal',
        'min_match',
        'max_correction',
    ):
        del old[name]
    assert TrackingParams.from_dict(old).drift_correction == 'auto'
