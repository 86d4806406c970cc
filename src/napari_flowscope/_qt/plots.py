"""The "Motion over time" dock: live plots of a run, per-ROI curves.

It only listens: :func:`napari_flowscope._qt.events.run_events` tells it
when a run starts, each :class:`~napari_flowscope.session.FlowBatch` as it
arrives (on the main thread) and when the run ends. The main thread only
stores each batch's statistics; a worker thread computes the ROI means and
draws the figure with matplotlib's Agg renderer, at most a few times per
second, and the dock shows the image. On a 2-core machine a full Agg draw of
the three axes takes 50-130 ms and the ROI means of a whole 500 x 512² run
0.3-1.4 s, too long for the event loop (budget: 50 ms per event). Agg holds
the GIL while it draws, so even on its thread a full draw stalls the main
thread: the axes limits are rounded out to tick values and the figure is
drawn whole only when they (or the dock's size or theme) change; otherwise
only the curves, cursors and legends are drawn again over the saved axes
(blitting), about 9 ms instead of 57 ms for a 500-frame run.

Curves: the displacement from the reference and the velocity (frame to
frame), each as the mean and maximum over the frame, in µm and µm/s (say)
when the source layer has a pixel size and a frame interval, px and px/frame
otherwise (:class:`~napari_flowscope.session.MotionUnits`), the NCC with the
reference before and after correction, and per-ROI curves.

Regions of interest are the area shapes (rectangles, polygons, ellipses)
of a Shapes layer; their mean displacement per frame is computed by the
headless :mod:`napari_flowscope.roi`.
"""

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from napari.layers import Image, Shapes
from napari.utils.notifications import show_warning
from napari.utils.theme import get_theme
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import qthrottled

from napari_flowscope._qt.docking import share_tabs
from napari_flowscope._qt.events import run_events
from napari_flowscope._qt.workers import start_job
from napari_flowscope.engine import COLLAPSED_TRUSTED_FRACTION
from napari_flowscope.roi import (
    AREA_SHAPE_TYPES,
    RoiMotion,
    roi_masks,
    roi_motion_xy,
    write_roi_csv,
)
from napari_flowscope.session.stats import (
    DISPLACEMENT_STATS,
    STAT_NAMES,
    VELOCITY_STATS,
    MotionUnits,
)

if TYPE_CHECKING:
    import napari

__all__ = ['MotionPlotWidget']

ROI_COMPONENTS = ('dx', 'dy', 'displacement')
# A redraw costs tens of ms of CPU that the run needs too: at most 4 per s.
REDRAW_INTERVAL_MS = 250
ROI_COLORS = tuple(colormaps['tab10'].colors)
# Frames whose match collapsed are shaded in this colour.
COLLAPSED_COLOR = '#e8453c'


class MotionPlotWidget(QWidget):
    """Per-frame displacement, velocity, registration quality and ROI
    motion of a run.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose runs are plotted.
    parent : QWidget, optional

    Attributes
    ----------
    flow_cache_bytes : int
        ROIs drawn or changed during or after a run get the curves of the
        frames already done from the run's flow (``RunInfo.flow``, no
        copy). A run that keeps no flow gets a copy here when it needs at
        most this many bytes; otherwise such ROIs get curves from the
        next batch on.
    render_count : int
        Images of the plot shown so far.
    """

    flow_cache_bytes = 256 << 20

    def __init__(self, napari_viewer: 'napari.viewer.Viewer', parent=None):
        super().__init__(parent)
        self._viewer = napari_viewer
        self._roi_layer = None
        self._roi_names = []
        self._masks = None
        self._run = None
        self._units = MotionUnits()
        self._flow = None  # own copy of the flow, for runs that keep none
        self._flow_xy = None  # (dx, dy) stacks of the run, (T, Y, X)
        # ROI means are computed by the worker that draws: chunks of flow
        # waiting for it, batches to copy into self._flow, and a version
        # that tells results for outdated ROIs apart.
        self._roi_chunks = []
        self._flow_copies = []
        self._roi_version = 0
        self._allocate(0)

        self._cursor_frame = None
        self._figure = _MotionFigure()
        self._job = None
        self._render_pending = False
        self._alive = True
        self.render_count = 0

        self._build_controls()
        self._redraw = qthrottled(
            self._render, timeout=REDRAW_INTERVAL_MS, leading=True, parent=self
        )
        self._roi_update = qthrottled(
            self._recompute_rois, timeout=REDRAW_INTERVAL_MS, parent=self
        )
        self._connect()
        self._refresh_roi_layers()
        self._on_current_step()
        share_tabs(self)  # with the tracking dock, not a third slice

    # ----------------------------------------------------------------- UI
    def sizeHint(self):
        # Qt shares napari's dock column by size hints: ask for enough to
        # read three stacked axes, no more than the motion dock gets.
        return QSize(360, 400)

    def _build_controls(self):
        self._roi_layer_combo = QComboBox()
        self._roi_layer_combo.setToolTip(
            'Shapes layer whose rectangles, polygons and ellipses are the '
            'regions of interest'
        )
        self._new_roi_button = QPushButton('New ROI layer')
        self._new_roi_button.setToolTip(
            'Add an empty Shapes layer with the scale of the image, ready '
            'to draw rectangles'
        )
        self._export_button = QPushButton('Export CSV…')
        self._export_button.setToolTip(
            'Save the per-ROI mean displacement of every frame (px)'
        )
        self._clear_button = QPushButton('Clear')
        self._clear_button.setToolTip('Forget the curves of the last run')

        roi_row = QHBoxLayout()
        roi_row.addWidget(QLabel('ROIs'))
        roi_row.addWidget(self._roi_layer_combo, stretch=1)
        roi_row.addWidget(self._new_roi_button)
        button_row = QHBoxLayout()
        button_row.addStretch(1)
        button_row.addWidget(self._export_button)
        button_row.addWidget(self._clear_button)

        # Ignored: the rendered image follows the label's size, never
        # the other way round.
        self._plot_label = QLabel()
        self._plot_label.setSizePolicy(
            QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored
        )
        # small enough to share napari's dock column with the other docks
        self._plot_label.setMinimumSize(240, 150)
        self._plot_label.setAlignment(Qt.AlignmentFlag.AlignCenter)

        layout = QVBoxLayout(self)
        layout.addLayout(roi_row)
        layout.addWidget(self._plot_label, stretch=1)
        layout.addLayout(button_row)

        self._roi_layer_combo.currentIndexChanged.connect(
            self._on_roi_layer_chosen
        )
        self._new_roi_button.clicked.connect(self.new_roi_layer)
        self._export_button.clicked.connect(self._on_export_clicked)
        self._clear_button.clicked.connect(self.clear)
        self._roi_tooltips = {
            widget: widget.toolTip()
            for widget in (
                self._roi_layer_combo,
                self._new_roi_button,
                self._export_button,
            )
        }

    def _offer_rois(self, offer: bool) -> None:
        """Enable the ROI controls, or grey them out saying why (ROIs
        are drawn on 2-D frames; a volume run has no ROI curves)."""
        for widget, tooltip in self._roi_tooltips.items():
            widget.setEnabled(offer)
            widget.setToolTip(
                tooltip
                if offer
                else 'ROI curves are for 2-D time-lapses: this run '
                'registers volumes (T, Z, Y, X)'
            )

    def _connect(self):
        viewer = self._viewer
        events = run_events(viewer)
        connections = [
            (events.started, self._on_started),
            (events.batch, self._on_batch),
            (events.finished, self._on_finished),
            (viewer.dims.events.current_step, self._on_current_step),
            (viewer.events.theme, self._redraw),
            (viewer.layers.events.inserted, self._refresh_roi_layers),
            (viewer.layers.events.removed, self._refresh_roi_layers),
        ]
        for emitter, callback in connections:
            emitter.connect(callback)

        def forget(*_):
            # The viewer (and a render job) can outlive this dock: stop
            # listening once Qt has deleted the widgets the callbacks use.
            # A render still running is not waited for (it holds no Qt
            # object and its result is dropped): waiting here, in Qt's
            # teardown with the GIL held, froze napari when that render
            # needed the GIL to finish.
            self._alive = False
            _disconnect_all(connections + self._layer_connections)
            job, self._job = self._job, None
            if job is not None:
                job.stop(timeout_s=0)

        self.destroyed.connect(forget)
        self._layer_connections = []

    # ---------------------------------------------------------- public API
    @property
    def series(self):
        """The plotted values, one float32 array per curve.

        Returns
        -------
        dict of str to ndarray
            ``frame`` and ``time`` (T,); ``mean_displacement``,
            ``max_displacement`` (T,) in ``units.displacement_unit``;
            ``mean_velocity``, ``max_velocity`` (T,) in
            ``units.velocity_unit``; ``ncc_before``, ``ncc_after`` (T,);
            ``trusted_fraction`` (T,) and ``collapsed`` (T,) bool, the
            frames shaded red; ``roi_dx``, ``roi_dy``,
            ``roi_displacement`` (T, R) in ``units.displacement_unit``.
            Frames not received yet are NaN (and the first frame's
            velocity); ROI curves fill in as the drawing worker computes
            them (see `drawing`).
        """
        stats = self._plotted_stats()
        series = {'frame': np.arange(self._n_frames), 'time': self._times()}
        series.update(stats)
        series['collapsed'] = stats['trusted_fraction'] < np.float32(
            COLLAPSED_TRUSTED_FRACTION
        )
        for name, values in self._plotted_roi().items():
            series[f'roi_{name}'] = values
        return series

    @property
    def units(self):
        """The :class:`~napari_flowscope.session.MotionUnits` plotted."""
        return self._units

    @property
    def roi_names(self):
        """Names of the plotted ROIs, ``roi_<index in the Shapes layer>``."""
        return list(self._roi_names)

    @property
    def roi_layer(self):
        """The Shapes layer whose shapes are the ROIs, or None."""
        return self._roi_layer

    @roi_layer.setter
    def roi_layer(self, layer):
        index = self._roi_layer_combo.findText(layer.name) if layer else 0
        if index < 0:
            raise ValueError(f'{layer.name!r} is not a Shapes layer here')
        self._roi_layer_combo.setCurrentIndex(index)

    def clear(self):
        """Forget the last run's curves (the ROI layer stays)."""
        self._run = None
        self._units = MotionUnits()
        self._offer_rois(True)
        self._flow = self._flow_xy = None
        self._forget_roi_work()
        self._allocate(0)
        self._redraw()

    def export_csv(self, path):
        """Write the per-ROI curves computed so far.

        Columns ``roi, frame, time, dx, dy, speed``; see
        :func:`napari_flowscope.roi.write_roi_csv`. ROI means are computed
        off the main thread: after a run or an ROI edit, the curves are
        complete once `drawing` is False.

        Parameters
        ----------
        path : str or Path

        Returns
        -------
        Path

        Raises
        ------
        ValueError
            When there are no ROI curves to export.
        """
        if not self._roi_names or self._n_frames == 0:
            raise ValueError(
                'no ROI curves to export: draw rectangles, polygons or '
                'ellipses on a Shapes layer and run a motion correction'
            )
        motion = RoiMotion(**{name: self._roi[name] for name in self._roi})
        return write_roi_csv(
            path, motion, times=self._times(), names=self._roi_names
        )

    def new_roi_layer(self):
        """Add an empty Shapes layer matching the image, and select it.

        Returns
        -------
        napari.layers.Shapes
        """
        source = self._source_layer()
        kwargs = {'ndim': 2}
        if source is not None:
            kwargs = {
                'ndim': source.ndim,
                'scale': source.scale,
                'translate': source.translate,
                'units': source.units,
                'axis_labels': source.axis_labels,
            }
        layer = self._viewer.add_shapes(
            name='ROIs',
            edge_color='yellow',
            face_color='transparent',
            edge_width=2,
            **kwargs,
        )
        layer.mode = 'add_rectangle'
        self.roi_layer = layer
        return layer

    # ------------------------------------------------------ run listeners
    def _on_started(self, info):
        self._run = info
        self._units = MotionUnits.from_scale(info.scale, info.units)
        self._offer_rois(not _is_volume_run(info))
        self._allocate(info.n_frames)
        self._flow = None
        # ROIs are drawn on 2-D frames; a volume run has no ROI curves.
        flow = None if _is_volume_run(info) else info.flow
        flow_bytes = info.n_frames * int(np.prod(info.frame_shape)) * 8
        if (
            flow is None
            and not _is_volume_run(info)
            and flow_bytes <= self.flow_cache_bytes
        ):
            # zeros: the pages are mapped lazily, so this costs nothing
            # (np.full would write hundreds of MB on the main thread);
            # frames not done yet are told by their NaN stats.
            flow = self._flow = np.zeros(
                (info.n_frames, *info.frame_shape, 2), np.float32
            )
        self._flow_xy = None if flow is None else (flow[..., 0], flow[..., 1])
        self._forget_roi_work()
        self._set_masks()
        self._redraw()

    def _on_batch(self, batch):
        rows = slice(batch.start, batch.stop)
        if batch.stop > self._n_frames:
            self._grow(batch.stop)
        for name in STAT_NAMES:
            self._stats[name][rows] = getattr(batch.stats, name)
        if self._flow is not None:
            self._flow_copies.append((batch.start, batch.w))
        if self._masks is None and self._roi_layer is not None:
            self._set_masks(batch.w.shape[1:3])
        if self._roi_names:
            w = batch.w
            self._roi_chunks.append((batch.start, w[..., 0], w[..., 1]))
        self._redraw()

    def _on_finished(self):
        # The last batch must show even if it fell inside a throttle gap.
        self._redraw.flush()

    def _on_current_step(self, event=None):
        dims = self._viewer.dims
        if dims.ndim < 3:
            return
        self._cursor_frame = dims.current_step[0]
        self._redraw()

    # -------------------------------------------------------------- ROIs
    def _refresh_roi_layers(self, event=None):
        names = [
            layer.name
            for layer in self._viewer.layers
            if isinstance(layer, Shapes)
        ]
        current = self._roi_layer.name if self._roi_layer else None
        combo = self._roi_layer_combo
        combo.blockSignals(True)
        combo.clear()
        combo.addItem('(none)')
        combo.addItems(names)
        combo.setCurrentIndex(max(combo.findText(current or ''), 0))
        combo.blockSignals(False)
        if current is not None and current not in names:
            self._on_roi_layer_chosen()

    def _on_roi_layer_chosen(self, index=None):
        _disconnect_all(self._layer_connections)
        self._layer_connections = []
        name = self._roi_layer_combo.currentText()
        layer = next(
            (lyr for lyr in self._viewer.layers if lyr.name == name), None
        )
        self._roi_layer = layer
        if layer is not None:
            self._layer_connections = [
                (layer.events.data, self._on_shapes_changed),
                (layer.events.name, self._refresh_roi_layers),
            ]
            for emitter, callback in self._layer_connections:
                emitter.connect(callback)
        self._recompute_rois()

    def _on_shapes_changed(self, event=None):
        # napari emits 'adding'/'changing' while the mouse drags, then
        # 'added'/'changed'/'removed' once; only finished edits count.
        action = str(getattr(event, 'action', 'changed'))
        if action.endswith('ing'):
            return
        self._roi_update()

    def _recompute_rois(self):
        """Masks from the current shapes, curves from the run's flow."""
        self._set_masks()
        if self._roi_names and self._flow_xy is not None:
            self._roi_chunks.append((0, *self._flow_xy))
        self._redraw()

    def _forget_roi_work(self):
        self._roi_version += 1
        self._roi_chunks = []
        self._flow_copies = []

    def _set_masks(self, frame_shape=None):
        """Rasterise the ROIs; their curves restart empty (NaN)."""
        self._roi_version += 1
        self._roi_chunks = []
        self._masks = self._make_masks(frame_shape)
        shape = (self._n_frames, len(self._roi_names))
        self._roi = {
            name: np.full(shape, np.nan, np.float32) for name in ROI_COMPONENTS
        }

    def _make_masks(self, frame_shape=None):
        """Masks of the area shapes on the flow grid, or None."""
        layer = self._roi_layer
        self._roi_names = []
        if _is_volume_run(self._run):
            return None
        if frame_shape is None:
            frame_shape = self._run.frame_shape if self._run else None
        if self._flow_xy is not None:
            frame_shape = self._flow_xy[0].shape[1:]
        if layer is None or frame_shape is None:
            return None
        indices = [
            index
            for index, shape_type in enumerate(layer.shape_type)
            if shape_type in AREA_SHAPE_TYPES
        ]
        self._roi_names = [f'roi_{index}' for index in indices]
        vertices = [
            self._to_flow_pixels(layer, layer.data[i]) for i in indices
        ]
        types = [layer.shape_type[i] for i in indices]
        return roi_masks(vertices, types, tuple(frame_shape))

    def _to_flow_pixels(self, layer, vertices):
        """Shape vertices (data coordinates) to ``[y, x]`` flow pixels."""
        world = np.array([layer.data_to_world(v) for v in vertices])
        scale, translate = np.ones(2), np.zeros(2)
        source = self._source_layer()
        if source is not None:
            scale = np.asarray(source.scale[-2:])
            translate = np.asarray(source.translate[-2:])
        elif self._run is not None:
            scale = np.asarray(self._run.scale[-2:])
        return (world[:, -2:] - translate) / scale

    def _source_layer(self):
        """The run's source layer, else the selected or first image."""
        layers = self._viewer.layers
        if self._run is not None and self._run.source_name in layers:
            return layers[self._run.source_name]
        active = layers.selection.active
        if isinstance(active, Image):
            return active
        return next((lyr for lyr in layers if isinstance(lyr, Image)), None)

    def _on_export_clicked(self):
        path, _ = QFileDialog.getSaveFileName(
            self, 'Export ROI curves', 'roi_motion.csv', 'CSV (*.csv)'
        )
        if not path:
            return
        try:
            self.export_csv(path)
        except (ValueError, OSError) as error:
            show_warning(f'ROI curves not exported: {error}')

    # ------------------------------------------------------------ storage
    def _allocate(self, n_frames):
        self._n_frames = n_frames
        self._stats = {
            name: np.full(n_frames, np.nan, np.float32) for name in STAT_NAMES
        }
        shape = (n_frames, len(self._roi_names))
        self._roi = {
            name: np.full(shape, np.nan, np.float32) for name in ROI_COMPONENTS
        }

    def _grow(self, n_frames):
        # Batches of a run whose start this dock did not see (docked late).
        extra = n_frames - self._n_frames
        for name in STAT_NAMES:
            self._stats[name] = np.concatenate(
                [self._stats[name], np.full(extra, np.nan, np.float32)]
            )
        for name in ROI_COMPONENTS:
            padding = np.full((extra, len(self._roi_names)), np.nan)
            self._roi[name] = np.concatenate(
                [self._roi[name], padding.astype(np.float32)]
            )
        self._n_frames = n_frames

    def _times(self):
        return self._units.times(self._n_frames)

    def _plotted_stats(self):
        """The statistics in the plotted units (copies)."""
        plotted = {}
        for name, values in self._stats.items():
            if name in DISPLACEMENT_STATS:
                values = self._units.displacement(values)
            elif name in VELOCITY_STATS:
                values = self._units.velocity(values)
            plotted[name] = values.copy()
        return plotted

    def _plotted_roi(self):
        """ROI curves in the displacement unit (copies)."""
        return {
            name: self._units.displacement(values).copy()
            for name, values in self._roi.items()
        }

    # ------------------------------------------------------------ drawing
    @property
    def figure(self):
        """The matplotlib Figure of the last image shown (read-only use)."""
        return self._figure.figure

    @property
    def drawing(self):
        """True while ROI curves or an image of the plot are due."""
        return bool(
            self._job is not None
            or self._render_pending
            or self._roi_chunks
            or self._flow_copies
        )

    def _x(self):
        return self._times()

    def _snapshot(self):
        """Everything a render needs, copied: the worker shares nothing."""
        theme = get_theme(self._viewer.theme)
        ratio = self._plot_label.devicePixelRatioF()
        size = self._plot_label.size()
        units = self._units
        cursor = None
        if self._cursor_frame is not None:
            cursor = float(self._cursor_frame) * units.frame_interval
        return _PlotData(
            x=self._x(),
            stats=self._plotted_stats(),
            # in px: the worker adds the curves it computes
            roi={name: self._roi[name].copy() for name in ROI_COMPONENTS},
            roi_scale=units.pixel_size,
            roi_names=tuple(self._roi_names),
            cursor=cursor,
            x_label=(
                f'time ({units.time_unit})'
                if units.timed
                else 'volume'
                if _is_volume_run(self._run)
                else 'frame'
            ),
            displacement_unit=units.displacement_unit,
            velocity_unit=units.velocity_unit,
            panel=theme.background.as_hex(),
            canvas=theme.canvas.as_hex(),
            text=theme.text.as_hex(),
            highlight=theme.highlight.as_hex(),
            width=max(int(size.width() * ratio), 1),
            height=max(int(size.height() * ratio), 1),
            dpi=100 * ratio,
        )

    def _render(self, *_):
        """Compute due ROI means and draw, in a worker; one at a time."""
        if self._job is not None:
            self._render_pending = True
            return
        self._render_pending = False
        job = _Job(
            plot=self._snapshot(),
            masks=self._masks,
            roi_chunks=tuple(self._roi_chunks),
            flow_copies=tuple(self._flow_copies),
            flow=self._flow,
            roi_version=self._roi_version,
        )
        self._roi_chunks, self._flow_copies = [], []
        # One render at a time (the figure is not thread-safe), on a daemon
        # thread: nothing ever waits for it (see `forget` in `_connect`).
        self._job = start_job(
            functools.partial(_run_job, self._figure, job),
            handlers={
                'returned': self._on_job_done,
                'errored': self._on_render_error,
                'finished': self._on_job_finished,
            },
            napari_task=False,
        )

    def _on_job_done(self, result):
        rgba, roi_results, roi_version = result
        if not self._alive:
            return
        if roi_version == self._roi_version:
            for frames, curves in roi_results:
                for name in ROI_COMPONENTS:
                    self._roi[name][frames] = curves[name]
        self._show_image(rgba)

    def _show_image(self, rgba):
        height, width = rgba.shape[:2]
        image = QImage(
            rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888
        )
        pixmap = QPixmap.fromImage(image)
        ratio = self._plot_label.devicePixelRatioF()
        target = self._plot_label.size() * ratio
        if pixmap.size() != target:
            # resized while drawing: stretch until the next image comes
            pixmap = pixmap.scaled(
                target,
                Qt.AspectRatioMode.IgnoreAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
        pixmap.setDevicePixelRatio(ratio)
        self._plot_label.setPixmap(pixmap)
        self.render_count += 1

    def _on_render_error(self, error):
        show_warning(f'Motion over time: the plot could not be drawn: {error}')

    def _on_job_finished(self):
        self._job = None
        if self._alive and self.drawing:
            self._redraw()

    def resizeEvent(self, event):
        super().resizeEvent(event)
        self._redraw()


@dataclass(frozen=True)
class _Job:
    """What one worker call does: ROI means, then an image of the plot."""

    plot: '_PlotData'
    masks: np.ndarray | None
    # (first frame, dx, dy): flow stacks (n, Y, X) to reduce over masks
    roi_chunks: tuple
    # (first frame, w): batches to copy into `flow`
    flow_copies: tuple
    flow: np.ndarray | None
    roi_version: int


def _run_job(figure, job):
    """Worker side: no Qt, no napari, nothing shared with the main thread
    but arrays it does not write (``job.flow`` is the worker's alone)."""
    for start, w in job.flow_copies:
        job.flow[start : start + len(w)] = w
    # Frames done when the job was made: a chunk of the run's whole flow
    # also holds frames written later or not at all (zeros).
    done = ~np.isnan(job.plot.stats['mean_displacement'])
    roi_results = []
    for start, dx, dy in job.roi_chunks:
        motion = roi_motion_xy(dx, dy, job.masks)
        rows = np.flatnonzero(done[start : start + len(dx)])
        curves = {name: getattr(motion, name)[rows] for name in ROI_COMPONENTS}
        roi_results.append((start + rows, curves))
        for name in ROI_COMPONENTS:
            job.plot.roi[name][start + rows] = curves[name]
    return figure.render(job.plot), roi_results, job.roi_version


@dataclass(frozen=True)
class _PlotData:
    """A copy of what one image of the plot shows (see `_MotionFigure`)."""

    x: np.ndarray
    stats: dict  # in the plotted units
    roi: dict  # in px
    roi_scale: float  # plotted ROI unit per px
    roi_names: tuple
    cursor: float | None
    x_label: str
    displacement_unit: str
    velocity_unit: str
    panel: str
    canvas: str
    text: str
    highlight: str
    width: int
    height: int
    dpi: float


class _MotionFigure:
    """The matplotlib figure; drawn by one thread at a time, no Qt.

    Four axes share the time axis: the mean and max displacement from the
    reference, the mean and max velocity, the NCC before and after
    correction, and the ROI curves (displacement solid, dx dashed, dy
    dotted, one colour per ROI).  Curves, cursors and legends are
    animated artists: a render draws the axes only when their layout
    changes and blits the rest over a saved copy of them otherwise.
    """

    #: Curves of each statistics axes, in order, with their legend labels.
    STAT_AXES = (
        (('mean_displacement', 'mean'), ('max_displacement', 'max')),
        (('mean_velocity', 'mean'), ('max_velocity', 'max')),
        (('ncc_before', 'before'), ('ncc_after', 'after')),
    )

    def __init__(self):
        self.figure = Figure()
        FigureCanvasAgg(self.figure)
        self.axes = tuple(
            self.figure.subplots(len(self.STAT_AXES) + 1, 1, sharex=True)
        )
        self.lines = {}
        for axes, curves in zip(self.axes, self.STAT_AXES, strict=False):
            for index, (name, label) in enumerate(curves):
                self.lines[name] = axes.plot(
                    [], [], label=label, alpha=0.6 if index else 1.0
                )[0]
        self.roi_lines = []
        self._roi_names = ()
        self.bands = []
        self._flag_in_legend = False
        self.cursors = [axes.axvline(0, lw=1, ls='--') for axes in self.axes]
        for artist in (*self.lines.values(), *self.cursors):
            artist.set_animated(True)
        for axes in self.axes[:-1]:
            # drawn after the curves, as in a full draw
            axes.legend(loc='upper right', fontsize='x-small').set_animated(
                True
            )
        self._layout = None  # what the saved axes image was drawn for
        self._axes_image = None

    def render(self, data):
        """Draw ``data``; return the image, shape (H, W, 4) uint8 RGBA."""
        for name, line in self.lines.items():
            line.set_data(data.x, data.stats[name])
        roi = {
            name: values * np.float32(data.roi_scale)
            for name, values in data.roi.items()
        }
        self._set_roi_lines(data, roi)
        for cursor in self.cursors:
            cursor.set_visible(data.cursor is not None)
            if data.cursor is not None:
                cursor.set_xdata([data.cursor, data.cursor])
        self._flag_collapsed(data)
        limits = self._limits(data, roi)
        layout = (
            data.width,
            data.height,
            data.dpi,
            data.x_label,
            data.displacement_unit,
            data.velocity_unit,
            data.panel,
            data.canvas,
            data.text,
            data.highlight,
            data.roi_names,
            limits,
        )
        canvas = self.figure.canvas
        if layout != self._layout:
            self._draw_axes(data, limits)
            self._axes_image = canvas.copy_from_bbox(self.figure.bbox)
            self._layout = layout
        else:
            canvas.restore_region(self._axes_image)
        for axes in self.axes:
            if not axes.get_visible():
                continue
            for artist in (
                *axes.collections,  # collapsed frames, under the curves
                *axes.get_lines(),
                axes.get_legend(),
            ):
                if artist is not None and artist.get_visible():
                    axes.draw_artist(artist)
        return np.array(canvas.buffer_rgba())

    def _flag_collapsed(self, data):
        """Red bands over the frames whose match collapsed (fewer than
        30 % of the textured pixels trusted), on every axes, and a legend
        entry on the NCC axes while there are any."""
        for band in self.bands:
            band.remove()
        self.bands = []
        collapsed = data.stats['trusted_fraction'] < np.float32(
            COLLAPSED_TRUSTED_FRACTION
        )
        frames = np.flatnonzero(collapsed)
        if frames.size:
            step = float(data.x[1] - data.x[0]) if data.x.size > 1 else 1.0
            # runs of consecutive frames, one bar each
            breaks = np.flatnonzero(np.diff(frames) > 1) + 1
            spans = [
                (float(data.x[run[0]]) - step / 2, step * len(run))
                for run in np.split(frames, breaks)
            ]
            for axes in self.axes:
                self.bands.append(
                    axes.broken_barh(
                        spans,
                        (0, 1),
                        transform=axes.get_xaxis_transform(),
                        color=COLLAPSED_COLOR,
                        alpha=0.35,
                        linewidth=0,
                        animated=True,
                        label='_collapsed',
                    )
                )
        flagged = bool(frames.size)
        if flagged != self._flag_in_legend:
            ncc_axes = self.axes[2]
            handles, labels = ncc_axes.get_legend_handles_labels()
            handles = [h for h in handles if not isinstance(h, Patch)]
            labels = labels[: len(handles)]
            if flagged:
                handles.append(Patch(color=COLLAPSED_COLOR, alpha=0.35))
                labels.append('match collapsed')
            ncc_axes.legend(
                handles, labels, loc='upper right', fontsize='x-small'
            ).set_animated(True)
            self._flag_in_legend = flagged
            self._layout = None  # the legend's colours follow the theme

    def _limits(self, data, roi):
        """x limits, then y limits of each axes rounded out to ticks.

        Rounded limits change only when the curves leave them, a few
        times per run, so most renders can blit.
        """
        x_limits = (0.0, 1.0)
        if data.x.size > 1:
            x_limits = (float(data.x[0]), float(data.x[-1]))
        curves = [
            [data.stats[name] for name, _ in axes_curves]
            for axes_curves in self.STAT_AXES
        ]
        curves.append([roi[name] for name in ROI_COMPONENTS])
        y_limits = []
        for values in curves:
            finite = np.concatenate([np.ravel(v) for v in values])
            finite = finite[np.isfinite(finite)]
            if finite.size == 0:
                y_limits.append((0.0, 1.0))
                continue
            low, high = float(finite.min()), float(finite.max())
            if high - low < 1e-6 * max(1.0, abs(high)):
                # a flat curve: centred in a unit range
                low, high = low - 0.5, high + 0.5
            ticks = MaxNLocator(nbins=4).tick_values(low, high)
            y_limits.append((float(ticks[0]), float(ticks[-1])))
        return (x_limits, *y_limits)

    def _draw_axes(self, data, limits):
        """Draw everything but the animated curves, cursors and legends."""
        figure = self.figure
        figure.set_dpi(data.dpi)
        figure.set_size_inches(data.width / data.dpi, data.height / data.dpi)
        titles = (
            f'displacement from the reference ({data.displacement_unit})',
            f'velocity, frame to frame ({data.velocity_unit})',
            'NCC with the reference',
            f'ROI displacement ({data.displacement_unit})',
        )
        for axes, title in zip(self.axes, titles, strict=True):
            axes.set_title(
                title, loc='left', fontsize='x-small', pad=2, color=data.text
            )
            axes.tick_params(labelsize='x-small')
        self.axes[2].set_ylabel('NCC', fontsize='x-small')
        # The ROI axes take room only when there are ROIs.
        visible = self.axes if data.roi_names else self.axes[:-1]
        self.axes[-1].set_visible(bool(data.roi_names))
        for axes in self.axes:
            last = axes is visible[-1]
            axes.tick_params(labelbottom=last)
            axes.set_xlabel(data.x_label if last else '', fontsize='x-small')
        x_limits, *y_limits = limits
        self.axes[0].set_xlim(*x_limits)
        for axes, y in zip(self.axes, y_limits, strict=True):
            axes.set_ylim(*y)
        self._apply_theme(data)
        self._fit_layout(data, visible)
        figure.canvas.draw()

    def _fit_layout(self, data, visible):
        """Stack the visible axes, leaving room for their titles, tick
        labels and axis labels whatever their size (three-decimal NCC
        ticks, the last x tick label, a narrow or short dock)."""
        figure = self.figure
        width, height = data.width, data.height
        pad = 3 * data.dpi / 100  # px
        renderer = figure.canvas.get_renderer()
        # First a provisional layout, to measure what sticks out of each.
        self._place(visible, width, height, (40, 8, 12, 30), [12] * 3)
        outside = []
        for axes in visible:
            box = axes.get_position().transformed(figure.transFigure)
            # the axes' decorations only (ticks, labels, title): lines and
            # legends stay inside
            tight = axes.get_tightbbox(
                renderer, bbox_extra_artists=[], for_layout_only=True
            )
            outside.append(
                (
                    box.x0 - tight.x0,
                    tight.x1 - box.x1,
                    tight.y1 - box.y1,
                    box.y0 - tight.y0,
                )
            )
        left = max(o[0] for o in outside) + pad
        right = max(o[1] for o in outside) + pad
        top = outside[0][2] + pad
        bottom = outside[-1][3] + pad
        gaps = [
            below[3] + above[2] + pad
            for below, above in zip(outside, outside[1:], strict=False)
        ]
        self._place(visible, width, height, (left, right, top, bottom), gaps)

    @staticmethod
    def _place(visible, width, height, margins, gaps):
        """Axes one above the other, equally high, margins and gaps in px."""
        left, right, top, bottom = margins
        gaps = list(gaps)[: len(visible) - 1]
        inner_width = max(width - left - right, 1.0)
        inner_height = max(height - top - bottom - sum(gaps), len(visible))
        each = inner_height / len(visible)
        y = height - top
        for index, axes in enumerate(visible):
            y -= each
            axes.set_position(
                [left / width, y / height, inner_width / width, each / height]
            )
            if index < len(gaps):
                y -= gaps[index]

    def _set_roi_lines(self, data, roi):
        axes = self.axes[-1]
        if data.roi_names != self._roi_names:
            for line in self.roi_lines:
                line.remove()
            styles = {'displacement': '-', 'dx': '--', 'dy': ':'}
            self.roi_lines = [
                axes.plot(
                    [],
                    [],
                    ls=styles[component],
                    color=ROI_COLORS[index % len(ROI_COLORS)],
                    # one legend entry per ROI: its colour
                    label=name if component == 'displacement' else '_',
                    animated=True,
                )[0]
                for index, name in enumerate(data.roi_names)
                for component in ROI_COMPONENTS
            ]
            if axes.get_legend() is not None:
                axes.get_legend().remove()
            if data.roi_names:
                axes.legend(
                    loc='upper right',
                    fontsize='x-small',
                    ncols=min(len(data.roi_names), 3),
                    title='|d| —  dx --  dy ··',
                    title_fontsize='x-small',
                ).set_animated(True)
            self._roi_names = data.roi_names
        lines = iter(self.roi_lines)
        for index in range(len(data.roi_names)):
            for component in ROI_COMPONENTS:
                next(lines).set_data(data.x, roi[component][:, index])

    def _apply_theme(self, data):
        self.figure.set_facecolor(data.panel)
        for axes in self.axes:
            axes.set_facecolor(data.canvas)
            axes.tick_params(colors=data.text, which='both')
            axes.yaxis.label.set_color(data.text)
            axes.xaxis.label.set_color(data.text)
            for spine in axes.spines.values():
                spine.set_color(data.text)
            legend = axes.get_legend()
            if legend is not None:
                legend.get_frame().set_facecolor(data.panel)
                legend.get_frame().set_edgecolor(data.text)
                legend.get_title().set_color(data.text)
                for text in legend.get_texts():
                    text.set_color(data.text)
        for cursor in self.cursors:
            cursor.set_color(data.highlight)


def _disconnect_all(connections):
    for emitter, callback in connections:
        try:
            emitter.disconnect(callback)
        except (RuntimeError, ValueError, TypeError):
            # Already gone with its layer or viewer.
            continue


def _is_volume_run(info):
    """Whether a run (its RunInfo, or None) registers volumes."""
    return info is not None and len(info.frame_shape) == 3
