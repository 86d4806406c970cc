"""The "Run" section: start / pause / cancel, outputs, progress and save.

The widgets here only show state; :class:`~napari_flowscope._qt.
motion_widget.MotionCorrectionWidget` owns the jobs.  The two functions
that run in workers (:func:`stream_batches`, :func:`save_run`) take plain
arrays and session objects, never layers.
"""

from __future__ import annotations

import time

from magicgui.widgets import (
    CheckBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from napari_flowscope.engine import CONFIDENCE_THRESHOLD
from napari_flowscope.session import FlowBatch
from napari_flowscope.session.sinks import DiskSink

from .layers import AUTO_ARROW_STEPS, OUTPUT_LAYERS, VectorStyle

__all__ = [
    'MotionCorrectionError',
    'RunControlPanel',
    'format_progress',
    'output_boxes',
    'save_run',
    'stream_batches',
]


class MotionCorrectionError(Exception):
    """A run failed; the message says at which frame and why."""

    # Not a RuntimeError: superqt reads those as "worker deleted" and
    # turns them into a warning instead of an error notification.


def output_boxes() -> dict:
    """The output boxes: label -> roles they turn on, top layer first."""
    groups = {}
    for spec in OUTPUT_LAYERS:
        if spec.output is not None:
            groups.setdefault(spec.output, []).append(spec.role)
    return dict(reversed(groups.items()))


def stream_batches(batches, *, results=None):
    """Worker body: the session's batches, stored as they come.

    Parameters
    ----------
    batches : generator
        :meth:`MotionSession.iter_batches` of the run.  A value sent to
        this generator (new :class:`FlowParams`) is passed on to it.
    results : RunResults, optional
        Where each batch is written before it is yielded (in the worker's
        thread, so the event loop only refreshes layers).

    Yields
    ------
    FlowBatch
        With the session's extra stacks registered in ``batch.extras``.
    """
    params = None
    next_frame = 0
    try:
        while True:
            try:
                batch = batches.send(params)
            except StopIteration:
                break
            except Exception as error:
                # napari shows worker errors as notifications: say where,
                # unless the error names its frame itself
                named = hasattr(error, 'frame')
                where = '' if named else f' at frame {next_frame}'
                raise MotionCorrectionError(
                    f'Motion correction failed{where}: {error}'
                ) from error
            next_frame = batch.stop
            if results is not None:
                results.write(batch)
            params = yield batch
        if results is not None:
            results.finish()
    except BaseException:
        # failed, or cancelled (the job closes this generator)
        if results is not None:
            results.discard()
        raise


def save_run(
    folder,
    session,
    results,
    *,
    scale,
    units,
    source,
    batch_size,
    extra_names=None,
):
    """Worker body: write a finished run's files into ``folder``.

    Replays the run's results (its sink: ``MemorySink`` or
    ``MappedDiskSink``) through a
    :class:`~napari_flowscope.session.sinks.DiskSink`, so the files are
    exactly those of a headless run (atomic, ``.partial`` until complete),
    the registered extra channels included (``extra_names``: their layer
    names, for the file names).

    Returns
    -------
    Path
        ``folder``.
    """
    sink = DiskSink(
        folder,
        scale=scale,
        units=units,
        source=source,
        extra_names=extra_names,
    )
    sink.open(session)
    try:
        for start in range(0, session.n_frames, batch_size):
            stop = min(start + batch_size, session.n_frames)
            frames = slice(start, stop)
            stats = type(results.stats)(
                **{
                    name: values[frames]
                    for name, values in results.stats.as_columns().items()
                }
            )
            sink.write(
                FlowBatch(
                    start=start,
                    stop=stop,
                    w=results.w[frames],
                    reliability=results.reliability[frames],
                    confidence=results.confidence[frames],
                    registered=results.registered[frames],
                    stats=stats,
                    reference=results.reference,
                    extras=tuple(extra[frames] for extra in results.extras),
                )
            )
            yield stop
    except BaseException:
        sink.abort()
        raise
    sink.close(session)
    return sink.directory


def format_progress(done, total, elapsed, *, unit='frames'):
    """``'12 / 40 frames · ETA 3 s'`` (no ETA before the first frame);
    ``unit`` names what is counted (``'volumes'`` for a TZYX run)."""
    text = f'{done} / {total} {unit}'
    if 0 < done < total and elapsed > 0:
        remaining = elapsed / done * (total - done)
        if remaining >= 60:
            text += f' · ETA {remaining / 60:.1f} min'
        else:
            text += f' · ETA {remaining:.0f} s'
    return text


class RunControlPanel(Container):
    """Run buttons, progress, outputs and vector display.

    The panel itself holds the outputs section (batch size, output
    boxes); :attr:`controls` (the buttons and the progress) and
    :attr:`vector_options` are separate containers, so that the dock can
    pin the buttons above its scrolling sections.

    Attributes
    ----------
    controls : Container
        Start / Pause / Cancel / Save and the progress line.
    vector_options : Container
        Grid step, arrow length (automatic or manual) and masks.
    """

    def __init__(self):
        self.start_button = PushButton(text='Start')
        self.pause_button = PushButton(text='Pause', enabled=False)
        self.cancel_button = PushButton(text='Cancel', enabled=False)
        self.save_button = PushButton(
            text='Save…',
            enabled=False,
            tooltip='Write registered.tif, flow.npy, reliability.npy, '
            'params.json and stats.csv of the last complete run.',
        )
        buttons = _row(
            self.start_button,
            self.pause_button,
            self.cancel_button,
            self.save_button,
        )
        self.progress = Label(value='ready')
        self.controls = Container(widgets=[buttons, self.progress])
        self.controls.margins = (0, 0, 0, 0)

        self.batch_size = SpinBox(
            label='batch size',
            value=8,
            min=1,
            max=512,
            tooltip='Frames per batch: layers update once per batch.',
        )
        defaults = {spec.role for spec in OUTPUT_LAYERS if spec.default}
        self._boxes = output_boxes()
        # keyed by the first role of each box ('vx' for 'vx / vy')
        self.outputs = {
            roles[0]: CheckBox(text=label, value=roles[0] in defaults)
            for label, roles in self._boxes.items()
        }
        boxes = list(self.outputs.values())
        grid = Container(
            layout='vertical',
            labels=False,
            label='outputs',
            widgets=[_row(*boxes[i : i + 2]) for i in range(0, len(boxes), 2)],
        )
        grid.margins = (0, 0, 0, 0)

        self.vector_step = SpinBox(
            label='grid step (px)', value=16, min=2, max=256
        )
        self.auto_length = CheckBox(
            text='auto',
            value=True,
            tooltip='Draw the 95th percentile displacement of the frame '
            f'{AUTO_ARROW_STEPS:g} grid steps long (set from the first '
            'batch, steady over a run).',
        )
        self.vector_length = FloatSpinBox(
            value=1.0,
            min=0.01,
            max=10_000.0,
            step=0.5,
            enabled=False,
            tooltip='Arrows are this many times their displacement.',
        )
        length_row = _row(self.vector_length, self.auto_length)
        length_row.label = 'arrow length ×'
        self.vector_scale = Label(value='')
        self.mask_untrusted = CheckBox(
            text=f'hide untrusted (confidence < {CONFIDENCE_THRESHOLD:g})',
            value=True,
            tooltip='Hide vectors, and the flow heatmaps under them, where '
            'the frame did not match the reference well enough to trust '
            'the displacement.',
        )
        self.mask_reliability = CheckBox(
            text='hide unreliable (too little texture)',
            value=True,
            tooltip='Hide vectors, and the flow heatmaps under them, where '
            'the reference has less texture than the reliability '
            'threshold.',
        )
        self.intensity_percentile = FloatSpinBox(
            label='hide below intensity pct',
            value=0.0,
            min=0.0,
            max=99.0,
            step=5.0,
            tooltip='Hide vectors on pixels darker than this percentile '
            'of the frame (0 = off).',
        )
        self.min_speed = FloatSpinBox(
            label='hide shorter than (px)',
            value=0.0,
            min=0.0,
            max=100.0,
            step=0.1,
        )
        self.vector_options = Container(
            widgets=[
                self.vector_step,
                length_row,
                self.vector_scale,
                self.mask_untrusted,
                self.mask_reliability,
                self.intensity_percentile,
                self.min_speed,
            ]
        )
        self.vector_options.margins = (0, 0, 0, 0)
        self.auto_length.changed.connect(self._on_auto_length)
        super().__init__(widgets=[self.batch_size, grid])
        self.margins = (0, 0, 0, 0)
        self._started_at = None

    @property
    def roles(self) -> list[str]:
        """Roles of ``layers.OUTPUT_LAYERS`` to produce, in its order."""
        chosen = {
            role
            for roles in self._boxes.values()
            if self.outputs[roles[0]].value
            for role in roles
        }
        return [spec.role for spec in OUTPUT_LAYERS if spec.role in chosen]

    def vector_style(self, reliability_threshold) -> VectorStyle:
        """The vector display options."""
        percentile = float(self.intensity_percentile.value)
        return VectorStyle(
            step=int(self.vector_step.value),
            length=(
                None
                if self.auto_length.value
                else float(self.vector_length.value)
            ),
            reliability_threshold=(
                reliability_threshold if self.mask_reliability.value else None
            ),
            confidence_threshold=(
                CONFIDENCE_THRESHOLD if self.mask_untrusted.value else None
            ),
            intensity_percentile=percentile if percentile > 0 else None,
            min_speed=float(self.min_speed.value),
        )

    def _on_auto_length(self, auto):
        # manual length starts from the automatic one on screen
        self.vector_length.enabled = not auto

    def show_vector_length(self, length: float, scale: float) -> None:
        """Show the arrow length in use and, when automatic, its basis.

        Parameters
        ----------
        length : float
            The multiplier the vectors layer uses.
        scale : float
            The displacement (px) drawn ``AUTO_ARROW_STEPS`` grid steps
            long; 0 before anything is computed.
        """
        if self.auto_length.value:
            with self.vector_length.changed.blocked():
                self.vector_length.value = round(length, 2)
            self.vector_scale.value = (
                f'auto: {scale:.2g} px (95th pct) drawn as '
                f'{AUTO_ARROW_STEPS:g} grid steps'
                if scale > 0
                else 'auto: set by the first batch or preview'
            )
        else:
            self.vector_scale.value = f'1 px drawn {length:.3g} px long'

    def set_running(self, running: bool) -> None:
        """Enable the buttons that make sense while running or not."""
        self.start_button.enabled = not running
        self.pause_button.enabled = running
        self.cancel_button.enabled = running
        self.batch_size.enabled = not running
        for box in self.outputs.values():
            box.enabled = not running
        if running:
            self.pause_button.text = 'Pause'
            self.save_button.enabled = False
            self._started_at = time.perf_counter()

    def set_paused(self, paused: bool) -> None:
        self.pause_button.text = 'Resume' if paused else 'Pause'

    def show_progress(self, done: int, total: int, *, unit='frames') -> None:
        elapsed = time.perf_counter() - (self._started_at or 0.0)
        self.progress.value = format_progress(done, total, elapsed, unit=unit)


def _row(*widgets):
    row = Container(layout='horizontal', widgets=widgets, labels=False)
    row.margins = (0, 0, 0, 0)
    return row
