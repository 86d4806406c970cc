"""The "Feature tracking" dock: sparse tracks into a napari Tracks layer.

A thin controller over the headless :func:`napari_flowscope.tracking.
iter_tracks`: it reads the chosen layers, runs the generator in a
:class:`~napari_flowscope._qt.workers.Job` and draws what it yields. The
job only computes; the ``yielded`` handler (main thread) updates one
Tracks layer, coloured by speed, and one Points layer of the tracked
positions. Both are created on
the first frame of the first run and updated in place afterwards; a second
run replaces their contents.

In the "advect through dense flow" mode the flow is computed inside the
same worker with the preset chosen here: by a
:class:`~napari_flowscope.session.MotionSession` against frame 0 ("first
frame": points are carried by ``p + w_t(p)`` from the first frame, without
drift accumulating), or between consecutive frames ("previous frame":
steps are chained, which follows objects that travel further than the flow
reaches in one go).
"""

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Points, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog
from superqt.utils import qthrottled

from napari_flowscope._qt.docking import scroll_contents, share_tabs
from napari_flowscope._qt.layers import layer_geometry
from napari_flowscope._qt.workers import start_job
from napari_flowscope.roi import AREA_SHAPE_TYPES, shape_mask
from napari_flowscope.tracking import TrackingParams, Tracks, iter_tracks

if TYPE_CHECKING:
    import napari

__all__ = ['FeatureTrackingWidget', 'stream_tracks']

MODE_CHOICES = [
    ('pyramidal LK', 'lucas_kanade'),
    ('advect through dense flow', 'dense_flow'),
]
FLOW_PRESETS = ('fast', 'balanced', 'quality')
FLOW_REFERENCE_CHOICES = [
    ('first frame', 'first'),
    ('previous frame', 'previous'),
]
DRIFT_CHOICES = [
    ('auto (template / object centre)', 'auto'),
    ('template', 'template'),
    ('auto + spot centre', 'spot'),
    ('off', 'off'),
]
LK_ONLY = (
    'win_size',
    'max_level',
    'max_iterations',
    'epsilon',
    'fb_threshold',
)
SPEED_COLORMAP = 'plasma'
# Rebuilding a Tracks layer costs O(all points); redraw at most this often
# while streaming (the last frame is always drawn).
REDRAW_INTERVAL_MS = 200


def stream_tracks(stack, params, seeds, mask, flow_params):
    """Worker body: :func:`iter_tracks` as a plain generator (no layers)."""
    yield from iter_tracks(
        stack, params=params, seeds=seeds, mask=mask, flow_params=flow_params
    )


class FeatureTrackingWidget(Container):
    """Track Shi-Tomasi corners or seed points through a time-lapse.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer

    Attributes
    ----------
    worker : Job or None
        The running job, None when idle (as in the motion dock); tests
        take it right after :meth:`start` and wait on its ``finished``.
    tracks : Tracks or None
        The result of the last run (partial while running or if cancelled).
    tracks_layer, points_layer : napari.layers.Tracks, napari.layers.Points
        The output layers, None before the first run.
    """

    def __init__(self, napari_viewer: 'napari.viewer.Viewer'):
        self._viewer = napari_viewer
        self.worker = None
        self.tracks = None
        self.tracks_layer = None
        self.points_layer = None
        self._steps = []
        self._geometry = {}
        self._source_name = ''

        defaults = TrackingParams()
        self.image = ComboBox(
            label='image',
            choices=self._layer_choices(Image),
            tooltip='(T, Y, X) time-lapse to track.',
        )
        self.seeds = ComboBox(
            label='seeds (Points)',
            choices=self._layer_choices(Points),
            nullable=True,
            value=None,
            tooltip='Start one track at each point ([y, x] on the first '
            'frame or [t, y, x]); none: detect corners instead.',
        )
        self.roi = ComboBox(
            label='ROI (Shapes)',
            choices=self._layer_choices(Shapes),
            nullable=True,
            value=None,
            tooltip='Detect corners only inside the rectangles, polygons '
            'and ellipses of this layer.',
        )
        self.mode = ComboBox(
            label='mode',
            choices=MODE_CHOICES,
            value=defaults.mode,
            tooltip='Pyramidal LK: follow each point frame to frame. '
            'Dense flow: carry points through the optical flow measured '
            'against frame 0 (no drift, slower).',
        )
        self.flow_preset = ComboBox(
            label='flow preset',
            choices=FLOW_PRESETS,
            value='balanced',
            tooltip='Dense mode: parameters of the optical flow.',
        )
        self.flow_reference = ComboBox(
            label='flow against',
            choices=FLOW_REFERENCE_CHOICES,
            value=defaults.flow_reference,
            tooltip='Dense mode: first frame (no drift; for motion the '
            'flow can reach) or previous frame (chained; for cells that '
            'travel far).',
        )
        self.max_corners = SpinBox(
            label='max corners',
            min=1,
            max=100_000,
            value=defaults.max_corners,
            tooltip='Most points tracked at once.',
        )
        self.quality_level = FloatSpinBox(
            label='quality level',
            min=0.001,
            max=1.0,
            step=0.005,
            value=defaults.quality_level,
            tooltip='Corners weaker than this fraction of the strongest '
            'are ignored.',
        )
        self.min_distance = FloatSpinBox(
            label='min distance (px)',
            min=0.0,
            max=500.0,
            step=1.0,
            value=defaults.min_distance,
            tooltip='Between detected corners and to points being tracked.',
        )
        self.block_size = SpinBox(
            label='block size (px)',
            min=1,
            max=99,
            value=defaults.block_size,
            tooltip='Window of the corner measure.',
        )
        self.mask_percentile = FloatSpinBox(
            label='brighter than pct.',
            min=0.0,
            max=99.99,
            step=1.0,
            value=0.0,
            tooltip='Detect only where a frame is brighter than this '
            'percentile of its intensities (0: everywhere).',
        )
        self.win_size = SpinBox(
            label='window (px)',
            min=3,
            max=201,
            value=defaults.win_size,
            tooltip='Lucas-Kanade window at each pyramid level.',
        )
        self.max_level = SpinBox(
            label='pyramid levels',
            min=0,
            max=8,
            value=defaults.max_level,
            tooltip='Levels above full resolution; more follows faster '
            'motion.',
        )
        self.max_iterations = SpinBox(
            label='max iterations',
            min=1,
            max=1000,
            value=defaults.max_iterations,
            tooltip='Termination: at most this many iterations per level.',
        )
        self.epsilon = FloatSpinBox(
            label='epsilon (px)',
            min=1e-4,
            max=1.0,
            step=0.005,
            value=defaults.epsilon,
            tooltip='Termination: stop when an update is shorter.',
        )
        self.fb_threshold = FloatSpinBox(
            label='fb threshold (px)',
            min=0.0,
            max=100.0,
            step=0.1,
            value=defaults.fb_threshold,
            tooltip='Drop points whose forward-backward round trip misses '
            'by more (0: no check).',
        )
        self.drift_correction = ComboBox(
            label='drift correction',
            choices=DRIFT_CHOICES,
            value=defaults.drift_correction,
            tooltip="After each step, fit every point to its track's own "
            'template so that long tracks stay on their feature. "auto": '
            'a point on the centre of a bright object larger than the '
            "template (a nucleus) follows the object's centroid instead. "
            '"+ spot centre": also fit a Gaussian to spots (beads, '
            'vesicles, puncta). Not needed with dense flow against the '
            'first frame.',
        )
        self.template_size = SpinBox(
            label='template (px)',
            min=5,
            max=201,
            step=2,
            value=defaults.template_size,
            tooltip="Side of each track's template (odd); about twice "
            "the feature's diameter for spots.",
        )
        self.redetect_every = SpinBox(
            label='re-detect every',
            min=0,
            max=100_000,
            value=defaults.redetect_every,
            tooltip='Frames between detections that replace lost points '
            '(0: never).',
        )
        self.tail_length = SpinBox(
            label='tail length',
            min=1,
            max=10_000,
            value=10,
            tooltip='Frames of track shown behind each point.',
        )
        self.run_button = PushButton(text='Run')
        self.cancel_button = PushButton(text='Cancel', enabled=False)
        self.export_button = PushButton(text='Export CSV…', enabled=False)
        self.status = Label(value='ready')
        buttons = Container(
            layout='horizontal',
            widgets=[self.run_button, self.cancel_button, self.export_button],
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        super().__init__(
            widgets=[
                self.image,
                self.seeds,
                self.roi,
                self.mode,
                self.flow_preset,
                self.flow_reference,
                self.max_corners,
                self.quality_level,
                self.min_distance,
                self.block_size,
                self.mask_percentile,
                self.win_size,
                self.max_level,
                self.max_iterations,
                self.epsilon,
                self.fb_threshold,
                self.drift_correction,
                self.template_size,
                self.redetect_every,
                self.tail_length,
                buttons,
                self.status,
            ]
        )
        # beside the other docks it must not demand its full height
        scroll_contents(self)
        share_tabs(self)
        self._redraw = qthrottled(
            self._draw, timeout=REDRAW_INTERVAL_MS, parent=self.native
        )
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.export_button.changed.connect(self._on_export_clicked)
        self.mode.changed.connect(self._update_enabled)
        self.flow_reference.changed.connect(self._update_enabled)
        self.drift_correction.changed.connect(self._update_enabled)
        self.tail_length.changed.connect(self._on_tail_length)
        self._follow_layer_list()
        self._update_enabled()

    def _follow_layer_list(self) -> None:
        # Docked, napari resets the layer choices itself; connected here
        # too so the widget also works when built directly, and
        # disconnected with the Qt widget so a closed dock is never called.
        events = self._viewer.layers.events
        emitters = (
            events.inserted,
            events.removed,
            events.reordered,
            events.renamed,
        )
        for emitter in emitters:
            emitter.connect(self.reset_choices)

        def disconnect():
            for emitter in emitters:
                emitter.disconnect(self.reset_choices)
            # no handler may touch the layers of a closing viewer
            job, self.worker = self.worker, None
            if job is not None:
                job.stop()

        self.native.destroyed.connect(disconnect)

    # ------------------------------------------------------------ inputs
    @property
    def params(self) -> TrackingParams:
        """The :class:`TrackingParams` the widgets show."""
        fb = float(self.fb_threshold.value)
        percentile = float(self.mask_percentile.value)
        return TrackingParams(
            mode=self.mode.value,
            flow_reference=self.flow_reference.value,
            max_corners=int(self.max_corners.value),
            quality_level=float(self.quality_level.value),
            min_distance=float(self.min_distance.value),
            block_size=int(self.block_size.value),
            mask_percentile=percentile if percentile > 0 else None,
            win_size=int(self.win_size.value),
            max_level=int(self.max_level.value),
            max_iterations=int(self.max_iterations.value),
            epsilon=float(self.epsilon.value),
            fb_threshold=fb if fb > 0 else None,
            drift_correction=self.drift_correction.value,
            # Templates have a centre pixel: an even size means the next
            # odd one.
            template_size=int(self.template_size.value) | 1,
            redetect_every=int(self.redetect_every.value),
        )

    def _layer_choices(self, layer_type):
        def choices(_widget=None):
            return [
                (layer.name, layer)
                for layer in self._viewer.layers
                if isinstance(layer, layer_type)
            ]

        return choices

    def _inputs(self):
        """Arrays for the worker, or None after telling the user why not."""
        image = self.image.value
        if image is None:
            show_error('Feature tracking: choose an image layer.')
            return None
        if image.rgb or image.multiscale or image.ndim != 3:
            show_error(
                f'Feature tracking needs a (T, Y, X) image; '
                f'{image.name!r} has {image.ndim} dimensions'
                f'{" (RGB)" if image.rgb else ""}.'
            )
            return None
        frame_shape = tuple(image.data.shape[1:])
        seeds = None
        if self.seeds.value is not None:
            if not len(self.seeds.value.data):
                show_error(
                    f'Feature tracking: {self.seeds.value.name!r} has no '
                    f'points; add some or choose no seeds layer.'
                )
                return None
            seeds = _to_pixels(self.seeds.value, self.seeds.value.data, image)
        mask = None
        if self.roi.value is not None:
            mask = _roi_mask(self.roi.value, image, frame_shape)
            if mask is None:
                show_error(
                    f'Feature tracking: {self.roi.value.name!r} has no '
                    f'rectangle, polygon or ellipse to use as ROI.'
                )
                return None
        flow_params = None
        if self.mode.value == 'dense_flow':
            from napari_flowscope.engine import FlowParams

            flow_params = FlowParams.preset(self.flow_preset.value)
        return image, (image.data, self.params, seeds, mask, flow_params)

    # ----------------------------------------------------------- running
    def start(self) -> None:
        """Start tracking with the current settings (the Run button)."""
        if self.worker is not None:
            return
        try:
            inputs = self._inputs()
        except ValueError as error:
            show_error(f'Feature tracking: {error}')
            return
        if inputs is None:
            return
        image, arguments = inputs
        self._geometry = layer_geometry(image)
        self._source_name = image.name
        self._steps = []
        self.tracks = None
        n_frames = image.data.shape[0]
        worker = start_job(
            stream_tracks(*arguments),
            handlers={
                'yielded': self._on_step,
                'errored': self._on_error,
                'finished': self._on_finished,
            },
            progress={'total': n_frames, 'desc': 'Feature tracking'},
            start=False,
        )
        self.worker = worker
        self._set_running(True)
        self.status.value = f'tracking {image.name!r}…'
        # Start on the next turn of the event loop, as superqt does for a
        # button click: whoever called start() can still connect to the
        # worker's signals before the first one is emitted.
        QTimer.singleShot(0, worker.start)

    def cancel(self) -> None:
        """Stop the running worker after its current frame."""
        if self.worker is not None:
            # Also works before the worker's thread has started.
            self.worker.cancel()
            self.status.value = 'cancelling…'

    def _on_step(self, step) -> None:
        self._steps.append(step)
        self.status.value = f'frame {step.t + 1}: {len(step.track_ids)} points'
        self._redraw()

    def _on_error(self, error) -> None:
        # napari 0.9.2 workers do not relay their errors to the notification
        # manager themselves (the mixin that would is never initialised).
        self.status.value = f'failed: {error}'
        show_error(f'Feature tracking failed: {error}')

    def _on_finished(self) -> None:
        self._redraw.cancel()
        self._draw()
        self.worker = None
        self._set_running(False)
        if not self.status.value.startswith('failed'):
            n = 0 if self.tracks is None else len(self.tracks.track_ids)
            self.status.value = f'ready ({n} tracks)'

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        self.export_button.enabled = not running and bool(self._steps)

    def _update_enabled(self, _value=None) -> None:
        dense = self.mode.value == 'dense_flow'
        self.flow_preset.enabled = dense
        self.flow_reference.enabled = dense
        for name in LK_ONLY:
            getattr(self, name).enabled = not dense
        # Points carried from frame 0 by one flow lookup do not drift.
        anchored = dense and self.flow_reference.value == 'first'
        self.drift_correction.enabled = not anchored
        self.template_size.enabled = (
            not anchored and self.drift_correction.value != 'off'
        )

    # ------------------------------------------------------------ output
    def _draw(self) -> None:
        if not self._steps:
            return
        self.tracks = Tracks.from_steps(self._steps)
        if not len(self.tracks):
            # napari's Tracks layer cannot be empty: show nothing rather
            # than the previous run's tracks.
            self._remove_outputs()
            return
        features = {
            name: np.asarray(values)
            for name, values in self.tracks.features.items()
        }
        layers = self._viewer.layers
        if self.tracks_layer is None or self.tracks_layer not in layers:
            self.tracks_layer = self._viewer.add_tracks(
                self.tracks.data,
                features=features,
                color_by='speed',
                colormap=SPEED_COLORMAP,
                tail_length=int(self.tail_length.value),
                name=f'{self._source_name} tracks',
                **self._geometry,
            )
        else:
            layer = self.tracks_layer
            # Replacing data resets the features; colour by track id
            # meanwhile so napari never looks for a missing column.
            layer.color_by = 'track_id'
            layer.data = self.tracks.data
            layer.features = features
            layer.color_by = 'speed'
            self._apply_geometry(layer)
        positions = self.tracks.data[:, 1:]
        if self.points_layer is None or self.points_layer not in layers:
            self.points_layer = self._viewer.add_points(
                positions,
                size=6,
                face_color='transparent',
                border_color='yellow',
                name=f'{self._source_name} track points',
                **self._geometry,
            )
        else:
            self.points_layer.data = positions
            self._apply_geometry(self.points_layer)

    def _remove_outputs(self) -> None:
        for layer in (self.tracks_layer, self.points_layer):
            if layer is not None and layer in self._viewer.layers:
                self._viewer.layers.remove(layer)
        self.tracks_layer = self.points_layer = None

    def _apply_geometry(self, layer) -> None:
        for name, value in self._geometry.items():
            setattr(layer, name, value)

    def _on_tail_length(self, value) -> None:
        if self.tracks_layer is not None:
            self.tracks_layer.tail_length = int(value)

    def export_csv(self, path):
        """Write the last run's tracks (see :meth:`Tracks.to_csv`)."""
        if self.tracks is None:
            raise ValueError('no tracks to export; run the tracker first')
        return self.tracks.to_csv(path)

    def _on_export_clicked(self, _value=None) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self.native, 'Export tracks', 'tracks.csv', 'CSV (*.csv)'
        )
        if path:
            self.export_csv(path)
            show_info(f'Tracks written to {path}')


def _to_pixels(layer, coordinates, image):
    """Coordinates of ``layer`` as pixel indices of ``image``.

    Axes are aligned from the right, as napari does; scale and translate
    are honoured (rotation and shear are not). Returns the trailing two or
    three axes: ``[y, x]`` or ``[t, y, x]``.
    """
    coordinates = np.asarray(coordinates, np.float64)
    k = min(coordinates.shape[1], 3)
    world = (
        coordinates[:, -k:] * np.asarray(layer.scale)[-k:]
        + np.asarray(layer.translate)[-k:]
    )
    return (world - np.asarray(image.translate)[-k:]) / np.asarray(
        image.scale
    )[-k:]


def _roi_mask(shapes_layer, image, frame_shape):
    """Union of the area shapes as a (Y, X) mask, None if there are none."""
    mask = np.zeros(frame_shape, bool)
    found = False
    for vertices, shape_type in zip(
        shapes_layer.data, shapes_layer.shape_type, strict=True
    ):
        if shape_type not in AREA_SHAPE_TYPES:
            continue
        pixels = _to_pixels(shapes_layer, vertices, image)
        mask |= shape_mask(pixels, shape_type, frame_shape)
        found = True
    return mask if found else None
