"""The "Motion over time" dock plots exactly what the run sends it."""

import numpy as np
import pytest

from napari_flowscope._qt.events import RunInfo, run_events
from napari_flowscope.engine import FlowParams
from napari_flowscope.roi import read_roi_csv
from napari_flowscope.session import FlowBatch
from napari_flowscope.session.stats import (
    STAT_NAMES,
    VELOCITY_STATS,
    FrameStats,
)

N_FRAMES, FRAME_SHAPE, BATCH = 12, (32, 40), 4
FRAME_INTERVAL = 0.5


def known_flow():
    """w[t, y, x] = ((t + 1) * x / 10, -(t + 1) * y / 20)."""
    rows, cols = np.mgrid[: FRAME_SHAPE[0], : FRAME_SHAPE[1]]
    gain = np.arange(1, N_FRAMES + 1, dtype=np.float32)[:, None, None]
    return np.stack([gain * cols / 10, -gain * rows / 20], -1).astype(
        np.float32
    )


def batches(w):
    rng = np.random.default_rng(1)
    for start in range(0, N_FRAMES, BATCH):
        stop = start + BATCH
        stats = FrameStats(*rng.random((7, BATCH), dtype=np.float32))
        yield FlowBatch(
            start=start,
            stop=stop,
            w=w[start:stop],
            reliability=np.ones((BATCH, *FRAME_SHAPE), np.float32),
            confidence=np.ones((BATCH, *FRAME_SHAPE), np.float32),
            registered=np.zeros((BATCH, *FRAME_SHAPE), np.float32),
            stats=stats,
            reference=np.zeros(FRAME_SHAPE, np.float32),
        )


@pytest.fixture
def viewer_and_plots(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(
        np.zeros((N_FRAMES, *FRAME_SHAPE), np.float32),
        name='movie',
        scale=(FRAME_INTERVAL, 2, 2),
        units=('s', 'um', 'um'),
    )
    _, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion over time'
    )
    return viewer, widget


def start_run(viewer):
    info = RunInfo(
        n_frames=N_FRAMES,
        frame_shape=FRAME_SHAPE,
        scale=(FRAME_INTERVAL, 2.0, 2.0),
        units=('second', 'micrometer', 'micrometer'),
        axis_labels=('t', 'y', 'x'),
        source_name='movie',
        params=FlowParams(),
        batch_size=BATCH,
    )
    run_events(viewer).started.emit(info)


def stream(viewer, w, n_batches=None):
    events = run_events(viewer)
    sent = list(batches(w))[:n_batches]
    for batch in sent:
        events.batch.emit(batch)
    return sent


def x_label(figure):
    """The time axis label, under the lowest axes shown."""
    return [a.get_xlabel() for a in figure.axes if a.get_visible()][-1]


def wait_drawn(widget, qtbot):
    """Wait until the plot image shows the widget's current data."""
    widget._redraw.flush()
    qtbot.waitUntil(lambda: not widget.drawing, timeout=5000)


def test_plotted_series_equal_batch_stats(viewer_and_plots, qtbot):
    viewer, widget = viewer_and_plots
    start_run(viewer)
    sent = stream(viewer, known_flow(), n_batches=2)

    series = widget.series
    done = slice(0, 2 * BATCH)
    # 2 um pixels, 0.5 s per frame: um and um/s
    assert widget.units.displacement_unit == 'µm'
    assert widget.units.velocity_unit == 'µm/s'
    factors = {
        'mean_displacement': 2.0,
        'max_displacement': 2.0,
        'mean_velocity': 4.0,
        'max_velocity': 4.0,
        'ncc_before': 1.0,
        'ncc_after': 1.0,
        'trusted_fraction': 1.0,
    }
    for name, factor in factors.items():
        expected = np.concatenate([getattr(b.stats, name) for b in sent])
        np.testing.assert_allclose(
            series[name][done], factor * expected, rtol=1e-6
        )
        assert np.isnan(series[name][2 * BATCH :]).all()
    np.testing.assert_allclose(
        series['time'], np.arange(N_FRAMES) * FRAME_INTERVAL
    )
    stats = FrameStats.concatenate(b.stats for b in sent)
    np.testing.assert_array_equal(series['collapsed'][done], stats.collapsed)
    assert stats.collapsed.any() and not stats.collapsed.all()

    # What matplotlib draws is the same data, against time in seconds.
    run_events(viewer).finished.emit()
    wait_drawn(widget, qtbot)
    lines = widget.figure.axes[2].get_lines()
    ncc_after = next(line for line in lines if line.get_label() == 'after')
    np.testing.assert_array_equal(ncc_after.get_ydata(), series['ncc_after'])
    np.testing.assert_allclose(ncc_after.get_xdata(), series['time'])
    assert x_label(widget.figure) == 'time (s)'
    titles = [axes.get_title(loc='left') for axes in widget.figure.axes]
    assert titles == [
        'displacement from the reference (µm)',
        'velocity, frame to frame (µm/s)',
        'NCC with the reference',
        'ROI displacement (µm)',
    ]
    velocity = widget.figure.axes[1].get_lines()[0]
    np.testing.assert_array_equal(
        velocity.get_ydata(), series['mean_velocity']
    )


def test_cursor_follows_the_time_slider(viewer_and_plots, qtbot):
    viewer, widget = viewer_and_plots
    start_run(viewer)
    viewer.dims.set_current_step(0, 6)
    wait_drawn(widget, qtbot)
    cursor = widget.figure.axes[0].get_lines()[-1]
    assert cursor.get_xdata()[0] == 6 * FRAME_INTERVAL


def rectangle_rows_10_20_cols_5_15(layer_scale):
    """The rectangle in the data coordinates of a layer with this scale."""
    corners_px = np.array([[10, 5], [10, 15], [20, 15], [20, 5]], float)
    world = corners_px * 2.0  # the image has 2 um pixels
    data = world / np.asarray(layer_scale[-2:])
    return np.column_stack([np.zeros(4), data])


def expected_rectangle_curves():
    """dx, dy and |d| of the rectangle, in um (2 um pixels)."""
    gain = np.arange(1, N_FRAMES + 1)
    rows, cols = np.mgrid[10:21, 5:16]
    length = [np.mean(np.hypot(g * cols / 10, g * rows / 20)) for g in gain]
    return 2 * gain * 10 / 10, -2 * gain * 15 / 20, 2 * np.array(length)


@pytest.mark.parametrize('drawn', ['before_run', 'during_run'])
def test_rectangle_roi_gives_exact_curves_and_csv(
    viewer_and_plots, tmp_path, qtbot, drawn
):
    viewer, widget = viewer_and_plots
    w = known_flow()
    layer = widget.new_roi_layer()
    assert tuple(layer.scale) == (FRAME_INTERVAL, 2, 2)
    if drawn == 'before_run':
        layer.add_rectangles(rectangle_rows_10_20_cols_5_15(layer.scale))
        start_run(viewer)
        stream(viewer, w)
    else:
        start_run(viewer)
        stream(viewer, w, n_batches=2)
        layer.add_rectangles(rectangle_rows_10_20_cols_5_15(layer.scale))
        widget._roi_update.flush()
        stream(viewer, w)

    wait_drawn(widget, qtbot)
    dx, dy, length = expected_rectangle_curves()
    series = widget.series
    assert widget.roi_names == ['roi_0']
    np.testing.assert_allclose(series['roi_dx'][:, 0], dx, rtol=1e-6)
    np.testing.assert_allclose(series['roi_dy'][:, 0], dy, rtol=1e-6)
    np.testing.assert_allclose(
        series['roi_displacement'][:, 0], length, rtol=1e-6
    )

    # the CSV is in px
    table = read_roi_csv(widget.export_csv(tmp_path / 'rois.csv'))
    np.testing.assert_array_equal(table['frame'], np.arange(N_FRAMES))
    np.testing.assert_allclose(table['time'], series['time'])
    np.testing.assert_allclose(table['dx'], dx / 2, rtol=1e-6)
    np.testing.assert_allclose(table['displacement'], length / 2, rtol=1e-6)


def test_roi_on_a_layer_with_another_scale(viewer_and_plots, qtbot):
    """Shapes in world units (scale 1) still land on the right pixels."""
    viewer, widget = viewer_and_plots
    layer = viewer.add_shapes(ndim=3, name='world rois')
    widget.roi_layer = layer
    layer.add_rectangles(rectangle_rows_10_20_cols_5_15(layer.scale))
    layer.add_lines(np.array([[0, 0, 0], [0, 10, 10]]))  # no area: ignored
    start_run(viewer)
    stream(viewer, known_flow())

    wait_drawn(widget, qtbot)
    dx, dy, _ = expected_rectangle_curves()
    assert widget.roi_names == ['roi_0']
    np.testing.assert_allclose(widget.series['roi_dx'][:, 0], dx, rtol=1e-6)
    np.testing.assert_allclose(widget.series['roi_dy'][:, 0], dy, rtol=1e-6)


def test_clear_and_export_without_rois(viewer_and_plots, tmp_path):
    viewer, widget = viewer_and_plots
    start_run(viewer)
    stream(viewer, known_flow(), n_batches=1)
    with pytest.raises(ValueError, match='no ROI'):
        widget.export_csv(tmp_path / 'rois.csv')
    widget.clear()
    assert widget.series['mean_displacement'].size == 0


def test_real_run_plots_the_session_stats_and_roi_motion(
    make_napari_viewer_proxy, qtbot
):
    """Both docks, a real run: curves equal what the run computed."""
    from napari_flowscope import synthetic
    from napari_flowscope.roi import roi_masks, roi_motion

    viewer = make_napari_viewer_proxy()
    tissue = synthetic.drifting_tissue(n_frames=12, shape=(64, 64), seed=2)
    viewer.add_image(
        tissue.stack, name='tissue', scale=(2.0, 0.5, 0.5), units=('s',) * 3
    )
    _, motion = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    _, plots = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion over time'
    )
    # No copy of its own: ROIs drawn later read the run's flow.
    plots.flow_cache_bytes = 0
    motion.run_panel.batch_size.value = 4
    rois = plots.new_roi_layer()
    first = np.array([[0, 8, 8], [0, 8, 20], [0, 30, 20], [0, 30, 8]])
    rois.add_rectangles(first)  # same scale as the image: pixels

    motion.start()
    qtbot.waitUntil(lambda: motion.worker is None, timeout=60_000)

    wait_drawn(plots, qtbot)
    results = motion.results.sink
    series = plots.series
    # the layer's units are seconds everywhere: px and px/s
    assert plots.units.velocity_unit == 'px/s'
    for name in STAT_NAMES:
        factor = 0.5 if name in VELOCITY_STATS else 1.0
        np.testing.assert_allclose(
            series[name], factor * getattr(results.stats, name), rtol=1e-6
        )
    np.testing.assert_allclose(series['time'], np.arange(12) * 2.0)
    # The first ROI's curves were gathered batch by batch.
    first_only = roi_motion(
        results.w, roi_masks([first], ['rectangle'], (64, 64))
    )
    np.testing.assert_allclose(
        series['roi_dx'], first_only.dx, rtol=1e-5, atol=1e-6
    )

    # A second ROI drawn after the run gets its whole curve at once.
    second = np.array([[0, 40, 30], [0, 40, 60], [0, 60, 60], [0, 60, 30]])
    rois.add_rectangles(second)
    plots._roi_update.flush()
    wait_drawn(plots, qtbot)
    masks = roi_masks([first, second], ['rectangle'] * 2, (64, 64))
    expected = roi_motion(results.w, masks)
    assert plots.roi_names == ['roi_0', 'roi_1']
    for name in ('dx', 'dy', 'displacement'):
        np.testing.assert_allclose(
            plots.series[f'roi_{name}'],
            getattr(expected, name),
            rtol=1e-5,
            atol=1e-6,
        )
    motion.close_run()


def test_removing_the_roi_layer_drops_its_curves(viewer_and_plots, qtbot):
    viewer, widget = viewer_and_plots
    layer = widget.new_roi_layer()
    layer.add_rectangles(rectangle_rows_10_20_cols_5_15(layer.scale))
    start_run(viewer)
    stream(viewer, known_flow())
    wait_drawn(widget, qtbot)
    assert widget.series['roi_dx'].shape == (N_FRAMES, 1)

    viewer.layers.remove(layer)
    assert widget.roi_layer is None
    assert widget._roi_layer_combo.currentText() == '(none)'
    assert widget.roi_names == []
    assert widget.series['roi_dx'].shape == (N_FRAMES, 0)


def test_frames_without_time_scale_and_theme_follows_viewer(
    viewer_and_plots, qtbot
):
    from matplotlib.colors import to_hex
    from napari.utils.theme import get_theme

    viewer, widget = viewer_and_plots
    info = RunInfo(
        n_frames=N_FRAMES,
        frame_shape=FRAME_SHAPE,
        scale=(1.0, 1.0, 1.0),
        units=('pixel',) * 3,
        axis_labels=('t', 'y', 'x'),
        source_name='movie',
        params=FlowParams(),
        batch_size=BATCH,
    )
    run_events(viewer).started.emit(info)
    stream(viewer, known_flow(), n_batches=1)
    wait_drawn(widget, qtbot)
    dark = get_theme('dark').background.as_hex()
    assert to_hex(widget.figure.get_facecolor()) == dark
    viewer.theme = 'light'  # nothing else changes: the theme must redraw
    wait_drawn(widget, qtbot)

    np.testing.assert_array_equal(widget.series['time'], np.arange(N_FRAMES))
    assert x_label(widget.figure) == 'frame'
    light = get_theme('light').background.as_hex()
    assert to_hex(widget.figure.get_facecolor()) == light
