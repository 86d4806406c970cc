"""estimate_flow / FlowEstimator against exactly known motion."""

import warnings

import numpy as np
import pytest

from napari_flowscope import synthetic
from napari_flowscope.engine import FlowEstimator, FlowParams, estimate_flow
from napari_flowscope.engine.pyramid import level_count

SHAPE = (128, 128)
INTERIOR = (slice(16, -16), slice(16, -16))


@pytest.mark.parametrize(
    'shift', [(0.3, -0.2), (-0.75, 0.1), (0.1, 0.45), (2.4, -1.6)]
)
def test_subpixel_translation_recovered_within_0_05_px(blobs, epe, shift):
    reference = blobs(SHAPE)
    moving = blobs(SHAPE, shift)
    field = estimate_flow(reference, moving)
    error = epe(field.w, shift)[INTERIOR]
    assert np.percentile(error, 95) < 0.05
    assert error.mean() < 0.03
    # no pixel locking: the mean flow is unbiased
    np.testing.assert_allclose(
        field.w[INTERIOR].mean(axis=(0, 1)), shift, atol=0.01
    )


def test_sign_and_axis_order_of_a_known_shift(blobs):
    reference = blobs(SHAPE)
    # Content moves +2 px along x (columns): moving(x) = reference(x - 2).
    moving = np.roll(reference, 2, axis=1)
    w = estimate_flow(reference, moving).w
    assert w.shape == (*SHAPE, 2) and w.dtype == np.float32
    assert np.median(w[..., 0][INTERIOR]) == pytest.approx(2.0, abs=0.02)
    assert np.median(w[..., 1][INTERIOR]) == pytest.approx(0.0, abs=0.02)


def test_zero_motion_gives_zero_flow(blobs):
    reference = blobs(SHAPE)
    field = estimate_flow(reference, reference.copy())
    assert np.abs(field.w).max() < 1e-3


def test_smooth_nonrigid_field_recovered():
    sequence = synthetic.nonrigid_motion(
        n_frames=3, shape=(160, 160), max_displacement=3.0
    )
    interior = np.zeros_like(sequence.valid)
    interior[16:-16, 16:-16] = True
    estimator = FlowEstimator(sequence.reference)
    for t in (1, 2):
        w = estimator.estimate(sequence.stack[t]).w
        difference = w - sequence.flow[t]
        error = np.hypot(difference[..., 0], difference[..., 1])
        # stated tolerance, for motion up to 2.5 px whose gradient reaches
        # 0.1 (this 160 px field): mean endpoint error below 0.12 px away
        # from the border, 0.15 px over all observable pixels (OpenCV's
        # DIS, medium preset: 0.13 px)
        assert error[interior].mean() < 0.12
        assert np.percentile(error[interior], 95) < 0.25
        assert error[sequence.valid].mean() < 0.15


def test_15_px_translation_recovered_with_default_levels():
    sequence = synthetic.large_translation(n_frames=2, shape=(192, 192))
    truth = sequence.flow[1, 0, 0]
    assert np.hypot(*truth) == pytest.approx(15.0)
    w = estimate_flow(sequence.reference, sequence.stack[1]).w
    difference = w - truth
    error = np.hypot(difference[..., 0], difference[..., 1])
    assert np.median(error[sequence.valid]) < 0.05
    assert np.percentile(error[sequence.valid], 99) < 0.5


def test_warm_start_finds_motion_that_a_single_level_cannot(blobs, epe):
    reference = blobs(SHAPE)
    shift = (9.3, -6.2)
    moving = blobs(SHAPE, shift)
    single_level = FlowParams(levels=1, warps=3)
    cold = estimate_flow(reference, moving, single_level).w
    assert np.median(epe(cold, shift)[INTERIOR]) > 1.0
    init = np.broadcast_to(np.float32([8.5, -5.5]), (*SHAPE, 2))
    warm = estimate_flow(reference, moving, single_level, init=init).w
    assert np.median(epe(warm, shift)[INTERIOR]) < 0.05


def test_dtypes_agree(blobs):
    reference = blobs(SHAPE)
    moving = blobs(SHAPE, (0.8, -1.3))
    scale = 1 / max(reference.max(), moving.max())
    reference, moving = reference * scale, moving * scale
    as_float = estimate_flow(reference, moving)
    # float64 with an offset and gain: identical after normalisation
    as_float64 = estimate_flow(
        reference.astype(np.float64) * 300 + 7,
        moving.astype(np.float64) * 300 + 7,
    )
    np.testing.assert_allclose(as_float64.w, as_float.w, atol=1e-3)
    np.testing.assert_allclose(
        as_float64.reliability, as_float.reliability, rtol=1e-3, atol=1e-7
    )
    for dtype, atol in ((np.uint16, 0.01), (np.uint8, 0.1)):
        top = np.iinfo(dtype).max
        field = estimate_flow(
            np.round(reference * top).astype(dtype),
            np.round(moving * top).astype(dtype),
        )
        difference = np.abs(field.w - as_float.w)[INTERIOR]
        assert difference.mean() < atol / 5
        assert np.percentile(difference, 99) < atol
        assert field.reliability.dtype == np.float32


def test_global_bleaching_does_not_change_the_flow(blobs):
    reference = blobs(SHAPE)
    moving = blobs(SHAPE, (1.1, 0.6))
    plain = estimate_flow(reference, moving).w
    bleached = estimate_flow(reference, 0.4 * moving + 0.01).w
    np.testing.assert_allclose(bleached, plain, atol=2e-3)


def test_reliability_is_zero_in_flat_regions_and_their_flow_is_filled(
    blobs, epe
):
    # A 40 px disc without texture moves with the content.
    shift = (1.2, -0.8)
    avoid = (64.0, 64.0, 32.0)
    reference = blobs(SHAPE, avoid=avoid)
    moving = blobs(SHAPE, shift, avoid=avoid)
    params = FlowParams()
    field = estimate_flow(reference, moving, params)
    hole = (slice(52, 77), slice(52, 77))
    assert field.reliability[hole].max() < params.reliability_threshold
    assert np.median(field.reliability) > 10 * params.reliability_threshold
    assert np.isfinite(field.w).all()
    # unreliable pixels are not garbage: filled from coarser levels and
    # reliable neighbours, they are within 0.2 px of the true motion
    assert epe(field.w[hole], shift).max() < 0.2


@pytest.mark.parametrize('which', ['reference', 'moving'])
def test_constant_frame_gives_zero_flow_and_zero_confidence(blobs, which):
    frames = {'reference': blobs(SHAPE), 'moving': blobs(SHAPE, (1, 1))}
    frames[which] = np.full(SHAPE, 17, np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        field = estimate_flow(frames['reference'], frames['moving'])
    assert not field.w.any() and not field.confidence.any()
    # reliability describes the reference alone
    assert field.reliability.any() == (which == 'moving')
    for array in (field.w, field.reliability, field.confidence):
        assert array.dtype == np.float32


@pytest.mark.parametrize(
    ('reference', 'moving', 'message'),
    [
        (np.zeros(64), np.zeros(64), r'2-D \(H, W\) image'),
        (np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), r'2-D \(H, W\) image'),
        (np.ones((32, 32)), np.ones((32, 33)), 'shape'),
        (np.ones((1, 32)), np.ones((1, 32)), 'at least 2 x 2'),
        (np.full((8, 8), np.nan), np.ones((8, 8)), 'NaN or infinite'),
        (np.ones((8, 8)), np.full((8, 8), np.inf), 'NaN or infinite'),
        (np.ones((8, 8), complex), np.ones((8, 8)), 'integer or floating'),
        (np.ones((8, 8), bool), np.ones((8, 8)), 'integer or floating'),
    ],
)
def test_bad_inputs_raise_clear_errors(reference, moving, message):
    with pytest.raises(ValueError, match=message):
        estimate_flow(reference, moving)


def test_one_bad_pixel_is_found_and_huge_finite_frames_pass(blobs):
    # The NaN screen sums the frame: a single bad pixel must trip it, and
    # a sum that overflows float32 must not be mistaken for a bad pixel.
    reference = blobs((32, 32))
    moving = blobs((32, 32), (0.5, 0.0))
    for bad in (np.nan, np.inf, -np.inf):
        broken = moving.copy()
        broken[17, 3] = bad
        with pytest.raises(ValueError, match='NaN or infinite'):
            estimate_flow(reference, broken)
    scale = np.float32(3e38) / moving.max()
    huge_reference = (reference * scale).astype(np.float32)
    huge_moving = (moving * scale).astype(np.float32)
    with np.errstate(over='ignore'):
        assert np.isinf(huge_moving.sum())
    assert np.isfinite(huge_moving).all()
    huge = estimate_flow(huge_reference, huge_moving)
    plain = estimate_flow(reference, moving)
    np.testing.assert_allclose(huge.w, plain.w, atol=1e-3)


def test_bad_init_and_params_raise(blobs):
    reference = blobs((32, 32))
    with pytest.raises(
        ValueError, match=r'init must have shape \(32, 32, 2\)'
    ):
        estimate_flow(reference, reference, init=np.zeros((32, 32)))
    init = np.zeros((32, 32, 2))
    init[3, 3, 0] = np.nan
    with pytest.raises(ValueError, match='init contains NaN'):
        estimate_flow(reference, reference, init=init)
    with pytest.raises(ValueError, match='params must be a FlowParams'):
        estimate_flow(reference, reference, {'sigma': 2})


def test_estimator_matches_estimate_flow_and_is_reusable(blobs):
    reference = blobs(SHAPE)
    movings = [blobs(SHAPE, (0.5 * k, -0.3 * k)) for k in (1, 2, 3)]
    params = FlowParams.preset('fast')
    estimator = FlowEstimator(reference, params)
    assert estimator.params is params
    for moving in movings:
        field = estimator.estimate(moving)
        expected = estimate_flow(reference, moving, params)
        np.testing.assert_array_equal(field.w, expected.w)
        np.testing.assert_array_equal(field.reliability, expected.reliability)


def test_estimator_reference_is_normalised_float32(blobs):
    reference = (blobs(SHAPE) * 4000 + 100).astype(np.uint16)
    normalised = FlowEstimator(reference).reference
    assert normalised.dtype == np.float32 and normalised.shape == SHAPE
    # robust 0.5 / 99.5 percentiles map to 0 and 1
    low, high = np.percentile(normalised, (0.5, 99.5))
    assert low == pytest.approx(0, abs=0.02)
    assert high == pytest.approx(1, abs=0.02)


def test_levels_stop_before_images_get_smaller_than_8_px():
    assert level_count((512, 512), 5) == 5
    assert level_count((20, 300), 5) == 2
    assert level_count((7, 7), 5) == 1
    field = estimate_flow(np.eye(7), np.eye(7), FlowParams(levels=12))
    assert np.abs(field.w).max() < 1e-3


def test_huge_and_tiny_intensity_scales_give_the_same_flow(blobs):
    reference = blobs(SHAPE)
    moving = blobs(SHAPE, (0.6, -0.9))
    expected = estimate_flow(reference, moving).w
    for scale in (1e30, 1e-20):
        field = estimate_flow(reference * scale, moving * scale)
        assert np.isfinite(field.w).all()
        np.testing.assert_allclose(field.w, expected, atol=1e-3)
