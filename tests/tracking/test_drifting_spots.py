"""The drifting-spots generator keeps its promises (pure tier)."""

import numpy as np
import pytest

from napari_flowscope.synthetic import drifting_spots
from napari_flowscope.tracking.spots import fit_spots


def test_spots_are_exactly_where_the_ground_truth_says():
    spots = drifting_spots(
        n_frames=8,
        shape=(96, 96),
        n_spots=4,
        drift=3.0,
        background_photons=0.0,
        noise=False,
        seed=1,
    )
    for frame, truth in zip(spots.stack, spots.positions, strict=True):
        centres, fitted = fit_spots(frame, truth + 0.3, radius=6, sigma=1e3)
        assert fitted.all()
        np.testing.assert_allclose(centres, truth, atol=0.01)


def test_motion_brightness_and_separation_stay_in_their_ranges():
    spots = drifting_spots(n_frames=30, shape=(128, 128), n_spots=6, seed=2)
    own = spots.positions - spots.drift[:, None]
    speed = np.linalg.norm(np.diff(own, axis=0), axis=2)
    assert speed.max() <= 3.0
    # Slower than 0.5 px/frame only in a frame where a spot bounces.
    assert np.mean(speed >= 0.5) > 0.95
    assert np.abs(spots.drift).max() == pytest.approx(8.0)
    assert spots.peak.min() >= 100 and spots.peak.max() <= 500
    assert spots.sigma.min() >= 1.5 and spots.sigma.max() <= 3.0
    gaps = np.linalg.norm(
        spots.positions[:, :, None] - spots.positions[:, None], axis=-1
    )
    gaps[:, np.arange(6), np.arange(6)] = np.inf
    assert gaps.min() >= 10.0
    # Photon counts: whole numbers, brightest where the spots are.
    assert np.array_equal(spots.stack, np.round(spots.stack))
    t, y, x = 0, *np.rint(spots.positions[0, 0]).astype(int)
    assert spots.stack[t, y, x] > np.median(spots.stack[t]) + 50


def test_impossible_separation_is_refused():
    with pytest.raises(ValueError, match='apart'):
        drifting_spots(
            n_frames=5, shape=(64, 64), n_spots=30, min_separation=20.0
        )
