"""Reference strategies: frame, range (plain / pre-registered), image,
adaptive (FlowRegLive semantics) and their command-line spelling."""

import cv2
import numpy as np
import pytest

from napari_flowscope import synthetic
from napari_flowscope.session import (
    AdaptiveReference,
    FrameReference,
    ImageReference,
    MotionSession,
    RangeReference,
    normalized_cross_correlation,
    preregistered_mean,
    reference_from_string,
)


def _gradient_energy(image):
    gy, gx = np.gradient(image.astype(np.float64))
    return float(np.mean(gx**2 + gy**2))


def test_range_reference_mean_and_median(drifting):
    stack = drifting.stack
    mean = MotionSession(stack, reference=RangeReference(2, 9))
    np.testing.assert_allclose(
        mean.reference_image, stack[2:9].mean(axis=0), rtol=1e-6
    )
    median = MotionSession(
        stack, reference=RangeReference(2, 9, statistic='median')
    )
    np.testing.assert_array_equal(
        median.reference_image, np.median(stack[2:9], axis=0)
    )
    # stop is clipped to the stack length.
    clipped = MotionSession(stack, reference=RangeReference(20, 500))
    np.testing.assert_allclose(
        clipped.reference_image, stack[20:].mean(axis=0), rtol=1e-6
    )


def test_preregistered_range_is_sharper_than_plain_mean():
    sequence = synthetic.large_translation(
        n_frames=9, shape=(96, 96), shift=8.0, seed=4
    )
    stack = sequence.stack
    plain = MotionSession(stack, reference=RangeReference(0, 9))
    prereg = MotionSession(
        stack, reference=RangeReference(0, 9, preregister=True)
    )
    plain_image = plain.reference_image
    prereg_image = prereg.reference_image

    # A single frame's sharpness is the most a mean can keep; the plain
    # mean of a drifting range keeps about half of it.
    frame_energy = _gradient_energy(stack[4])
    assert _gradient_energy(prereg_image) > 0.85 * frame_energy
    assert _gradient_energy(plain_image) < 0.6 * frame_energy
    # Registered to the plain mean, the frames line up on the middle frame
    # (the mean position of a linear drift): the result looks like it.
    inner = np.s_[12:-12, 12:-12]
    middle = stack[4][inner]
    assert normalized_cross_correlation(prereg_image[inner], middle) > 0.98
    assert normalized_cross_correlation(
        prereg_image[inner], middle
    ) > normalized_cross_correlation(plain_image[inner], middle)
    np.testing.assert_allclose(
        prereg_image, preregistered_mean(stack), rtol=1e-6
    )


def test_image_reference_accepts_channels_like_the_frames(drifting):
    stack = np.stack([drifting.stack[:4], 2 * drifting.stack[:4]], axis=-1)
    image = np.stack([drifting.stack[5], 3 * drifting.stack[5]], axis=-1)
    session = MotionSession(
        stack,
        channel_axis=-1,
        channel=[1.0, 1.0],
        reference=ImageReference(image),
    )
    np.testing.assert_allclose(
        session.reference_image, 2 * drifting.stack[5], rtol=1e-6
    )
    # A plain ndarray becomes an ImageReference.
    plain = MotionSession(drifting.stack[:4], reference=drifting.stack[7])
    np.testing.assert_array_equal(plain.reference_image, drifting.stack[7])


def test_image_reference_of_the_wrong_shape_raises(drifting):
    session = MotionSession(drifting.stack[:4], reference=np.zeros((5, 5)))
    with pytest.raises(ValueError, match='shape'):
        next(session.iter_batches())


def test_frame_reference_outside_the_stack_raises(drifting):
    session = MotionSession(drifting.stack[:4], reference=FrameReference(4))
    with pytest.raises(ValueError, match='outside'):
        _ = session.reference_image


def test_adaptive_reference_blends_every_interval(drifting):
    stack = drifting.stack[:12]
    strategy = AdaptiveReference(
        buffer_size=4, update_interval=3, update_weight=0.25
    )
    batches = list(
        MotionSession(stack, reference=strategy, batch_size=1).iter_batches()
    )
    initial = preregistered_mean(stack[:4])
    previous = initial
    for index, batch in enumerate(batches):
        if (index + 1) % 3 == 0:
            expected = 0.75 * previous + 0.25 * batch.registered[0]
            np.testing.assert_allclose(batch.reference, expected, atol=1e-5)
        else:
            np.testing.assert_array_equal(batch.reference, previous)
        previous = batch.reference
    np.testing.assert_allclose(batches[0].reference, initial, rtol=1e-6)


def test_adaptive_reference_warm_starts_from_previous_flow(drifting):
    stack = drifting.stack[:10]
    initial = preregistered_mean(stack[:5])
    fixed = MotionSession(stack, reference=initial).run()
    # Weight 0: the reference never changes, only the warm start differs.
    adaptive = MotionSession(
        stack, reference=AdaptiveReference(5, 1, 0.0)
    ).run()
    assert not np.array_equal(adaptive.w, fixed.w)
    np.testing.assert_allclose(
        adaptive.w[:, 16:-16, 16:-16], fixed.w[:, 16:-16, 16:-16], atol=0.1
    )


def _changing_bleaching_stack(n_frames=30, size=80):
    """Structure morphing from texture A into B, slow drift, bleaching.

    Returns the stack, the drift ``(n_frames, 2)`` as ``[x, y]`` flow and
    the unshifted content of every frame.
    """
    first = synthetic.tissue_texture((size, size), seed=1)
    second = synthetic.tissue_texture((size, size), seed=2)
    t = np.arange(n_frames)
    mix = np.clip((t - 4) / (n_frames - 5), 0, 1)
    moving = np.clip(t - 5, 0, None) * 0.05
    drift = np.stack([moving, -0.7 * moving], axis=1)
    bleach = np.exp(-t / 25)
    frames, contents = [], []
    for i in range(n_frames):
        content = (1 - mix[i]) * first + mix[i] * second
        # Content moved by +drift, so frame(x + drift) = content(x).
        matrix = np.float32([[1, 0, drift[i, 0]], [0, 1, drift[i, 1]]])
        moved = cv2.warpAffine(
            content,
            matrix,
            (size, size),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REFLECT,
        )
        frames.append(moved * bleach[i])
        contents.append(content)
    return np.stack(frames).astype(np.float32), drift, contents


def test_adaptive_beats_first_frame_on_changing_bleaching_sample():
    stack, drift, contents = _changing_bleaching_stack()
    late = slice(20, None)
    inner = np.s_[12:-12, 12:-12]
    results = {}
    for name, reference in (
        ('first', FrameReference(0)),
        ('adaptive', AdaptiveReference(5, 2, 0.3)),
    ):
        sink = MotionSession(stack, reference=reference).run()
        shift = np.median(sink.w[:, 10:-10, 10:-10], axis=(1, 2))
        true_ncc = [
            normalized_cross_correlation(
                sink.registered[i][inner], contents[i][inner]
            )
            for i in range(len(stack))
        ]
        results[name] = {
            'ncc_after': sink.stats.ncc_after[late].mean(),
            'true_ncc': np.mean(true_ncc[late]),
            'error': np.abs(shift - drift).max(axis=1)[late].mean(),
        }
    first, adaptive = results['first'], results['adaptive']
    # The measure: NCC with the reference after correction.
    assert adaptive['ncc_after'] > first['ncc_after'] + 0.2
    # Better against the ground truth too, not only against its own
    # (changing) reference.
    assert adaptive['true_ncc'] > first['true_ncc'] + 0.02
    assert adaptive['error'] < 0.75 * first['error']


@pytest.mark.parametrize(
    ('text', 'expected'),
    [
        ('frame:0', FrameReference(0)),
        ('frame:-1', FrameReference(-1)),
        ('frame', FrameReference(0)),
        ('range:0-50', RangeReference(0, 50)),
        ('range:5-9:median', RangeReference(5, 9, statistic='median')),
        (
            'range:0-20:mean:preregister',
            RangeReference(0, 20, preregister=True),
        ),
        ('adaptive', AdaptiveReference()),
        ('adaptive:30:10:0.1', AdaptiveReference(30, 10, 0.1)),
    ],
)
def test_reference_from_string(text, expected):
    assert reference_from_string(text) == expected


@pytest.mark.parametrize(
    'text', ['frame:x', 'range:5', 'range:9-5', 'range:0-5:max', 'mean', '']
)
def test_reference_from_string_rejects_nonsense(text):
    with pytest.raises(ValueError, match='cannot read reference'):
        reference_from_string(text)


def test_strategies_describe_themselves():
    assert RangeReference(1, 4, 'median', True).to_dict() == {
        'strategy': 'range',
        'start': 1,
        'stop': 4,
        'statistic': 'median',
        'preregister': True,
    }
    assert AdaptiveReference().to_dict() == {
        'strategy': 'adaptive',
        'buffer_size': 50,
        'update_interval': 20,
        'update_weight': 0.2,
    }
    assert ImageReference(np.zeros((3, 4))).to_dict() == {
        'strategy': 'image',
        'shape': [3, 4],
    }
