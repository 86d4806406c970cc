"""The "Motion over time" figure: blitted renders equal full draws."""

import numpy as np

from napari_flowscope._qt.plots import (
    ROI_COMPONENTS,
    STAT_NAMES,
    _MotionFigure,
    _PlotData,
)

N_FRAMES = 60


def _plot_data(
    frames_done, *, scale=1.0, cursor=5.0, roi_names=(), collapsed=()
):
    """Stats of the first ``frames_done`` frames; they repeat every 8
    frames, so more frames stay within the same axis limits."""
    rng = np.random.default_rng(0)
    pattern = {
        'mean_displacement': scale * rng.random(8),
        'max_displacement': 2 * scale * rng.random(8),
        'mean_velocity': 0.1 * scale * rng.random(8),
        'max_velocity': 0.3 * scale * rng.random(8),
        'ncc_before': 0.8 + 0.1 * rng.random(8),
        'ncc_after': 0.95 + 0.05 * rng.random(8),
        'trusted_fraction': 0.6 + 0.4 * rng.random(8),
    }
    stats = {}
    for name in STAT_NAMES:
        stats[name] = np.full(N_FRAMES, np.nan, np.float32)
        stats[name][:frames_done] = np.resize(pattern[name], frames_done)
    stats['trusted_fraction'][list(collapsed)] = 0.1
    roi = {
        name: rng.normal(size=(N_FRAMES, len(roi_names))).astype(np.float32)
        for name in ROI_COMPONENTS
    }
    return _PlotData(
        x=np.arange(N_FRAMES, dtype=np.float32),
        stats=stats,
        roi=roi,
        roi_scale=0.5,
        roi_names=roi_names,
        cursor=cursor,
        x_label='frame',
        displacement_unit='µm',
        velocity_unit='µm/s',
        panel='#262930',
        canvas='#000000',
        text='#f0f1f2',
        highlight='#6a9bd1',
        width=320,
        height=400,
        dpi=100,
    )


def test_blitted_renders_equal_full_draws():
    figure = _MotionFigure()
    figure.render(_plot_data(8))
    layout = figure._layout
    # more frames within the same rounded limits, cursor moved: blitted
    within = _plot_data(16, cursor=12.0)
    image = figure.render(within)
    assert figure._layout is layout
    np.testing.assert_array_equal(image, _MotionFigure().render(within))

    # curves leaving the limits, ROIs added: the axes are drawn again
    for changed in (
        _plot_data(24, scale=10.0),
        _plot_data(24, scale=10.0, cursor=None, roi_names=('a', 'b')),
    ):
        image = figure.render(changed)
        assert figure._layout != layout
        np.testing.assert_array_equal(image, _MotionFigure().render(changed))
        layout = figure._layout


def test_axis_limits_hold_the_curves():
    figure = _MotionFigure()
    data = _plot_data(30, scale=3.0, roi_names=('a',))
    figure.render(data)
    series = (
        [data.stats['mean_displacement'], data.stats['max_displacement']],
        [data.stats['mean_velocity'], data.stats['max_velocity']],
        [data.stats['ncc_before'], data.stats['ncc_after']],
        [0.5 * data.roi[name] for name in ROI_COMPONENTS],
    )
    for axes, values in zip(figure.axes, series, strict=True):
        low, high = axes.get_ylim()
        assert low <= np.nanmin(values) and np.nanmax(values) <= high
    assert figure.axes[-1].get_xlim() == (0.0, N_FRAMES - 1)


def _inside_figure(figure):
    """Every visible axes, with its labels and title, is inside the
    figure, and none overlaps the one below."""
    renderer = figure.figure.canvas.get_renderer()
    bounds = figure.figure.bbox
    visible = [axes for axes in figure.axes if axes.get_visible()]
    boxes = [axes.get_tightbbox(renderer) for axes in visible]
    for axes, tight in zip(visible, boxes, strict=True):
        assert tight.x0 >= bounds.x0 and tight.x1 <= bounds.x1
        assert tight.y0 >= bounds.y0 and tight.y1 <= bounds.y1
        label = axes.yaxis.label.get_window_extent(renderer)
        assert label.x0 >= bounds.x0
    for above, below in zip(boxes, boxes[1:], strict=False):
        assert above.y0 >= below.y1 - 0.5


def test_labels_fit_three_decimal_ticks_and_an_empty_run():
    figure = _MotionFigure()
    data = _plot_data(30)
    data.stats['ncc_before'][:30] = np.linspace(0.9951, 0.9989, 30)
    data.stats['ncc_after'][:30] = np.linspace(0.9961, 0.9993, 30)
    figure.render(data)
    labels = [t.get_text() for t in figure.axes[2].get_yticklabels()]
    assert any(len(text.split('.')[-1]) == 3 for text in labels), labels
    _inside_figure(figure)

    # before a run: nothing plotted, x from 0 to 1 with its last label
    empty = _plot_data(0)
    nothing = np.zeros(0, np.float32)
    empty = _PlotData(
        **{
            **empty.__dict__,
            'x': nothing,
            'stats': dict.fromkeys(STAT_NAMES, nothing),
            'roi': {name: nothing.reshape(0, 0) for name in ROI_COMPONENTS},
            'cursor': None,
        }
    )
    figure.render(empty)
    assert figure.axes[-1].get_xlim() == (0.0, 1.0)
    _inside_figure(figure)
    assert not figure.axes[-1].get_visible()  # no ROIs: no ROI axes


def test_a_short_dock_still_fits_every_label():
    """The plot dock of a 1280 x 800 window with every dock open."""
    figure = _MotionFigure()
    for roi_names in ((), ('a', 'b')):
        data = _plot_data(30, roi_names=roi_names)
        short = _PlotData(**{**data.__dict__, 'width': 330, 'height': 230})
        figure.render(short)
        _inside_figure(figure)
        assert figure.axes[-1].get_visible() == bool(roi_names)


def test_frames_whose_match_collapsed_are_shaded():
    figure = _MotionFigure()
    plain = figure.render(_plot_data(30))
    assert figure.bands == []
    labels = [t.get_text() for t in figure.axes[2].get_legend().get_texts()]
    assert 'match collapsed' not in labels

    flagged = _plot_data(30, collapsed=(3, 4, 9))
    image = figure.render(flagged)
    np.testing.assert_array_equal(image, _MotionFigure().render(flagged))
    assert not np.array_equal(image, plain)
    assert len(figure.bands) == len(figure.axes)
    for band in figure.bands:
        # frames 3-4 and 9, each one frame wide, centred on the frame
        spans = sorted(
            (
                round(p.vertices[:, 0].min(), 3),
                round(p.vertices[:, 0].max(), 3),
            )
            for p in band.get_paths()
        )
        assert spans == [(2.5, 4.5), (8.5, 9.5)]
    labels = [t.get_text() for t in figure.axes[2].get_legend().get_texts()]
    assert labels[-1] == 'match collapsed'
