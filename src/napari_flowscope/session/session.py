"""The streaming motion-correction session.

A :class:`MotionSession` walks a stack batch by batch: it reads
``batch_size`` frames (never the whole stack), estimates the flow of each
against the current reference, warps the frames and yields a
:class:`FlowBatch`.  Frames are 2-D images ``(Y, X)`` or volumes
``(Z, Y, X)``: a volumetric time-lapse ``(T, Z, Y, X)`` gets 3-D flow
``(T, Z, Y, X, 3)`` (or each plane's 2-D flow with ``per_plane``).
Widgets run :meth:`MotionSession.iter_batches` in a thread worker; scripts
and the command line call :meth:`MotionSession.run` or :func:`compensate`.
"""

from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from napari_flowscope.engine import (
    FlowEstimator,
    FlowParams,
    smooth_temporal,
    trusted_fraction,
    warp,
    warp_volume,
)
from napari_flowscope.engine.smoothing import TEMPORAL_KERNEL
from napari_flowscope.engine.volume import (
    displacement_length,
    volume_flow_estimator,
)
from napari_flowscope.engine.volume.estimator import check_spacing

from .references import (
    AdaptiveReference,
    FrameReference,
    as_reference_strategy,
)
from .stats import FrameStats, ReferenceCorrelation

__all__ = [
    'MAX_TEMPORAL_SIGMA',
    'FlowBatch',
    'MotionSession',
    'NonFiniteFrameError',
    'compensate',
    'output_dtype',
]

ProgressCallback = Callable[[int, int], None]
BatchCallback = Callable[[np.ndarray, int, int], None]

# scipy.ndimage.gaussian_filter1d's default truncation (standard deviations).
_GAUSSIAN_TRUNCATE = 4.0
#: Largest Gaussian sigma (frames) of temporal smoothing.  Every batch reads
#: 8 sigma frames around itself, so a huge sigma means reading (and
#: smoothing) the whole stack for every batch: minutes of work for a
#: result no different from the stack's mean.
MAX_TEMPORAL_SIGMA = 10.0


class NonFiniteFrameError(ValueError):
    """A frame holds NaN or infinity (``frame`` is its index)."""

    def __init__(self, frame, what='frame'):
        self.frame = int(frame)
        super().__init__(
            f'{what} {self.frame} contains NaN or infinite values; motion '
            'cannot be estimated on it (replace them, e.g. '
            'numpy.nan_to_num, or leave that frame out)'
        )


# Default batch: this many 2-D frames, or as many volumes as hold about
# this many voxels (at least one), so a batch of volumes stays a few
# hundred megabytes.
_DEFAULT_BATCH_FRAMES = 16
_DEFAULT_BATCH_VOXELS = 1 << 24


@dataclass(frozen=True, eq=False)
class FlowBatch:
    """Results for frames ``start:stop`` of a stack (``n = stop - start``).

    Attributes
    ----------
    start, stop : int
        Frame range (``stop`` excluded).
    w : ndarray, shape (n, Y, X, 2) or (n, Z, Y, X, 3), float32
        ``[x, y]`` (volumes: ``[x, y, z]``) displacement with
        ``frame(x + w(x)) ~ reference(x)``.
    reliability : ndarray, shape (n, Y, X) or (n, Z, Y, X), float32
        Texture reliability of the reference (see
        :func:`napari_flowscope.engine.estimate_flow`).
    confidence : ndarray, shape of ``reliability``, float32
        0 to 1, whether each displacement actually matched; ``>= 0.5``
        (:data:`napari_flowscope.engine.CONFIDENCE_THRESHOLD`) means
        trusted (see :mod:`napari_flowscope.engine.confidence`).
    registered : ndarray, shape (n, Y, X[, C]) or (n, Z, Y, X[, C])
        Corrected frames; integer input keeps its dtype (values rounded
        and clipped to the dtype's range), any other input gives float32.
    stats : FrameStats
        Per-frame displacement from the reference, velocity (frame to
        frame), normalised cross-correlation and trusted fraction.
    reference : ndarray, shape (Y, X) or (Z, Y, X), float32
        The reference after this batch (it changes only for
        :class:`~napari_flowscope.session.AdaptiveReference`).
    extras : tuple of ndarray
        Registered frames ``start:stop`` of each of the session's
        ``extra_stacks``, warped with ``w`` (dtypes as for ``registered``).
    """

    start: int
    stop: int
    w: np.ndarray
    reliability: np.ndarray
    confidence: np.ndarray
    registered: np.ndarray
    stats: FrameStats
    reference: np.ndarray
    extras: tuple = ()

    def __len__(self):
        return self.stop - self.start


def output_dtype(input_dtype) -> np.dtype:
    """dtype of registered frames: integer dtypes kept, else float32."""
    input_dtype = np.dtype(input_dtype)
    if np.issubdtype(input_dtype, np.integer):
        return input_dtype
    return np.dtype(np.float32)


class MotionSession:
    """Register a time-lapse to a reference, streaming batches of frames.

    Parameters
    ----------
    stack : array_like, shape (T, Y, X) or (T, Z, Y, X)
        Or with one channel axis (``channel_axis``).  A numpy array,
        memory map, dask or zarr array; only ``stack[start:stop]`` slices
        are read, one batch at a time.  A 4-D stack without
        ``channel_axis`` is a volumetric time-lapse ``(T, Z, Y, X)``:
        each volume gets 3-D flow ``(Z, Y, X, 3)`` holding ``[x, y, z]``
        voxels.
    reference : ReferenceStrategy, ndarray or int, optional
        What frames are registered to: a strategy from
        :mod:`napari_flowscope.session.references`, an image (wrapped in
        :class:`ImageReference`) or a frame index.  Default frame 0.
    params : FlowParams, optional
        Flow parameters; default ``FlowParams()`` (the 'balanced' preset).
    channel_axis : int, optional
        Axis of ``stack`` holding channels (not 0, which is time).  The
        other axes are ``(Y, X)`` or ``(Z, Y, X)``, in that order.
    channel : int or sequence of float
        Multichannel stacks: the channel used to estimate the flow, or one
        weight per channel for a weighted combination.  The flow is applied
        to every channel.
    batch_size : int, optional
        Frames per batch.  Results do not depend on it.  Default 16 2-D
        frames, or as many volumes as hold about 16 million voxels (at
        least one).
    temporal_smoothing : None, True or float
        Smooth the frames along time before estimating the flow (the
        registered output is made from the unsmoothed frames).  ``True``
        uses the 5-tap kernel of :func:`napari_flowscope.engine.
        smooth_temporal`, a float is a Gaussian sigma in frames.
    n_threads : int, optional
        Threads registering the frames of a batch in parallel when the
        reference is fixed (default ``os.cpu_count()``).  Results are
        identical for any number of threads.
    interpolation : {'linear', 'cubic'}
        Interpolation of the warp.
    extra_stacks : sequence of array_like, shape (T, *frame_shape[, C])
        Other channels (e.g. the other layers of a multichannel recording)
        registered with the flow of ``stack``, read batch by batch like it;
        each batch carries them in :attr:`FlowBatch.extras`.  A trailing
        axis is channels.
    spacing : tuple of float, optional
        Volumes: ``(z, y, x)`` voxel size (e.g. the layer's or file's
        scale), so that flow windows, smoothness and the pyramid are
        isotropic in physical units.  Default isotropic voxels.
    per_plane : bool
        Volumes: register each Z plane on its own with the 2-D engine
        (``w[..., 2]`` is zero), for stacks whose planes are not a true
        volume (planes far apart or acquired at different times).

    Attributes
    ----------
    n_frames : int
    frame_shape : tuple of int
        ``(Y, X)``, or ``(Z, Y, X)`` for volumes.
    is_volume : bool
        Whether frames are volumes ``(Z, Y, X)``.
    flow_components : int
        2 (``[x, y]``) or 3 for volumes (``[x, y, z]``).
    n_channels : int or None
        None for a stack without channel axis.
    input_dtype : numpy.dtype
        dtype of ``stack``.
    dtype : numpy.dtype
        dtype of the registered frames (see :func:`output_dtype`).
    extra_shapes : list of (tuple, numpy.dtype)
        Shape and registered dtype of each of ``extra_stacks``.
    params : FlowParams
        Current parameters (changed by ``send`` to :meth:`iter_batches`).
    params_history : list of (int, FlowParams)
        First frame and parameters of each stretch of the last run.
    """

    def __init__(
        self,
        stack,
        *,
        reference=None,
        params: FlowParams | None = None,
        channel_axis: int | None = None,
        channel: int | Sequence[float] = 0,
        batch_size: int | None = None,
        temporal_smoothing: bool | float | None = None,
        n_threads: int | None = None,
        interpolation: str = 'linear',
        extra_stacks: Sequence = (),
        spacing: Sequence[float] | None = None,
        per_plane: bool = False,
    ):
        self._stack = stack
        shape = tuple(int(size) for size in stack.shape)
        self._channel_axis = _check_channel_axis(channel_axis, len(shape))
        if self._channel_axis is None:
            frame_dims = shape[1:]
            self.n_channels = None
        else:
            frame_dims = tuple(
                size
                for axis, size in enumerate(shape)
                if axis not in (0, self._channel_axis)
            )
            self.n_channels = shape[self._channel_axis]
        if len(frame_dims) not in (2, 3) or shape[0] < 1:
            raise ValueError(
                'stack must be (T, Y, X) or (T, Z, Y, X), plus a channel '
                f'axis given by channel_axis; got shape {shape} with '
                f'channel_axis={channel_axis}'
            )
        self.is_volume = len(frame_dims) == 3
        if self.is_volume:
            _check_volume_frames(frame_dims, shape, self._channel_axis)
        self.n_frames = shape[0]
        self.frame_shape = frame_dims
        self.flow_components = 3 if self.is_volume else 2
        self.spacing = check_spacing(spacing) if self.is_volume else None
        self.per_plane = bool(per_plane) and self.is_volume
        self.input_dtype = _check_real(stack.dtype, 'the stack')
        self.dtype = output_dtype(self.input_dtype)
        self._weights = self._channel_weights(channel)
        self.channel = channel
        self.reference_strategy = as_reference_strategy(
            FrameReference(0) if reference is None else reference
        )
        self.params = _check_params(params)
        self.params_history = []
        if batch_size is None:
            batch_size = _default_batch_size(frame_dims)
        if int(batch_size) < 1:
            raise ValueError(f'batch_size must be >= 1; got {batch_size}')
        self.batch_size = int(batch_size)
        self.temporal_smoothing = temporal_smoothing
        self._halo = _smoothing_radius(temporal_smoothing)
        n_threads = os.cpu_count() if n_threads is None else int(n_threads)
        self.n_threads = max(1, n_threads or 1)
        if interpolation not in ('linear', 'cubic'):
            raise ValueError(
                "interpolation must be 'linear' or 'cubic'; "
                f'got {interpolation!r}'
            )
        self.interpolation = interpolation
        self._extra_stacks = tuple(extra_stacks)
        self.extra_shapes = [
            self._check_extra(extra) for extra in self._extra_stacks
        ]
        self._preview_estimator = (None, None)
        self._initial_reference = None
        self._reference = None
        self._correlation = None
        self._padded_cache = (0, ())

    # -- reading ----------------------------------------------------------

    def read_frames(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` as ``(n, *frame_shape[, C])`` in the input
        dtype."""
        frames = _read(self._stack, start, stop)
        if self._channel_axis is not None:
            frames = np.moveaxis(frames, self._channel_axis, -1)
        return frames

    def _check_extra(self, extra):
        _check_real(extra.dtype, 'an extra stack')
        shape = tuple(int(size) for size in extra.shape)
        frame_ndim = len(self.frame_shape)
        if (
            len(shape) not in (frame_ndim + 1, frame_ndim + 2)
            or shape[0] != self.n_frames
            or shape[1 : frame_ndim + 1] != tuple(self.frame_shape)
        ):
            raise ValueError(
                'each extra stack must have the frames of the stack '
                f'({self.n_frames}, {", ".join(map(str, self.frame_shape))}'
                f'[, C]); got shape {shape}'
            )
        return shape, output_dtype(extra.dtype)

    def flow_images(self, frames: np.ndarray) -> np.ndarray:
        """The images flow is estimated on: float32 ``(n, *frame_shape)``.

        ``frames`` is ``(n, *frame_shape[, C])``; multichannel frames are
        reduced to the chosen channel or the weighted channel combination.
        """
        frames = np.asarray(frames)
        if self.n_channels is None:
            return frames.astype(np.float32, copy=False)
        if isinstance(self._weights, int):
            return frames[..., self._weights].astype(np.float32)
        return np.tensordot(
            frames.astype(np.float32, copy=False),
            self._weights,
            axes=([-1], [0]),
        )

    def _read_flow_images(self, start, stop):
        return self.flow_images(self.read_frames(start, stop))

    def _channel_weights(self, channel):
        if self.n_channels is None:
            return None
        if isinstance(channel, (int, np.integer)):
            if not -self.n_channels <= channel < self.n_channels:
                raise ValueError(
                    f'channel {channel} is outside the '
                    f'{self.n_channels} channels of the stack'
                )
            return int(channel) % self.n_channels
        weights = np.asarray(channel, dtype=np.float32).reshape(-1)
        if weights.shape != (self.n_channels,) or weights.sum() <= 0:
            raise ValueError(
                f'channel weights must be {self.n_channels} numbers with '
                f'a positive sum; got {channel!r}'
            )
        # Normalised so the combination stays in the data's intensity range.
        return weights / weights.sum()

    # -- reference --------------------------------------------------------

    @property
    def reference_image(self) -> np.ndarray:
        """The current reference, float32 ``frame_shape`` (read-only)."""
        if self._reference is None:
            self._set_reference(self._build_reference())
        return self._reference

    def _build_reference(self):
        if self._initial_reference is None:
            image = self.reference_strategy.build(
                self._read_flow_images,
                self.n_frames,
                params=self.params,
                interpolation=self.interpolation,
                spacing=self.spacing,
                per_plane=self.per_plane,
            )
            if image.ndim == len(self.frame_shape) + 1:
                if self.n_channels is None:
                    raise ValueError(
                        f'a reference of shape {image.shape} (with channels) '
                        'needs a stack with channels'
                    )
                image = self.flow_images(image[np.newaxis])[0]
            if image.shape != self.frame_shape:
                raise ValueError(
                    f'reference has shape {image.shape} but frames have '
                    f'shape {self.frame_shape}'
                )
            if not _all_finite(image):
                raise ValueError(
                    f'the reference ({self.reference_strategy!r}) contains '
                    'NaN or infinite values'
                )
            self._initial_reference = _read_only(image)
        return self._initial_reference

    # -- one frame ----------------------------------------------------------

    def estimate_frame(self, index: int, *, params=None):
        """The flow of one frame against the reference, without a run.

        What a live preview shows: the same flow a run computes for frame
        ``index`` (temporal smoothing included), reading only that frame,
        the neighbours smoothing needs and the frames the reference
        strategy reads (once: the reference is kept), so it is cheap on a
        large lazy stack.

        Parameters
        ----------
        index : int
            Frame to estimate; negative values count from the end.
        params : FlowParams, optional
            Default: the session's.  The reference side of the estimator
            is kept between calls with the same parameters.

        Returns
        -------
        FlowField
            ``w`` (Y, X, 2), ``reliability`` and ``confidence`` (Y, X),
            float32; volumes ``(Z, Y, X, 3)`` and ``(Z, Y, X)``.
        """
        if not -self.n_frames <= index < self.n_frames:
            raise IndexError(
                f'frame {index} is outside a stack of {self.n_frames} frames'
            )
        index %= self.n_frames
        params = self.params if params is None else _check_params(params)
        cached_params, estimator = self._preview_estimator
        if estimator is None or cached_params != params:
            estimator = self.estimator(self.reference_image, params)
            self._preview_estimator = (params, estimator)
        moving = self._read_batch(index, index + 1, keep=False).moving[0]
        return estimator.estimate(moving)

    # -- streaming --------------------------------------------------------

    def iter_batches(
        self, *, into=None
    ) -> Generator[FlowBatch, FlowParams | None, None]:
        """Register the stack, yielding one :class:`FlowBatch` per batch.

        ``generator.send(params)`` with a :class:`FlowParams` retunes the
        run: the new parameters apply from the next batch (the reference
        is kept).  ``generator.close()`` cancels: no further frame is read
        or registered.

        Parameters
        ----------
        into : MemorySink, optional
            An open sink that receives the results directly: each batch's
            arrays are views of its arrays, so ``into.write(batch)`` has
            nothing to copy.  Default: new arrays per batch.

        Yields
        ------
        FlowBatch
            Batches in frame order, covering every frame exactly once.
        """
        adaptive = isinstance(self.reference_strategy, AdaptiveReference)
        self._set_reference(self._build_reference())
        self._padded_cache = (0, ())
        params = self.params
        self.params_history = [(0, params)]
        estimator = self.estimator(self._reference, params)
        n_workers = 1 if adaptive else self.n_threads
        executor = ThreadPoolExecutor(n_workers) if n_workers > 1 else None
        previous_w = None
        # The last flow of the previous batch: the velocity of a batch's
        # first frame is measured against it.
        last_w = None
        try:
            for start in range(0, self.n_frames, self.batch_size):
                stop = min(start + self.batch_size, self.n_frames)
                inputs = self._read_batch(start, stop)
                out = (
                    self._new_batch_arrays(start, stop)
                    if into is None
                    else _BatchArrays(*into.views(start, stop))
                )
                if adaptive:
                    estimator, previous_w = self._register_adaptive(
                        estimator, inputs, out, start, previous_w
                    )
                else:
                    register = functools.partial(
                        self._register_frame, estimator, inputs, out
                    )
                    if executor is None:
                        for i in range(stop - start):
                            register(i)
                    else:
                        # list() re-raises the first error of any frame.
                        list(executor.map(register, range(stop - start)))
                _fill_velocity(
                    out, last_w, self.displacement_magnitude, executor
                )
                last_w = out.w[-1].copy()
                sent = yield out.to_batch(start, stop, self._reference)
                if sent is not None:
                    params = _check_params(sent)
                    self.params = params
                    self.params_history.append((stop, params))
                    estimator = self.estimator(self._reference, params)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def estimator(self, reference, params=None):
        """The flow estimator of this session's frames against ``reference``.

        :class:`~napari_flowscope.engine.FlowEstimator` for 2-D frames,
        otherwise the 3-D (or per-plane) estimator of
        :func:`~napari_flowscope.engine.volume.volume_flow_estimator`.
        """
        params = self.params if params is None else params
        if not self.is_volume:
            return FlowEstimator(reference, params)
        return volume_flow_estimator(
            reference, params, spacing=self.spacing, per_plane=self.per_plane
        )

    def warp(self, frame, w) -> np.ndarray:
        """``frame`` registered with its flow ``w`` (float32)."""
        if self.is_volume:
            return warp_volume(frame, w, interpolation=self.interpolation)
        return warp(frame, w, interpolation=self.interpolation)

    def displacement_magnitude(self, w) -> np.ndarray:
        """Length of each flow vector, float32, in in-plane pixels.

        For volumes the z component counts with its physical size (the
        z spacing over the pixel size), so lengths are distances.
        """
        return displacement_length(w, spacing=self.spacing)

    def _new_batch_arrays(self, start, stop):
        channels = () if self.n_channels is None else (self.n_channels,)
        return _BatchArrays.empty(
            stop - start,
            self.frame_shape,
            (stop - start, *self.frame_shape, *channels),
            self.dtype,
            self.flow_components,
            extras=[
                ((stop - start, *shape[1:]), dtype)
                for shape, dtype in self.extra_shapes
            ],
        )

    def _register_adaptive(self, estimator, inputs, out, start, previous_w):
        """Register a batch frame by frame, updating the reference."""
        strategy = self.reference_strategy
        for i in range(len(inputs.frames)):
            registered_image = self._register_frame(
                estimator, inputs, out, i, init=previous_w
            )
            previous_w = out.w[i]
            if strategy.update_due(start + i):
                self._set_reference(
                    _read_only(
                        strategy.blend(self._reference, registered_image)
                    )
                )
                estimator = self.estimator(self._reference, estimator.params)
        return estimator, previous_w

    def _read_batch(self, start, stop, *, keep=True):
        """Raw frames, flow images (smoothed if asked), plain images and
        the frames of the extra stacks.

        ``keep``: remember the frames read for the next batch (a run reads
        consecutive batches; a single frame does not).
        """
        extras = tuple(
            _read(extra, start, stop) for extra in self._extra_stacks
        )
        if self._halo == 0:
            frames = self.read_frames(start, stop)
            plain = _check_finite(self.flow_images(frames), start)
            return _BatchInputs(frames, plain, plain, extras)
        # Read a halo of neighbours so that smoothing near the batch edges
        # equals smoothing of the whole stack, whatever the batch size.
        first = max(start - self._halo, 0)
        last = min(stop + self._halo, self.n_frames)
        padded = (
            self._read_padded(first, last)
            if keep
            else self.read_frames(first, last)
        )
        frames = padded[start - first : stop - first]
        padded_images = _check_finite(self.flow_images(padded), first)
        smoothed = smooth_temporal(padded_images, sigma_t=self._sigma_t())
        inner = slice(start - first, stop - first)
        return _BatchInputs(
            frames, smoothed[inner], padded_images[inner], extras
        )

    def _read_padded(self, first, last):
        """Frames ``first:last``, reusing what the last batch read.

        Consecutive padded ranges overlap by twice the halo; keeping the
        previous one means every frame is read from the stack once.
        """
        cached_first, cached = self._padded_cache
        cached_last = cached_first + len(cached)
        if cached_first <= first < cached_last:
            fresh = self.read_frames(max(cached_last, first), last)
            padded = np.concatenate([cached[first - cached_first :], fresh])
        else:
            padded = self.read_frames(first, last)
        padded = padded[: last - first]
        self._padded_cache = (first, padded)
        return padded

    def _sigma_t(self):
        if self.temporal_smoothing is True:
            return None
        return float(self.temporal_smoothing)

    def _set_reference(self, reference):
        self._reference = reference
        self._correlation = ReferenceCorrelation(reference)

    def _register_frame(self, estimator, inputs, out, i, *, init=None):
        """Register frame ``i`` of a batch into row ``i`` of ``out``.

        Returns the registered flow image (float32 ``frame_shape``), which
        the adaptive reference blends in.
        """
        correlation = self._correlation
        field = estimator.estimate(inputs.moving[i], init=init)
        registered = self.warp(inputs.frames[i], field.w)
        out.w[i] = field.w
        out.reliability[i] = field.reliability
        out.confidence[i] = field.confidence
        out.registered[i] = _cast(registered, self.dtype)
        for frames, registered_extra in zip(
            inputs.extras, out.extras, strict=True
        ):
            registered_extra[i] = _cast(
                self.warp(frames[i], field.w), registered_extra.dtype
            )
        registered_image = (
            registered
            if self.n_channels is None
            else self.flow_images(registered[np.newaxis])[0]
        )
        displacement = self.displacement_magnitude(field.w)
        out.stats.mean_displacement[i] = displacement.mean()
        out.stats.max_displacement[i] = displacement.max()
        out.stats.ncc_before[i] = correlation(inputs.plain[i])
        out.stats.ncc_after[i] = correlation(registered_image)
        out.stats.trusted_fraction[i] = trusted_fraction(
            field.confidence,
            field.reliability,
            estimator.params.reliability_threshold,
        )
        return registered_image

    def run(
        self,
        *,
        sink=None,
        progress_callback: ProgressCallback | None = None,
        w_callback: BatchCallback | None = None,
        registered_callback: BatchCallback | None = None,
    ):
        """Register the whole stack into a sink.

        Parameters
        ----------
        sink : MemorySink or DiskSink, optional
            Where results go (default a new in-memory sink).
        progress_callback : callable, optional
            ``progress_callback(current, total)`` after each batch, with
            ``current`` the number of frames done.
        w_callback : callable, optional
            ``w_callback(w_batch, start, end)`` with ``w_batch`` of shape
            ``(end - start, Y, X, 2)`` (volumes ``(end - start, Z, Y, X,
            3)``).
        registered_callback : callable, optional
            ``registered_callback(batch, start, end)`` with the registered
            frames ``(end - start, *frame_shape[, C])``.

        Returns
        -------
        sink
            The sink, complete.  If anything raises (a callback included),
            the run stops, the sink is aborted (no finished-looking file is
            left) and the error propagates.
        """
        from .sinks import MemorySink

        sink = MemorySink() if sink is None else sink
        sink.open(self)
        # Results go straight into a MemorySink's arrays: copying them
        # there afterwards took a sixth of the run's CPU time.
        batches = self.iter_batches(
            into=sink if isinstance(sink, MemorySink) else None
        )
        # One writer thread stores batch k while batch k + 1 is computed;
        # writes stay in order because each waits for the previous one.
        writer = ThreadPoolExecutor(1)
        writing = None
        try:
            for batch in batches:
                if writing is not None:
                    writing.result()
                writing = writer.submit(sink.write, batch)
                if w_callback is not None:
                    w_callback(batch.w, batch.start, batch.stop)
                if registered_callback is not None:
                    registered_callback(
                        batch.registered, batch.start, batch.stop
                    )
                if progress_callback is not None:
                    progress_callback(batch.stop, self.n_frames)
            if writing is not None:
                writing.result()
        except BaseException:
            batches.close()
            # No write may still be running when the sink removes files.
            writer.shutdown(wait=True)
            sink.abort()
            raise
        finally:
            writer.shutdown(wait=True)
        sink.close(self)
        return sink

    def describe(self) -> dict:
        """JSON-serialisable description of the run (for params.json)."""
        return {
            'params': self.params.to_dict(),
            'params_history': [
                {'first_frame': first, 'params': params.to_dict()}
                for first, params in self.params_history
            ],
            'reference': self.reference_strategy.to_dict(),
            'channel': (
                None
                if self.n_channels is None
                else (
                    self._weights
                    if isinstance(self._weights, int)
                    else [float(weight) for weight in self._weights]
                )
            ),
            'batch_size': self.batch_size,
            'temporal_smoothing': self.temporal_smoothing,
            'interpolation': self.interpolation,
            'n_frames': self.n_frames,
            **(
                {'spacing': list(self.spacing), 'per_plane': self.per_plane}
                if self.is_volume
                else {}
            ),
        }


def compensate(
    stack,
    reference,
    params: FlowParams | None = None,
    *,
    progress_callback: ProgressCallback | None = None,
    w_callback: BatchCallback | None = None,
    registered_callback: BatchCallback | None = None,
    **session_kwargs,
):
    """Motion-correct a stack in memory (PyFlowReg ``compensate_arr`` style).

    Parameters
    ----------
    stack : array_like, shape (T, Y, X) or (T, Z, Y, X)
        Or with a channel axis.  See :class:`MotionSession`; a 4-D array
        without ``channel_axis`` is a volumetric time-lapse
        ``(T, Z, Y, X)``.
    reference : ndarray, ReferenceStrategy or int
        An image ``(Y, X)`` / ``(Y, X, C)`` (volumes ``(Z, Y, X[, C])``), a
        reference strategy or a frame index.
    params : FlowParams, optional
        Default ``FlowParams()`` (the 'balanced' preset).
    progress_callback, w_callback, registered_callback : callable, optional
        As in :meth:`MotionSession.run`.
    **session_kwargs
        Other :class:`MotionSession` arguments (``channel_axis``,
        ``batch_size``, ``n_threads``, ``spacing``, ``per_plane``, ...).

    Returns
    -------
    registered : ndarray
        Same shape and axis order as ``stack``; integer dtypes kept,
        otherwise float32.
    w : ndarray, shape (T, Y, X, 2) or (T, Z, Y, X, 3), float32
        ``[x, y]`` (volumes ``[x, y, z]``) displacement of every frame.
    """
    session = MotionSession(
        stack, reference=reference, params=params, **session_kwargs
    )
    sink = session.run(
        progress_callback=progress_callback,
        w_callback=w_callback,
        registered_callback=registered_callback,
    )
    registered = sink.registered
    if session._channel_axis is not None:
        registered = np.moveaxis(registered, -1, session._channel_axis)
    return registered, sink.w


class _BatchInputs(NamedTuple):
    """What one batch is made of (each ``n`` frames long)."""

    frames: np.ndarray  # (n, *frame[, C]) input dtype: what gets warped
    moving: np.ndarray  # (n, *frame) float32, smoothed if asked: for flow
    plain: np.ndarray  # (n, *frame) float32, unsmoothed: for NCC before
    extras: tuple = ()  # (n, *frame[, C]) of each extra stack: warped alike


class _BatchArrays(NamedTuple):
    """Output arrays of one batch, filled frame by frame (thread-safe:
    each frame writes only its own rows)."""

    w: np.ndarray  # (n, *frame, 2 or 3) float32
    reliability: np.ndarray  # (n, *frame) float32
    confidence: np.ndarray  # (n, *frame) float32
    registered: np.ndarray  # (n, *frame[, C]) output dtype
    stats: FrameStats
    extras: tuple = ()  # (n, *frame[, C]) registered extra stacks

    @classmethod
    def empty(
        cls, n, frame_shape, frames_shape, dtype, components=2, extras=()
    ):
        return cls(
            np.empty((n, *frame_shape, components), np.float32),
            np.empty((n, *frame_shape), np.float32),
            np.empty((n, *frame_shape), np.float32),
            np.empty(frames_shape, dtype),
            FrameStats.empty(n),
            tuple(np.empty(shape, dtype) for shape, dtype in extras),
        )

    def to_batch(self, start, stop, reference):
        return FlowBatch(
            start,
            stop,
            self.w,
            self.reliability,
            self.confidence,
            self.registered,
            self.stats,
            reference=reference,
            extras=tuple(self.extras),
        )


def _read(stack, start, stop):
    """Frames ``start:stop`` of any array-like, as a numpy array."""
    frames = stack[start:stop]
    if isinstance(frames, np.memmap):
        frames = np.array(frames)  # a copy: the mapped pages can go
        _release_mapped_pages(stack)
        return frames
    return np.asarray(frames)


def _fill_velocity(out, previous, length, executor=None):
    """Velocity statistics of a batch from consecutive flows.

    ``previous`` is the flow of the frame before the batch, None at the
    start of a run (the first frame then keeps NaN); ``length`` is
    :meth:`MotionSession.displacement_magnitude`.
    """

    def fill(i):
        before = out.w[i - 1] if i else previous
        if before is None:
            return
        velocity = length(out.w[i] - before)
        out.stats.mean_velocity[i] = velocity.mean()
        out.stats.max_velocity[i] = velocity.max()

    frames = range(len(out.w))
    if executor is None:
        for i in frames:
            fill(i)
    else:
        list(executor.map(fill, frames))


def _cast(image, dtype):
    """float32 registered frame -> output dtype (round and clip ints)."""
    if dtype == np.float32:
        return image
    return np.clip(np.rint(image), *_float32_limits(np.dtype(dtype)))


@functools.cache
def _float32_limits(dtype):
    """The integer range of ``dtype`` as float32 values inside it.

    float32 cannot hold 2**31 - 1: it rounds up to 2**31, which a cast to
    int32 wraps round to -2**31 (a saturated pixel turned black).  The
    largest float32 below the maximum is used instead.
    """
    info = np.iinfo(dtype)
    low, high = np.float32(info.min), np.float32(info.max)
    if int(high) > info.max:
        high = np.nextafter(high, np.float32(0))
    if int(low) < info.min:
        low = np.nextafter(low, np.float32(0))
    return low, high


def _check_real(dtype, what):
    """The dtype of real numbers `dtype` is, or a ValueError saying why not."""
    dtype = np.dtype(dtype)
    if dtype.kind == 'c':
        raise ValueError(
            f'{what} holds complex numbers ({dtype}); motion is estimated on '
            'real images: pass numpy.abs(stack) (the magnitude) or '
            'stack.real'
        )
    if dtype.kind not in 'biuf':
        raise ValueError(
            f'{what} must hold numbers (integer or float); got {dtype}'
        )
    return dtype


def _all_finite(images):
    # a cheap screen first: any NaN or infinity makes the sum non-finite
    with np.errstate(over='ignore', invalid='ignore'):
        return bool(np.isfinite(images.sum()) or np.isfinite(images).all())


def _check_finite(images, first_frame):
    """`images` (n, ...) float32, or NonFiniteFrameError naming the frame."""
    if not _all_finite(images):
        finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
        raise NonFiniteFrameError(first_frame + int(np.argmin(finite)))
    return images


def _release_mapped_pages(array):
    """Unmap the pages a shared memory map has read so far.

    Pages read through a map stay resident in the process (RSS) until the
    map closes, so a long run over a memory-mapped file would end holding
    the whole file.  For shared maps (modes 'r', 'r+', 'w+') the data stay
    in the file and the page cache, written changes included; copy-on-write
    maps (mode 'c') would lose changes and are left alone.
    """
    mapping = getattr(array, '_mmap', None)  # numpy.memmap's mmap object
    if (
        getattr(array, 'mode', 'c') != 'c'
        and hasattr(mapping, 'madvise')
        and hasattr(mmap, 'MADV_DONTNEED')
    ):
        mapping.madvise(mmap.MADV_DONTNEED)


def _read_only(image):
    image = np.array(image, dtype=np.float32, order='C')
    image.flags.writeable = False
    return image


def _check_params(params):
    if params is None:
        return FlowParams()
    if not isinstance(params, FlowParams):
        raise TypeError(
            f'params must be a FlowParams or None; got {type(params).__name__}'
        )
    return params


def _check_channel_axis(channel_axis, ndim):
    if channel_axis is None:
        return None
    if not -ndim <= channel_axis < ndim or channel_axis % ndim == 0:
        raise ValueError(
            f'channel_axis {channel_axis} is not a non-time axis of a '
            f'{ndim}-D stack (axis 0 is time)'
        )
    return channel_axis % ndim


def _check_volume_frames(frame_shape, shape, channel_axis):
    """Refuse volumes that are more likely images with channels."""
    if frame_shape[0] < 2:
        raise ValueError(
            f'a stack of shape {shape} has volumes of a single plane; '
            'pass it as (T, Y, X)'
        )
    if channel_axis is None and frame_shape[-1] <= 4:
        raise ValueError(
            f'a 4-D stack without channel_axis is read as (T, Z, Y, X), '
            f'but the last axis of shape {shape} has only {shape[-1]} '
            'entries: if it holds channels (e.g. RGB), pass '
            f'channel_axis={len(shape) - 1}'
        )


def _default_batch_size(frame_shape):
    if len(frame_shape) == 2:
        return _DEFAULT_BATCH_FRAMES
    voxels = int(np.prod(frame_shape))
    return max(1, min(_DEFAULT_BATCH_FRAMES, _DEFAULT_BATCH_VOXELS // voxels))


def _smoothing_radius(temporal_smoothing):
    """Frames on each side that temporal smoothing looks at."""
    if temporal_smoothing is None or temporal_smoothing is False:
        return 0
    if temporal_smoothing is True:
        return len(TEMPORAL_KERNEL) // 2
    sigma_t = float(temporal_smoothing)
    if not np.isfinite(sigma_t) or not 0 < sigma_t <= MAX_TEMPORAL_SIGMA:
        raise ValueError(
            'temporal_smoothing must be None, True or a sigma in frames '
            f'between 0 and {MAX_TEMPORAL_SIGMA:g} (each batch reads 8 '
            f'sigma frames around itself); got {temporal_smoothing!r}'
        )
    # The radius scipy.ndimage.gaussian_filter1d uses.
    return int(_GAUSSIAN_TRUNCATE * sigma_t + 0.5)
