"""The "Motion over time" dock: live plots of a run, per-ROI curves.

It only listens: :func:`napari_flowscope._qt.events.run_events` tells it
when a run starts, each :class:`~napari_flowscope.session.FlowBatch` as it
arrives (on the main thread) and when the run ends. The numbers are stored
as they come, the plot is redrawn at most a few times per second, so a fast
stream of batches never stalls napari's event loop.

Regions of interest are the area shapes (rectangles, polygons, ellipses)
of a Shapes layer; their mean displacement and speed per frame are computed
by the headless :mod:`napari_flowscope.roi`.
"""

from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Shapes
from napari.utils.notifications import show_warning
from napari.utils.theme import get_theme
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import qthrottled

from napari_flowscope._qt.events import run_events
from napari_flowscope.roi import (
    AREA_SHAPE_TYPES,
    RoiMotion,
    roi_masks,
    roi_motion,
    write_roi_csv,
)

if TYPE_CHECKING:
    import napari

__all__ = ['MotionPlotWidget']

STAT_NAMES = ('mean_speed', 'max_speed', 'ncc_before', 'ncc_after')
ROI_COMPONENTS = ('dx', 'dy', 'speed')
# Agg redraws of three axes take tens of ms: at most one every 250 ms.
REDRAW_INTERVAL_MS = 250
ROI_COLORS = tuple(colormaps['tab10'].colors)


class MotionPlotWidget(QWidget):
    """Per-frame speed, registration quality and ROI motion of a run.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose runs are plotted.
    parent : QWidget, optional

    Attributes
    ----------
    flow_cache_bytes : int
        The flow of a run is kept (so that redrawn ROIs get curves for the
        frames already done) when it needs at most this many bytes; larger
        runs keep only the per-ROI means, and ROIs changed mid-run get
        curves from the next batch on.
    """

    flow_cache_bytes = 1 << 30

    def __init__(self, napari_viewer: 'napari.viewer.Viewer', parent=None):
        super().__init__(parent)
        self._viewer = napari_viewer
        self._roi_layer = None
        self._roi_names = []
        self._masks = None
        self._run = None
        self._flow = None
        self._allocate(0)

        self._build_controls()
        self._build_figure()
        self._redraw = qthrottled(
            self._draw, timeout=REDRAW_INTERVAL_MS, leading=True, parent=self
        )
        self._roi_update = qthrottled(
            self._recompute_rois, timeout=REDRAW_INTERVAL_MS, parent=self
        )
        self._connect()
        self._refresh_roi_layers()
        self._apply_theme()
        self._on_current_step()
        self._draw()

    # ----------------------------------------------------------------- UI
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
            'Save the per-ROI mean displacement and speed of every frame'
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

        layout = QVBoxLayout(self)
        layout.addLayout(roi_row)
        self._layout = layout
        self._button_row = button_row

        self._roi_layer_combo.currentIndexChanged.connect(
            self._on_roi_layer_chosen
        )
        self._new_roi_button.clicked.connect(self.new_roi_layer)
        self._export_button.clicked.connect(self._on_export_clicked)
        self._clear_button.clicked.connect(self.clear)

    def _build_figure(self):
        self._figure = Figure(figsize=(4, 6))
        self._canvas = FigureCanvasQTAgg(self._figure)
        self._canvas.setMinimumHeight(360)
        speed_axes, ncc_axes, roi_axes = self._figure.subplots(
            3, 1, sharex=True
        )
        self._figure.subplots_adjust(
            left=0.16, right=0.97, top=0.97, bottom=0.09, hspace=0.12
        )
        self._axes = (speed_axes, ncc_axes, roi_axes)
        speed_axes.set_ylabel('speed (px)')
        ncc_axes.set_ylabel('NCC')
        roi_axes.set_ylabel('ROI (px)')
        self._lines = {
            'mean_speed': speed_axes.plot([], [], label='mean')[0],
            'max_speed': speed_axes.plot([], [], label='max', alpha=0.6)[0],
            'ncc_before': ncc_axes.plot([], [], label='before')[0],
            'ncc_after': ncc_axes.plot([], [], label='after')[0],
        }
        self._roi_lines = []
        self._cursors = [axes.axvline(0, lw=1, ls='--') for axes in self._axes]
        for axes in self._axes[:2]:
            axes.legend(loc='upper right', fontsize='small')
        self._layout.addWidget(self._canvas, stretch=1)
        self._layout.addLayout(self._button_row)

    def _connect(self):
        viewer = self._viewer
        events = run_events(viewer)
        connections = [
            (events.started, self._on_started),
            (events.batch, self._on_batch),
            (events.finished, self._on_finished),
            (viewer.dims.events.current_step, self._on_current_step),
            (viewer.events.theme, self._apply_theme),
            (viewer.layers.events.inserted, self._refresh_roi_layers),
            (viewer.layers.events.removed, self._refresh_roi_layers),
        ]
        for emitter, callback in connections:
            emitter.connect(callback)
        # The viewer outlives this dock when it is closed: stop listening
        # before Qt deletes the widgets the callbacks draw on.
        self.destroyed.connect(
            lambda *_: _disconnect_all(connections + self._layer_connections)
        )
        self._connections = connections
        self._layer_connections = []

    # ---------------------------------------------------------- public API
    @property
    def series(self):
        """The plotted values, one float32 array per curve.

        Returns
        -------
        dict of str to ndarray
            ``frame`` and ``time`` (T,); ``mean_speed``, ``max_speed``,
            ``ncc_before``, ``ncc_after`` (T,); ``roi_dx``, ``roi_dy``,
            ``roi_speed`` (T, R) in pixels. Frames not received yet are NaN.
        """
        series = {'frame': np.arange(self._n_frames), 'time': self._times()}
        for name in STAT_NAMES:
            series[name] = self._stats[name].copy()
        for name in ROI_COMPONENTS:
            series[f'roi_{name}'] = self._roi[name].copy()
        return series

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
        self._flow = None
        self._allocate(0)
        self._draw()

    def export_csv(self, path):
        """Write the per-ROI curves of the frames received so far.

        Columns ``roi, frame, time, dx, dy, speed``; see
        :func:`napari_flowscope.roi.write_roi_csv`.

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
        self._allocate(info.n_frames)
        flow_bytes = info.n_frames * int(np.prod(info.frame_shape)) * 8
        self._flow = None
        if flow_bytes <= self.flow_cache_bytes:
            self._flow = np.full(
                (info.n_frames, *info.frame_shape, 2), np.nan, np.float32
            )
        self._set_masks()
        self._redraw()

    def _on_batch(self, batch):
        rows = slice(batch.start, batch.stop)
        if batch.stop > self._n_frames:
            self._grow(batch.stop)
        for name in STAT_NAMES:
            self._stats[name][rows] = getattr(batch.stats, name)
        if self._flow is not None:
            self._flow[rows] = batch.w
        if self._masks is None and self._roi_layer is not None:
            self._set_masks(batch.w.shape[1:3])
        if self._masks is not None and len(self._masks):
            motion = roi_motion(batch.w, self._masks)
            for name in ROI_COMPONENTS:
                self._roi[name][rows] = getattr(motion, name)
        self._redraw()

    def _on_finished(self):
        # The last batch must show even if it fell inside a throttle gap.
        self._redraw.flush()

    def _on_current_step(self, event=None):
        dims = self._viewer.dims
        if dims.ndim < 3:
            return
        frame = dims.current_step[0]
        x = frame * self._frame_interval() if self._in_time_units() else frame
        for cursor in self._cursors:
            cursor.set_xdata([x, x])
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
        combo.setCurrentIndex(combo.findText(current) if current else 0)
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
        """Masks from the current shapes, curves from the kept flow."""
        self._set_masks()
        if self._masks is not None and self._flow is not None:
            done = np.flatnonzero(~np.isnan(self._stats['mean_speed']))
            if done.size and len(self._masks):
                motion = roi_motion(self._flow[done], self._masks)
                for name in ROI_COMPONENTS:
                    self._roi[name][done] = getattr(motion, name)
        self._redraw()

    def _set_masks(self, frame_shape=None):
        """Rasterise the ROIs; their curves restart empty (NaN)."""
        self._masks = self._make_masks(frame_shape)
        shape = (self._n_frames, len(self._roi_names))
        self._roi = {
            name: np.full(shape, np.nan, np.float32) for name in ROI_COMPONENTS
        }

    def _make_masks(self, frame_shape=None):
        """Masks of the area shapes on the flow grid, or None."""
        layer = self._roi_layer
        self._roi_names = []
        if frame_shape is None:
            frame_shape = self._run.frame_shape if self._run else None
        if self._flow is not None:
            frame_shape = self._flow.shape[1:3]
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

    def _frame_interval(self):
        return float(self._run.scale[0]) if self._run else 1.0

    def _time_unit(self):
        unit = str(self._run.units[0]) if self._run else 'pixel'
        return {'second': 's', 'pixel': ''}.get(unit, unit)

    def _in_time_units(self):
        return bool(self._time_unit()) or self._frame_interval() != 1.0

    def _times(self):
        frames = np.arange(self._n_frames, dtype=np.float32)
        return frames * np.float32(self._frame_interval())

    # ------------------------------------------------------------ drawing
    def _draw(self):
        x = (
            self._times()
            if self._in_time_units()
            else np.arange(self._n_frames)
        )
        for name, line in self._lines.items():
            line.set_data(x, self._stats[name])
        self._sync_roi_lines()
        for line, (component, index) in zip(
            self._roi_lines, self._roi_line_keys(), strict=True
        ):
            line.set_data(x, self._roi[component][:, index])
        unit = self._time_unit() or 's'
        self._axes[-1].set_xlabel(
            f'time ({unit})' if self._in_time_units() else 'frame'
        )
        for axes in self._axes:
            axes.relim(visible_only=True)
            axes.autoscale_view()
        if self._n_frames > 1:
            self._axes[-1].set_xlim(x[0], x[-1])
        self._canvas.draw_idle()

    def _roi_line_keys(self):
        return [
            (component, index)
            for index in range(len(self._roi_names))
            for component in ROI_COMPONENTS
        ]

    def _sync_roi_lines(self):
        keys = self._roi_line_keys()
        if len(keys) == len(self._roi_lines) and all(
            line.get_label().startswith(self._label(*key))
            for line, key in zip(self._roi_lines, keys, strict=True)
        ):
            return
        for line in self._roi_lines:
            line.remove()
        axes = self._axes[-1]
        styles = {'speed': '-', 'dx': '--', 'dy': ':'}
        self._roi_lines = [
            axes.plot(
                [],
                [],
                ls=styles[component],
                color=ROI_COLORS[index % len(ROI_COLORS)],
                label=self._label(component, index),
            )[0]
            for component, index in keys
        ]
        legend = axes.get_legend()
        if legend is not None:
            legend.remove()
        if self._roi_lines:
            axes.legend(loc='upper right', fontsize='x-small', ncols=3)
            self._apply_theme()

    def _label(self, component, index):
        return f'{self._roi_names[index]} {component}'

    def _apply_theme(self, event=None):
        theme = get_theme(self._viewer.theme)
        background = theme.canvas.as_hex()
        foreground = theme.text.as_hex()
        panel = theme.background.as_hex()
        self._figure.set_facecolor(panel)
        for axes in self._axes:
            axes.set_facecolor(background)
            axes.tick_params(colors=foreground, which='both')
            axes.yaxis.label.set_color(foreground)
            axes.xaxis.label.set_color(foreground)
            for spine in axes.spines.values():
                spine.set_color(foreground)
            legend = axes.get_legend()
            if legend is not None:
                legend.get_frame().set_facecolor(panel)
                legend.get_frame().set_edgecolor(foreground)
                for text in legend.get_texts():
                    text.set_color(foreground)
        for cursor in self._cursors:
            cursor.set_color(theme.highlight.as_hex())
        self._canvas.draw_idle()


def _disconnect_all(connections):
    for emitter, callback in connections:
        try:
            emitter.disconnect(callback)
        except (RuntimeError, ValueError, TypeError):
            # Already gone with its layer or viewer.
            continue
