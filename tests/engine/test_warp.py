"""warp(): registered(x) = moving(x + w(x)), 2-D and with channels."""

import numpy as np
import pytest

from napari_flowscope.engine import warp

SHAPE = (96, 80)
INTERIOR = (slice(12, -12), slice(12, -12))


def constant_flow(dx, dy, shape=SHAPE):
    return np.broadcast_to(np.float32([dx, dy]), (*shape, 2))


def test_integer_shift_is_undone_exactly(blobs):
    reference = blobs(SHAPE)
    # content moved 3 px right and 2 px down
    moving = np.roll(reference, (2, 3), axis=(0, 1))
    registered = warp(moving, constant_flow(3, 2))
    assert registered.dtype == np.float32
    np.testing.assert_array_equal(registered[INTERIOR], reference[INTERIOR])


@pytest.mark.parametrize(
    ('interpolation', 'tolerance'), [('linear', 0.03), ('cubic', 2e-3)]
)
def test_subpixel_shift_recovers_the_reference(
    blobs, interpolation, tolerance
):
    reference = blobs(SHAPE)
    shift = (1.3, -0.45)
    moving = blobs(SHAPE, shift)
    registered = warp(
        moving, constant_flow(*shift), interpolation=interpolation
    )
    before = np.abs(moving - reference)[INTERIOR].max()
    after = np.abs(registered - reference)[INTERIOR].max()
    assert before > 0.3
    assert after < tolerance * reference.max()


def test_cubic_reproduces_a_quadratic_ramp_at_quarter_pixels():
    # OpenCV 5's INTER_CUBIC samples 0.25 px as 0.297 px; ours must not.
    ramp = np.tile(np.arange(32, dtype=np.float32) ** 2, (8, 1))
    registered = warp(
        ramp, constant_flow(0.25, 0, (8, 32)), interpolation='cubic'
    )
    expected = (np.arange(32) + 0.25) ** 2
    np.testing.assert_allclose(registered[4, 8:-8], expected[8:-8], rtol=1e-5)


@pytest.mark.parametrize('channels', [1, 3, 5])
@pytest.mark.parametrize('interpolation', ['linear', 'cubic'])
def test_channel_axis_matches_2d_warps(blobs, channels, interpolation):
    planes = [blobs(SHAPE, seed=seed) for seed in range(channels)]
    image = np.stack(planes, axis=-1)
    rng = np.random.default_rng(1)
    w = rng.uniform(-2, 2, (*SHAPE, 2)).astype(np.float32)
    registered = warp(image, w, interpolation=interpolation)
    assert registered.shape == image.shape
    for channel, plane in enumerate(planes):
        np.testing.assert_array_equal(
            registered[..., channel],
            warp(plane, w, interpolation=interpolation),
        )


def test_integer_dtypes_are_warped_as_float32():
    image = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500
    registered = warp(image, constant_flow(0.5, 0, (12, 10)))
    assert registered.dtype == np.float32
    # midway between columns 3 and 4 of row 2: beyond uint16 resolution
    assert registered[2, 3] == pytest.approx((image[2, 3] + image[2, 4]) / 2)


def test_positions_outside_take_the_edge_value():
    image = np.tile(np.arange(10, dtype=np.float32), (6, 1))
    registered = warp(image, constant_flow(25, 0, (6, 10)))
    np.testing.assert_array_equal(registered, 9.0)
    assert np.isfinite(warp(image, constant_flow(-40, 99, (6, 10)))).all()


@pytest.mark.parametrize(
    ('image', 'w', 'kwargs', 'message'),
    [
        (np.zeros((8, 8)), np.zeros((8, 9, 2)), {}, r'w must have shape'),
        (np.zeros((8, 8)), np.zeros((8, 8)), {}, r'w must have shape'),
        (np.zeros(8), np.zeros((8, 2)), {}, r'\(H, W\) or \(H, W, C\)'),
        (
            np.zeros((8, 8)),
            np.full((8, 8, 2), np.nan),
            {},
            'NaN or infinite',
        ),
        (
            np.zeros((8, 8)),
            np.zeros((8, 8, 2)),
            {'interpolation': 'nearest'},
            "'linear' or 'cubic'",
        ),
    ],
)
def test_bad_arguments_raise(image, w, kwargs, message):
    with pytest.raises(ValueError, match=message):
        warp(image, w, **kwargs)
