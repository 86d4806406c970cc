"""Run results -> napari layers.

Pure helpers build layer data (vector arrays, contrast limits, geometry).
:class:`RunResults` holds a run's arrays; the worker writes each batch into
them (plain numpy, no napari object).  :class:`OutputLayers`, on the main
thread only, creates the output layers of a run once, backed by those
arrays, and refreshes them as batches arrive.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QTimer

from napari_flowscope.engine import curl, decimate_flow, divergence, speed

__all__ = [
    'HEATMAPS',
    'OUTPUTS',
    'OutputLayers',
    'RunResults',
    'VectorStyle',
    'current_frame',
    'frame_vectors',
    'frames_on_screen',
    'layer_geometry',
    'nice_ceiling',
    'vector_step',
]

#: Outputs a run can produce: role -> layer-name suffix.
OUTPUTS = {
    'vectors': 'flow vectors',
    'speed': 'speed',
    'vx': 'vx',
    'vy': 'vy',
    'reliability': 'reliability',
    'divergence': 'divergence',
    'curl': 'curl',
    'registered': 'registered',
}
#: Derived (T, Y, X) float32 heatmaps: role -> (colormap, signed).
HEATMAPS = {
    'speed': ('plasma', False),
    'vx': ('RdBu_r', True),
    'vy': ('RdBu_r', True),
    'reliability': ('viridis', False),
    'divergence': ('PuOr', True),
    'curl': ('PiYG', True),
}
SPEED_COLORMAP = 'plasma'
STACKING = [
    'registered',
    'reliability',
    'divergence',
    'curl',
    'vx',
    'vy',
    'speed',
    'vectors',
]
#: Heatmaps computed from the flow: role -> function of w.
DERIVED = {'speed': speed, 'divergence': divergence, 'curl': curl}
#: Vectors shown at once stay below this (napari redraws all of them).
MAX_VECTORS = 100_000


@dataclass(frozen=True)
class VectorStyle:
    """How flow vectors are sampled and masked (display only).

    Attributes
    ----------
    step : int
        Grid spacing in pixels (coarsened automatically when a frame would
        show more than ``MAX_VECTORS`` vectors).
    length : float
        Display multiplier of the arrows (napari ``Vectors.length``).
    reliability_threshold : float or None
        Hide vectors whose reliability is below this.
    intensity_percentile : float or None
        Hide vectors on pixels darker than this percentile of the
        registered frame (background).
    min_speed : float
        Hide vectors shorter than this (px).
    """

    step: int = 16
    length: float = 1.0
    reliability_threshold: float | None = None
    intensity_percentile: float | None = None
    min_speed: float = 0.0


def layer_geometry(layer, ndim=3) -> dict:
    """Keyword arguments that place a new layer exactly over ``layer``.

    Parameters
    ----------
    layer : napari.layers.Layer
        The source layer, ``(T, Y, X)``.
    ndim : int
        Dimensions of the new layer; the last ``ndim`` axes of the source
        are used (``2`` for a per-frame image such as the reference).

    Returns
    -------
    dict
        ``scale``, ``translate``, ``units`` and ``axis_labels``.
    """
    return {
        'scale': tuple(layer.scale)[-ndim:],
        'translate': tuple(layer.translate)[-ndim:],
        'units': tuple(layer.units)[-ndim:],
        'axis_labels': tuple(layer.axis_labels)[-ndim:],
    }


def current_frame(viewer, layer, n_frames: int) -> int:
    """The frame of ``layer`` (axis 0) under the viewer's time slider."""
    position = layer.world_to_data(viewer.dims.point)
    index = int(np.round(position[-layer.ndim]))
    return min(max(index, 0), n_frames - 1)


def frames_on_screen(viewer, layer, start: int, stop: int) -> bool:
    """Whether any of the frames ``start:stop`` of ``layer`` (axis 0) is
    shown: the one under the time slider, or all when time is a displayed
    axis (e.g. a kymograph view)."""
    time_axis = viewer.dims.ndim - layer.ndim
    if time_axis in viewer.dims.displayed:
        return True
    return start <= current_frame(viewer, layer, layer.data.shape[0]) < stop


def vector_step(frame_shape, step: int, max_vectors=MAX_VECTORS) -> int:
    """The smallest grid step >= ``step`` that shows <= ``max_vectors``."""
    height, width = frame_shape
    step = max(int(step), 1)
    while math.ceil(height / step) * math.ceil(width / step) > max_vectors:
        step += 1
    return step


def frame_vectors(w, t, *, style, reliability=None, image=None):
    """napari vector data of one frame.

    Parameters
    ----------
    w : ndarray, shape (Y, X, 2)
        ``[x, y]`` flow of frame ``t``.
    t : int
        Frame index, the first coordinate of every vector.
    style : VectorStyle
        Sampling and masks.
    reliability : ndarray, shape (Y, X), optional
        Needed when ``style.reliability_threshold`` is set.
    image : ndarray, shape (Y, X), optional
        Needed when ``style.intensity_percentile`` is set.

    Returns
    -------
    data : ndarray, shape (N, 2, 3), float32
        ``data[:, 0] = (t, y, x)`` start, ``data[:, 1] = (0, dy, dx)``
        projection.
    speed : ndarray, shape (N,), float32
        Length of each vector (px), for colouring.
    """
    use_reliability = style.reliability_threshold is not None
    use_intensity = style.intensity_percentile is not None
    grid = decimate_flow(
        w,
        step=vector_step(w.shape[:2], style.step),
        reliability=reliability if use_reliability else None,
        reliability_threshold=style.reliability_threshold or 0.0,
        image=image if use_intensity else None,
        intensity_percentile=style.intensity_percentile,
        min_speed=style.min_speed,
    )
    data = np.zeros((len(grid.speed), 2, 3), np.float32)
    data[:, 0, 0] = t
    data[:, 0, 1:] = grid.positions
    data[:, 1, 1:] = grid.displacements
    return data, grid.speed


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10**k that is >= ``value`` (> 0)."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for mantissa in (1.0, 2.0, 2.5, 5.0, 10.0):
        if mantissa * power >= value * (1 - 1e-9):
            return mantissa * power
    return 10.0 * power


def _robust_max(values) -> float:
    return float(np.percentile(np.abs(values), 99.5))


class RunResults:
    """The arrays of one run, filled batch by batch by the worker.

    They back the output layers (no copies): the session registers each
    batch straight into :attr:`sink` (``iter_batches(into=sink)``), the
    worker adds the derived maps, yields it, and the main thread's
    ``layer.refresh()`` makes napari re-read them.  So the event loop only
    pays for the refresh, however large the batch.

    Parameters
    ----------
    session : MotionSession
        Shapes, dtype and length of the run.
    roles : iterable of str
        Output roles; the derived heatmaps among them get an array.
    extra_shapes : sequence of (tuple, dtype)
        Shape and dtype of each extra layer's registered stack.

    Attributes
    ----------
    sink : MemorySink
        Registered frames, flow, reliability, stats and reference, as a
        headless run would collect them (saved by ``save_run``).
    maps : dict of str to ndarray, shape (T, Y, X), float32
        Derived heatmaps (``speed``, ``divergence``, ``curl``) requested.
    extras : list of ndarray
        Registered stacks of the extra layers.
    limits : dict of str to (float, float) or None
        Contrast limits fixed from the first batch.
    """

    def __init__(self, session, roles=(), extra_shapes=()):
        from napari_flowscope.session import MemorySink

        sink = MemorySink()
        sink.open(session)
        # np.zeros pages are mapped lazily: frames not computed yet show
        # as zero (not garbage) without touching the memory up front
        # (np.zeros, not zeros_like: zeros_like writes every page)
        for name in ('registered', 'w', 'reliability'):
            array = getattr(sink, name)
            setattr(sink, name, np.zeros(array.shape, array.dtype))
        self.sink = sink
        self.maps = {
            role: np.zeros(sink.reliability.shape, np.float32)
            for role in DERIVED
            if role in set(roles)
        }
        self.extras = [np.zeros(shape, dtype) for shape, dtype in extra_shapes]
        self.limits = None

    @property
    def n_frames(self) -> int:
        return self.sink.w.shape[0]

    def write(self, batch, extras=()):
        """Store a batch and its derived maps (worker thread)."""
        frames = slice(batch.start, batch.stop)
        self.sink.write(batch)
        for role, values in self.maps.items():
            values[frames] = DERIVED[role](batch.w)
        for array, registered in zip(self.extras, extras, strict=True):
            array[frames] = registered
        if self.limits is None:
            self.limits = self._first_limits(batch)

    def _first_limits(self, batch):
        """Contrast limits from the first batch, kept for the whole run
        so colours mean the same in every frame."""
        # a strided sample is plenty for percentiles and 16x cheaper
        sample = (slice(None), slice(None, None, 4), slice(None, None, 4))
        speed_limit = nice_ceiling(_robust_max(speed(batch.w)[sample]) * 1.25)
        limits = {
            'speed': (0.0, speed_limit),
            'vx': (-speed_limit, speed_limit),
            'vy': (-speed_limit, speed_limit),
            'reliability': (
                0.0,
                nice_ceiling(_robust_max(batch.reliability[sample])),
            ),
        }
        for role in ('divergence', 'curl'):
            if role in self.maps:
                values = self.maps[role][batch.start : batch.stop][sample]
                m = nice_ceiling(_robust_max(values))
                limits[role] = (-m, m)
        return limits


class OutputLayers:
    """The layers one widget's runs write into, created once, reused.

    Layers are tracked by the objects this class created, not by name: a
    second run reuses its own layers (data replaced in place when shapes
    match) and a layer the user removed is created again.  Roles not asked
    for by a run are removed, so no stale result stays on screen.

    Parameters
    ----------
    viewer : napari.Viewer or ViewerModel
    """

    def __init__(self, viewer):
        self._viewer = viewer
        self._layers = {}
        self._arrays = {}
        self._extra_layers = []
        self.results = None
        self.style = VectorStyle()
        self._limits_set = False
        self._source = None
        self._n_frames = 0
        self._done = None
        self._reference = None
        self._pending = []
        self._on_ready = None
        self._generation = 0

    def __getitem__(self, role):
        """The live layer of ``role`` (KeyError when absent)."""
        layer = self._layers[role]
        if layer not in self._viewer.layers:
            raise KeyError(role)
        return layer

    def __contains__(self, role):
        return role in self._layers and self._layers[role] in (
            self._viewer.layers
        )

    @property
    def frames_done(self) -> int:
        """Frames of the current run written so far."""
        return 0 if self._done is None else int(self._done.sum())

    @property
    def layers(self) -> list:
        """Every output layer of the current run still in the viewer."""
        extras = [
            layer
            for layer in self._extra_layers
            if layer in self._viewer.layers
        ]
        return [self[role] for role in self._layers if role in self] + (extras)

    def prepare(
        self,
        source,
        results,
        roles,
        extras=(),
        *,
        deferred=False,
        on_ready=None,
    ):
        """Create or reset the layers of a new run.

        Parameters
        ----------
        source : napari.layers.Image
            The layer the flow is estimated on (geometry, names, colours).
        results : RunResults
            The run's arrays; they back the layers (no copies).
        roles : iterable of str
            Keys of :data:`OUTPUTS` to show.
        extras : sequence of napari.layers.Image
            Further layers corrected with the same flow (their registered
            stacks are ``results.extras``).
        deferred : bool
            Create (or reset) one layer per event-loop iteration instead of
            all at once: adding a layer costs napari about 100 ms, so the
            event loop never waits for all of them.  Batches arriving
            meanwhile are already in ``results``, so a layer created late
            shows them.  :meth:`flush` finishes at once.
        on_ready : callable, optional
            Called once every layer exists (not after
            :meth:`cancel_pending`).
        """
        roles = [role for role in OUTPUTS if role in set(roles)]
        self.cancel_pending()
        for role in list(self._layers):
            if role not in roles and role != 'reference':
                self._remove(self._layers.pop(role))
        for layer in self._extra_layers:
            self._remove(layer)
        self._extra_layers = []
        self.results = results
        self._source = source
        self._n_frames = results.n_frames
        self._done = np.zeros(self._n_frames, bool)
        self._limits_set = False
        self._reference = None
        sink = results.sink
        self._arrays = {
            'vx': sink.w[..., 0],
            'vy': sink.w[..., 1],
            'reliability': sink.reliability,
            'registered': sink.registered,
            **results.maps,
        }
        # bottom to top: reference, registered stack, heatmaps, vectors
        self._pending = [functools.partial(self._prepare_reference, source)]
        self._pending += [
            functools.partial(self._prepare_role, role, source)
            for role in sorted(roles, key=STACKING.index)
        ]
        self._pending += [
            functools.partial(self._prepare_extra, layer, registered)
            for layer, registered in zip(extras, results.extras, strict=True)
        ]
        self._on_ready = on_ready
        if deferred:
            self._schedule(self._generation)
        else:
            self.flush()

    @property
    def pending(self) -> bool:
        """Whether layers of the current run are still to be created."""
        return bool(self._pending)

    def flush(self) -> None:
        """Create every layer still pending, now."""
        while self._pending:
            self._pending.pop(0)()
        self._ready()

    def cancel_pending(self) -> None:
        """Forget layers not created yet (a new run, or teardown)."""
        self._pending = []
        self._on_ready = None
        self._generation += 1

    def _schedule(self, generation):
        QTimer.singleShot(0, functools.partial(self._step, generation))

    def _step(self, generation):
        if generation != self._generation:
            return
        if self._pending:
            self._pending.pop(0)()
        if self._pending:
            self._schedule(generation)
        else:
            self._ready()

    def _ready(self):
        on_ready, self._on_ready = self._on_ready, None
        if on_ready is not None:
            on_ready()

    def _prepare_role(self, role, source):
        name = f'{source.name} {OUTPUTS[role]}'
        geometry = layer_geometry(source)
        if role == 'vectors':
            self._prepare_vectors(name, geometry)
        elif role == 'registered':
            self._layers[role] = self._image(
                role,
                self._arrays['registered'],
                name,
                geometry,
                colormap=source.colormap.name,
                contrast_limits=source.contrast_limits,
                rgb=source.rgb,
            )
        else:
            colormap, _signed = HEATMAPS[role]
            self._layers[role] = self._image(
                role,
                self._arrays[role],
                name,
                geometry,
                colormap=colormap,
                contrast_limits=(0.0, 1.0),
                auto_contrast=False,
                blending='additive' if role == 'speed' else 'translucent',
                opacity=0.7,
                visible=role == 'speed',
            )
        # batches may have arrived before this layer existed
        if self.results.limits is not None:
            self._set_limits(self.results.limits, roles=(role,))
        if role == 'vectors':
            self.show_current_vectors()

    def _prepare_extra(self, layer, registered):
        self._extra_layers.append(
            self._viewer.add_image(
                registered,
                name=f'{layer.name} registered',
                colormap=layer.colormap.name,
                contrast_limits=layer.contrast_limits,
                blending=layer.blending,
                **layer_geometry(layer),
            )
        )

    def _prepare_reference(self, source):
        # A 2D layer broadcasts over time, so it adds no slider axis.
        frame = self._reference  # when batches came before the layer
        if frame is None:
            frame = np.zeros(self._arrays['reliability'].shape[1:], 'f4')
        layer = self._layers['reference'] = self._image(
            'reference',
            frame,
            f'{source.name} reference',
            layer_geometry(source, ndim=2),
            colormap=source.colormap.name,
            visible=False,
        )
        if self._reference is not None:
            layer.reset_contrast_limits()

    def _image(self, role, data, name, geometry, **kwargs):
        old = self._layers.get(role)
        if (
            old is not None
            and old in self._viewer.layers
            and old.data.shape == data.shape
            and old.data.dtype == data.dtype
        ):
            # keep the user's colormap, opacity and visibility
            old.data = data
            _restore(old, name, geometry)
            return old
        if old is not None:
            self._remove(old)
        return self._viewer.add_image(data, name=name, **geometry, **kwargs)

    def _prepare_vectors(self, name, geometry):
        old = self._layers.get('vectors')
        if old is not None and old in self._viewer.layers:
            _restore(old, name, geometry)
            self._set_vectors(old, *_no_vectors())
            # keep the arrows above heatmaps created by this run
            layers = self._viewer.layers
            index = layers.index(old)
            if index != len(layers) - 1:
                layers.move(index, len(layers))
            return
        data, lengths = _no_vectors()
        self._layers['vectors'] = self._viewer.add_vectors(
            data,
            name=name,
            features={'speed': lengths},
            edge_color='speed',
            edge_colormap=SPEED_COLORMAP,
            edge_contrast_limits=(0.0, 1.0),
            edge_width=max(1.0, float(np.mean(geometry['scale'][1:]))),
            vector_style='arrow',
            length=self.style.length,
            **geometry,
        )

    def _remove(self, layer):
        if layer in self._viewer.layers:
            self._viewer.layers.remove(layer)

    def update(self, batch):
        """Show a batch the worker has written into the results.

        Main thread; when a frame of the batch is on screen, costs a
        refresh of each layer (napari re-reads that frame) and the vectors
        of one frame, otherwise nothing.
        """
        self._done[batch.start : batch.stop] = True
        if batch.reference is not self._reference:
            # new only at the start and after adaptive updates
            first = self._reference is None
            self._reference = batch.reference
            if 'reference' in self:
                self['reference'].data = batch.reference
                if first:
                    self['reference'].reset_contrast_limits()
        if not self._limits_set and self.results.limits is not None:
            self._set_limits(self.results.limits)
        if not frames_on_screen(
            self._viewer, self._source, batch.start, batch.stop
        ):
            # napari slices the arrays afresh when the slider moves there;
            # a refresh now would only redraw what is already on screen.
            return
        for role in (*HEATMAPS, 'registered'):
            if role in self:
                self[role].refresh()
        for layer in self._extra_layers:
            if layer in self._viewer.layers:
                layer.refresh()
        if 'vectors' in self:
            t = current_frame(self._viewer, self._source, self._n_frames)
            if batch.start <= t < batch.stop:
                # In an event-loop turn of its own: napari redraws the
                # Vectors thumbnail in a Python loop (about 30 ms), on top
                # of the refreshes above.
                QTimer.singleShot(
                    0,
                    functools.partial(
                        self._show_vectors_of_run, self._generation, t
                    ),
                )

    def _show_vectors_of_run(self, generation, t):
        if generation == self._generation and 'vectors' in self:
            self.show_vectors(t)

    @property
    def speed_limit(self):
        """Top of the speed colour scale (px / frame), None before the
        first batch."""
        limits = None if self.results is None else self.results.limits
        return None if limits is None else limits['speed'][1]

    def _set_limits(self, limits, roles=None):
        if roles is None:
            self._limits_set = True
            roles = (*limits, 'vectors')
        for role in roles:
            if role not in self:
                continue
            if role == 'vectors':
                self[role].edge_contrast_limits = limits['speed']
            elif role in limits:
                self[role].contrast_limits = limits[role]

    def set_style(self, style: VectorStyle) -> None:
        """Change how vectors are drawn and redraw the current frame.

        Nothing happens for the style already set: napari redraws the
        layer's thumbnail on every assignment (about 30 ms for a 512²
        frame), and every parameter change and Start passes the style.
        """
        if style == self.style:
            return
        self.style = style
        if 'vectors' in self:
            self['vectors'].length = style.length
            self.show_current_vectors()

    def show_current_vectors(self) -> None:
        """Show the vectors of the frame under the time slider."""
        if self.results is None or 'vectors' not in self:
            return
        self.show_vectors(
            current_frame(self._viewer, self._source, self._n_frames)
        )

    def show_vectors(self, t: int) -> None:
        """Show the vectors of frame ``t`` (none if not computed yet).

        Only one frame is held by the layer: reassigning all vectors of a
        whole stack would stall the event loop (NAPARI.md section 5).
        """
        layer = self['vectors']
        if not self._done[t]:
            if len(layer.data):
                self._set_vectors(layer, *_no_vectors())
            return
        sink = self.results.sink
        image = sink.registered[t]
        if image.ndim == 3:
            image = image.mean(axis=-1)
        data, lengths = frame_vectors(
            sink.w[t],
            t,
            style=self.style,
            reliability=sink.reliability[t],
            image=image,
        )
        self._set_vectors(layer, data, lengths)

    @staticmethod
    def _set_vectors(layer, data, lengths):
        # Colours follow the new features (colormap mode); assigning
        # edge_color again would redraw napari's thumbnail, a Python loop
        # over up to 1024 vectors (about 30 ms).
        layer.data = data
        layer.features = {'speed': lengths}


def _restore(layer, name, geometry):
    """Give a reused layer its name and geometry back (only what
    changed: every assignment makes napari refresh the layer)."""
    if layer.name != name:
        layer.name = name
    for key, value in geometry.items():
        current = getattr(layer, key)
        if key in ('scale', 'translate'):
            changed = not np.array_equal(current, value)
        else:
            changed = tuple(current) != tuple(value)
        if changed:
            setattr(layer, key, value)


def _no_vectors():
    return np.zeros((0, 2, 3), np.float32), np.zeros(0, np.float32)
