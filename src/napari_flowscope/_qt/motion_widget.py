"""The "Motion correction" dock: reference, parameters, run.

A thin controller over :class:`napari_flowscope.session.MotionSession`:
the session runs in a :class:`~napari_flowscope._qt.workers.Job` (it only
computes and yields), and the main-thread handlers here write each batch
into layers
(:class:`~napari_flowscope._qt.layers.OutputLayers`) and announce it on
the viewer's :func:`~napari_flowscope._qt.events.run_events`.

Scripts drive exactly what the buttons drive::

    widget = MotionCorrectionWidget(viewer)
    widget.start()          # returns at once; widget.worker is running
    widget.pause(); widget.resume(); widget.cancel()
    widget.save('results/')  # after a complete run
"""

# No ``from __future__ import annotations``: napari reads the viewer
# annotation of ``__init__`` as written (NAPARI.md section 0.3).

import contextlib
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFrame,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_flowscope.formats import available_memory, format_size
from napari_flowscope.session import MappedDiskSink, MemorySink, MotionSession

from .events import RunInfo, run_events
from .layers import (
    FieldMap,
    OutputLayers,
    RunResults,
    current_frame,
    roles_for,
)
from .parameters import ParametersPanel
from .preview import PreviewController
from .reference import ReferencePanel
from .run_control import RunControlPanel, save_run, stream_batches
from .workers import start_job

__all__ = ['MotionCorrectionWidget']

#: Results that would take more than this fraction of the memory available
#: when a run starts go to a results folder and are shown from disk.
DISK_RESULTS_ABOVE = 0.5


class MotionCorrectionWidget(QWidget):
    """Dock widget: estimate optical flow and register a time-lapse.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (napari passes a ``PublicOnlyProxy``); a
        ``napari.components.ViewerModel`` works too (tests).
    parent : QWidget, optional

    Attributes
    ----------
    worker : Job or None
        The running session (None when idle).
    save_worker : Job or None
        The running save (None when idle).
    session : MotionSession or None
        The session of the last run.
    results : RunResults or None
        Everything the last run produced (also backing its layers);
        ``results.sink`` is a :class:`~napari_flowscope.session.MemorySink`.
    complete : bool
        Whether the last run went through every frame.
    outputs : OutputLayers
        The layers runs write into.
    """

    def __init__(self, napari_viewer: 'napari.viewer.Viewer', parent=None):  # noqa: F821
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.save_worker = None
        self.session = None
        self.results = None
        self.complete = False
        self._batches = None
        self._run_source = None
        self._run_extra_names = []
        self._shown_step = None

        self.outputs = OutputLayers(napari_viewer)
        self.preview = PreviewController(
            napari_viewer,
            self._describe_preview,
            outputs=self.outputs,
            on_shown=self._show_vector_length,
        )
        self.reference = ReferencePanel(
            napari_viewer, is_output=self._is_output
        )
        self.parameters = ParametersPanel()
        self.run_panel = RunControlPanel()
        self._build_layout()
        self._connect()
        self._update_enabled()
        # napari's first Vectors layer costs ~0.4 s of imports: pay it
        # when the dock opens rather than when a run starts
        QTimer.singleShot(0, _warm_up_vectors)

    # -- layout and wiring ------------------------------------------------

    def _build_layout(self):
        # Pinned: the run buttons, progress and live preview stay on
        # screen however short the dock gets (napari stacks docks in one
        # column); the sections below fold and scroll.
        header = QWidget()
        header_column = QVBoxLayout(header)
        header_column.setContentsMargins(6, 4, 6, 2)
        header_column.addWidget(self.run_panel.controls.native)
        header_column.addWidget(self.parameters.live_preview.native)
        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(4, 0, 4, 4)
        self.sections = {}
        for title, panel, expanded in (
            ('Reference', self.reference, True),
            ('Parameters', self.parameters, True),
            ('Outputs', self.run_panel, True),
            ('Vector display', self.run_panel.vector_options, False),
        ):
            section = QCollapsible(title)
            section.addWidget(panel.native)
            if expanded:
                section.expand(animate=False)
            column.addWidget(section)
            self.sections[title] = section
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(
            Qt.ScrollBarPolicy.ScrollBarAlwaysOff
        )
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addWidget(header)
        outer.addWidget(scroll, stretch=1)
        self.setMinimumWidth(340)

    def sizeHint(self):
        # napari's dock column is shared by size hints: the scroll area's
        # would ask for every section unfolded; this leaves the plot dock
        # beside it about as much (and the pinned buttons need far less).
        return QSize(380, 480)

    def _connect(self):
        run = self.run_panel
        run.start_button.changed.connect(self.start)
        run.pause_button.changed.connect(self._toggle_pause)
        run.cancel_button.changed.connect(self.cancel)
        run.save_button.changed.connect(self._ask_save_folder)
        for widget in (
            run.vector_step,
            run.vector_length,
            run.auto_length,
            run.mask_untrusted,
            run.mask_reliability,
            run.intensity_percentile,
            run.min_speed,
        ):
            widget.changed.connect(self._on_vector_style)
        self.parameters.params_changed.connect(self._on_params)
        self.parameters.temporal_smoothing.changed.connect(
            self._request_preview
        )
        self.parameters.live_preview.changed.connect(self._on_live_preview)
        self.reference.reference_changed.connect(self._on_reference)
        # kept to disconnect on teardown: the viewer may outlive the dock
        self._viewer_callbacks = [
            (self.viewer.dims.events.current_step, self._on_step),
            (self.viewer.layers.events.removed, self._on_layer_removed),
        ]
        for emitter, callback in self._viewer_callbacks:
            emitter.connect(callback)
        self.destroyed.connect(_make_teardown(self))

    def _is_output(self, layer):
        # FieldMap: heatmaps of an earlier source's run stay in the viewer
        return layer in self.outputs.layers or isinstance(layer.data, FieldMap)

    def _update_enabled(self, _value=None):
        running = self.worker is not None
        has_source = self.reference.source.value is not None
        self.run_panel.start_button.enabled = has_source and not running
        self.run_panel.save_button.enabled = (
            self.complete and not running and self.save_worker is None
        )
        # what defines the stack and its reference is fixed during a run;
        # flow parameters may change (they apply from the next batch)
        self.reference.enabled = not running
        self.parameters.temporal_smoothing.enabled = not running

    # -- run control (public) ---------------------------------------------

    def start(self, _value=None) -> None:
        """Start a run with the current settings (returns at once)."""
        if self.worker is not None:
            return
        source = self.reference.source.value
        if source is None:
            show_error(
                'Motion correction: choose a source layer (T, Y, X) or '
                '(T, Z, Y, X).'
            )
            return
        problem = not_a_time_lapse(source)
        if problem is not None:
            show_error(f'Motion correction cannot start: {problem}')
            return
        extra_layers = self.reference.extra_layers
        try:
            session = MotionSession(
                source.data,
                reference=self.reference.strategy(),
                params=self.parameters.params,
                batch_size=int(self.run_panel.batch_size.value),
                n_threads=_session_threads(),
                temporal_smoothing=self.parameters.temporal_sigma,
                extra_stacks=[layer.data for layer in extra_layers],
                **self.reference.session_kwargs(),
            )
        except (ValueError, TypeError) as error:
            show_error(f'Motion correction cannot start: {error}')
            return
        roles = roles_for(self.run_panel.roles, len(session.frame_shape))
        try:
            results = self._run_results(
                session,
                roles,
                source,
                extra_names=[layer.name for layer in extra_layers],
            )
        except OSError as error:
            show_error(f'Motion correction cannot start: {error}')
            return
        self.session, self.results, self.complete = session, results, False
        self._run_source = source
        self._run_extra_names = [layer.name for layer in extra_layers]
        # in memory, the session registers straight into the results
        in_memory = results.folder is None
        self._batches = session.iter_batches(
            into=results.sink if in_memory else None
        )
        n_batches = math.ceil(session.n_frames / session.batch_size)
        worker = start_job(
            stream_batches(self._batches, results=results),
            handlers={
                'yielded': self._on_batch,
                'returned': self._on_returned,
                'errored': self._on_error,
                'paused': self._on_paused,
                'resumed': self._on_resumed,
                'finished': self._on_finished,
            },
            progress={
                'total': n_batches,
                'desc': f'Motion correction: {source.name}',
            },
            start=False,
        )
        self.worker = worker
        self.run_panel.set_running(True)
        self.run_panel.show_progress(
            0, session.n_frames, unit=_time_points(session)
        )
        self._update_enabled()
        run_events(self.viewer).started.emit(
            _run_info(source, session, self.parameters.params, results.sink.w)
        )
        self.preview.pause()  # the layers show the run until it ends
        # napari needs about 100 ms to add a layer, which nothing can split:
        # one layer per event-loop turn, and the computation starts only
        # once they exist, so that it does not compete with them for the
        # GIL (which made each take two to three times longer).
        self.outputs.set_style(self._vector_style())
        self._show_vector_length()
        self.outputs.prepare(
            source,
            results,
            roles,
            extras=extra_layers,
            deferred=True,
            on_ready=worker.start,
        )

    def _run_results(self, session, roles, source, *, extra_names):
        """In memory, or, when that would take more than half the memory
        available, in a results folder shown from disk.

        Raises
        ------
        OSError
            When neither fits (NotEnoughSpaceError, saying how much).
        """
        needed = MemorySink.required_bytes(session)
        available = available_memory()
        if needed <= DISK_RESULTS_ABOVE * available:
            try:
                return RunResults(session, roles)
            except MemoryError:
                pass
        folder = disk_results_folder(source)
        sink = MappedDiskSink(
            folder,
            scale=tuple(source.scale)[-source.ndim :],
            units=tuple(str(unit) for unit in source.units)[-source.ndim :],
            source=source.name,
            extra_names=extra_names,
        )
        try:
            sink.open(session)
        except OSError as error:
            raise type(error)(
                f"this run's results ({format_size(needed)}) need more than "
                f'half of the {format_size(available)} of memory available, '
                f'and the disk cannot hold them either: {error}'
            ) from error
        show_info(
            f"Motion correction: this run's results ({format_size(needed)}) "
            f'need more than half of the {format_size(available)} of '
            f'memory available; they are written to {folder} and shown '
            'from there.'
        )
        return RunResults(session, roles, sink=sink)

    def pause(self) -> None:
        """Pause the run after the batch in progress."""
        if self.worker is not None:
            self.worker.pause()

    def resume(self) -> None:
        """Resume a paused run."""
        if self.worker is not None:
            self.worker.resume()

    def cancel(self, _value=None) -> None:
        """Stop the run after the batch in progress (UI resets on finish)."""
        if self.worker is not None:
            # a paused worker also sees this (it polls while paused)
            self.worker.cancel()
            self.run_panel.progress.value = 'cancelling…'

    def save(self, folder) -> None:
        """Write the last complete run's files into ``folder`` (worker).

        Files: ``registered.tif``, ``flow.npy`` + ``flow.json``,
        ``reliability.npy``, ``confidence.npy``, ``params.json``,
        ``stats.csv`` and ``registered_<layer>.tif`` for each layer under
        "also correct" (see docs/outputs.md).  Returns at once;
        ``save_worker`` runs.
        """
        if not self.complete or self.results is None:
            show_error('Motion correction: run the whole stack before saving.')
            return
        if self.save_worker is not None:
            return
        source = self._run_source
        self.save_worker = start_job(
            save_run(
                folder,
                self.session,
                self.results.sink,
                scale=tuple(source.scale)[-source.ndim :],
                units=tuple(str(unit) for unit in source.units)[
                    -source.ndim :
                ],
                source=source.name,
                batch_size=self.session.batch_size,
                extra_names=self._run_extra_names,
            ),
            handlers={
                'returned': self._on_saved,
                'errored': self._on_save_error,
                'finished': self._on_save_finished,
            },
            progress={
                'total': math.ceil(
                    self.session.n_frames / self.session.batch_size
                ),
                'desc': f'Saving to {folder}',
            },
        )
        self._update_enabled()

    # -- worker handlers (main thread) ------------------------------------

    def _on_batch(self, batch):
        # already written into self.results
        self.outputs.update(batch)
        self._show_vector_length()
        self.run_panel.show_progress(
            batch.stop, self.session.n_frames, unit=_time_points(self.session)
        )
        run_events(self.viewer).batch.emit(batch)

    def _on_returned(self, _value=None):
        self.complete = True

    def _on_error(self, error):
        # connecting ``errored`` also stops superqt re-raising the error
        show_error(str(error))

    def _on_paused(self):
        self.run_panel.set_paused(True)
        self.run_panel.progress.value += ' · paused'

    def _on_resumed(self):
        self.run_panel.set_paused(False)

    def _toggle_pause(self, _value=None):
        if self.worker is not None:
            self.worker.toggle_pause()

    def _on_finished(self):
        batches, self._batches = self._batches, None
        if batches is not None:
            batches.close()
        self.worker = None
        self.outputs.flush()  # a short run can end before its layers exist
        self.run_panel.set_running(False)
        n_frames = self.session.n_frames
        unit = _time_points(self.session)
        folder = None if self.results is None else self.results.folder
        if self.complete:
            self.run_panel.progress.value = f'done: {n_frames} {unit}'
            if folder is not None:
                show_info(f'Motion correction: the results are in {folder}')
        else:
            done = int(self.outputs.frames_done)
            self.run_panel.progress.value = (
                f'stopped after {done} / {n_frames} {unit}'
            )
        self._update_enabled()
        self.preview.resume()
        self._request_preview()
        run_events(self.viewer).finished.emit()

    def _on_saved(self, folder):
        show_info(f'Motion correction results saved in {folder}')

    def _on_save_error(self, error):
        show_error(f'Motion correction results were not saved: {error}')

    def _on_save_finished(self):
        self.save_worker = None
        self._update_enabled()

    def _ask_save_folder(self, _value=None):
        folder = QFileDialog.getExistingDirectory(
            self, 'Save motion correction results to'
        )
        if folder:
            self.save(folder)

    # -- reactions to the viewer and the parameters ------------------------

    def _on_layer_removed(self, event):
        if self.worker is not None and event.value == self._run_source:
            self.cancel()

    def _on_params(self, params):
        if self.worker is not None:
            # applies from the next batch (session.params_history)
            self.worker.send(params)
        if self.outputs.results is not None:
            self.outputs.set_style(self._vector_style())
        self._request_preview()

    def _on_reference(self):
        self._update_enabled()
        self._request_preview()

    def _on_step(self, _event=None):
        # napari also emits this when a layer's extent changes (new
        # vectors of another frame): only a new position is worth a redraw
        step = tuple(self.viewer.dims.current_step)
        if step == self._shown_step:
            return
        self._shown_step = step
        self.outputs.show_current_vectors()
        self._request_preview()

    def _on_vector_style(self, _value=None):
        style = self._vector_style()
        self.outputs.set_style(style)
        self.preview.restyle(style)
        self._show_vector_length()

    def _show_vector_length(self):
        self.run_panel.show_vector_length(
            self.outputs.vector_length, self.outputs.displacement_scale
        )

    def _on_live_preview(self, on):
        if on:
            self.preview.request_now()
        else:
            self.preview.end()

    def _request_preview(self, _value=None):
        if self.parameters.live_preview.value:
            self.preview.request()

    def _vector_style(self):
        return self.run_panel.vector_style(
            self.parameters.params.reliability_threshold
        )

    def _describe_preview(self):
        source = self.reference.source.value
        if source is None or not_a_time_lapse(source) is not None:
            return None
        try:
            strategy = self.reference.strategy()
        except ValueError:
            return None
        n_frames = int(source.data.shape[0])
        return (
            source,
            current_frame(self.viewer, source, n_frames),
            strategy,
            self.parameters.params,
            {
                **self.reference.session_kwargs(),
                'temporal_smoothing': self.parameters.temporal_sigma,
            },
            self._vector_style(),
        )

    # -- teardown -----------------------------------------------------------

    def close_run(self) -> None:
        """Stop every worker of this widget and wait for their threads.

        Called when the widget is destroyed (viewer closed, dock removed);
        handlers are disconnected first so nothing touches layers of a
        closing viewer.
        """
        _shutdown(self.__dict__)


def _shutdown(state):
    """Stop the workers recorded in a widget's ``__dict__`` and let go of
    the viewer's events."""
    for emitter, callback in state.pop('_viewer_callbacks', []):
        emitter.disconnect(callback)
    reference = state.get('reference')
    if reference is not None:
        reference.disconnect_viewer()
    for key in ('worker', 'save_worker'):
        job, state[key] = state.get(key), None
        if job is not None:
            # no handler runs any more; the save's partial files are
            # removed when its generator closes
            job.stop()
    batches, state['_batches'] = state.get('_batches'), None
    if batches is not None:
        # runs the session's clean-up (its thread pool shut down); a job
        # that outlived the wait stops at its next batch instead
        with contextlib.suppress(ValueError):
            batches.close()
    outputs = state.get('outputs')
    if outputs is not None:
        outputs.cancel_pending()  # no layers for a closing dock
    preview = state.get('preview')
    if preview is not None:
        preview.shutdown()


def _make_teardown(widget):
    # ``destroyed`` fires when the Python wrapper may be gone: keep only
    # the plain attribute dict, never the widget itself.
    state = widget.__dict__

    def teardown(*_args):
        _shutdown(state)

    return teardown


def _time_points(session) -> str:
    """What a run counts: 'frames', or 'volumes' for a TZYX stack."""
    return 'volumes' if session.is_volume else 'frames'


def disk_results_folder(source):
    """A new folder for the results of a run too large for memory.

    Beside the source's file when napari knows it and that folder is
    writable (the results stay with the data), else in the user's cache
    folder; named after the layer and the time.
    """
    name = ''.join(
        char if char.isalnum() or char in '-_.' else '_'
        for char in str(source.name)
    )
    name = f'{name}-flowscope-{time.strftime("%Y%m%d-%H%M%S")}'
    path = getattr(source.source, 'path', None) or (source.metadata or {}).get(
        'source_path'
    )
    if path:
        parent = Path(path).parent
        if parent.is_dir() and os.access(parent, os.W_OK):
            return parent / name
    try:
        from platformdirs import user_cache_dir

        cache = Path(user_cache_dir('napari-flowscope'))
    except ImportError:
        cache = Path(tempfile.gettempdir()) / 'napari-flowscope'
    return cache / 'runs' / name


def not_a_time_lapse(layer):
    """Why ``layer`` cannot be corrected as a time-lapse, or None.

    Its axis labels decide: a layer labelled with a z axis and no time axis
    (a Z-stack, as the FlowScope reader opens ImageJ slices and OME Z) is
    not corrected as if depth were time.  Unlabelled axes (napari's
    defaults) count as time first.
    """
    labels = [str(label).lower() for label in layer.axis_labels]
    if {'t', 'time'} & set(labels) or not {'z', 'depth'} & set(labels):
        return None
    return (
        f'{layer.name!r} is a Z-stack (axes {", ".join(labels)}) without '
        'a time axis; motion correction needs a time-lapse (t, y, x). If '
        "its slices are time points, set the layer's axis labels to "
        "('t', 'y', 'x'), or re-save it in Fiji with frames instead of "
        'slices (Image > Hyperstacks > Re-order Hyperstacks)'
    )


def _session_threads():
    # One core stays with the GUI: napari's drawing needs it, and on two
    # cores a second session thread gained 7 % frames/s while the main
    # thread, contending for the GIL, stalled over 50 ms five times as often.
    return max(1, (os.cpu_count() or 1) - 1)


def _warm_up_vectors():
    from napari.layers import Vectors

    Vectors(
        np.zeros((1, 2, 3), np.float32),
        features={'displacement': np.zeros(1, np.float32)},
        edge_color='displacement',
    )


def _run_info(source, session, params, flow):
    # (t, y, x) of the source: a volume's z axis is left out
    axes = (-source.ndim, -2, -1)
    scale = tuple(float(tuple(source.scale)[axis]) for axis in axes)
    return RunInfo(
        n_frames=session.n_frames,
        frame_shape=tuple(session.frame_shape),
        scale=scale,
        units=tuple(str(tuple(source.units)[axis]) for axis in axes),
        axis_labels=tuple(tuple(source.axis_labels)[axis] for axis in axes),
        source_name=source.name,
        params=params,
        batch_size=session.batch_size,
        flow=flow,
    )
