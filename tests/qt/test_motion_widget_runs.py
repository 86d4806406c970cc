"""Widget tier: whole runs of the dock on a ViewerModel (no OpenGL).

Channels, RGB, the adaptive and previous-frame references, retuning mid-run
and saving errors; the full-viewer tests in tests/viewer cover streaming and
control.
"""

import json
import threading

import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from lazy_stacks import huge_rolling_stack
from napari_flowscope import formats
from napari_flowscope._reader import get_reader
from napari_flowscope.engine import FlowParams, speed, warp
from napari_flowscope.session import (
    AdaptiveReference,
    FrameReference,
    MotionSession,
    PreviousReference,
    compensate,
)

TIMEOUT_MS = 30_000


def _texture_stack(n_frames=8, shape=(48, 56)):
    """A smooth texture drifting by (0.4 t, -0.3 t) px: known motion."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    frames = [
        np.sin((x - 0.4 * t) / 3.0) * np.cos((y + 0.3 * t) / 4.0) + 1.5
        for t in range(n_frames)
    ]
    return (np.stack(frames) * 1000).astype(np.uint16)


def _run(qtbot, widget):
    widget.start()
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def test_other_channels_get_the_same_flow(qtbot, widget):
    viewer = widget.viewer
    stack = _texture_stack()
    viewer.add_image(stack, name='nuclei')
    membrane = viewer.add_image(stack[..., ::-1].copy(), name='membrane')
    widget.reference.also_correct.value = [membrane]
    _run(qtbot, widget)

    assert widget.complete
    w = widget.results.sink.w
    registered = viewer.layers['membrane registered'].data
    assert registered.dtype == np.uint16
    for t in (0, 3, 7):
        expected = np.clip(np.rint(warp(membrane.data[t], w[t])), 0, 65535)
        np.testing.assert_array_equal(registered[t], expected)
    # the flow really follows the drift of the source
    assert np.median(w[7, 10:-10, 10:-10, 0]) == pytest.approx(2.8, abs=0.1)


def test_rgb_source(qtbot, widget):
    viewer = widget.viewer
    gray = _texture_stack()
    rgb = np.stack([gray >> 8, gray >> 9, gray >> 10], axis=-1)
    viewer.add_image(rgb.astype(np.uint8), name='colour', rgb=True)
    widget.reference.rgb_channel.value = 1  # green drives the flow
    _run(qtbot, widget)

    session = MotionSession(
        rgb.astype(np.uint8), channel_axis=3, channel=1, batch_size=8
    )
    expected = session.run()
    layer = viewer.layers['colour registered']
    assert layer.rgb
    np.testing.assert_array_equal(layer.data, expected.registered)
    np.testing.assert_array_equal(widget.results.sink.w, expected.w)


def test_adaptive_reference_layer_follows_the_run(qtbot, widget):
    viewer = widget.viewer
    stack = _texture_stack(n_frames=12)
    viewer.add_image(stack, name='drift')
    widget.reference.mode.value = 'adaptive'
    widget.reference.buffer_size.value = 3
    widget.reference.update_interval.value = 2
    widget.reference.update_weight.value = 0.5
    widget.run_panel.batch_size.value = 4
    _run(qtbot, widget)

    session = MotionSession(
        stack, reference=AdaptiveReference(3, 2, 0.5), batch_size=4
    )
    expected = session.run()
    reference = viewer.layers['drift reference']
    assert reference.ndim == 2  # no extra slider axis
    np.testing.assert_array_equal(reference.data, expected.reference)
    np.testing.assert_array_equal(widget.results.sink.w, expected.w)


def test_previous_frame_reference_runs_as_headless(qtbot, widget):
    viewer = widget.viewer
    stack = _texture_stack(n_frames=10)
    viewer.add_image(stack, name='drift')
    widget.reference.mode.value = 'previous'
    widget.parameters.preset.value = 'fast'
    widget.run_panel.batch_size.value = 4
    _run(qtbot, widget)

    params = FlowParams.preset('fast')
    assert widget.session.params == params
    assert widget.session.reference_strategy == PreviousReference()
    registered, w = compensate(stack, PreviousReference(), params)
    np.testing.assert_allclose(widget.results.sink.w, w, atol=1e-4)
    np.testing.assert_array_equal(
        viewer.layers['drift registered'].data, registered
    )
    # the reference at the end is the last registered frame (before its
    # rounding to uint16)
    np.testing.assert_allclose(
        viewer.layers['drift reference'].data, registered[-1], atol=0.5
    )
    # and it is not frame 0's registration under another name
    _, w_frame0 = compensate(stack, FrameReference(0), params)
    assert np.abs(w - w_frame0).mean() > 0.01


def test_vectors_are_redrawn_only_when_their_style_changes(qtbot, widget):
    viewer = widget.viewer
    viewer.add_image(_texture_stack(), name='drift')
    viewer.dims.set_current_step(0, 3)
    _run(qtbot, widget)
    vectors = viewer.layers['drift flow vectors']
    # drawn in an event-loop turn of their own after the batch arrived
    qtbot.waitUntil(lambda: len(vectors.data) > 0, timeout=TIMEOUT_MS)
    shown = vectors.data.copy()
    redraws = []
    vectors.events.data.connect(redraws.append)
    vectors.events.length.connect(redraws.append)

    # Every parameter change passes the style again: napari would redraw
    # the layer's thumbnail each time.
    threshold = widget.parameters.params.reliability_threshold
    widget.outputs.set_style(widget.run_panel.vector_style(threshold))
    widget.parameters.warps.value += 1
    assert redraws == []

    # automatic length: the run's 95th percentile displacement (0.5 px
    # per frame here, the largest at the last frame) at 0.8 grid steps
    scale = widget.results.displacement_scale
    assert scale == pytest.approx(0.5 * 7, rel=0.05)
    assert vectors.length == pytest.approx(0.8 * 16 / scale)
    assert widget.run_panel.vector_length.value == pytest.approx(
        vectors.length, abs=0.01
    )
    widget.run_panel.auto_length.value = False  # manual, from that value
    widget.run_panel.vector_length.value = 2.5
    assert vectors.length == 2.5
    assert redraws  # the current frame's vectors were drawn again
    np.testing.assert_array_equal(vectors.data, shown)


class _Gated(np.ndarray):
    gate = threading.Event()

    def __getitem__(self, key):
        if isinstance(key, slice) and (key.start or 0) >= 4:
            assert self.gate.wait(TIMEOUT_MS / 1000)
        return super().__getitem__(key)


def test_parameters_changed_mid_run_apply_from_the_next_batch(qtbot, widget):
    _Gated.gate.clear()
    widget.viewer.add_image(_texture_stack().view(_Gated), name='drift')
    widget.run_panel.batch_size.value = 2
    widget.start()
    qtbot.waitUntil(
        lambda: widget.outputs.frames_done == 4, timeout=TIMEOUT_MS
    )
    # the worker is inside the batch of frames 4-5
    widget.parameters.warps.value = 3
    _Gated.gate.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)

    history = widget.session.params_history
    assert history == [
        (0, FlowParams()),
        (6, FlowParams().replace(warps=3)),
    ]


def test_saving_into_a_used_folder_is_an_error_message(
    qtbot, widget, tmp_path
):
    widget.viewer.add_image(_texture_stack(), name='drift')
    _run(qtbot, widget)
    messages = []
    notification_manager.notification_ready.connect(messages.append)
    widget.save(tmp_path)
    qtbot.waitUntil(lambda: widget.save_worker is None, timeout=TIMEOUT_MS)
    assert (tmp_path / 'registered.tif').exists()
    (saved,) = messages
    assert saved.message == f'Motion correction results saved in {tmp_path}'
    widget.save(tmp_path)  # files are there: refused, not overwritten
    qtbot.waitUntil(lambda: widget.save_worker is None, timeout=TIMEOUT_MS)
    notification_manager.notification_ready.disconnect(messages.append)
    _, message = messages
    assert message.message.startswith(
        'Motion correction results were not saved'
    )
    assert 'already holds results' in message.message
    assert widget.run_panel.save_button.enabled


def test_save_writes_the_other_channels(qtbot, widget, tmp_path):
    viewer = widget.viewer
    stack = _texture_stack()
    viewer.add_image(stack, name='nuclei', scale=(2.0, 0.5, 0.5))
    membrane = viewer.add_image(stack[..., ::-1].copy(), name='membrane')
    widget.reference.also_correct.value = [membrane]
    _run(qtbot, widget)
    widget.save(tmp_path)
    qtbot.waitUntil(lambda: widget.save_worker is None, timeout=TIMEOUT_MS)

    on_screen = viewer.layers['membrane registered'].data
    saved, metadata = formats.open_stack(tmp_path / 'registered_membrane.tif')
    np.testing.assert_array_equal(saved, on_screen)
    assert metadata.scale == (2.0, 0.5, 0.5)
    params = json.loads((tmp_path / 'params.json').read_text())
    assert params['extra_channels'] == [
        {'name': 'membrane', 'file': 'registered_membrane.tif'}
    ]
    # the results folder opens with the channel in it
    opened = {
        kwargs['name']: data
        for data, kwargs, _ in get_reader(str(tmp_path))(str(tmp_path))
    }
    name = f'{tmp_path.name} membrane registered'
    np.testing.assert_array_equal(opened[name], on_screen)


def test_save_before_a_complete_run_is_refused(qtbot, widget, tmp_path):
    widget.viewer.add_image(_texture_stack(), name='drift')
    messages = []
    notification_manager.notification_ready.connect(messages.append)
    widget.save(tmp_path)
    notification_manager.notification_ready.disconnect(messages.append)
    assert widget.save_worker is None
    assert 'run the whole stack' in messages[0].message
    assert not list(tmp_path.iterdir())


def test_preview_of_a_stack_larger_than_memory(qtbot, widget):
    stack = huge_rolling_stack()  # 39 GiB, read one frame at a time
    viewer = widget.viewer
    viewer.add_image(stack, name='huge', contrast_limits=(0, 1))
    viewer.dims.set_current_step(0, 23_457)
    widget.parameters.live_preview.value = True
    qtbot.waitUntil(
        lambda: widget.preview.last_result is not None, timeout=TIMEOUT_MS
    )
    result = widget.preview.last_result
    assert result.request.frame == 23_457
    heatmap = viewer.layers['huge displacement']
    assert heatmap.data.shape == stack.shape
    flow = result.flow
    # hidden where the vectors are: too little texture, or untrusted
    trusted = (flow.reliability >= FlowParams().reliability_threshold) & (
        flow.confidence >= 0.5
    )
    assert trusted.mean() > 0.5
    np.testing.assert_array_equal(
        heatmap.data[23_457], np.where(trusted, speed(flow.w), np.nan)
    )
    inner = result.flow.w[64:-64, 64:-64, 0]
    assert np.median(inner) == pytest.approx(2.0, abs=0.02)


def test_untrusted_matches_hide_vectors_and_heatmaps(qtbot, widget):
    viewer = widget.viewer
    stack = _texture_stack(n_frames=6, shape=(64, 64)).astype(np.float32)
    # a textured patch that matches nothing in the reference
    rng = np.random.default_rng(5)
    stack[1:, 16:48, 16:48] = rng.uniform(500, 2500, (5, 32, 32))
    viewer.add_image(stack, name='patch')
    viewer.dims.set_current_step(0, 4)
    _run(qtbot, widget)
    sink = widget.results.sink
    untrusted = sink.confidence[4] < 0.5
    textured = sink.reliability[4] >= FlowParams().reliability_threshold
    assert untrusted[24:40, 24:40].mean() > 0.9  # the patch
    assert not untrusted[8:-8, 4:12].any()  # the drifting texture
    vectors = viewer.layers['patch flow vectors']
    heatmap = viewer.layers['patch displacement']

    def shown_at_untrusted_points():
        y, x = vectors.data[:, 0, 1:].astype(int).T
        return int(untrusted[y, x].sum())

    qtbot.waitUntil(lambda: len(vectors.data) > 0, timeout=TIMEOUT_MS)
    assert shown_at_untrusted_points() == 0
    assert np.isnan(heatmap.data[4][untrusted]).all()
    assert np.isfinite(heatmap.data[4][~untrusted & textured]).all()
    # the confidence map itself is an output, never masked
    assert 'patch confidence' not in viewer.layers
    # reliability masking stays available on its own
    widget.run_panel.mask_untrusted.value = False
    assert shown_at_untrusted_points() > 0
    assert np.isfinite(heatmap.data[4][untrusted & textured]).all()
