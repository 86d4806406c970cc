"""The "Feature tracking" dock draws what the headless tracker finds."""

import time

import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from napari_flowscope import track_features
from napari_flowscope._qt import tracking_widget
from napari_flowscope.synthetic import rotating_particles
from napari_flowscope.tracking import iter_tracks

SCALE = (0.5, 2.0, 2.0)
UNITS = ('s', 'um', 'um')


@pytest.fixture
def viewer_and_widget(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    stack = rotating_particles(n_frames=10).stack
    viewer.add_image(stack, name='particles', scale=SCALE, units=UNITS)
    _, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Feature tracking'
    )
    return viewer, widget


def run(widget, qtbot):
    widget.start()
    worker = widget.worker
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert not worker.is_running
    assert widget.worker is None


def test_docked_widget_streams_the_headless_tracks(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    assert widget.image.value.name == 'particles'
    widget.min_distance.value = 5
    frames = []
    widget.start()
    widget.worker.yielded.connect(lambda step: frames.append(step.t))
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass

    stack = viewer.layers['particles'].data
    expected = track_features(stack, params=widget.params)
    assert len(expected.track_ids) == 3
    assert frames == list(range(10))
    tracks = widget.tracks_layer
    np.testing.assert_array_equal(tracks.data, expected.data)
    np.testing.assert_array_equal(
        tracks.features['speed'], expected.features['speed']
    )
    assert tracks.color_by == 'speed'
    assert tracks.tail_length == widget.tail_length.value
    np.testing.assert_array_equal(
        widget.points_layer.data, expected.data[:, 1:]
    )
    for layer in (tracks, widget.points_layer):
        np.testing.assert_allclose(layer.scale, SCALE)
        assert tuple(str(unit) for unit in layer.units) == (
            'second',
            'micrometer',
            'micrometer',
        )
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_second_run_with_seeds_replaces_its_own_outputs(
    viewer_and_widget, qtbot
):
    viewer, widget = viewer_and_widget
    run(widget, qtbot)
    n_layers = len(viewer.layers)

    # Seeds drawn in world coordinates on a 2-D Points layer.
    seeds_px = np.array([[63.5, 93.5], [40.0, 30.0]])
    viewer.add_points(seeds_px * 2, name='seeds')
    widget.seeds.value = viewer.layers['seeds']
    run(widget, qtbot)

    assert len(viewer.layers) == n_layers + 1
    expected = track_features(
        viewer.layers['particles'].data, seeds=seeds_px, params=widget.params
    )
    np.testing.assert_array_equal(widget.tracks_layer.data, expected.data)
    starts = widget.tracks_layer.data[widget.tracks_layer.data[:, 1] == 0]
    np.testing.assert_allclose(starts[:, 2:], seeds_px, atol=1e-4)
    assert widget.tracks_layer.color_by == 'speed'


def test_roi_limits_detection_and_tracks_export(
    viewer_and_widget, qtbot, tmp_path
):
    viewer, widget = viewer_and_widget
    # A rectangle (world coordinates) around the particle at (63.5, 93.5).
    viewer.add_shapes(
        [np.array([[50, 80], [50, 108], [78, 108], [78, 80]]) * 2.0],
        shape_type='rectangle',
        name='roi',
    )
    widget.roi.value = viewer.layers['roi']
    run(widget, qtbot)

    first = widget.tracks_layer.data[widget.tracks_layer.data[:, 1] == 0]
    assert len(first) == 1
    np.testing.assert_allclose(first[0, 2:], [63.5, 93.5], atol=1)
    path = widget.export_csv(tmp_path / 'tracks.csv')
    np.testing.assert_array_equal(
        type(widget.tracks).from_csv(path).data, widget.tracks_layer.data
    )


def test_cancel_mid_run_leaves_no_running_worker(
    make_napari_viewer_proxy, qtbot, monkeypatch
):
    # Each frame takes 50 ms, so the first frames arrive long before the
    # last one is computed, whatever the machine.
    def slow_iter_tracks(*args, **kwargs):
        for step in iter_tracks(*args, **kwargs):
            time.sleep(0.05)
            yield step

    monkeypatch.setattr(tracking_widget, 'iter_tracks', slow_iter_tracks)
    n_frames = 40
    viewer = make_napari_viewer_proxy()
    viewer.add_image(
        rotating_particles(n_frames=n_frames, size=96).stack, name='long'
    )
    _, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Feature tracking'
    )
    widget.start()
    worker = widget.worker
    with qtbot.waitSignals([worker.aborted, worker.finished], timeout=60_000):
        with qtbot.waitSignal(worker.yielded, timeout=60_000):
            pass
        widget.cancel()

    assert not worker.is_running and widget.worker is None
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    done = widget.tracks_layer.data[:, 1].max() + 1
    assert 1 <= done < n_frames


def test_double_start_and_immediate_cancel(viewer_and_widget, qtbot):
    _, widget = viewer_and_widget
    widget.start()
    worker = widget.worker
    widget.start()  # a double click starts nothing more
    assert widget.worker is worker
    with qtbot.waitSignals([worker.aborted, worker.finished], timeout=60_000):
        widget.cancel()  # before the worker's thread has even started

    assert widget.tracks_layer is None
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_an_error_in_the_worker_is_reported_and_the_ui_recovers(
    viewer_and_widget, qtbot
):
    viewer, widget = viewer_and_widget
    viewer.add_points([[1000.0, 1000.0]], name='far away')
    widget.seeds.value = viewer.layers['far away']
    widget.start()
    with qtbot.waitSignals(
        [widget.worker.errored, widget.worker.finished], timeout=60_000
    ):
        pass

    assert widget.status.value.startswith('failed')
    assert 'inside' in widget.status.value
    messages = [str(record.message) for record in notification_manager.records]
    assert any('seeds must lie inside' in text for text in messages), messages
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert widget.tracks_layer is None


def test_a_run_that_finds_nothing_leaves_no_stale_layers(
    viewer_and_widget, qtbot
):
    viewer, widget = viewer_and_widget
    run(widget, qtbot)
    assert widget.tracks_layer is not None
    viewer.add_image(np.zeros((4, 32, 32), np.float32), name='blank')
    widget.image.value = viewer.layers['blank']
    run(widget, qtbot)

    assert widget.tracks_layer is None and widget.points_layer is None
    assert [layer.name for layer in viewer.layers] == ['particles', 'blank']
    assert widget.status.value == 'ready (0 tracks)'


def test_a_two_dimensional_image_is_refused(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.zeros((32, 32), np.float32), name='flat')
    _, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Feature tracking'
    )
    widget.start()
    assert widget.worker is None
    assert widget.tracks_layer is None


def test_layer_choices_follow_the_viewer(viewer_and_widget):
    viewer, widget = viewer_and_widget

    def seed_names():
        return [getattr(layer, 'name', None) for layer in widget.seeds.choices]

    viewer.add_points(np.zeros((1, 3)), name='dots')
    assert 'dots' in seed_names()
    viewer.layers['dots'].name = 'renamed dots'
    assert 'renamed dots' in seed_names()
    assert widget.seeds.native.findText('renamed dots') >= 0
    del viewer.layers['renamed dots']
    assert 'renamed dots' not in seed_names()
    assert widget.image.value.name == 'particles'


def test_drift_correction_controls_reach_the_params(viewer_and_widget):
    _, widget = viewer_and_widget
    assert widget.params.drift_correction == 'auto'
    widget.drift_correction.value = 'spot'
    widget.template_size.value = 10  # even: the next odd size is used
    assert widget.params.drift_correction == 'spot'
    assert widget.params.template_size == 11

    widget.drift_correction.value = 'off'
    assert not widget.template_size.enabled
    widget.drift_correction.value = 'template'
    widget.mode.value = 'dense_flow'
    widget.flow_reference.value = 'first'
    # Dense flow against frame 0 does not drift: nothing to correct.
    assert not widget.drift_correction.enabled
    widget.flow_reference.value = 'previous'
    assert widget.drift_correction.enabled and widget.template_size.enabled
