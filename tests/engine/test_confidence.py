"""Confidence: trusted where the estimate matched, not where it failed."""

import numpy as np
import pytest

from napari_flowscope import synthetic
from napari_flowscope.engine import (
    CONFIDENCE_THRESHOLD,
    FlowParams,
    estimate_flow,
    match_confidence,
    trusted_fraction,
)

SHAPE = (192, 192)


def photon_limited(image, photons, rng):
    """Poisson counts with ``photons`` at the brightest pixel, read noise 2."""
    scaled = (image - image.min()) / (image.max() - image.min()) * photons
    counts = rng.poisson(scaled) + rng.normal(0, 2, image.shape) + 20
    return np.clip(np.round(counts), 0, None).astype(np.uint16)


@pytest.fixture(scope='module')
def texture():
    return synthetic.tissue_texture(SHAPE, seed=0)


def trusted(field):
    return field.confidence >= CONFIDENCE_THRESHOLD


def test_good_noisy_pair_is_trusted_on_its_textured_pixels():
    sequence = synthetic.nonrigid_motion(n_frames=6, shape=SHAPE)
    rng = np.random.default_rng(1)
    reference = photon_limited(sequence.reference, 100, rng)
    moving = photon_limited(sequence.stack[5], 100, rng)
    params = FlowParams()

    field = estimate_flow(reference, moving, params)

    assert field.confidence.dtype == np.float32
    assert field.confidence.shape == SHAPE
    assert field.confidence.min() >= 0 and field.confidence.max() <= 1
    textured = field.reliability >= params.reliability_threshold
    assert textured.mean() > 0.5
    # measured 0.96
    assert (
        trusted_fraction(
            field.confidence, field.reliability, params.reliability_threshold
        )
        > 0.8
    )
    # trusted vectors are right
    error = np.linalg.norm(field.w - sequence.flow[5], axis=-1)
    assert np.percentile(error[trusted(field) & sequence.valid], 95) < 0.5


@pytest.mark.parametrize('shift', [64, 96])
def test_motion_beyond_the_pyramids_reach_is_not_trusted(texture, shift):
    moving = np.roll(texture, (shift, shift // 3), axis=(1, 0))
    field = estimate_flow(texture, moving)
    # the flow is wrong almost everywhere ...
    truth = np.float32([shift, shift // 3])
    assert np.mean(np.linalg.norm(field.w - truth, axis=-1) > 1) > 0.9
    # ... and says so (measured 0.5-2 %)
    assert trusted(field).mean() <= 0.1


@pytest.mark.parametrize('case', ['shift (64, 21) px', 'unrelated'])
def test_fast_presets_failures_are_not_trusted(case):
    # The benchmark's failure cases (256 x 256): the 'fast' preset's 3 px
    # windows fit them locally; with an 8 px correlation window 11.8 % and
    # 10.7 % of the pixels were trusted, with 10 px 6.6 % and 5.5 %.
    texture = synthetic.tissue_texture((256, 256), seed=0)
    if case == 'unrelated':
        moving = synthetic.tissue_texture((256, 256), seed=9)
    else:
        moving = np.roll(texture, (64, 21), axis=(1, 0))
    field = estimate_flow(texture, moving, FlowParams.preset('fast'))
    assert trusted(field).mean() <= 0.09


def test_unrelated_frame_and_pure_noise_are_not_trusted(texture):
    rng = np.random.default_rng(2)
    unrelated = synthetic.tissue_texture(SHAPE, seed=9)
    noise = rng.normal(size=SHAPE).astype(np.float32)
    for reference, moving in (
        (texture, unrelated),
        (texture, noise),
        (rng.normal(size=SHAPE).astype(np.float32), noise),
    ):
        field = estimate_flow(reference, moving)
        assert trusted(field).mean() <= 0.1


def test_flat_regions_and_samples_outside_the_frame_are_not_trusted(blobs):
    # an untextured disc; content moving 6 px left, so that x + w(x)
    # falls outside the moving frame in the first 6 columns
    avoid = (64.0, 64.0, 32.0)
    reference = blobs((128, 128), avoid=avoid)
    moving = blobs((128, 128), (-6.0, 0.0), avoid=avoid)
    field = estimate_flow(reference, moving)
    assert not trusted(field)[54:75, 54:75].any()
    assert not trusted(field)[:, :4].any()
    assert trusted(field)[8:40, 16:-8].mean() > 0.95


def test_match_confidence_works_on_volumes():
    rng = np.random.default_rng(3)
    volume = synthetic.tissue_texture((64, 64), seed=4)
    volume = np.stack([np.roll(volume, z, axis=0) for z in range(24)])
    reliability = np.full(volume.shape, 1e-2, np.float32)
    noisy = volume + rng.normal(0, 0.05, volume.shape).astype(np.float32)

    matched = match_confidence(
        volume, noisy, reliability, reliability_threshold=1e-4, window=4
    )
    unmatched = match_confidence(
        volume,
        rng.permutation(noisy.ravel()).reshape(volume.shape),
        reliability,
        reliability_threshold=1e-4,
        window=4,
    )
    assert matched.shape == volume.shape and matched.dtype == np.float32
    assert (matched >= CONFIDENCE_THRESHOLD).mean() > 0.9
    assert (unmatched >= CONFIDENCE_THRESHOLD).mean() < 0.1


def test_trusted_fraction_counts_textured_pixels_only():
    reliability = np.array([[0.0, 1e-3], [1e-3, 1e-3]], np.float32)
    confidence = np.array([[0.9, 0.9], [0.2, 0.6]], np.float32)
    assert trusted_fraction(confidence, reliability, 1e-4) == pytest.approx(
        2 / 3
    )
    assert np.isnan(trusted_fraction(confidence, reliability * 0, 1e-4))


def test_volume_flow_reports_the_same_confidence():
    from napari_flowscope.engine.volume import VolumeFlowEstimator

    sequence = synthetic.drifting_volume(n_frames=3, shape=(16, 64, 64))
    estimator = VolumeFlowEstimator(sequence.reference)
    good = estimator.estimate(sequence.stack[2])
    noise = np.random.default_rng(5).permutation(sequence.stack[2].ravel())
    failed = estimator.estimate(noise.reshape(sequence.reference.shape))
    threshold = estimator.params.reliability_threshold

    assert good.confidence.shape == sequence.reference.shape
    assert good.confidence.dtype == np.float32
    # content that left the volume (the last planes) has nothing to match
    valid = sequence.valid
    assert (
        trusted_fraction(
            good.confidence[valid], good.reliability[valid], threshold
        )
        > 0.95
    )
    assert (good.confidence[-1] < CONFIDENCE_THRESHOLD).all()
    assert (failed.confidence >= CONFIDENCE_THRESHOLD).mean() <= 0.1


def test_consistency_score_checks_the_round_trip():
    from napari_flowscope.engine.confidence import consistency_score

    shape = (40, 50, 2)
    forward = np.broadcast_to(np.float32([3.0, -1.0]), shape).copy()
    undone = consistency_score(forward, -forward)
    assert undone.shape == shape[:2] and undone.dtype == np.float32
    np.testing.assert_array_equal(undone, 1)
    missed = consistency_score(forward, -forward + np.float32([0.5, 0]))
    np.testing.assert_allclose(missed, 0.5, atol=1e-6)
    assert not consistency_score(forward, np.zeros(shape, np.float32)).any()


def test_patch_search_is_not_trusted_on_an_unrelated_frame(texture):
    # flexible enough to fit unrelated texture locally; the backward
    # estimate does not undo such a fit (without the check: 56 % trusted)
    unrelated = synthetic.tissue_texture(SHAPE, seed=9)
    field = estimate_flow(texture, unrelated, FlowParams.preset('detail'))
    assert trusted(field).mean() <= 0.1
