"""The "Motion correction" dock in a real viewer: runs, control, preview.

Small stacks (20 x 96 x 96) keep the file fast; every run is compared with
what the headless session computes from the same settings.
"""

import json
import threading
import time

import numpy as np
import pytest
import tifffile
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QThreadPool

from napari_flowscope import synthetic
from napari_flowscope._qt.events import run_events
from napari_flowscope._qt.layers import frame_vectors
from napari_flowscope.engine import (
    FlowParams,
    curl,
    divergence,
    estimate_flow,
    speed,
)
from napari_flowscope.session import FrameReference, MotionSession

SCALE = (2.0, 0.65, 0.65)
RUN_TIMEOUT_MS = 30_000


@pytest.fixture
def tissue():
    return synthetic.drifting_tissue(n_frames=20, shape=(96, 96), seed=3)


@pytest.fixture
def docked(make_napari_viewer_proxy, tissue):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(
        tissue.stack,
        name='tissue',
        scale=SCALE,
        units=('s', 'um', 'um'),
        axis_labels=('t', 'y', 'x'),
    )
    _, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    yield viewer, widget
    widget.close_run()


def _wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)


def _wait_threads_done(qtbot):
    pool = QThreadPool.globalInstance()
    qtbot.waitUntil(lambda: pool.activeThreadCount() == 0, timeout=10_000)


def _headless(stack, params, batch_size, reference=None):
    session = MotionSession(
        stack,
        reference=reference or FrameReference(0),
        params=params,
        batch_size=batch_size,
    )
    return session, session.run()


def test_sample_run_matches_headless_session(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    (source,) = viewer.open_sample('napari-flowscope', 'moving_disk')
    _, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    widget.reference.source.value = source
    for box in widget.run_panel.outputs.values():
        box.value = True
    widget.run_panel.batch_size.value = 8
    widget.parameters.preset.value = 'fast'
    received = {'started': [], 'batch': [], 'finished': 0}
    events = run_events(viewer)
    events.started.connect(received['started'].append)
    events.batch.connect(received['batch'].append)

    def _finished():
        received['finished'] += 1

    events.finished.connect(_finished)
    widget.start()
    _wait_idle(qtbot, widget)

    assert widget.complete
    stack = np.asarray(source.data)
    session, expected = _headless(stack, FlowParams.preset('fast'), 8)
    name = source.name
    layers = viewer.layers
    np.testing.assert_array_equal(
        layers[f'{name} registered'].data, expected.registered
    )
    assert layers[f'{name} registered'].data.dtype == expected.registered.dtype
    # flow maps are hidden where the vectors are (too little texture, or
    # a match not trusted)
    hidden = (
        expected.reliability < FlowParams.preset('fast').reliability_threshold
    ) | (expected.confidence < 0.5)
    assert 0 < hidden.mean() < 1

    def masked(values):
        return np.where(hidden, np.nan, values)

    expected_maps = {
        'displacement': masked(speed(expected.w)),
        # frame to frame; nothing before the first frame
        'velocity': masked(
            np.concatenate(
                [
                    np.full((1, *expected.w.shape[1:3]), np.nan),
                    speed(np.diff(expected.w, axis=0)),
                ]
            )
        ),
        'vx': masked(expected.w[..., 0]),
        'vy': masked(expected.w[..., 1]),
        'reliability': expected.reliability,
        'confidence': expected.confidence,
        'divergence': masked(divergence(expected.w)),
        'curl': masked(curl(expected.w)),
    }
    for suffix, values in expected_maps.items():
        np.testing.assert_array_equal(layers[f'{name} {suffix}'].data, values)
    np.testing.assert_array_equal(
        layers[f'{name} reference'].data, session.reference_image
    )
    # vectors: the decimated flow of the frame under the time slider
    t = 7
    viewer.dims.set_current_step(0, t)
    style = widget.outputs.style
    data, lengths = frame_vectors(
        expected.w[t],
        t,
        style=style,
        reliability=expected.reliability[t],
        image=expected.registered[t],
        confidence=expected.confidence[t],
    )
    vectors = layers[f'{name} flow vectors']
    np.testing.assert_array_equal(vectors.data, data)
    np.testing.assert_array_equal(vectors.features['displacement'], lengths)
    assert len(data) > 0
    assert np.all(data[:, 0, 0] == t) and np.all(data[:, 1, 0] == 0)
    # every derived layer overlays the source and adds no slider axis
    assert viewer.dims.ndim == 3
    for layer in widget.outputs.layers:
        assert tuple(layer.scale)[-2:] == tuple(source.scale)[-2:]
        assert tuple(layer.units)[-2:] == tuple(source.units)[-2:]
        if layer.ndim == 3:
            assert tuple(layer.scale) == tuple(source.scale)
            assert tuple(layer.axis_labels) == tuple(source.axis_labels)
    # the run was announced for the plot dock
    (info,) = received['started']
    assert info.n_frames == stack.shape[0]
    assert info.scale == tuple(float(s) for s in source.scale)
    assert [batch.start for batch in received['batch']] == list(
        range(0, stack.shape[0], 8)
    )
    assert received['finished'] == 1


class GatedStack(np.ndarray):
    """A stack whose frames from ``gate_frame`` on are read only once
    ``gate`` is set: the worker is held mid-run, deterministically."""

    gate_frame = 4

    def __getitem__(self, key):
        if isinstance(key, slice) and (key.start or 0) >= self.gate_frame:
            assert GATE.wait(RUN_TIMEOUT_MS / 1000)
        return super().__getitem__(key)


GATE = threading.Event()


def test_layers_hold_first_batches_while_running(docked, qtbot, tissue):
    viewer, widget = docked
    GATE.clear()
    viewer.layers['tissue'].data = tissue.stack.view(GatedStack)
    widget.run_panel.batch_size.value = 2
    widget.start()
    worker = widget.worker
    qtbot.waitUntil(
        lambda: widget.outputs.frames_done == 4, timeout=RUN_TIMEOUT_MS
    )
    # two batches are in the layers while the worker waits for frame 4
    assert widget.worker is worker and worker.is_running
    _, expected = _headless(tissue.stack, FlowParams(), 2)
    registered = viewer.layers['tissue registered'].data
    speed_map = viewer.layers['tissue displacement'].data
    np.testing.assert_array_equal(registered[:4], expected.registered[:4])
    np.testing.assert_array_equal(
        speed_map[:4], _masked_speed(expected, FlowParams())[:4]
    )
    assert not registered[4:].any()
    assert np.isnan(speed_map[4:]).all()  # nothing drawn yet

    # pause takes effect after the batch in progress
    widget.pause()
    GATE.set()
    qtbot.waitUntil(lambda: worker.is_paused, timeout=RUN_TIMEOUT_MS)
    assert widget.run_panel.pause_button.text == 'Resume'
    done = widget.outputs.frames_done
    assert done == 6
    qtbot.wait(300)
    assert widget.outputs.frames_done == done  # nothing while paused
    widget.resume()
    _wait_idle(qtbot, widget)
    assert widget.complete
    np.testing.assert_array_equal(registered, expected.registered)
    assert widget.run_panel.start_button.enabled
    assert widget.run_panel.pause_button.text == 'Pause'
    _wait_threads_done(qtbot)


def test_layers_show_current_values_on_and_off_screen(docked, qtbot, tissue):
    # Only batches holding the frame on screen refresh the layers; others
    # must show up when the slider gets there.  get_value reads napari's
    # slice of the data; the thumbnail is redrawn from it only by a
    # refresh, so an up-to-date thumbnail means the drawing is current too.
    viewer, widget = docked
    widget.run_panel.batch_size.value = 4
    viewer.dims.set_current_step(0, 13)  # in the fourth batch
    widget.start()
    _wait_idle(qtbot, widget)
    _, expected = _headless(tissue.stack, FlowParams(), 4)
    layers = [
        (viewer.layers['tissue displacement'], speed(expected.w)),
        (viewer.layers['tissue registered'], expected.registered),
    ]
    pixels = [(10, 20), (48, 48), (90, 7)]
    for t in (13, 2, 19):
        viewer.dims.set_current_step(0, t)
        for layer, values in layers:
            for y, x in pixels:
                shown = layer.get_value((t, y, x))
                assert shown == pytest.approx(values[t, y, x], abs=1e-6)
                assert values[t, y, x] != 0
            shown = layer.thumbnail.copy()
            layer.refresh()
            np.testing.assert_array_equal(layer.thumbnail, shown)


def test_cancel_mid_run_stops_and_resets(docked, qtbot, tissue):
    viewer, widget = docked
    GATE.clear()
    viewer.layers['tissue'].data = tissue.stack.view(GatedStack)
    widget.run_panel.batch_size.value = 2
    widget.start()
    assert not widget.run_panel.start_button.enabled
    assert widget.run_panel.cancel_button.enabled
    qtbot.waitUntil(
        lambda: widget.outputs.frames_done == 4, timeout=RUN_TIMEOUT_MS
    )
    widget.cancel()  # while the worker is inside the batch of frames 4-5
    GATE.set()
    _wait_idle(qtbot, widget)

    assert not widget.complete
    # the worker finished the batch in progress and stopped
    assert widget.outputs.frames_done == 6
    assert not viewer.layers['tissue registered'].data[6:].any()
    assert widget.run_panel.start_button.enabled
    assert not widget.run_panel.cancel_button.enabled
    assert not widget.run_panel.pause_button.enabled
    assert not widget.run_panel.save_button.enabled
    assert widget.run_panel.progress.value == 'stopped after 6 / 20 frames'
    _wait_threads_done(qtbot)


def test_second_run_replaces_its_outputs(docked, qtbot):
    viewer, widget = docked
    widget.start()
    _wait_idle(qtbot, widget)
    first = {layer.name for layer in viewer.layers}
    speed_layer = viewer.layers['tissue displacement']
    viewer.layers.remove('tissue registered')  # the user removed one
    speed_layer.name = 'my displacement'  # and renamed another
    widget.parameters.preset.value = 'fast'
    widget.start()
    _wait_idle(qtbot, widget)

    names = [layer.name for layer in viewer.layers]
    assert set(names) == first
    assert len(names) == len(first)
    # the renamed layer was reused (same object, name restored)
    assert viewer.layers['tissue displacement'] == speed_layer
    _, expected = _headless(
        np.asarray(viewer.layers['tissue'].data),
        FlowParams.preset('fast'),
        8,
    )
    np.testing.assert_array_equal(
        viewer.layers['tissue registered'].data, expected.registered
    )


def test_preview_follows_parameters_and_frame(docked, qtbot, tissue):
    viewer, widget = docked
    viewer.dims.set_current_step(0, 6)
    preview = widget.preview
    widget.parameters.live_preview.value = True
    qtbot.waitUntil(
        lambda: preview.last_result is not None, timeout=RUN_TIMEOUT_MS
    )
    first = preview.last_result
    assert first.request.frame == 6

    widget.parameters.sigma.value = 4.0
    qtbot.waitUntil(
        lambda: preview.last_result.request.params.sigma == 4.0,
        timeout=RUN_TIMEOUT_MS,
    )
    qtbot.waitUntil(lambda: preview.worker is None, timeout=RUN_TIMEOUT_MS)
    result = preview.last_result
    params = FlowParams.preset('balanced').replace(sigma=4.0)
    assert result.request.params == params
    heatmap = viewer.layers['tissue displacement']
    expected = _assert_preview_shows(docked, tissue.stack, 6, params)
    np.testing.assert_array_equal(result.flow.w, expected.w)
    # a (T, Y, X) heatmap that shows the previewed frame only, hidden
    # where the vectors are
    assert heatmap.data.shape == tissue.stack.shape
    assert np.isnan(np.delete(heatmap.data, 6, axis=0)).all()
    assert tuple(heatmap.scale) == SCALE

    viewer.dims.set_current_step(0, 11)
    qtbot.waitUntil(
        lambda: preview.last_result.request.frame == 11,
        timeout=RUN_TIMEOUT_MS,
    )
    expected = estimate_flow(tissue.stack[0], tissue.stack[11], params)
    np.testing.assert_array_equal(preview.last_result.flow.w, expected.w)
    np.testing.assert_array_equal(
        heatmap.data[11], _masked_speed(expected, params)
    )
    assert np.isnan(heatmap.data[6]).all()

    widget.parameters.live_preview.value = False
    assert (
        'tissue displacement' not in viewer.layers
    )  # made for the preview only
    _wait_threads_done(qtbot)


def _assert_preview_shows(docked, stack, frame, params):
    """The heatmap at ``frame`` and the arrows show the engine's flow of
    ``frame`` against frame 0 (returned)."""
    viewer, widget = docked
    expected = estimate_flow(stack[0], stack[frame], params)
    np.testing.assert_array_equal(
        viewer.layers['tissue displacement'].data[frame],
        _masked_speed(expected, params),
    )
    np.testing.assert_array_equal(
        viewer.layers['tissue flow vectors'].data,
        _expected_vectors(widget, expected, frame, stack[0]),
    )
    return expected


def _expected_vectors(widget, field, frame, reference):
    """The arrows the dock should draw for ``field`` at ``frame``."""
    data, _ = frame_vectors(
        field.w,
        frame,
        style=widget._vector_style(),
        reliability=field.reliability,
        image=reference,
        confidence=field.confidence,
    )
    return data


def _masked_speed(field, params):
    shown = (field.reliability >= params.reliability_threshold) & (
        field.confidence >= 0.5
    )
    return np.where(shown, speed(field.w), np.nan)


def test_preview_after_a_run_shows_in_its_layers(docked, qtbot, tissue):
    viewer, widget = docked
    widget.start()
    _wait_idle(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    heatmap = viewer.layers['tissue displacement']
    vectors = viewer.layers['tissue flow vectors']
    run_frame = np.array(heatmap.data[9])
    qtbot.waitUntil(lambda: len(vectors.data) > 0, timeout=RUN_TIMEOUT_MS)

    viewer.dims.set_current_step(0, 9)
    widget.parameters.sigma.value = 2.5
    widget.parameters.live_preview.value = True
    qtbot.waitUntil(
        lambda: widget.preview.last_result is not None,
        timeout=RUN_TIMEOUT_MS,
    )
    # no second heatmap or vector layer: the run's show the preview
    assert [layer.name for layer in viewer.layers] == names
    params = FlowParams().replace(sigma=2.5)
    _assert_preview_shows(docked, tissue.stack, 9, params)
    # the run's results are untouched, and come back with the preview off
    np.testing.assert_array_equal(
        heatmap.data[3], widget.outputs['displacement'].data[3]
    )
    widget.parameters.live_preview.value = False
    np.testing.assert_array_equal(heatmap.data[9], run_frame)
    assert [layer.name for layer in viewer.layers] == names
    _wait_threads_done(qtbot)


def test_removing_the_source_mid_run_cancels(docked, qtbot, tissue):
    viewer, widget = docked
    GATE.clear()
    viewer.layers['tissue'].data = tissue.stack.view(GatedStack)
    widget.run_panel.batch_size.value = 2
    widget.start()
    qtbot.waitUntil(
        lambda: widget.outputs.frames_done == 4, timeout=RUN_TIMEOUT_MS
    )
    viewer.layers.remove('tissue')
    GATE.set()
    _wait_idle(qtbot, widget)
    assert not widget.complete
    assert widget.outputs.frames_done == 6
    assert widget.reference.source.value is None
    assert not widget.run_panel.start_button.enabled
    _wait_threads_done(qtbot)


def test_closing_the_viewer_mid_run_leaks_no_thread(
    make_napari_viewer_proxy, qtbot, tissue
):
    viewer = make_napari_viewer_proxy()
    GATE.clear()
    viewer.add_image(tissue.stack.view(GatedStack), name='tissue')
    _, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    widget.run_panel.batch_size.value = 2
    arrived = []
    run_events(viewer).batch.connect(arrived.append)
    widget.start()
    qtbot.waitUntil(lambda: len(arrived) == 2, timeout=RUN_TIMEOUT_MS)
    # closing waits for the worker, which is blocked until GATE opens
    threading.Timer(0.2, GATE.set).start()
    viewer.close()
    _wait_threads_done(qtbot)
    qtbot.wait(100)  # queued signals of the stopped worker are harmless
    assert len(arrived) < 10


def test_twenty_start_cancel_cycles(docked, qtbot):
    _, widget = docked
    widget.run_panel.batch_size.value = 1
    for _ in range(20):
        widget.start()
        assert widget.worker is not None
        widget.cancel()
        _wait_idle(qtbot, widget)
        assert widget.run_panel.start_button.enabled
    _wait_threads_done(qtbot)
    assert widget.worker is None


def test_save_writes_the_session_files(docked, qtbot, tmp_path):
    viewer, widget = docked
    assert not widget.run_panel.save_button.enabled
    widget.start()
    _wait_idle(qtbot, widget)
    assert widget.run_panel.save_button.enabled
    folder = tmp_path / 'results'
    widget.save(folder)
    qtbot.waitUntil(lambda: widget.save_worker is None, timeout=10_000)

    registered = tifffile.imread(folder / 'registered.tif')
    np.testing.assert_array_equal(
        registered, viewer.layers['tissue registered'].data
    )
    np.testing.assert_array_equal(
        np.load(folder / 'flow.npy'), widget.results.sink.w
    )
    params = json.loads((folder / 'params.json').read_text())
    assert json.dumps(FlowParams().to_dict()) in json.dumps(params)
    rows = (folder / 'stats.csv').read_text().strip().splitlines()
    assert len(rows) == 1 + 20
    assert not list(folder.glob('*.partial'))


def test_worker_error_is_reported_and_ui_resets(docked, qtbot):
    viewer, widget = docked
    messages = []
    notification_manager.notification_ready.connect(
        lambda notification: messages.append(notification)
    )

    class Broken(np.ndarray):
        def __getitem__(self, key):
            if isinstance(key, slice) and (key.start or 0) >= 4:
                raise OSError('disk went away')
            return super().__getitem__(key)

    viewer.layers['tissue'].data = viewer.layers['tissue'].data.view(Broken)
    widget.run_panel.batch_size.value = 4
    widget.start()
    _wait_idle(qtbot, widget)
    assert not widget.complete
    (notification,) = messages
    assert notification.severity == 'error'
    assert notification.message == (
        'Motion correction failed at frame 4: disk went away'
    )
    assert widget.run_panel.start_button.enabled
    _wait_threads_done(qtbot)


def test_closing_the_dock_lets_go_of_the_viewer(docked, qtbot, tissue):
    viewer, widget = docked
    widget.parameters.live_preview.value = True
    qtbot.waitUntil(
        lambda: widget.preview.last_result is not None,
        timeout=RUN_TIMEOUT_MS,
    )
    widget.start()
    state = widget.__dict__  # outlives the Qt object
    start = time.perf_counter()
    with qtbot.waitSignal(widget.destroyed, timeout=5000):
        viewer.window.remove_dock_widget(widget)
        widget.deleteLater()
    # it waited for the batch in progress only, not for a timeout
    assert time.perf_counter() - start < 2.0
    # the teardown stopped the run and let go of the viewer's events
    assert state['worker'] is None and state['_batches'] is None
    assert '_viewer_callbacks' not in state
    assert state['preview'].worker is None
    _wait_threads_done(qtbot)
    # the viewer goes on without errors from the dock's handlers
    viewer.add_image(tissue.stack, name='another')
    viewer.layers['another'].name = 'renamed'
    viewer.dims.set_current_step(0, 3)
    viewer.layers.remove('renamed')
    qtbot.wait(100)


def test_preview_of_another_source_gets_its_own_layers(docked, qtbot, tissue):
    viewer, widget = docked
    preview = widget.preview
    widget.parameters.live_preview.value = True
    qtbot.waitUntil(
        lambda: preview.last_result is not None, timeout=RUN_TIMEOUT_MS
    )
    other = viewer.add_image(tissue.stack[:, ::-1].copy(), name='mirrored')
    widget.reference.source.value = other
    qtbot.waitUntil(
        lambda: 'mirrored displacement' in viewer.layers,
        timeout=RUN_TIMEOUT_MS,
    )
    qtbot.waitUntil(lambda: preview.worker is None, timeout=RUN_TIMEOUT_MS)
    names = [layer.name for layer in viewer.layers]
    assert 'tissue displacement' not in names
    assert 'mirrored flow vectors' in names


def _drawn_in_steps(vectors, step):
    """Arrow lengths of a Vectors layer as drawn, in grid steps."""
    return np.hypot(*vectors.data[:, 1, 1:].T) * vectors.length / step


def test_heatmaps_are_hidden_where_the_vectors_are(docked, qtbot, tissue):
    viewer, widget = docked
    widget.run_panel.outputs['vx'].value = True
    widget.start()
    _wait_idle(qtbot, widget)
    t = 12
    viewer.dims.set_current_step(0, t)
    vectors = viewer.layers['tissue flow vectors']
    # hide the darker half of each frame, as for a background
    widget.run_panel.intensity_percentile.value = 50.0
    qtbot.waitUntil(lambda: len(vectors.data) > 0, timeout=RUN_TIMEOUT_MS)
    step = widget.outputs.style.step
    rows = np.arange(step // 2, 96, step)
    shown = np.zeros((96, 96), bool)
    y, x = vectors.data[:, 0, 1:].astype(int).T
    shown[y, x] = True
    grid = np.ix_(rows, rows)
    assert 0.3 < shown[grid].mean() < 0.7
    for role in ('displacement', 'vx', 'vy'):
        heatmap = viewer.layers[f'tissue {role}'].data[t]
        np.testing.assert_array_equal(np.isfinite(heatmap[grid]), shown[grid])
    # between grid points too: about half of the heatmap is hidden
    assert (
        np.isfinite(viewer.layers['tissue displacement'].data[t]).mean() < 0.6
    )
    widget.run_panel.intensity_percentile.value = 0.0
    assert (
        np.isfinite(viewer.layers['tissue displacement'].data[t]).mean() > 0.9
    )


@pytest.mark.realdata
def test_default_vectors_on_beating_cardiomyocytes_can_be_seen(
    make_napari_viewer_proxy, qtbot, real_data
):
    stack = tifffile.imread(
        real_data / 'cardiomyocyte_beating' / 'adult_gray.tif'
    )
    viewer = make_napari_viewer_proxy()
    viewer.add_image(stack, name='heart')
    _, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    widget.start()  # every setting at its default
    _wait_idle(qtbot, widget)
    outputs = widget.outputs
    vectors = viewer.layers['heart flow vectors']
    step = outputs.style.step
    assert outputs.style.length is None  # automatic by default
    # arrows are a median 0.15 px long: drawn 1:1 they are invisible
    scale = widget.results.displacement_scale
    assert vectors.length == pytest.approx(0.8 * step / scale)
    assert 10 < vectors.length < 40
    drawn = {}
    for t in range(1, len(stack)):
        viewer.dims.set_current_step(0, t)  # the dock draws frame t
        assert (vectors.data[:, 0, 0] == t).all()
        drawn[t] = _drawn_in_steps(vectors, step)
    p95 = {t: np.percentile(lengths, 95) for t, lengths in drawn.items()}
    # the scale is held over the run: no frame's arrows run far past
    # their grid cell, and the frames of each contraction show arrows at
    # least a third of a cell long
    assert max(p95.values()) < 1.2
    contracting = [t for t in p95 if p95[t] > 0.5 * max(p95.values())]
    assert len(contracting) > 10
    assert min(p95[t] for t in contracting) >= 0.3
    assert p95[21] >= 0.3
    assert np.median(drawn[21]) > 0.1
    widget.close_run()
