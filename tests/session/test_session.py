"""MotionSession: batches, callbacks, cancel, retuning, threads, dtypes."""

import numpy as np
import pytest

from lazy_stacks import huge_rolling_stack
from napari_flowscope.engine import (
    FlowEstimator,
    FlowParams,
    trusted_fraction,
    warp,
)
from napari_flowscope.session import (
    AdaptiveReference,
    FlowBatch,
    FrameReference,
    MotionSession,
    compensate,
)


def _flow_error(w, sequence):
    """Mean end-point error (px) on the observable pixels."""
    return np.linalg.norm(w - sequence.flow, axis=-1)[:, sequence.valid].mean()


def _collect(session):
    return list(session.iter_batches())


def _joined(batches, name):
    return np.concatenate([getattr(batch, name) for batch in batches])


def _joined_stats(batches):
    return np.stack(
        [
            np.concatenate(
                [batch.stats.as_columns()[key] for batch in batches]
            )
            for key in batches[0].stats.as_columns()
        ]
    )


def test_batches_cover_every_frame_once_in_order(drifting, drifting_uint16):
    session = MotionSession(drifting_uint16, batch_size=7)
    batches = _collect(session)

    assert [(b.start, b.stop) for b in batches] == [
        (0, 7),
        (7, 14),
        (14, 21),
        (21, 24),
    ]
    for batch in batches:
        n = batch.stop - batch.start
        assert isinstance(batch, FlowBatch)
        assert batch.w.shape == (n, 80, 80, 2)
        assert batch.w.dtype == np.float32
        for name in ('reliability', 'confidence'):
            assert getattr(batch, name).shape == (n, 80, 80)
            assert getattr(batch, name).dtype == np.float32
        assert batch.registered.shape == (n, 80, 80)
        assert batch.registered.dtype == np.uint16
        for values in batch.stats.as_columns().values():
            assert values.shape == (n,)
            assert values.dtype == np.float32
        assert batch.reference.shape == (80, 80)
        assert batch.reference.dtype == np.float32
    # The results are the right ones, not just the right shapes.
    w = _joined(batches, 'w')
    assert _flow_error(w, drifting) < 0.5
    registered = _joined(batches, 'registered')
    expected = np.clip(np.rint(warp(drifting_uint16[13], w[13])), 0, 65535)
    np.testing.assert_array_equal(registered[13], expected.astype(np.uint16))
    stats = batches[1].stats
    assert stats.ncc_after.min() > stats.ncc_before.max()
    np.testing.assert_array_equal(batches[0].reference, drifting_uint16[0])


def test_confidence_and_trust_statistics_flag_an_unrelated_frame(
    drifting_uint16,
):
    stack = drifting_uint16[:6].copy()
    # frame 4 shows another field of view: its match must collapse
    stack[4] = np.rot90(drifting_uint16[20])
    sink = MotionSession(stack, batch_size=4).run()

    estimator = FlowEstimator(stack[0])
    for t in (2, 4):
        field = estimator.estimate(stack[t])
        np.testing.assert_array_equal(sink.confidence[t], field.confidence)
        assert sink.stats.trusted_fraction[t] == pytest.approx(
            trusted_fraction(
                field.confidence,
                field.reliability,
                FlowParams().reliability_threshold,
            )
        )
    assert sink.stats.trusted_fraction[[1, 2, 3, 5]].min() > 0.8
    assert sink.stats.trusted_fraction[4] < 0.1
    assert sink.stats.collapsed.tolist() == [False] * 4 + [True, False]


def test_callbacks_deliver_every_frame_once(drifting_uint16):
    calls = {'progress': [], 'w': [], 'registered': []}
    session = MotionSession(drifting_uint16, batch_size=10)
    sink = session.run(
        progress_callback=lambda *a: calls['progress'].append(a),
        w_callback=lambda w, s, e: calls['w'].append((w.copy(), s, e)),
        registered_callback=lambda r, s, e: calls['registered'].append(
            (r.copy(), s, e)
        ),
    )

    assert calls['progress'] == [(10, 24), (20, 24), (24, 24)]
    for key, total in (('w', sink.w), ('registered', sink.registered)):
        ranges = [(start, end) for _, start, end in calls[key]]
        assert ranges == [(0, 10), (10, 20), (20, 24)]
        for data, start, end in calls[key]:
            assert data.shape[0] == end - start
        joined = np.concatenate([data for data, _, _ in calls[key]])
        np.testing.assert_array_equal(joined, total)
    assert sink.complete
    assert sink.w.shape == (24, 80, 80, 2)
    assert sink.registered.dtype == np.uint16
    assert len(sink.stats) == 24


@pytest.mark.parametrize(
    'options',
    [
        {},
        {'reference': AdaptiveReference(6, 5, 0.3)},
        {'temporal_smoothing': True},
        {'temporal_smoothing': 0.8},
    ],
    ids=['frame', 'adaptive', 'smooth-kernel', 'smooth-gaussian'],
)
def test_batch_size_does_not_change_results(drifting, options):
    stack = drifting.stack[:16]
    runs = [
        _collect(MotionSession(stack, batch_size=size, **options))
        for size in (1, 7, 64)
    ]
    first = runs[0]
    for other in runs[1:]:
        for name in ('w', 'reliability', 'confidence', 'registered'):
            np.testing.assert_array_equal(
                _joined(other, name), _joined(first, name)
            )
        np.testing.assert_array_equal(
            _joined_stats(other), _joined_stats(first)
        )
        np.testing.assert_array_equal(other[-1].reference, first[-1].reference)


def test_temporal_smoothing_changes_the_flow_input(drifting):
    stack = drifting.stack[:10]
    plain = _joined(_collect(MotionSession(stack)), 'w')
    smoothed = _joined(
        _collect(MotionSession(stack, temporal_smoothing=True)), 'w'
    )
    assert not np.array_equal(plain, smoothed)
    # Smoothing a drift in time lags it a little, but not by much.
    assert np.abs(plain - smoothed)[:, 20:-20, 20:-20].mean() < 0.5


@pytest.mark.parametrize('n_threads', [2, 3])
def test_threads_identical_to_sequential(drifting_uint16, n_threads):
    sequential = _collect(
        MotionSession(drifting_uint16, batch_size=8, n_threads=1)
    )
    parallel = _collect(
        MotionSession(drifting_uint16, batch_size=8, n_threads=n_threads)
    )
    for name in ('w', 'reliability', 'registered'):
        np.testing.assert_array_equal(
            _joined(parallel, name), _joined(sequential, name)
        )
    np.testing.assert_array_equal(
        _joined_stats(parallel), _joined_stats(sequential)
    )


def test_threads_identical_with_the_variational_method(drifting):
    stack = drifting.stack[:6, :48, :48]
    quality = FlowParams.preset('quality')
    sequential = MotionSession(stack, params=quality, n_threads=1).run()
    parallel = MotionSession(
        stack, params=quality, n_threads=2, batch_size=3
    ).run()
    np.testing.assert_array_equal(parallel.w, sequential.w)
    np.testing.assert_array_equal(parallel.registered, sequential.registered)
    assert np.abs(sequential.w).max() > 0.5  # it did measure the drift


def test_send_retunes_from_next_batch(drifting):
    stack = drifting.stack[:16]
    coarse = FlowParams(levels=1, warps=1, sigma=6.0)
    default_w = _joined(_collect(MotionSession(stack, batch_size=8)), 'w')
    coarse_w = _joined(
        _collect(MotionSession(stack, batch_size=8, params=coarse)), 'w'
    )
    assert not np.array_equal(default_w[8:], coarse_w[8:])

    session = MotionSession(stack, batch_size=8)
    batches = session.iter_batches()
    first = next(batches)
    second = batches.send(coarse)
    with pytest.raises(StopIteration):
        next(batches)

    np.testing.assert_array_equal(first.w, default_w[:8])
    np.testing.assert_array_equal(second.w, coarse_w[8:])
    assert session.params == coarse
    assert session.params_history == [(0, FlowParams()), (8, coarse)]


def test_send_rejects_non_params(drifting):
    batches = MotionSession(drifting.stack[:4], batch_size=2).iter_batches()
    next(batches)
    with pytest.raises(TypeError, match='FlowParams'):
        batches.send({'levels': 2})


def test_close_cancels_within_one_batch(drifting_uint16, counting):
    stack = counting(drifting_uint16)
    batches = MotionSession(stack, batch_size=5).iter_batches()
    next(batches)
    batches.close()

    with pytest.raises(StopIteration):
        next(batches)
    read = stack.frames_read()
    # The reference (frame 0) and the first batch; nothing after it.
    assert read[:5].sum() == 6
    assert read[5:].sum() == 0


def test_error_in_callback_stops_the_run(drifting_uint16, counting):
    stack = counting(drifting_uint16)
    seen = []

    def progress(current, total):
        seen.append(current)
        if current >= 10:
            raise RuntimeError('stop here')

    with pytest.raises(RuntimeError, match='stop here'):
        MotionSession(stack, batch_size=5).run(progress_callback=progress)
    assert seen == [5, 10]
    assert stack.frames_read()[10:].sum() == 0


def test_integer_output_is_rounded_and_clipped():
    rng = np.random.default_rng(0)
    # A hard-edged uint8 pattern: cubic interpolation overshoots past 0 and
    # 255, which must clip rather than wrap around.
    frame = np.where(rng.random((40, 40)) > 0.5, 255, 0).astype(np.uint8)
    stack = np.stack([frame, np.roll(frame, 1, axis=1)])
    session = MotionSession(
        stack, interpolation='cubic', params=FlowParams(levels=2)
    )
    batch = next(session.iter_batches())
    assert batch.registered.dtype == np.uint8
    raw = warp(stack[1], batch.w[1], interpolation='cubic')
    assert raw.min() < -0.5 or raw.max() > 255.5
    expected = np.clip(np.rint(raw), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(batch.registered[1], expected)


def test_float_input_gives_float32(drifting):
    registered, w = compensate(drifting.stack[:4].astype(np.float64), 0)
    assert registered.dtype == np.float32
    assert w.dtype == np.float32
    assert registered.shape == (4, 80, 80)
    assert w.shape == (4, 80, 80, 2)


def _two_channel(drifting_uint16):
    """(T, C, Y, X): channel 1 has other intensities, same geometry."""
    first = drifting_uint16[:8]
    second = ((first.astype(np.float32) / 4000) ** 2 * 3000 + 100).astype(
        np.uint16
    )
    return np.stack([first, second], axis=1)


def test_multichannel_applies_one_field_to_all_channels(drifting_uint16):
    stack = _two_channel(drifting_uint16)
    session = MotionSession(stack, channel_axis=1, channel=0, batch_size=3)
    batches = _collect(session)
    w = _joined(batches, 'w')
    registered = _joined(batches, 'registered')

    single = _joined(_collect(MotionSession(stack[:, 0], batch_size=3)), 'w')
    np.testing.assert_array_equal(w, single)
    assert registered.shape == (8, 80, 80, 2)
    assert registered.dtype == np.uint16
    for c in range(2):
        expected = np.clip(np.rint(warp(stack[5, c], w[5])), 0, 65535)
        np.testing.assert_array_equal(registered[5, ..., c], expected)

    # compensate() gives the channels back where they were.
    registered_tcyx, w_c = compensate(stack, 0, channel_axis=1)
    np.testing.assert_array_equal(
        registered_tcyx, np.moveaxis(registered, -1, 1)
    )
    np.testing.assert_array_equal(w_c, w)


def test_multichannel_weights_combine_channels(drifting_uint16):
    stack = _two_channel(drifting_uint16)
    session = MotionSession(stack, channel_axis=1, channel=[1.0, 3.0])
    combined = 0.25 * stack[:, 0].astype(np.float32) + 0.75 * stack[:, 1]
    np.testing.assert_allclose(session.reference_image, combined[0], rtol=1e-6)
    w = _joined(_collect(session), 'w')
    expected = _joined(_collect(MotionSession(combined)), 'w')
    np.testing.assert_allclose(w, expected, atol=1e-3)


def test_channel_axis_last(drifting_uint16):
    stack = np.moveaxis(_two_channel(drifting_uint16), 1, -1)
    registered, w = compensate(stack, 0, channel_axis=-1, channel=0)
    assert registered.shape == stack.shape
    expected = _joined(_collect(MotionSession(stack[..., 0])), 'w')
    np.testing.assert_array_equal(w, expected)


@pytest.mark.parametrize(
    ('shape', 'channel_axis', 'message'),
    [
        ((4, 10, 10, 2), None, 'channel_axis'),
        ((4, 10), None, r'\(T, Y, X\)'),
        ((4, 10, 10), 0, 'axis 0 is time'),
    ],
)
def test_bad_shapes_raise(shape, channel_axis, message):
    with pytest.raises(ValueError, match=message):
        MotionSession(np.zeros(shape, np.float32), channel_axis=channel_axis)


@pytest.mark.parametrize(
    ('options', 'message'),
    [
        ({'batch_size': 0}, 'batch_size'),
        ({'interpolation': 'nearest'}, 'interpolation'),
        ({'temporal_smoothing': -1.0}, 'temporal_smoothing'),
        ({'params': {'levels': 2}}, 'FlowParams'),
    ],
)
def test_bad_options_raise(drifting, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        MotionSession(drifting.stack[:3], **options)


def test_reference_image_is_observable_and_read_only(drifting_uint16):
    session = MotionSession(drifting_uint16, reference=FrameReference(-1))
    np.testing.assert_array_equal(session.reference_image, drifting_uint16[-1])
    with pytest.raises(ValueError, match='read-only'):
        session.reference_image[0, 0] = 1


def test_extra_stacks_get_the_flow_of_the_stack(drifting, drifting_uint16):
    # another channel: the same structure, mirrored intensities, uint16
    extra = (65535 - drifting_uint16).astype(np.uint16)
    session = MotionSession(
        drifting_uint16, batch_size=5, n_threads=2, extra_stacks=[extra]
    )
    assert session.extra_shapes == [(extra.shape, np.dtype(np.uint16))]
    batches = _collect(session)
    registered = np.concatenate([batch.extras[0] for batch in batches])
    w = _joined(batches, 'w')
    assert registered.dtype == np.uint16
    for t in (0, 7, 23):
        expected = np.clip(np.rint(warp(extra[t], w[t])), 0, 65535)
        np.testing.assert_array_equal(registered[t], expected)
    # the extras do not change the registration of the stack
    alone = MotionSession(drifting_uint16, batch_size=5).run()
    np.testing.assert_array_equal(w, alone.w)
    sink = session.run()
    np.testing.assert_array_equal(sink.extras[0], registered)


def test_extra_stacks_must_have_the_frames_of_the_stack(drifting):
    with pytest.raises(ValueError, match='extra stack'):
        MotionSession(drifting.stack, extra_stacks=[drifting.stack[:-1]])
    with pytest.raises(ValueError, match='extra stack'):
        MotionSession(drifting.stack, extra_stacks=[drifting.stack[:, 1:]])


@pytest.mark.parametrize('temporal_smoothing', [None, 1.0])
def test_one_frame_is_the_frame_of_a_run(
    drifting_uint16, counting, temporal_smoothing
):
    stack = counting(drifting_uint16)
    session = MotionSession(
        stack,
        reference=FrameReference(3),
        temporal_smoothing=temporal_smoothing,
    )
    field = session.estimate_frame(12)
    read = stack.frames_read()
    # the reference, the frame and the neighbours smoothing needs
    halo = 0 if temporal_smoothing is None else 4
    expected = np.zeros(len(read), int)
    expected[3] += 1
    expected[12 - halo : 13 + halo] += 1
    np.testing.assert_array_equal(read, expected)
    run = MotionSession(
        drifting_uint16,
        reference=FrameReference(3),
        temporal_smoothing=temporal_smoothing,
    ).run()
    np.testing.assert_array_equal(field.w, run.w[12])
    np.testing.assert_array_equal(field.reliability, run.reliability[12])
    # the reference is read once, whatever the frame or parameters
    session.estimate_frame(-1, params=FlowParams.preset('fast'))
    assert stack.frames_read()[3] == 1
    with pytest.raises(IndexError):
        session.estimate_frame(24)


def test_one_frame_of_a_stack_larger_than_memory():
    stack = huge_rolling_stack()  # 39 GiB, never held at once
    session = MotionSession(stack)
    field = session.estimate_frame(23_457)  # moved by 2 px along x
    inner = field.w[64:-64, 64:-64]
    assert np.median(inner[..., 0]) == pytest.approx(2.0, abs=0.02)
    assert np.median(inner[..., 1]) == pytest.approx(0.0, abs=0.02)
