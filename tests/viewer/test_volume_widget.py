"""A volumetric time-lapse (T, Z, Y, X) in a real viewer, in 3-D view.

The drifting-volume sample (10 volumes of 24 x 96 x 96) runs through the
Motion correction dock; its layers are compared with the headless session
while the worker is held mid-run, then after the run.
"""

import threading

import numpy as np
import pytest

from napari_flowscope._qt.layers import MAX_VECTORS, frame_vectors
from napari_flowscope._qt.reference import voxel_size
from napari_flowscope.engine.volume import displacement_length
from napari_flowscope.session import MotionSession

RUN_TIMEOUT_MS = 60_000
GATE = threading.Event()


class GatedVolumes(np.ndarray):
    """Volumes from ``gate_frame`` on are read only once ``GATE`` is set:
    the worker is held mid-run, deterministically."""

    gate_frame = 2

    def __getitem__(self, key):
        if isinstance(key, slice) and (key.start or 0) >= self.gate_frame:
            assert GATE.wait(RUN_TIMEOUT_MS / 1000)
        return super().__getitem__(key)


@pytest.fixture
def volume_dock(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.dims.ndisplay = 3
    viewer.open_sample('napari-flowscope', 'drifting_volume')
    source = viewer.layers['drifting volume']
    _, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    yield viewer, widget, source
    GATE.set()
    widget.close_run()


def _headless(source, widget):
    session = MotionSession(
        np.asarray(source.data),
        params=widget.parameters.params,
        spacing=voxel_size(source),
        batch_size=1,
    )
    return session, session.run()


def test_volume_run_fills_3d_layers_while_running(volume_dock, qtbot):
    viewer, widget, source = volume_dock
    # TZYX layers are offered as sources, with the per-plane option
    assert source in widget.reference.source.choices
    widget.reference.source.value = source
    assert not widget.reference.per_plane.native.isHidden()
    assert widget.reference.session_kwargs() == {
        'spacing': (1.3, 0.65, 0.65),
        'per_plane': False,
    }
    _, plot = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion over time'
    )
    GATE.clear()
    source.data = np.asarray(source.data).view(GatedVolumes)
    widget.run_panel.batch_size.value = 1
    widget.run_panel.outputs['vx'].value = True
    widget.run_panel.outputs['divergence'].value = True
    viewer.dims.set_current_step(0, 1)
    widget.start()
    worker = widget.worker
    qtbot.waitUntil(
        lambda: widget.outputs.frames_done == 2, timeout=RUN_TIMEOUT_MS
    )
    # two volumes are in the layers while the worker waits for the third
    assert widget.worker is worker and worker.is_running
    assert widget.run_panel.progress.value.startswith('2 / 10 volumes')
    session, expected = _headless(source, widget)
    layers = viewer.layers
    registered = layers['drifting volume registered'].data
    speed_map = layers['drifting volume displacement'].data
    assert registered.shape == speed_map.shape == source.data.shape
    np.testing.assert_array_equal(registered[:2], expected.registered[:2])
    lengths = displacement_length(expected.w, spacing=session.spacing)
    # hidden where the match is not trusted (content leaving the volume)
    untrusted = expected.confidence < 0.5
    np.testing.assert_array_equal(
        speed_map[:2], np.where(untrusted, np.nan, lengths)[:2]
    )
    assert not registered[2:].any() and np.isnan(speed_map[2:]).all()
    vz = layers['drifting volume vz'].data
    np.testing.assert_array_equal(
        vz[1], np.where(untrusted[1], np.nan, expected.w[1, ..., 2])
    )
    # no 2-D-only maps for volumes
    assert 'drifting volume divergence' not in layers
    assert 'drifting volume curl' not in layers
    # the vectors of the volume on screen: (t, z, y, x) start + projection
    vectors = layers['drifting volume flow vectors']
    qtbot.waitUntil(lambda: len(vectors.data) > 0, timeout=RUN_TIMEOUT_MS)
    data, _ = frame_vectors(
        expected.w[1],
        1,
        style=widget.outputs.style,
        reliability=expected.reliability[1],
        image=expected.registered[1],
        spacing=session.spacing,
        confidence=expected.confidence[1],
    )
    assert data.shape[1:] == (2, 4) and 0 < len(data) <= MAX_VECTORS
    np.testing.assert_array_equal(vectors.data, data)
    assert (data[:, 0, 0] == 1).all() and (data[:, 1, 0] == 0).all()
    assert np.abs(data[:, 1, 1]).max() > 0.1  # z motion is shown

    GATE.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    assert widget.complete
    assert widget.run_panel.progress.value == 'done: 10 volumes'
    np.testing.assert_array_equal(registered, expected.registered)
    # the plot dock shows every volume's motion, in the sample's units
    # (5 s per volume, 0.65 um pixels), and no ROI panel for volumes
    series = plot.series
    np.testing.assert_allclose(series['time'], 5.0 * np.arange(10))
    np.testing.assert_allclose(
        series['mean_displacement'],
        0.65 * expected.stats.mean_displacement,
        rtol=1e-5,
    )
    assert plot._snapshot().x_label == 'time (s)'
    assert not plot._new_roi_button.isEnabled()
    assert not plot._roi_layer_combo.isEnabled()
    assert 'volumes' in plot._new_roi_button.toolTip()
    plot.clear()
    assert plot._new_roi_button.isEnabled()
    np.testing.assert_array_equal(
        vz, np.where(untrusted, np.nan, expected.w[..., 2])
    )
    # every layer overlays the source in the 3-D view, no extra axis
    assert viewer.dims.ndim == 4 and viewer.dims.ndisplay == 3
    for layer in widget.outputs.layers:
        assert tuple(layer.scale)[-3:] == tuple(source.scale)[-3:]
        if layer.ndim == 4:
            assert tuple(layer.scale) == tuple(source.scale)


def test_live_preview_of_a_volume(volume_dock, qtbot):
    viewer, widget, source = volume_dock
    widget.reference.source.value = source
    viewer.dims.set_current_step(0, 6)
    preview = widget.preview
    widget.parameters.live_preview.value = True
    qtbot.waitUntil(
        lambda: preview.last_result is not None and preview.worker is None,
        timeout=RUN_TIMEOUT_MS,
    )
    result = preview.last_result
    assert result.request.frame == 6
    session = MotionSession(
        np.asarray(source.data),
        params=widget.parameters.params,
        spacing=voxel_size(source),
    )
    expected = session.estimate_frame(6)
    np.testing.assert_array_equal(result.flow.w, expected.w)
    # shown in the run's layers: a (T, Z, Y, X) heatmap holding the
    # previewed volume only (hidden where the vectors are)
    heatmap = viewer.layers['drifting volume displacement']
    assert heatmap.data.shape == source.data.shape
    lengths = displacement_length(expected.w, spacing=(2, 1, 1))
    threshold = widget.parameters.params.reliability_threshold
    shown = (expected.reliability >= threshold) & (expected.confidence >= 0.5)
    np.testing.assert_array_equal(
        heatmap.data[6], np.where(shown, lengths, np.nan)
    )
    assert np.isnan(heatmap.data[5]).all()
    vectors = viewer.layers['drifting volume flow vectors']
    assert vectors.data.shape[1:] == (2, 4) and len(vectors.data) > 0
    assert (vectors.data[:, 0, 0] == 6).all()
