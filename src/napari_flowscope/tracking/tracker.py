"""The tracking loop: start points, follow them, stream every frame."""

import numpy as np

from .advection import advect, to_reference
from .detection import detect_features, split_seeds
from .drift import DriftCorrection
from .intensity import percentile_mask, stack_intensity_range, to_uint8
from .lucas_kanade import inside, lk_step
from .params import TrackingParams
from .tracks import Tracks, TrackStep


def iter_tracks(
    stack, *, params=None, seeds=None, mask=None, flow=None, flow_params=None
):
    """Track sparse points through a stack, one frame at a time.

    Points start either at user-given ``seeds`` or at Shi-Tomasi corners of
    the first frame, and optionally at new corners every
    ``params.redetect_every`` frames (new track ids, at least
    ``params.min_distance`` from the points being tracked, never more than
    ``params.max_corners`` alive). A point is lost for good when it leaves the
    frame, when Lucas-Kanade fails, or when its forward-backward error
    exceeds ``params.fb_threshold``. With ``params.drift_correction`` on
    (the default), every step is followed by a fit of the track's own
    template (see :mod:`napari_flowscope.tracking.drift`), which also ends
    tracks whose feature is gone and may save a step that failed.

    Parameters
    ----------
    stack : array_like, shape (T, Y, X)
        Any real dtype; NumPy, memory-mapped or dask. Frames are read one at
        a time and mapped to 8 bits with one robust range for the whole stack
        (see :mod:`napari_flowscope.tracking.intensity`).
    params : TrackingParams, optional
    seeds : array_like, shape (N, 2) or (N, 3), optional
        napari Points data, ``[y, x]`` (first frame) or ``[t, y, x]``. Each
        seed starts a track exactly there; no corners are detected at the
        start (re-detection still applies if enabled).
    mask : array_like of bool, shape (Y, X) or (T, Y, X), optional
        Detect corners only where True (e.g. a rasterised Shapes ROI);
        combined with ``params.mask_percentile``. Seeds ignore it.
    flow : array_like or iterable, optional
        Dense mode only: the ``[x, y]`` flow of every frame against frame 0
        (``params.flow_reference == 'first'``) or against the frame before
        (``'previous'``; ``flow[0]`` is unused), as a (T, Y, X, 2) array or
        an iterable of (n, Y, X, 2) chunks or of objects with a ``w``
        attribute (e.g. ``MotionSession.iter_batches()``). Default: computed
        on the fly, by a :class:`~napari_flowscope.session.MotionSession`
        against frame 0, or by :func:`~napari_flowscope.engine.
        estimate_flow` between consecutive frames.
    flow_params : FlowParams, optional
        Parameters of that flow (dense mode, ``flow`` not given).

    Yields
    ------
    TrackStep
        The points alive in frame ``t``, for ``t = 0 .. T - 1`` in order.
        :meth:`Tracks.from_steps` assembles them.

    Raises
    ------
    ValueError
        For a stack that is not (T, Y, X), seeds outside the stack, a mask or
        flow of the wrong shape, or a flow with fewer frames than the stack.
    """
    params = TrackingParams() if params is None else params
    shape = tuple(np.shape(stack))
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f'stack must be (T, Y, X) with T >= 1; got shape {shape}'
        )
    n_frames, frame_shape = shape[0], shape[1:]
    seed_times, seed_positions = _checked_seeds(seeds, n_frames, frame_shape)
    mask = _checked_mask(mask, shape)
    low, high = stack_intensity_range(stack, params.intensity_percentiles)
    dense = params.mode == 'dense_flow'
    # Anchored: positions are always p + w_t(p) from a reference position.
    anchored = dense and params.flow_reference == 'first'
    flows = (
        _flow_frames(stack, flow, flow_params, chained=not anchored)
        if dense
        else None
    )
    correction = (
        DriftCorrection(params)
        if params.drift_correction != 'off' and not anchored
        else None
    )

    track_ids = np.empty(0, np.int64)
    positions = np.empty((0, 2), np.float32)
    reference_positions = positions
    next_id = 0
    previous = None
    try:
        for t in range(n_frames):
            frame = np.asarray(stack[t])
            image = to_uint8(frame, low, high)
            w = _next_flow(flows, t, frame_shape) if dense else None

            if dense:
                moved = advect(
                    w, reference_positions if anchored else positions
                )
                valid = inside(moved, frame_shape)
                fb_error = np.full(len(moved), np.nan, np.float32)
            else:
                moved, valid, fb_error = lk_step(
                    previous,
                    image,
                    positions,
                    win_size=params.win_size,
                    max_level=params.max_level,
                    max_iterations=params.max_iterations,
                    epsilon=params.epsilon,
                    fb_threshold=params.fb_threshold,
                )
            match = np.full(len(moved), np.nan, np.float32)
            if correction is not None and len(moved):
                moved, valid, match = correction.correct(
                    image, positions, moved, valid
                )
            speed = np.linalg.norm(moved - positions, axis=1)
            track_ids, positions = track_ids[valid], moved[valid]
            if anchored:
                reference_positions = reference_positions[valid]
            speed, fb_error = speed[valid].astype(np.float32), fb_error[valid]
            match = match[valid]

            new = seed_positions[seed_times == t]
            if _detects_at(t, params, seeds is not None):
                found = _detect(
                    frame,
                    image,
                    params,
                    mask=None if mask is None else mask[min(t, len(mask) - 1)],
                    avoid=np.concatenate([positions, new]),
                )
                new = np.concatenate([new, found])
            if len(new):
                if correction is not None:
                    new = correction.add(image, new)
                new_ids = np.arange(next_id, next_id + len(new))
                next_id += len(new)
                track_ids = np.concatenate([track_ids, new_ids])
                positions = np.concatenate([positions, new])
                if anchored:
                    reference_positions = np.concatenate(
                        [reference_positions, to_reference(w, new)]
                    )
                speed = np.concatenate([speed, np.zeros(len(new), np.float32)])
                fb_error = np.concatenate(
                    [fb_error, np.full(len(new), np.nan, np.float32)]
                )
                match = np.concatenate(
                    [match, np.full(len(new), np.nan, np.float32)]
                )
            yield TrackStep(t, track_ids, positions, speed, fb_error, match)
            previous = image
    finally:
        if flows is not None:
            flows.close()


def track_features(
    stack, *, params=None, seeds=None, mask=None, flow=None, flow_params=None
):
    """Track sparse points through a whole stack.

    Same parameters as :func:`iter_tracks`, which this drains.

    Returns
    -------
    Tracks
        ``data`` (N, 4) ``[track_id, t, y, x]`` for ``viewer.add_tracks``,
        per-point ``features`` (``speed``, ``fb_error``, ``match``),
        ``summary()`` and CSV export.

    Examples
    --------
    >>> from napari_flowscope.synthetic import rotating_particles
    >>> stack = rotating_particles(n_frames=5).stack
    >>> tracks = track_features(stack, seeds=[[63.5, 93.5]])
    >>> tracks.data.shape
    (5, 4)
    """
    return Tracks.from_steps(
        iter_tracks(
            stack,
            params=params,
            seeds=seeds,
            mask=mask,
            flow=flow,
            flow_params=flow_params,
        )
    )


def _detect(frame, image, params, *, mask, avoid):
    """Corners of one frame that keep the live points under max_corners."""
    if params.mask_percentile is not None:
        bright = percentile_mask(frame, params.mask_percentile)
        mask = bright if mask is None else mask & bright
    return detect_features(
        image,
        max_corners=params.max_corners - len(avoid),
        quality_level=params.quality_level,
        min_distance=params.min_distance,
        block_size=params.block_size,
        mask=mask,
        avoid=avoid,
    )


def _detects_at(t, params, seeded):
    if t == 0:
        return not seeded
    return params.redetect_every > 0 and t % params.redetect_every == 0


def _checked_seeds(seeds, n_frames, frame_shape):
    if seeds is None:
        return np.empty(0, int), np.empty((0, 2), np.float32)
    times, positions = split_seeds(seeds)
    if np.any((times < 0) | (times >= n_frames)):
        raise ValueError(f'seed times must lie in [0, {n_frames - 1}]')
    if not inside(positions, frame_shape).all():
        raise ValueError(
            f'seeds must lie inside the {frame_shape[0]} x {frame_shape[1]} '
            f'frame'
        )
    return times, positions


def _checked_mask(mask, shape):
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == shape[1:]:
        mask = mask[np.newaxis]
    if (
        mask.ndim != 3
        or mask.shape[1:] != shape[1:]
        or (len(mask) not in (1, shape[0]))
    ):
        raise ValueError(
            f'mask must be (Y, X) or (T, Y, X) like the stack {shape}; '
            f'got shape {mask.shape}'
        )
    return mask


def _flow_frames(stack, flow, flow_params, *, chained):
    """One (Y, X, 2) field per frame, from an array or a chunk iterator."""
    if flow is None and chained:
        flow = _consecutive_flows(stack, flow_params)
    elif flow is None:
        from napari_flowscope.session import (
            FrameReference,
            MotionSession,
        )

        flow = MotionSession(
            stack, reference=FrameReference(0), params=flow_params
        ).iter_batches()
    if getattr(flow, 'ndim', None) == 4:
        for t in range(len(flow)):
            yield np.asarray(flow[t], np.float32)
        return
    try:
        for chunk in flow:
            fields = np.asarray(getattr(chunk, 'w', chunk), np.float32)
            yield from (fields if fields.ndim == 4 else [fields])
    finally:
        if hasattr(flow, 'close'):
            flow.close()


def _consecutive_flows(stack, flow_params):
    """Flow of each frame against the one before; zero for frame 0."""
    from napari_flowscope.engine import estimate_flow

    previous = np.asarray(stack[0])
    yield np.zeros((*previous.shape, 2), np.float32)
    for t in range(1, len(stack)):
        current = np.asarray(stack[t])
        yield estimate_flow(previous, current, flow_params).w
        previous = current


def _next_flow(flows, t, frame_shape):
    w = next(flows, None)
    if w is None:
        raise ValueError(f'the flow has no field for frame {t}')
    if w.shape != (*frame_shape, 2):
        raise ValueError(
            f'flow fields must be (Y, X, 2) = {(*frame_shape, 2)}; '
            f'got {w.shape}'
        )
    return w
