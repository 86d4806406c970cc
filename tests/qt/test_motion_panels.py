"""Widget tier (Qt, no OpenGL): the sections of the "Motion correction" dock.

Uses ``napari.components.ViewerModel`` as the viewer, so layers exist
without a canvas.
"""

import functools

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.utils._proxies import PublicOnlyProxy
from qtpy.QtCore import Qt

from napari_flowscope._qt.layers import (
    MAX_VECTORS,
    SPECS,
    FieldMap,
    FrameFields,
    OutputLayers,
    RunResults,
    VectorStyle,
    display_mask,
    frame_vectors,
    nice_ceiling,
    roles_for,
    vector_step,
)
from napari_flowscope._qt.motion_widget import MotionCorrectionWidget
from napari_flowscope._qt.parameters import (
    MOTION_MODEL_CHOICES,
    ParametersPanel,
)
from napari_flowscope._qt.reference import ReferencePanel
from napari_flowscope._qt.run_control import (
    RunControlPanel,
    format_progress,
    stream_batches,
)
from napari_flowscope.engine import (
    CONFIDENCE_THRESHOLD,
    FlowParams,
    decimate_flow,
    speed,
    warp,
)
from napari_flowscope.engine.params import PRESETS
from napari_flowscope.session import (
    AdaptiveReference,
    FrameReference,
    ImageReference,
    MotionSession,
    PreviousReference,
    RangeReference,
)


def _stack(n_frames=6, shape=(24, 32), seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n_frames, *shape), dtype=np.float32)


def _shifted_stack(n_frames=4, shape=(48, 48)):
    """Frames of a smooth texture shifted by (0.5 t, 0.25 t) px."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    frames = [
        np.sin((x + 0.5 * t) / 3) * np.cos((y + 0.25 * t) / 4)
        for t in range(n_frames)
    ]
    return np.stack(frames).astype(np.float32)


# -- parameters ----------------------------------------------------------


@pytest.mark.parametrize(
    'params',
    [
        FlowParams(),
        FlowParams.preset('fast'),
        FlowParams.preset('quality'),
        FlowParams(
            method='variational',
            sigma=3.3,
            reliability_threshold=3e-3,
            levels=12,
            alpha=20.0,
            iterations=77,
            warps=4,
        ),
        FlowParams(sigma=45.0, warps=60, alpha=5e3),  # beyond slider ranges
        FlowParams(motion_model='rigid'),
        FlowParams.preset('quality').replace(motion_model='affine'),
    ],
)
def test_parameters_round_trip(qtbot, params):
    panel = ParametersPanel()
    qtbot.addWidget(panel.native)
    panel.set_params(params)
    assert panel.params == params
    assert panel.sigma.value == pytest.approx(params.sigma)
    assert panel.method.value == params.method


def test_presets_set_every_widget(qtbot):
    panel = ParametersPanel()
    qtbot.addWidget(panel.native)
    seen = []
    panel.params_changed.connect(seen.append)
    for name in ('quality', 'fast', 'detail', 'balanced'):
        panel.preset.value = name
        assert panel.params == FlowParams.preset(name)
        assert panel.warps.value == PRESETS[name]['warps']
        assert seen[-1] == FlowParams.preset(name)
    # each method enables the fields it uses
    panel.preset.value = 'quality'
    assert panel.alpha.enabled and panel.iterations.enabled
    panel.preset.value = 'fast'
    assert not panel.alpha.enabled and not panel.iterations.enabled
    panel.preset.value = 'detail'
    assert panel.alpha.enabled and not panel.levels.enabled


def test_editing_a_value_makes_the_preset_custom(qtbot):
    panel = ParametersPanel()
    qtbot.addWidget(panel.native)
    seen = []
    panel.params_changed.connect(seen.append)
    default = FlowParams()  # the balanced preset
    panel.sigma.value = default.sigma + 0.5
    assert panel.preset.value == 'custom'
    assert seen[-1] == default.replace(sigma=default.sigma + 0.5)
    panel.sigma.value = default.sigma  # back to the balanced values
    assert panel.preset.value == 'balanced'
    # a dragged log slider gives a readable value
    panel.alpha.value = 5.0
    assert panel.params.alpha == float(f'{panel.alpha.value:.2g}')


def test_motion_model_choice_survives_presets(qtbot):
    panel = ParametersPanel()
    qtbot.addWidget(panel.native)
    seen = []
    panel.params_changed.connect(seen.append)
    panel.motion_model.value = 'translation'
    assert seen[-1] == FlowParams(motion_model='translation')
    assert panel.preset.value == 'balanced'  # a preset, whatever the model
    panel.preset.value = 'quality'
    assert panel.params == FlowParams.preset('quality').replace(
        motion_model='translation'
    )
    assert [label for label, _ in MOTION_MODEL_CHOICES][:2] == [
        'dense (every pixel)',
        'translation (drift)',
    ]


def test_temporal_smoothing_zero_is_off(qtbot):
    panel = ParametersPanel()
    qtbot.addWidget(panel.native)
    assert panel.temporal_sigma is None
    panel.temporal_smoothing.value = 1.5
    assert panel.temporal_sigma == 1.5


# -- reference -----------------------------------------------------------


def test_source_list_follows_added_renamed_removed_layers(qtbot):
    viewer = ViewerModel()
    panel = ReferencePanel(viewer)
    qtbot.addWidget(panel.native)
    assert panel.source.value is None
    first = viewer.add_image(_stack(), name='first')
    viewer.add_image(np.zeros((24, 32)), name='flat')  # 2D: not a source
    viewer.add_labels(np.zeros((6, 24, 32), int), name='labels')
    second = viewer.add_image(_stack(seed=1), name='second')
    assert panel.source.value == first  # the first stack is picked
    assert _labels(panel.source) == ['first', 'second']

    first.name = 'renamed'
    assert sorted(_labels(panel.source)) == ['renamed', 'second']
    assert panel.source.native.currentText() == 'renamed'

    viewer.layers.remove(first)
    assert list(panel.source.choices) == [None, second]
    assert panel.source.value is None or panel.source.value == second


def _labels(combo):
    return [
        label
        for label, value in combo._widget._mgui_get_choices()
        if value is not None
    ]


def test_lists_through_the_plugin_proxy(qtbot):
    viewer = ViewerModel()
    viewer.add_image(_stack(), name='stack')
    panel = ReferencePanel(PublicOnlyProxy(viewer))
    qtbot.addWidget(panel.native)
    assert panel.source.value.name == 'stack'
    viewer.add_image(_stack(seed=2), name='other channel')
    assert [layer.name for layer in panel.also_correct.choices] == [
        'other channel'
    ]


def test_inputs_exclude_outputs_and_mismatched_shapes(qtbot):
    viewer = ViewerModel()
    source = viewer.add_image(_stack(), name='source')
    output = viewer.add_image(_stack(), name='output')
    other = viewer.add_image(_stack(seed=3), name='channel 2')
    viewer.add_image(_stack(shape=(10, 10)), name='small')
    viewer.add_image(np.ones((24, 32)), name='template')
    # maps of motion (a sample's ground truth, a flow file's vx) are not
    # channels to correct
    truth = viewer.add_image(
        _stack(seed=4),
        name='ground truth vx',
        metadata={'flow_component': 'x'},
    )
    panel = ReferencePanel(viewer, is_output=lambda layer: layer == output)
    qtbot.addWidget(panel.native)
    panel.source.value = source
    assert list(panel.also_correct.choices) == [other]
    names = [layer.name for layer in panel.reference_layer.choices if layer]
    assert names == ['channel 2', 'template']
    assert truth not in panel.source.choices


def test_strategies_from_each_mode(qtbot):
    viewer = ViewerModel()
    stack = _stack(n_frames=30)
    viewer.add_image(stack, name='stack')
    template = viewer.add_image(stack[3] * 2, name='template')
    panel = ReferencePanel(viewer)
    qtbot.addWidget(panel.native)
    seen = []
    panel.reference_changed.connect(lambda: seen.append(1))

    panel.mode.value = 'frame'
    panel.frame.value = 4
    assert panel.strategy() == FrameReference(4)
    assert panel.frame.max == 29

    panel.mode.value = 'range'
    panel.frame_range.value = (2, 9)
    panel.statistic.value = 'median'
    panel.preregister.value = True
    assert panel.strategy() == RangeReference(
        2, 10, statistic='median', preregister=True
    )

    panel.mode.value = 'adaptive'
    panel.buffer_size.value = 10
    panel.update_interval.value = 5
    panel.update_weight.value = 0.5
    assert panel.strategy() == AdaptiveReference(10, 5, 0.5)

    panel.mode.value = 'previous'
    assert panel.strategy() == PreviousReference()
    assert panel.strategy().to_dict() == {'strategy': 'previous'}
    tooltip = panel.mode.native.itemData(
        panel.mode.native.currentIndex(), Qt.ItemDataRole.ToolTipRole
    )
    assert 'StackReg' in tooltip

    panel.mode.value = 'layer'
    panel.reference_layer.value = None
    with pytest.raises(ValueError, match='reference layer'):
        panel.strategy()
    panel.reference_layer.value = template
    strategy = panel.strategy()
    assert isinstance(strategy, ImageReference)
    np.testing.assert_array_equal(strategy.image, stack[3] * 2)
    assert seen  # every change is announced


def test_only_the_current_mode_shows_its_widgets(qtbot):
    viewer = ViewerModel()
    viewer.add_image(_stack(), name='stack')
    panel = ReferencePanel(viewer)
    qtbot.addWidget(panel.native)
    for mode, widgets in panel._mode_widgets.items():
        panel.mode.value = mode
        for other_mode, others in panel._mode_widgets.items():
            for widget in others:
                assert widget.native.isHidden() == (other_mode != mode)
        # the previous frame needs no setting
        assert bool(widgets) == (mode != 'previous')


def test_current_frame_button_takes_the_time_slider(qtbot):
    viewer = ViewerModel()
    viewer.add_image(_stack(n_frames=12), name='stack', scale=(2, 1, 1))
    panel = ReferencePanel(viewer)
    qtbot.addWidget(panel.native)
    panel.mode.value = 'adaptive'
    viewer.dims.set_current_step(0, 7)
    panel.current_frame_button.native.click()
    assert panel.mode.value == 'frame'
    assert panel.strategy() == FrameReference(7)


def test_rgb_source_offers_a_channel(qtbot):
    viewer = ViewerModel()
    panel = ReferencePanel(viewer)
    qtbot.addWidget(panel.native)
    assert panel.session_kwargs() == {}
    viewer.add_image(np.zeros((5, 16, 16, 3), np.uint8), name='rgb', rgb=True)
    assert panel.source.value.rgb
    assert not panel.rgb_channel.native.isHidden()
    assert panel.session_kwargs() == {
        'channel_axis': 3,
        'channel': (0.299, 0.587, 0.114),
    }
    panel.rgb_channel.value = 1
    assert panel.session_kwargs()['channel'] == 1


# -- run control ---------------------------------------------------------


def test_output_roles_and_enabled_state(qtbot):
    panel = RunControlPanel()
    qtbot.addWidget(panel.native)
    # roles come bottom to top, as the layers are stacked
    assert panel.roles == ['registered', 'displacement', 'vectors']
    panel.outputs['vx'].value = True
    panel.outputs['divergence'].value = True
    panel.outputs['vectors'].value = False
    assert panel.roles == [
        'registered',
        'divergence',
        'curl',
        'vx',
        'vy',
        'vz',
        'displacement',
    ]
    # what a run of images or of volumes shows of them
    assert roles_for(panel.roles, 2) == [
        'registered',
        'divergence',
        'curl',
        'vx',
        'vy',
        'displacement',
    ]
    assert roles_for(panel.roles, 3) == [
        'registered',
        'vx',
        'vy',
        'vz',
        'displacement',
    ]
    assert [box.text for box in panel.outputs.values()] == [
        'vectors',
        'displacement',
        'velocity',
        'vx / vy',
        'divergence / curl',
        'confidence',
        'reliability',
        'registered stack',
    ]
    panel.set_running(True)
    assert not panel.start_button.enabled
    assert panel.pause_button.enabled and panel.cancel_button.enabled
    assert not panel.batch_size.enabled
    assert not panel.outputs['displacement'].enabled
    panel.set_paused(True)
    assert panel.pause_button.text == 'Resume'
    panel.set_running(False)
    assert panel.start_button.enabled and not panel.cancel_button.enabled
    assert panel.batch_size.enabled


def test_vector_style_from_the_widgets(qtbot):
    panel = RunControlPanel()
    qtbot.addWidget(panel.native)
    panel.vector_step.value = 8
    assert panel.vector_style(1e-3).length is None  # automatic
    assert not panel.vector_length.enabled
    panel.auto_length.value = False
    assert panel.vector_length.enabled
    panel.vector_length.value = 3.0
    panel.intensity_percentile.value = 20.0
    panel.min_speed.value = 0.5
    assert panel.vector_style(1e-3) == VectorStyle(
        step=8,
        length=3.0,
        reliability_threshold=1e-3,
        intensity_percentile=20.0,
        min_speed=0.5,
        confidence_threshold=CONFIDENCE_THRESHOLD,
    )
    panel.mask_reliability.value = False
    panel.mask_untrusted.value = False
    panel.intensity_percentile.value = 0.0
    style = panel.vector_style(1e-3)
    assert style.reliability_threshold is None
    assert style.confidence_threshold is None
    assert style.intensity_percentile is None


def test_progress_text():
    assert format_progress(0, 40, 0.0) == '0 / 40 frames'
    assert format_progress(10, 40, 2.0) == '10 / 40 frames · ETA 6 s'
    assert format_progress(1, 100, 2.0) == '1 / 100 frames · ETA 3.3 min'
    assert format_progress(40, 40, 9.0) == '40 / 40 frames'
    assert format_progress(3, 12, 6.0, unit='volumes') == (
        '3 / 12 volumes · ETA 18 s'
    )


def test_stream_stores_each_batch_before_yielding_it():
    stack = _shifted_stack()
    extra = (stack * 1000).astype(np.uint16)
    session = MotionSession(stack, batch_size=3, extra_stacks=[extra])
    results = RunResults(session, ['displacement', 'registered'])
    batches = []
    for batch in stream_batches(session.iter_batches(), results=results):
        frames = slice(batch.start, batch.stop)
        np.testing.assert_array_equal(results.sink.w[frames], batch.w)
        np.testing.assert_array_equal(
            results.extras[0][frames], batch.extras[0]
        )
        batches.append(batch)
    assert [batch.start for batch in batches] == [0, 3]
    t = 3
    expected = np.clip(np.rint(warp(extra[t], results.sink.w[t])), 0, 65535)
    np.testing.assert_array_equal(results.extras[0][t], expected)
    assert results.limits['displacement'][1] == nice_ceiling(
        np.percentile(speed(batches[0].w)[:, ::4, ::4], 99.5) * 1.25
    )


def test_parameters_sent_to_the_stream_reach_the_session():
    session = MotionSession(_shifted_stack(), batch_size=2)
    stream = stream_batches(session.iter_batches())
    next(stream)
    stream.send(FlowParams.preset('fast'))
    assert session.params == FlowParams.preset('fast')
    stream.close()


# -- layers --------------------------------------------------------------


def test_vector_step_keeps_napari_comfortable():
    assert vector_step((512, 512), 16) == 16
    step = vector_step((4096, 4096), 4)
    assert np.ceil(4096 / step) ** 2 <= MAX_VECTORS
    assert np.ceil(4096 / (step - 1)) ** 2 > MAX_VECTORS


def test_frame_vectors_are_napari_projections():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 50, 2)).astype(np.float32)
    reliability = rng.random((40, 50)).astype(np.float32)
    style = VectorStyle(step=5, reliability_threshold=0.3, min_speed=0.5)
    data, lengths = frame_vectors(w, 9, style=style, reliability=reliability)
    grid = decimate_flow(
        w,
        step=5,
        reliability=reliability,
        reliability_threshold=0.3,
        min_speed=0.5,
    )
    assert data.shape == (len(grid.speed), 2, 3)
    assert np.all(data[:, 0, 0] == 9) and np.all(data[:, 1, 0] == 0)
    np.testing.assert_array_equal(data[:, 0, 1:], grid.positions)
    np.testing.assert_array_equal(data[:, 1, 1:], grid.displacements)
    np.testing.assert_array_equal(lengths, grid.speed)
    # [dy, dx] at the start point: row/col order of w's [x, y]
    y, x = data[0, 0, 1:].astype(int)
    np.testing.assert_array_equal(data[0, 1, 1:], w[y, x, ::-1])


@pytest.mark.parametrize(
    ('value', 'expected'),
    [(0.7, 1.0), (1.0, 1.0), (1.3, 2.0), (2.2, 2.5), (3.0, 5.0), (0.04, 0.05)],
)
def test_nice_ceiling(value, expected):
    assert nice_ceiling(value) == pytest.approx(expected)


class _Fields:
    def __init__(self, w, reliability):
        self.w, self.reliability = w, reliability


def test_field_maps_compute_what_napari_reads():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 20, 24, 2)).astype(np.float32)
    reliability = rng.random((6, 20, 24), dtype=np.float32)
    fields = _Fields(w, reliability)
    values = SPECS['displacement'].values
    speed_map = FieldMap(values, (6, 20, 24), fields)
    assert (speed_map.shape, speed_map.ndim, speed_map.size) == (
        (6, 20, 24),
        3,
        6 * 20 * 24,
    )
    expected = speed(w)
    np.testing.assert_array_equal(speed_map[3], expected[3])
    np.testing.assert_array_equal(speed_map[-1], expected[-1])
    for key in (
        (slice(2, 5), slice(1, 4), slice(None, None, 2)),
        (slice(4, 5), slice(None), slice(None)),  # what napari asks
        (Ellipsis, 3),
        (1, 7, 5),
    ):
        np.testing.assert_array_equal(speed_map[key], expected[key])
    np.testing.assert_array_equal(np.asarray(speed_map), expected)
    with pytest.raises(IndexError):
        speed_map[6]
    # the run's arrays are read at each access (the worker fills them)
    w[2] = 0
    assert not speed_map[2].any()

    # a previewed frame replaces the run's, without writing into it
    previewed = rng.normal(size=(1, 20, 24, 2)).astype(np.float32)
    speed_map.preview = (4, FrameFields(previewed, reliability[4:5]))
    np.testing.assert_array_equal(speed_map[4], speed(previewed)[0])
    np.testing.assert_array_equal(speed_map[3:6][1], speed(previewed)[0])
    np.testing.assert_array_equal(speed_map[5], expected[5])
    np.testing.assert_array_equal(fields.w[4], w[4])
    # no run: nothing to draw (NaN is transparent in napari)
    empty = FieldMap(values, (6, 20, 24))
    empty.preview = speed_map.preview
    assert np.isnan(empty[3]).all()
    np.testing.assert_array_equal(empty[4], speed(previewed)[0])

    # frames not computed yet, and pixels the vectors hide, show nothing
    speed_map.preview = None
    speed_map.done = np.array([True] * 5 + [False])
    assert np.isnan(speed_map[5]).all()
    speed_map.mask = functools.partial(
        display_mask, style=VectorStyle(reliability_threshold=0.5)
    )
    hidden = reliability[3] < 0.5
    assert 0 < hidden.sum() < hidden.size
    assert np.isnan(speed_map[3][hidden]).all()
    np.testing.assert_array_equal(speed_map[3][~hidden], expected[3][~hidden])


def _run_into(outputs, viewer, source, roles):
    session = MotionSession(np.asarray(source.data), batch_size=2)
    results = RunResults(session, roles)
    outputs.prepare(source, results, roles)
    for batch in stream_batches(session.iter_batches(), results=results):
        outputs.update(batch)
    return session


def test_output_layers_hold_the_results():
    viewer = ViewerModel()
    source = viewer.add_image(
        _shifted_stack(),
        name='cells',
        scale=(3.0, 0.5, 0.5),
        translate=(0, 10, 20),
        units=('s', 'um', 'um'),
        axis_labels=('time', 'row', 'column'),
    )
    outputs = OutputLayers(viewer)
    _run_into(outputs, viewer, source, ['vectors', 'displacement', 'vx', 'vy'])
    results = outputs.results
    names = [layer.name for layer in viewer.layers]
    assert names == [
        'cells',
        'cells reference',
        'cells vx',
        'cells vy',
        'cells displacement',
        'cells flow vectors',
    ]
    # heatmaps are computed from the run's arrays when napari reads them
    assert isinstance(viewer.layers['cells displacement'].data, FieldMap)
    np.testing.assert_array_equal(
        viewer.layers['cells displacement'].data, speed(results.sink.w)
    )
    np.testing.assert_array_equal(
        viewer.layers['cells vy'].data, results.sink.w[..., 1]
    )
    limit = outputs.displacement_limit
    assert viewer.layers['cells vx'].contrast_limits == [-limit, limit]
    assert viewer.layers['cells flow vectors'].edge_contrast_limits == (
        0.0,
        limit,
    )
    assert viewer.dims.ndim == 3
    for layer in viewer.layers:
        assert tuple(layer.units)[-2:] == tuple(source.units)[-2:]
        assert tuple(layer.translate)[-2:] == (10, 20)
        assert tuple(layer.axis_labels)[-2:] == ('row', 'column')


def test_a_second_run_reuses_and_recreates_layers():
    viewer = ViewerModel()
    source = viewer.add_image(_shifted_stack(), name='cells')
    outputs = OutputLayers(viewer)
    _run_into(
        outputs, viewer, source, ['vectors', 'displacement', 'registered']
    )
    speed_layer = viewer.layers['cells displacement']
    registered = viewer.layers['cells registered']
    viewer.layers.remove(registered)
    speed_layer.name = 'renamed by the user'
    _run_into(
        outputs, viewer, source, ['displacement', 'registered', 'vx', 'vy']
    )

    names = sorted(layer.name for layer in viewer.layers)
    assert names == sorted(
        [
            'cells',
            'cells reference',
            'cells displacement',
            'cells registered',
            'cells vx',
            'cells vy',
        ]
    )
    assert viewer.layers['cells displacement'] is speed_layer
    assert outputs['registered'] is not registered
    np.testing.assert_array_equal(
        viewer.layers['cells displacement'].data, speed(outputs.results.sink.w)
    )


# -- the dock ------------------------------------------------------------


def test_start_needs_a_source(qtbot):
    viewer = ViewerModel()
    widget = MotionCorrectionWidget(viewer)
    qtbot.addWidget(widget)
    assert not widget.run_panel.start_button.enabled
    viewer.add_image(_stack(), name='stack')
    assert widget.run_panel.start_button.enabled
    assert not widget.run_panel.save_button.enabled
    assert widget.worker is None


def test_deferred_layers_show_batches_that_came_first(qtbot):
    viewer = ViewerModel()
    source = viewer.add_image(_shifted_stack(), name='cells')
    outputs = OutputLayers(viewer)
    session = MotionSession(np.asarray(source.data), batch_size=2)
    roles = ['vectors', 'displacement']
    results = RunResults(session, roles)
    outputs.prepare(source, results, roles, deferred=True)
    assert outputs.pending
    assert [layer.name for layer in viewer.layers] == ['cells']
    for batch in stream_batches(session.iter_batches(), results=results):
        outputs.update(batch)  # before any layer exists
    qtbot.waitUntil(lambda: not outputs.pending, timeout=5000)

    assert [layer.name for layer in viewer.layers] == [
        'cells',
        'cells reference',
        'cells displacement',
        'cells flow vectors',
    ]
    w = results.sink.w
    np.testing.assert_array_equal(
        viewer.layers['cells displacement'].data, speed(w)
    )
    assert viewer.layers['cells displacement'].contrast_limits == list(
        results.limits['displacement']
    )
    np.testing.assert_array_equal(
        viewer.layers['cells reference'].data, session.reference_image
    )
    t = viewer.dims.current_step[0]
    data, _ = frame_vectors(
        w[t],
        t,
        style=outputs.style,
        reliability=results.sink.reliability[t],
        image=results.sink.registered[t],
    )
    assert len(data)
    np.testing.assert_array_equal(
        viewer.layers['cells flow vectors'].data, data
    )
