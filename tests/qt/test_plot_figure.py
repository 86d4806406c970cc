"""The "Motion over time" figure: blitted renders equal full draws."""

import numpy as np

from napari_flowscope._qt.plots import (
    ROI_COMPONENTS,
    STAT_NAMES,
    _MotionFigure,
    _PlotData,
)

N_FRAMES = 60


def _plot_data(frames_done, *, scale=1.0, cursor=5.0, roi_names=()):
    """Stats of the first ``frames_done`` frames; they repeat every 8
    frames, so more frames stay within the same axis limits."""
    rng = np.random.default_rng(0)
    pattern = {
        'mean_speed': scale * rng.random(8),
        'max_speed': 2 * scale * rng.random(8),
        'ncc_before': 0.8 + 0.1 * rng.random(8),
        'ncc_after': 0.95 + 0.05 * rng.random(8),
    }
    stats = {}
    for name in STAT_NAMES:
        stats[name] = np.full(N_FRAMES, np.nan, np.float32)
        stats[name][:frames_done] = np.resize(pattern[name], frames_done)
    roi = {
        name: rng.normal(size=(N_FRAMES, len(roi_names))).astype(np.float32)
        for name in ROI_COMPONENTS
    }
    return _PlotData(
        x=np.arange(N_FRAMES, dtype=np.float32),
        stats=stats,
        roi=roi,
        roi_names=roi_names,
        cursor=cursor,
        x_label='frame',
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
        [data.stats['mean_speed'], data.stats['max_speed']],
        [data.stats['ncc_before'], data.stats['ncc_after']],
        [data.roi[name] for name in ROI_COMPONENTS],
    )
    for axes, values in zip(figure.axes, series, strict=True):
        low, high = axes.get_ylim()
        assert low <= np.nanmin(values) and np.nanmax(values) <= high
    assert figure.axes[-1].get_xlim() == (0.0, N_FRAMES - 1)
