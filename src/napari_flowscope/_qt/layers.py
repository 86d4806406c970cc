"""Run results -> napari layers.

:data:`OUTPUT_LAYERS` is the one table of what a run can show: for each
role its layer name, the output box that turns it on, where its data come
from, its colormap, contrast limits and look.  Everything else here reads
that table.

Heatmaps are :class:`FieldMap` objects: lazy ``(T, *frame)`` arrays that
napari reads a slice of when it draws, computed from the run's flow fields
(:class:`~napari_flowscope.session.MemorySink` arrays, filled batch by batch
by the worker).  So a heatmap costs no memory of its own, a mask can change
without recomputing the run, and a live preview can show one frame in the
same layers.  :class:`RunResults` holds a run's arrays (plain numpy, no
napari object); :class:`OutputLayers`, on the main thread only, creates the
layers once, backed by those arrays, and refreshes them as batches arrive.
Frames are images ``(Y, X)`` or volumes ``(Z, Y, X)``: each role says for
which it is shown (``OutputLayer.dims``), lengths count a volume's z
component physically (``FrameFields.spacing``), and ``frame_vectors``
draws ``(N, 2, 3)`` or ``(N, 2, 4)`` vectors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from napari.utils.colormaps import AVAILABLE_COLORMAPS, Colormap
from qtpy.QtCore import QTimer

from napari_flowscope.engine import (
    CONFIDENCE_THRESHOLD,
    curl,
    decimate_flow,
    divergence,
)
from napari_flowscope.engine.volume import (
    decimate_volume_flow,
    displacement_length,
    vector_steps,
)
from napari_flowscope.session.stats import displacement_magnitude

__all__ = [
    'AUTO_ARROW_STEPS',
    'MAX_VECTORS',
    'OUTPUT_LAYERS',
    'FieldMap',
    'FrameFields',
    'OutputLayer',
    'OutputLayers',
    'RunResults',
    'VectorStyle',
    'auto_length',
    'current_frame',
    'display_mask',
    'displacement_scale',
    'frame_vectors',
    'frames_on_screen',
    'layer_geometry',
    'nice_ceiling',
    'output_limits',
    'roles_for',
    'vector_step',
]

#: Vectors shown at once stay below this (napari redraws all of them).
MAX_VECTORS = 100_000
#: Automatic arrow length: the 95th percentile displacement of a frame is
#: drawn this many grid steps long (matplotlib's quiver autoscale idea).
AUTO_ARROW_STEPS = 0.8
#: The automatic length follows a larger displacement only past this ratio,
#: so that it stays steady over a run (the 95th percentile arrow stays
#: between 0.53 and 0.8 grid steps; a drift that keeps growing rescales a
#: few times, not at every batch).
AUTO_LENGTH_SLACK = 1.5


def _displacement_colormap():
    """magma without its black end, transparent where nothing moves.

    Over the registered image: still parts (below a tenth of the scale)
    show the image itself, moving parts a colour that gets more opaque
    with displacement, up to 65 % from half the scale on, so that the image
    shows through even where everything moves (a drift); never the
    additive glare that hid the image.
    """
    colors = np.array(AVAILABLE_COLORMAPS['magma'].colors[48:], np.float32)
    positions = np.linspace(0.0, 1.0, len(colors), dtype=np.float32)
    colors[:, 3] = 0.65 * np.clip((positions - 0.1) / 0.4, 0.0, 1.0)
    return Colormap(colors, controls=positions, name='flowscope displacement')


#: Colours of the displacement heatmap (magma hues, alpha growing with it).
DISPLACEMENT_COLORMAP = _displacement_colormap()
#: Arrow colours by length, cyan to white: apart from the heatmap's hues.
VECTOR_COLORMAP = Colormap(
    [[0.0, 0.75, 1.0, 1.0], [0.85, 1.0, 1.0, 1.0]],
    name='flowscope vectors',
)


class FrameFields(NamedTuple):
    """Flow fields of ``n`` frames, what heatmaps are computed from.

    Attributes
    ----------
    w : ndarray, shape (n, *frame, D), float32
        Displacement, components in ``[x, y(, z)]`` order.
    reliability : ndarray, shape (n, *frame), float32
    image : ndarray, shape (n, *frame[, C]), optional
        The frames the flow belongs to (registered), for the intensity
        mask.
    spacing : tuple of float or None
        ``(z, y, x)`` voxel size of volumes: lengths count the z component
        physically, in in-plane pixels (:meth:`lengths`).
    confidence : ndarray, shape (n, *frame), float32, optional
        How well each displacement matched, 0 to 1 (``>=
        CONFIDENCE_THRESHOLD`` trusted).
    previous : ndarray, shape of ``w``, optional
        The flow of the frame before each frame (NaN before frame 0), for
        velocities; taken only when asked for.
    """

    w: np.ndarray
    reliability: np.ndarray
    image: np.ndarray | None = None
    spacing: tuple | None = None
    confidence: np.ndarray | None = None
    previous: np.ndarray | None = None

    @classmethod
    def take(cls, fields, frames, *, previous=False) -> FrameFields:
        """Frames ``frames`` (a slice or index array) of ``fields``, an
        object with the arrays of a whole run (e.g. a ``MemorySink``);
        with ``previous``, the flow of the frame before each too."""
        image = getattr(fields, 'registered', None)
        confidence = getattr(fields, 'confidence', None)
        before = None
        if previous:
            indices = np.arange(len(fields.w))[frames] - 1
            before = fields.w[np.maximum(indices, 0)]
            before[indices < 0] = np.nan
        return cls(
            fields.w[frames],
            fields.reliability[frames],
            None if image is None else image[frames],
            getattr(fields, 'spacing', None),
            None if confidence is None else confidence[frames],
            before,
        )

    @classmethod
    def of(cls, field, image=None, spacing=None) -> FrameFields:
        """One :class:`~napari_flowscope.engine.FlowField` (and the image
        it belongs to), with a leading frame axis of one."""
        return cls(
            field.w[np.newaxis],
            field.reliability[np.newaxis],
            None if image is None else image[np.newaxis],
            spacing,
            field.confidence[np.newaxis],
        )

    @property
    def previous_or_nan(self):
        """``previous``, or NaN where it is not known."""
        if self.previous is None:
            return np.full(self.w.shape, np.nan, np.float32)
        return self.previous

    def trusted(self) -> np.ndarray | None:
        """Where the match is trusted (None: no confidence known)."""
        if self.confidence is None:
            return None
        return self.confidence >= CONFIDENCE_THRESHOLD

    def lengths(self, sample=Ellipsis) -> np.ndarray:
        """Length of each displacement (px), of ``w[sample]``."""
        return displacement_length(self.w[sample], spacing=self.spacing)

    def gray(self) -> np.ndarray:
        """``image`` without its channel axis (their mean), float32."""
        image = np.asarray(self.image, np.float32)
        if image.ndim == self.w.ndim:  # channels last
            image = image.mean(axis=-1)
        return image


def _displacement(fields):
    return displacement_magnitude(fields.w, spacing=fields.spacing)


def _velocity(fields):
    # previous: the flow of the frame before each one (NaN before frame 0)
    return displacement_magnitude(
        fields.w - fields.previous_or_nan, spacing=fields.spacing
    )


def _component(index):
    def values(fields):
        return fields.w[..., index]

    return values


def _divergence(fields):
    return divergence(fields.w)


def _curl(fields):
    return curl(fields.w)


def _reliability(fields):
    return fields.reliability


def _confidence(fields):
    if fields.confidence is None:  # results of an older version
        return np.full(fields.reliability.shape, np.nan, np.float32)
    return fields.confidence


@dataclass(frozen=True)
class OutputLayer:
    """How one output of a run is shown.

    Attributes
    ----------
    role : str
        Key of the output (``'displacement'``, ``'registered'``, ...).
    suffix : str
        The layer is named ``'<source layer> <suffix>'``.
    output : str or None
        Label of the output box that turns it on; roles sharing a label
        share a box.  None: always shown.
    kind : {'image', 'stack', 'reference', 'vectors'}
        ``'image'``: a :class:`FieldMap` heatmap of ``values``;
        ``'stack'``: the sink array named ``stored`` (shape of the source
        layer); ``'reference'``: the reference, one frame broadcast over
        time; ``'vectors'``: the flow of the frame on screen as arrows.
    values : callable, optional
        ``values(FrameFields) -> ndarray (n, *frame)`` of an image role.
    previous : bool
        ``values`` reads the flow of the frame before each one
        (``FrameFields.previous``: velocities).
    stored : str, optional
        Sink attribute of a stack role.
    colormap : str, Colormap or None
        None: the source layer's.
    limits : str or None
        Contrast limits, fixed from the first batch of a run so colours
        mean the same in every frame (see :func:`output_limits`):
        ``'displacement'`` (0 to the displacement scale), ``'signed
        displacement'``,
        ``'robust'`` (0 to a robust maximum of the values),
        ``'signed robust'``, ``'unit'`` (0 to 1); None: the source
        layer's.
    masked : bool
        Hidden (NaN) where the vectors are hidden (:func:`display_mask`),
        so a heatmap never shows motion the arrows do not trust.
    default : bool
        Whether its output box starts ticked.
    visible, opacity, blending
        Initial look of the layer.
    dims : tuple of int
        Spatial dimensions of the frames it applies to: 2 (images), 3
        (volumes) or both.
    """

    role: str
    suffix: str
    output: str | None
    kind: str = 'image'
    values: Callable | None = None
    previous: bool = False
    stored: str | None = None
    colormap: str | Colormap | None = None
    limits: str | None = None
    masked: bool = False
    default: bool = False
    visible: bool = False
    opacity: float = 0.7
    blending: str = 'translucent'
    dims: tuple = (2, 3)


#: Every output a run can show, bottom to top of the layer list.
OUTPUT_LAYERS = (
    OutputLayer('reference', 'reference', None, kind='reference', opacity=1.0),
    OutputLayer(
        'registered',
        'registered',
        'registered stack',
        kind='stack',
        stored='registered',
        default=True,
        visible=True,
        opacity=1.0,
    ),
    OutputLayer(
        'reliability',
        'reliability',
        'reliability',
        values=_reliability,
        colormap='viridis',
        limits='robust',
    ),
    OutputLayer(
        'confidence',
        'confidence',
        'confidence',
        values=_confidence,
        colormap='magma',
        limits='unit',
    ),
    OutputLayer(
        'divergence',
        'divergence',
        'divergence / curl',
        values=_divergence,
        colormap='PuOr',
        limits='signed robust',
        masked=True,
        dims=(2,),  # in a volume the curl is a vector, not a map
    ),
    OutputLayer(
        'curl',
        'curl',
        'divergence / curl',
        values=_curl,
        colormap='PiYG',
        limits='signed robust',
        masked=True,
        dims=(2,),
    ),
    OutputLayer(
        'vx',
        'vx',
        'vx / vy',
        values=_component(0),
        colormap='RdBu_r',
        limits='signed displacement',
        masked=True,
    ),
    OutputLayer(
        'vy',
        'vy',
        'vx / vy',
        values=_component(1),
        colormap='RdBu_r',
        limits='signed displacement',
        masked=True,
    ),
    OutputLayer(
        'vz',
        'vz',
        'vx / vy',
        values=_component(2),
        colormap='RdBu_r',
        limits='signed displacement',
        masked=True,
        dims=(3,),
    ),
    OutputLayer(
        'velocity',
        'velocity',
        'velocity',
        values=_velocity,
        previous=True,
        colormap='viridis',
        limits='robust',
        masked=True,
    ),
    OutputLayer(
        'displacement',
        'displacement',
        'displacement',
        values=_displacement,
        colormap=DISPLACEMENT_COLORMAP,
        limits='displacement',
        masked=True,
        default=True,
        visible=True,
        opacity=1.0,
    ),
    OutputLayer(
        'vectors',
        'flow vectors',
        'vectors',
        kind='vectors',
        colormap=VECTOR_COLORMAP,
        limits='displacement',
        default=True,
        visible=True,
        opacity=1.0,
    ),
)
SPECS = {spec.role: spec for spec in OUTPUT_LAYERS}


def roles_for(roles, frame_ndim) -> list:
    """The roles among ``roles`` shown for frames of ``frame_ndim``
    spatial dimensions (2: images, 3: volumes)."""
    return [role for role in roles if frame_ndim in SPECS[role].dims]


#: Roles a live preview shows (computed from one frame's flow).
PREVIEW_ROLES = ('displacement', 'vectors')


@dataclass(frozen=True)
class VectorStyle:
    """How flow vectors are sampled and masked (display only).

    Attributes
    ----------
    step : int
        Grid spacing in pixels (coarsened automatically when a frame would
        show more than ``MAX_VECTORS`` vectors); in a volume along Z too,
        over the same physical distance.
    length : float or None
        Display multiplier of the arrows (napari ``Vectors.length``);
        None: automatic, the 95th percentile displacement drawn
        ``AUTO_ARROW_STEPS`` grid steps long (see :func:`auto_length`).
    reliability_threshold : float or None
        Hide vectors whose reliability (texture) is below this.
    confidence_threshold : float or None
        Hide vectors whose match confidence is below this (the engine's
        ``CONFIDENCE_THRESHOLD``: not trusted).
    intensity_percentile : float or None
        Hide vectors on pixels darker than this percentile of the
        registered frame (background).
    min_speed : float
        Hide vectors shorter than this (px).
    """

    step: int = 16
    length: float | None = None
    reliability_threshold: float | None = None
    intensity_percentile: float | None = None
    min_speed: float = 0.0
    confidence_threshold: float | None = None

    def masks(self) -> bool:
        """Whether anything is hidden."""
        return (
            self.reliability_threshold is not None
            or self.confidence_threshold is not None
            or self.intensity_percentile is not None
            or self.min_speed > 0
        )


def display_mask(fields: FrameFields, style: VectorStyle):
    """Where vectors (and masked heatmaps) are shown, pixel by pixel.

    The rules :func:`frame_vectors` applies to the grid points:
    reliability and confidence at least their thresholds, the registered
    frame at least its ``intensity_percentile`` (per frame),
    displacement at least ``min_speed``.

    Returns
    -------
    ndarray, shape (n, *frame), bool, or None
        None when nothing is hidden.
    """
    if not style.masks():
        return None
    keep = np.ones(fields.reliability.shape, bool)
    if style.reliability_threshold is not None:
        keep &= fields.reliability >= style.reliability_threshold
    if (
        style.confidence_threshold is not None
        and fields.confidence is not None
    ):
        keep &= fields.confidence >= style.confidence_threshold
    if style.intensity_percentile is not None and fields.image is not None:
        image = fields.gray()
        axes = tuple(range(1, image.ndim))
        cutoff = np.percentile(
            image, style.intensity_percentile, axis=axes, keepdims=True
        )
        keep &= image >= cutoff
    if style.min_speed > 0:
        keep &= fields.lengths() >= style.min_speed
    return keep


def displacement_scale(fields: FrameFields) -> float:
    """The largest per-frame 95th percentile displacement (px) of a few
    frames, on a strided sample of the trusted pixels (all when none is
    trusted or confidence is unknown); what the automatic arrow length
    draws ``AUTO_ARROW_STEPS`` grid steps long."""
    sample = (slice(None), *(slice(None, None, 4),) * (fields.w.ndim - 2))
    lengths = fields.lengths(sample)
    trusted = fields.trusted()
    scales = [0.0]
    for i, frame in enumerate(lengths):
        if trusted is not None and trusted[i][sample[1:]].any():
            frame = frame[trusted[i][sample[1:]]]
        scales.append(float(np.percentile(frame, 95)))
    return max(scales)


def auto_length(scale: float, step: int) -> float:
    """Arrow length multiplier drawing ``scale`` px as
    ``AUTO_ARROW_STEPS`` grid steps (1 when there is no motion)."""
    if not scale > 1e-3:
        return 1.0
    return AUTO_ARROW_STEPS * step / scale


class FieldMap:
    """A ``(T, *frame)`` float32 map of a run's flow fields, computed for
    the frames napari reads (napari's layer-data protocol: ``shape``,
    ``dtype``, ``ndim``, ``size``, ``__getitem__``).

    Parameters
    ----------
    values : callable
        ``values(FrameFields) -> ndarray (n, *frame)``.
    shape : tuple of int
        ``(T, *frame)``.
    fields : object, optional
        Arrays of the whole run, read at each access (``w``,
        ``reliability``; e.g. a ``MemorySink`` the worker is filling).
        None: every frame is ``fill``.
    fill : float
        Value of frames without fields.

    Attributes
    ----------
    preview : (int, FrameFields) or None
        A frame shown instead of the run's (fields with one frame).
    mask : callable or None
        ``mask(FrameFields) -> bool array (n, *frame)`` or None: values
        where it is False are NaN (napari draws NaN transparent).
    done : ndarray of bool, shape (T,), optional
        Frames computed so far; the others are NaN (nothing to show yet).
    """

    dtype = np.dtype(np.float32)

    def __init__(
        self, values, shape, fields=None, *, fill=np.nan, previous=False
    ):
        self.values = values
        self.previous = previous
        self.shape = tuple(int(size) for size in shape)
        self.ndim = len(self.shape)
        self.size = math.prod(self.shape)
        self.fields = fields
        self.fill = np.float32(fill)
        self.preview = None
        self.mask = None
        self.done = None

    def __len__(self):
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        array = self[:]
        return array if dtype is None else array.astype(dtype, copy=False)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if not key or key[0] is Ellipsis:
            time, rest = slice(None), key
        else:
            time, rest = key[0], key[1:]
        if isinstance(time, (int, np.integer)):
            index = range(self.shape[0])[time]  # IndexError when outside
            return self._frames(slice(index, index + 1))[0][rest]
        return self._frames(time)[(slice(None), *rest)]

    def _frames(self, time):
        """Maps of the frames ``time`` (a slice or index array)."""
        indices = np.arange(self.shape[0])[time]
        if self.fields is None:
            maps = np.full((len(indices), *self.shape[1:]), self.fill)
        else:
            maps = self._compute(
                FrameFields.take(self.fields, time, previous=self.previous)
            )
            if self.done is not None:
                pending = ~self.done[indices]
                if self.previous:  # the frame before must be done too
                    pending |= ~self.done[np.maximum(indices - 1, 0)]
                if pending.any():
                    maps = np.array(maps)
                    maps[pending] = self.fill
        if self.preview is not None:
            frame, fields = self.preview
            rows = np.flatnonzero(indices == frame)
            if len(rows):
                maps = np.array(maps)  # never write into the run's arrays
                maps[rows] = self._compute(fields)[0]
        return maps

    def _compute(self, fields):
        maps = np.asarray(self.values(fields), np.float32)
        keep = None if self.mask is None else self.mask(fields)
        if keep is not None:
            maps = np.where(keep, maps, np.float32(np.nan))
        return maps


def layer_geometry(layer, ndim=None) -> dict:
    """Keyword arguments that place a new layer exactly over ``layer``.

    Parameters
    ----------
    layer : napari.layers.Layer
        The source layer, ``(T, *frame)``.
    ndim : int, optional
        Dimensions of the new layer (default: the source's); the last
        ``ndim`` axes of the source are used (one fewer for a per-frame
        image such as the reference).

    Returns
    -------
    dict
        ``scale``, ``translate``, ``units`` and ``axis_labels``.
    """
    ndim = layer.ndim if ndim is None else ndim
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
    step = max(int(step), 1)
    while math.prod(math.ceil(size / step) for size in frame_shape) > (
        max_vectors
    ):
        step += 1
    return step


def frame_vectors(
    w,
    t,
    *,
    style,
    reliability=None,
    image=None,
    spacing=None,
    confidence=None,
):
    """napari vector data of one frame.

    Parameters
    ----------
    w : ndarray, shape (Y, X, 2) or (Z, Y, X, 3)
        ``[x, y]`` (volumes ``[x, y, z]``) flow of frame ``t``.
    t : int
        Frame index, the first coordinate of every vector.
    style : VectorStyle
        Sampling and masks.
    reliability : ndarray, shape (Y, X) or (Z, Y, X), optional
        Needed when ``style.reliability_threshold`` is set.
    image : ndarray, shape (Y, X) or (Z, Y, X), optional
        Needed when ``style.intensity_percentile`` is set.
    spacing : tuple of float, optional
        Volumes: ``(z, y, x)`` voxel size (grid step along Z, lengths).
    confidence : ndarray, shape of ``reliability``, optional
        With ``style.confidence_threshold``, hides untrusted vectors.

    Returns
    -------
    data : ndarray, shape (N, 2, 3) or (N, 2, 4), float32
        ``data[:, 0] = (t, y, x)`` start, ``data[:, 1] = (0, dy, dx)``
        projection; volumes ``(t, z, y, x)`` and ``(0, dz, dy, dx)``.
    speed : ndarray, shape (N,), float32
        Length of each vector (in-plane px), for colouring.
    """
    use_reliability = style.reliability_threshold is not None
    use_intensity = style.intensity_percentile is not None
    if w.shape[-1] == 3:
        steps = vector_steps(style.step, spacing)
        while (
            math.prod(
                math.ceil(size / step)
                for size, step in zip(w.shape[:3], steps, strict=True)
            )
            > MAX_VECTORS
        ):
            steps = tuple(step + 1 for step in steps)
        grid = decimate_volume_flow(
            w,
            steps=steps,
            spacing=spacing,
            reliability=reliability if use_reliability else None,
            reliability_threshold=style.reliability_threshold or 0.0,
            image=image if use_intensity else None,
            intensity_percentile=style.intensity_percentile,
            min_length=style.min_speed,
        )
    else:
        grid = decimate_flow(
            w,
            step=vector_step(w.shape[:2], style.step),
            reliability=reliability if use_reliability else None,
            reliability_threshold=style.reliability_threshold or 0.0,
            image=image if use_intensity else None,
            intensity_percentile=style.intensity_percentile,
            min_speed=style.min_speed,
        )
    positions, displacements, lengths = (
        grid.positions,
        grid.displacements,
        grid.speed,
    )
    if style.confidence_threshold is not None and confidence is not None:
        points = tuple(positions.astype(int).T)
        trusted = confidence[points] >= style.confidence_threshold
        positions, displacements, lengths = (
            positions[trusted],
            displacements[trusted],
            lengths[trusted],
        )
    data = np.zeros((len(lengths), 2, w.shape[-1] + 1), np.float32)
    data[:, 0, 0] = t
    data[:, 0, 1:] = positions
    data[:, 1, 1:] = displacements
    return data, lengths


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
    values = np.abs(values[np.isfinite(values)])
    return float(np.percentile(values, 99.5)) if values.size else 0.0


def output_limits(fields: FrameFields, roles) -> dict:
    """Contrast limits of ``roles`` (and ``'displacement'``) from a few
    frames.

    Parameters
    ----------
    fields : FrameFields
        The frames the limits are taken from (a run's first batch, or the
        previewed frame).
    roles : iterable of str
        Roles of :data:`OUTPUT_LAYERS`; those with ``limits`` None are
        left out.

    Returns
    -------
    dict of str to (float, float)
    """
    # a strided sample is plenty for percentiles and 16x cheaper
    sample = (slice(None), *(slice(None, None, 4),) * (fields.w.ndim - 2))
    top = nice_ceiling(_robust_max(fields.lengths(sample)) * 1.25)
    limits = {'displacement': (0.0, top)}
    for role in roles:
        kind = SPECS[role].limits
        if kind == 'displacement':
            limits[role] = (0.0, top)
        elif kind == 'signed displacement':
            limits[role] = (-top, top)
        elif kind == 'unit':
            limits[role] = (0.0, 1.0)
        elif kind in ('robust', 'signed robust'):
            values = SPECS[role].values(fields)[sample]
            top = nice_ceiling(_robust_max(values))
            limits[role] = (-top if kind == 'signed robust' else 0.0, top)
    return limits


class RunResults:
    """The arrays of one run, filled batch by batch by the worker.

    They back the output layers (no copies): the session registers each
    batch straight into :attr:`sink` (``iter_batches(into=sink)``), the
    worker takes the contrast limits from the first batch, yields it, and
    the main thread's ``layer.refresh()`` makes napari read them again.
    So the event loop only pays for the refresh (and the heatmaps of the
    frame on screen), however large the batch.

    Parameters
    ----------
    session : MotionSession
        Shapes, dtype and length of the run (its ``extra_stacks`` too).
    roles : iterable of str
        Output roles, whose contrast limits are taken from the first
        batch.
    sink : MappedDiskSink, optional
        An open sink for a run whose arrays do not fit in memory: they
        are files in a results folder, memory-mapped for the layers.
        Default: a new :class:`MemorySink`.

    Attributes
    ----------
    sink : MemorySink or MappedDiskSink
        Registered frames, flow, reliability, stats, reference and the
        registered extra stacks, as a headless run would collect them
        (saved by ``save_run``).
    folder : Path or None
        The results folder of a run kept on disk.
    roles : list of str
    limits : dict of str to (float, float) or None
        Contrast limits fixed from the first batch (see
        :func:`output_limits`).
    displacement_scale : float
        What the automatic arrow length is based on (px): the largest
        per-frame 95th percentile displacement seen, updated only when a
        batch exceeds it by ``AUTO_LENGTH_SLACK`` (steady over a run).
    """

    def __init__(self, session, roles=(), *, sink=None):
        from napari_flowscope.session import MemorySink

        self.session = session
        self.folder = None if sink is None else sink.directory
        if sink is None:
            sink = MemorySink()
            sink.open(session)
            # np.zeros pages are mapped lazily: frames not computed yet
            # cost no memory (np.zeros, not zeros_like: zeros_like writes
            # every page)
            for name in ('registered', 'w', 'reliability', 'confidence'):
                array = getattr(sink, name)
                setattr(sink, name, np.zeros(array.shape, array.dtype))
            sink.extras = [
                np.zeros(array.shape, array.dtype) for array in sink.extras
            ]
        self.sink = sink
        self.roles = list(roles)
        self.limits = None
        self.displacement_scale = 0.0

    @property
    def n_frames(self) -> int:
        return self.sink.w.shape[0]

    @property
    def shape(self) -> tuple:
        """``(T, *frame)``, the shape of the heatmaps."""
        return self.sink.reliability.shape

    @property
    def extras(self) -> list:
        """Registered stacks of the extra layers."""
        return self.sink.extras

    def finish(self):
        """The run is complete (worker thread): a results folder gets its
        files' final names."""
        self.sink.close(self.session)

    def discard(self):
        """The run stopped early: a results folder's files are removed
        (the layers keep what they show until they let go of it)."""
        self.sink.abort()

    def write(self, batch):
        """Store a batch (worker thread); the first one sets the limits."""
        self.sink.write(batch)
        fields = FrameFields(
            batch.w,
            batch.reliability,
            spacing=self.sink.spacing,
            confidence=batch.confidence,
        )
        if self.limits is None:
            # from the sink, which has the frame before (velocities)
            self.limits = output_limits(
                FrameFields.take(
                    self.sink, slice(batch.start, batch.stop), previous=True
                ),
                self.roles,
            )
        scale = displacement_scale(fields)
        if scale > AUTO_LENGTH_SLACK * self.displacement_scale:
            self.displacement_scale = scale


class OutputLayers:
    """The layers one widget's runs and previews write into, created once,
    reused.

    Layers are tracked by the objects this class created, not by name: a
    second run reuses its own layers (data replaced in place when shapes
    match) and a layer the user removed is created again.  Roles not asked
    for by a run are removed, so no stale result stays on screen.  A live
    preview shows its frame in the same layers (:meth:`show_preview`).

    Parameters
    ----------
    viewer : napari.Viewer or ViewerModel
    label : str
        Inserted in layer names: ``'<source> <label> <suffix>'``.

    Attributes
    ----------
    results : RunResults or None
        The run the layers show.
    style : VectorStyle
        How vectors are drawn, and the mask of masked heatmaps.
    """

    def __init__(self, viewer, *, label=''):
        self._viewer = viewer
        self._label = label
        self._layers = {}
        self._extra_layers = []
        self.results = None
        self.style = VectorStyle()
        self._limits_set = False
        self._source = None
        self._shape = None
        self._done = None
        self._reference = None
        self._pending = []
        self._on_ready = None
        self._generation = 0
        self._preview = None
        self._preview_scale = 0.0
        self._preview_vectors_shown = False
        self._length = None

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
        """Every output layer still in the viewer."""
        extras = [
            layer
            for layer in self._extra_layers
            if layer in self._viewer.layers
        ]
        return [self[role] for role in self._layers if role in self] + (extras)

    @property
    def source(self):
        """The layer the current outputs belong to, or None."""
        return self._source

    @property
    def _n_frames(self):
        return 0 if self._shape is None else self._shape[0]

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
            Roles of :data:`OUTPUT_LAYERS` to show (the reference always).
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
        roles = set(roles) | {'reference'}
        self.cancel_pending()
        self._preview = None
        for role in list(self._layers):
            if role not in roles:
                self._remove(self._layers.pop(role))
        for layer in self._extra_layers:
            self._remove(layer)
        self._extra_layers = []
        self.results = results
        self._source = source
        self._shape = results.shape
        self._done = np.zeros(self._n_frames, bool)
        self._limits_set = False
        self._reference = None
        self._length = None
        # bottom to top: the table's order, then the extra layers
        self._pending = [
            functools.partial(self._prepare_role, spec, source)
            for spec in OUTPUT_LAYERS
            if spec.role in roles
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
        """Create every layer still pending, now (and give the arrows the
        run's final automatic length)."""
        while self._pending:
            self._pending.pop(0)()
        self._update_length()
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

    # -- creating layers -------------------------------------------------

    def _name(self, source, spec):
        return ' '.join(
            part for part in (source.name, self._label, spec.suffix) if part
        )

    def _prepare_role(self, spec, source):
        name = self._name(source, spec)
        geometry = layer_geometry(source)
        fields = None if self.results is None else self.results.sink
        if spec.kind == 'vectors':
            self._prepare_vectors(spec, name, geometry)
        elif spec.kind == 'reference':
            self._prepare_reference(spec, source, name)
        elif spec.kind == 'stack':
            self._layers[spec.role] = self._image(
                spec.role,
                getattr(fields, spec.stored),
                name,
                geometry,
                colormap=source.colormap.name,
                contrast_limits=source.contrast_limits,
                rgb=source.rgb,
                visible=spec.visible,
            )
        else:
            data = FieldMap(
                spec.values, self._shape, fields, previous=spec.previous
            )
            data.done = self._done
            if spec.masked:
                data.mask = self._mask()
            if self._preview is not None:
                data.preview = self._preview[:2]
            self._layers[spec.role] = self._image(
                spec.role,
                data,
                name,
                geometry,
                colormap=spec.colormap,
                contrast_limits=(0.0, 1.0),
                auto_contrast=False,
                blending=spec.blending,
                opacity=spec.opacity,
                visible=spec.visible,
            )
        # batches may have arrived before this layer existed
        limits = None if self.results is None else self.results.limits
        if limits is not None:
            self._set_limits(limits, roles=(spec.role,))
        if spec.kind == 'vectors':
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

    def _prepare_reference(self, spec, source, name):
        # One frame: it broadcasts over time, so it adds no slider axis.
        frame = self._reference  # when batches came before the layer
        if frame is None:
            frame = np.zeros(self._shape[1:], np.float32)
        layer = self._layers[spec.role] = self._image(
            spec.role,
            frame,
            name,
            layer_geometry(source, ndim=source.ndim - 1),
            colormap=source.colormap.name,
            visible=spec.visible,
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

    def _prepare_vectors(self, spec, name, geometry):
        old = self._layers.get(spec.role)
        if old is not None and old in self._viewer.layers:
            _restore(old, name, geometry)
            self._set_vectors(old, *_no_vectors(len(geometry['scale'])))
            # keep the arrows above heatmaps created by this run
            layers = self._viewer.layers
            index = layers.index(old)
            if index != len(layers) - 1:
                layers.move(index, len(layers))
            return
        data, lengths = _no_vectors(len(geometry['scale']))
        self._layers[spec.role] = self._viewer.add_vectors(
            data,
            name=name,
            features={'displacement': lengths},
            edge_color='displacement',
            edge_colormap=spec.colormap,
            edge_contrast_limits=(0.0, 1.0),
            edge_width=max(1.0, float(np.mean(geometry['scale'][1:]))),
            vector_style='arrow',
            length=self.vector_length,
            opacity=spec.opacity,
            **geometry,
        )

    def _remove(self, layer):
        if layer in self._viewer.layers:
            self._viewer.layers.remove(layer)

    def _detach(self):
        """Let go of the layers of another source's run: they stay as
        they are (the user's now); a pure preview's go."""
        if self.results is None:
            self.remove_layers()
            return
        self.cancel_pending()
        self._layers = {}
        self._extra_layers = []
        self._source = None
        self.results = None
        self._preview = None

    # -- a run's batches -------------------------------------------------

    def update(self, batch):
        """Show a batch the worker has written into the results.

        Main thread; when a frame of the batch is on screen, costs a
        refresh of each layer (napari reads that frame again, computing
        the heatmaps of it) and the vectors of one frame, otherwise
        nothing.
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
        for role in self._layers:
            if role in self and SPECS[role].kind in ('image', 'stack'):
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
    def displacement_limit(self):
        """Top of the displacement colour scale (px), None before the
        first batch."""
        limits = None if self.results is None else self.results.limits
        return None if limits is None else limits['displacement'][1]

    def _set_limits(self, limits, roles=None):
        if roles is None:
            self._limits_set = True
            roles = list(self._layers)
        for role in roles:
            if role not in self:
                continue
            if SPECS[role].kind == 'vectors':
                value = tuple(limits['displacement'])
                if tuple(self[role].edge_contrast_limits) != value:
                    self[role].edge_contrast_limits = value
            elif role in limits:
                value = tuple(limits[role])
                if tuple(self[role].contrast_limits) != value:
                    self[role].contrast_limits = value

    # -- a preview -------------------------------------------------------

    def show_preview(
        self, source, frame, fields, vectors, limits, scale=0.0
    ) -> None:
        """Show one frame's flow in the layers (the run's, when they
        belong to ``source``; created otherwise).

        Parameters
        ----------
        source : napari.layers.Image
            The layer previewed.
        frame : int
        fields : FrameFields
            The frame's flow fields, with a leading axis of one.
        vectors : (ndarray, ndarray)
            ``frame_vectors`` of the frame.
        limits : dict
            :func:`output_limits` of the frame (used without a run; a
            run's limits stay, so colours keep their meaning).
        scale : float
            :func:`displacement_scale` of the frame, for the automatic
            arrow length without a run.
        """
        if self._source is not None and self._source != source:
            self._detach()
        if self._source is None:
            self._source = source
            self._shape = (int(source.data.shape[0]), *fields.w.shape[1:-1])
            self._done = np.zeros(self._n_frames, bool)
            self._length = None
            self._preview_scale = 0.0
        self._preview = (frame, fields, vectors)
        if scale > AUTO_LENGTH_SLACK * self._preview_scale:
            # steady like a run's: a new length redraws the arrows
            self._preview_scale = scale
        for role in PREVIEW_ROLES:
            if role not in self:
                self._prepare_role(SPECS[role], source)
        for role in self._layers:
            if role in self and SPECS[role].kind == 'image':
                self[role].data.preview = (frame, fields)
                self[role].refresh()
        if self.results is None or self.results.limits is None:
            self._set_limits(limits, roles=list(self._layers))
        self._update_length()
        self.show_current_vectors()

    def end_preview(self) -> None:
        """Stop showing the preview: a run's layers show the run again,
        layers made only for the preview are removed."""
        if self.results is None:
            self.remove_layers()
            return
        self._preview = None
        for role in self._layers:
            if role in self and SPECS[role].kind == 'image':
                self[role].data.preview = None
                self[role].refresh()
        self._update_length()
        if 'vectors' in self and self._preview_vectors_shown:
            layer = self['vectors']
            self._set_vectors(layer, *_no_vectors(layer.data.shape[-1]))
        self.show_current_vectors()

    def restyle_preview(self, vectors) -> None:
        """Show the preview frame's vectors drawn in a new style."""
        if self._preview is not None:
            frame, fields, _ = self._preview
            self._preview = (frame, fields, vectors)
            self.show_current_vectors()

    @property
    def previewing(self) -> bool:
        """Whether a preview frame is shown."""
        return self._preview is not None

    def remove_layers(self) -> None:
        """Remove every layer and forget the run."""
        self.cancel_pending()
        for layer in self.layers:
            self._viewer.layers.remove(layer)
        self._layers = {}
        self._extra_layers = []
        self._source = None
        self._shape = None
        self._done = None
        self._preview = None
        self._preview_scale = 0.0
        self._length = None
        self.results = None

    # -- vectors ---------------------------------------------------------

    def _mask(self):
        style = self.style
        if not style.masks():
            return None
        return functools.partial(display_mask, style=style)

    @property
    def displacement_scale(self) -> float:
        """What the automatic arrow length draws ``AUTO_ARROW_STEPS``
        grid steps long (px): the run's, else the preview frame's."""
        if self.results is not None and self.results.displacement_scale:
            return self.results.displacement_scale
        return self._preview_scale

    @property
    def vector_length(self) -> float:
        """The arrow length multiplier in use."""
        if self.style.length is not None:
            return self.style.length
        step = self.style.step
        if self._shape is not None:
            step = vector_step(self._shape[1:], step)
        return auto_length(self.displacement_scale, step)

    def _update_length(self) -> None:
        """Give the vectors layer the current length (when it changed:
        napari redraws the layer on each assignment)."""
        length = self.vector_length
        if length == self._length:
            return
        self._length = length
        if 'vectors' in self:
            self['vectors'].length = length

    def set_style(self, style: VectorStyle) -> None:
        """Change how vectors are drawn (and heatmaps masked) and redraw
        the current frame.

        Nothing happens for the style already set: napari redraws the
        layer's thumbnail on every assignment (about 30 ms for a 512²
        frame), and every parameter change and Start passes the style.
        """
        if style == self.style:
            return
        old, self.style = self.style, style
        self._update_length()
        if display_mask_changed(old, style):
            mask = self._mask()
            for role in self._layers:
                if role in self and SPECS[role].masked:
                    self[role].data.mask = mask
                    self[role].refresh()
        self.show_current_vectors()

    def show_current_vectors(self) -> None:
        """Show the vectors of the frame under the time slider."""
        if self._source is None or 'vectors' not in self:
            return
        self.show_vectors(
            current_frame(self._viewer, self._source, self._n_frames)
        )

    def show_vectors(self, t: int) -> None:
        """Show the vectors of frame ``t`` (the preview's, the run's, or
        none if not computed yet).

        Only one frame is held by the layer: reassigning all vectors of a
        whole stack would stall the event loop (NAPARI.md section 5).
        """
        layer = self['vectors']
        # A new automatic length is applied with new arrows only: napari
        # redraws the layer for each, 20-30 ms on a 512² frame.
        self._update_length()
        if self._preview is not None and self._preview[0] == t:
            self._set_vectors(layer, *self._preview[2])
            self._preview_vectors_shown = True
            return
        if not self._done[t] or self.results is None:
            # Nothing to draw: the arrows the layer holds belong to another
            # frame, where napari shows them; clearing them would cost a
            # redraw (20-40 ms) at every move of the time slider.
            return
        sink = self.results.sink
        fields = FrameFields.take(sink, slice(t, t + 1))
        data, lengths = frame_vectors(
            sink.w[t],
            t,
            style=self.style,
            reliability=sink.reliability[t],
            image=fields.gray()[0],
            spacing=sink.spacing,
            confidence=(
                None if fields.confidence is None else fields.confidence[0]
            ),
        )
        self._set_vectors(layer, data, lengths)
        self._preview_vectors_shown = False

    @staticmethod
    def _set_vectors(layer, data, lengths):
        # Colours follow the new features (colormap mode); assigning
        # edge_color again would redraw napari's thumbnail, a Python loop
        # over up to 1024 vectors (about 30 ms).
        layer.data = data
        layer.features = {'displacement': lengths}
        # napari 0.9 recolours the vectors from the features without
        # telling its canvas, which drew new arrows in the colour of the
        # feature default (invisible after a run) until the next redraw:
        # this event makes it take the colours (no thumbnail redraw).
        layer.events.edge_color()


def display_mask_changed(old: VectorStyle, new: VectorStyle) -> bool:
    """Whether two styles hide different pixels."""

    def masking(style):
        return (
            style.reliability_threshold,
            style.confidence_threshold,
            style.intensity_percentile,
            style.min_speed,
        )

    return masking(old) != masking(new)


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


def _no_vectors(ndim=3):
    return np.zeros((0, 2, ndim), np.float32), np.zeros(0, np.float32)
