"""Push-pull filling of unreliable regions, and thread safety."""

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from napari_flowscope.engine import FlowEstimator
from napari_flowscope.engine._fill import PushPullFill


def blurred(mask, sigma=2.0):
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def test_without_holes_the_fill_is_the_normalised_average():
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 1.0, (40, 30)).astype(np.float32)
    field = rng.normal(size=(40, 30, 2)).astype(np.float32)
    support = blurred(weights)
    numerator = blurred(weights[..., np.newaxis] * field)
    filled = PushPullFill(support, 0.05, channels=2)(numerator)
    assert filled.shape == (40, 30, 2)
    np.testing.assert_allclose(
        filled, numerator / support[..., np.newaxis], rtol=1e-6
    )


def test_a_wide_hole_takes_the_value_around_it():
    y, x = np.mgrid[0:64, 0:64]
    reliable = np.hypot(x - 32, y - 32) > 20  # a 40 px hole in the middle
    # linear ramps along x and along y, one per channel
    field = np.dstack([0.5 * x + 3, -0.25 * y]).astype(np.float32)
    support = blurred(reliable)
    assert support.min() < 0.05  # part of the hole has no support at all
    filled = PushPullFill(support, 0.05, channels=2)(
        blurred(reliable[..., np.newaxis] * field)
    )
    assert np.isfinite(filled).all()
    # reliable pixels keep their (averaged) value
    np.testing.assert_allclose(
        filled[0:3, 8:56, 0], field[0:3, 8:56, 0], atol=1e-3
    )
    # the centre of the hole gets the mean of its surroundings (19 and -8)
    np.testing.assert_allclose(filled[32, 32], field[32, 32], atol=1.0)
    # and the hole interpolates smoothly between its two sides, per channel
    assert filled[32, 20, 0] < filled[32, 32, 0] < filled[32, 44, 0]
    assert filled[20, 32, 1] > filled[32, 32, 1] > filled[44, 32, 1]


def test_one_estimator_can_serve_several_threads(blobs):
    shape = (96, 96)
    reference = blobs(shape)
    movings = [blobs(shape, (0.3 * k, -0.2 * k)) for k in range(6)]
    estimator = FlowEstimator(reference)
    sequential = [estimator.estimate(moving).w for moving in movings]
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(lambda m: estimator.estimate(m).w, movings))
    for expected, got in zip(sequential, parallel, strict=True):
        np.testing.assert_array_equal(got, expected)
    # the reliability depends on the reference only: shared, read-only
    first, second = (estimator.estimate(m) for m in movings[:2])
    assert first.reliability is second.reliability
    assert not first.reliability.flags.writeable


def test_holes_beyond_remap_size_limits_are_filled():
    # more hole pixels than cv2.remap accepts along one side (32767)
    reliable = np.zeros((300, 300), bool)
    reliable[:, :20] = True
    field = np.dstack([np.full((300, 300), 2.5), np.full((300, 300), -1.0)])
    field = field.astype(np.float32)
    support = blurred(reliable)
    filled = PushPullFill(support, 0.05, channels=2)(
        blurred(reliable[..., np.newaxis] * field)
    )
    assert (support < 0.05).sum() > 40000
    np.testing.assert_allclose(filled, field, rtol=1e-4)


def test_subnormal_support_counts_as_none():
    """A Gaussian tail far from every weight leaves subnormal support
    (about 1e-40): its inverse overflowed and NaN filled the holes' levels."""
    reliable = np.zeros((64, 64), bool)
    reliable[:, :4] = True
    support = blurred(reliable)
    support[:, 40:] = np.float32(1e-40)  # subnormal, as far tails are
    field = np.dstack([np.full((64, 64), 1.5), np.full((64, 64), -0.5)])
    numerator = support[..., np.newaxis] * field.astype(np.float32)
    with np.errstate(all='raise'):
        filled = PushPullFill(support, 0.05, channels=2)(numerator)
    np.testing.assert_allclose(filled, field, rtol=1e-4)
