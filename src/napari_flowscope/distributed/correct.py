"""Batch motion correction of a long stack on a Dask cluster."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_flowscope.engine import FlowParams
from napari_flowscope.session import (
    DiskSink,
    FlowBatch,
    FrameReference,
    FrameStats,
    MotionSession,
    as_reference_strategy,
)

from .chunks import ChunkSettings, correct_chunk, open_chunk, remove_chunk
from .sources import FrameWindow, stack_source

__all__ = ['correct_distributed', 'local_cluster']

#: How often (s) the client looks at the cancel event while chunks run.
_POLL_INTERVAL = 0.2


def correct_distributed(
    stack_or_path,
    output_dir,
    *,
    reference=None,
    params: FlowParams | None = None,
    chunk_size: int = 64,
    client=None,
    n_workers: int = 2,
    channel_axis: int | None = None,
    channel: int | tuple = 0,
    batch_size: int | None = None,
    interpolation: str = 'linear',
    scale=None,
    units=None,
    spacing=None,
    per_plane: bool = False,
    overwrite: bool = False,
    retries: int = 2,
    progress_callback: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> DiskSink:
    """Motion-correct a stack on a Dask cluster into an output folder.

    The stack is split into chunks of ``chunk_size`` frames.  The
    reference is built once, here on the client, by the same code as a
    single-process :class:`~napari_flowscope.session.MotionSession`, and
    broadcast to every worker.  Each worker reads its chunk's frames
    itself (from the input file: nothing large goes through the
    scheduler), registers them and writes them to per-chunk files in
    ``output_dir``.  The client copies finished chunks, in frame order,
    into the same files a single-process run writes (``registered.tif``,
    ``flow.npy`` + ``flow.json``, ``reliability.npy``,
    ``confidence.npy``, ``stats.csv``,
    ``params.json``; see :class:`~napari_flowscope.session.DiskSink`).

    Parameters
    ----------
    stack_or_path : str, Path or array_like, shape (T, Y, X) or (T, Z, Y, X)
        Or with channels.
        A ``.tif``/``.tiff`` (ImageJ/OME axes, scale and units are read),
        ``.npy`` or ``.zarr`` path; a memory map of a whole file; a zarr
        or file-backed dask array; or an in-memory numpy array (its chunks
        are scattered to the workers).  Workers must see the same paths
        as the client (a shared file system).
    output_dir : str or Path
        Output folder, shared between client and workers.
    reference : FrameReference, RangeReference, ImageReference, ndarray \
or int, optional
        A fixed reference (default frame 0).  A
        :class:`~napari_flowscope.session.RangeReference` with
        ``preregister=True`` is pre-registered once, on the client.
        :class:`~napari_flowscope.session.AdaptiveReference` is refused:
        it makes every frame depend on the previous ones (see
        ``docs/distributed.md``).
    params : FlowParams, optional
        Default ``FlowParams()`` (the 'balanced' preset).
    chunk_size : int
        Frames per Dask task.  Progress is reported per chunk.
    client : None, 'local', str or distributed.Client
        ``None`` uses the current default client, or starts a local
        cluster when there is none; ``'local'`` always starts a
        :class:`~distributed.LocalCluster` of ``n_workers`` processes (one
        thread each), closed at the end; a string is a scheduler address
        (``'tcp://host:8786'``); a client is used as is.
    n_workers : int
        Workers of a cluster started here.
    channel_axis : int, optional
        Channel axis of the stack (not 0).  Read from TIFF axes by
        default.
    channel : int or sequence of float
        Channel, or channel weights, the flow is estimated on.
    batch_size : int, optional
        Frames a worker holds in memory at once (memory per worker is
        about ``batch_size`` x 55 bytes x pixels per frame on top of
        the worker's baseline).  Results do not depend on it.  Default as
        in :class:`~napari_flowscope.session.MotionSession`.
    interpolation : {'linear', 'cubic'}
        Interpolation of the warp.
    scale, units : tuple, optional
        Frame interval and pixel size aligned with ``'TYX'`` (volumes
        ``'TZYX'``), recorded in the outputs; read from TIFF metadata by
        default.
    spacing : tuple of float, optional
        Volumes: ``(z, y, x)`` voxel size for the flow; by default the
        TIFF's scale (isotropic without one).
    per_plane : bool
        Volumes: register each plane on its own (2-D flow).
    overwrite : bool
        Whether results of an earlier run in ``output_dir`` may be
        replaced.
    retries : int
        How often Dask retries a chunk whose task raised (a chunk whose
        worker died is rescheduled by Dask in any case).
    progress_callback : callable, optional
        ``progress_callback(done_frames, total_frames)`` after each
        finished chunk (chunks finish in any order).
    cancel : threading.Event, optional
        Set it (from another thread) to cancel the run: pending chunks are
        cancelled and every partial output is removed.

    Returns
    -------
    DiskSink
        The sink holding the output paths (``sink.paths``); its
        ``complete`` is False when the run was cancelled through
        ``cancel``.

    Raises
    ------
    ValueError
        For an adaptive reference, a stack that is not ``(T, Y, X)`` or
        ``(T, Z, Y, X)`` (plus channels), or a ``chunk_size`` below 1.
    FileExistsError
        When ``output_dir`` holds results and ``overwrite`` is False.
    """
    strategy = as_reference_strategy(
        FrameReference(0) if reference is None else reference
    )
    if strategy.adaptive:
        raise ValueError(
            'an adaptive reference cannot be distributed: each frame is '
            'registered to a reference blended from the frames before it, '
            'so frames must be processed one after the other.  Use a '
            'fixed reference on the cluster (e.g. RangeReference(0, 50, '
            'preregister=True), a pre-registered mean), or run the '
            'adaptive reference in a single process (MotionSession / '
            'napari-flowscope correct without --scheduler)'
        )
    if int(chunk_size) < 1:
        raise ValueError(f'chunk_size must be >= 1; got {chunk_size}')
    chunk_size = int(chunk_size)
    source = stack_source(stack_or_path)
    data, axes, file_scale, file_units = source.open()
    if axes is not None:
        if channel_axis is None:
            channel_axis = _channel_axis(axes)
        scale = _spatial(axes, file_scale) if scale is None else scale
        units = _spatial(axes, file_units) if units is None else units
        if spacing is None and 'Z' in axes and file_scale is not None:
            spacing = tuple(file_scale[axes.index(axis)] for axis in 'ZYX')
    n_frames = int(data.shape[0])
    # The client-side session builds the reference (reading only the
    # frames it needs) and describes the run for params.json.
    session = MotionSession(
        FrameWindow(data, 0, n_frames),
        reference=strategy,
        params=params,
        channel_axis=channel_axis,
        channel=channel,
        batch_size=batch_size,
        interpolation=interpolation,
        spacing=spacing,
        per_plane=per_plane,
    )
    reference_image = session.reference_image
    settings = ChunkSettings(
        params=session.params,
        channel_axis=channel_axis,
        channel=channel if isinstance(channel, int) else tuple(channel),
        batch_size=session.batch_size,
        interpolation=interpolation,
        spacing=session.spacing,
        per_plane=session.per_plane,
    )
    chunks = [
        (start, min(start + chunk_size, n_frames))
        for start in range(0, n_frames, chunk_size)
    ]
    output_dir = Path(output_dir)
    run_id = uuid.uuid4().hex[:12]
    chunk_dir = output_dir / f'.flowscope-chunks-{run_id}'
    sink = DiskSink(
        output_dir,
        scale=scale,
        units=units,
        source=source.path,
        overwrite=overwrite,
    )
    # Chunk files wait in the output folder until they are copied in frame
    # order: room for a chunk per worker and one more, as a rule.
    chunks_in_flight = min(len(chunks), n_workers + 1) * chunk_size
    sink.scratch_bytes = (
        sink.required_bytes(session) * min(chunks_in_flight, n_frames)
    ) // n_frames
    # Opened before any cluster starts: an occupied output folder or a
    # disk without room for the results fails at once.
    sink.open(session)
    futures = []
    try:
        with _connect(client, n_workers) as dask_client:
            sink.extra['distributed'] = {
                'chunk_size': chunk_size,
                'scheduler': dask_client.scheduler.address,
                'n_workers': len(dask_client.scheduler_info()['workers']),
            }
            chunk_dir.mkdir()
            try:
                futures = _submit(
                    dask_client,
                    source,
                    chunks,
                    reference_image,
                    settings,
                    chunk_dir,
                    run_id=run_id,
                    retries=retries,
                )
                finished = _collect(
                    futures,
                    chunks,
                    sink,
                    chunk_dir,
                    reference_image,
                    batch_size=session.batch_size,
                    n_frames=n_frames,
                    progress_callback=progress_callback,
                    cancel=cancel,
                    length=session.displacement_magnitude,
                )
            finally:
                # Cancels what is still pending (a no-op after success).
                dask_client.cancel(futures)
                _remove_chunk_dir(chunk_dir)
        if not finished:
            sink.abort()
            return sink
        # Every frame was registered with these parameters.
        session.params_history = [(0, session.params)]
        sink.close(session)
    except BaseException:
        sink.abort()
        raise
    return sink


def _remove_chunk_dir(chunk_dir):
    """Delete the chunk folder, even while cancelled tasks still run.

    Tasks address their files by the folder's original name, so once it
    is renamed no straggler can add a file that would survive the removal.
    """
    doomed = chunk_dir.with_name(chunk_dir.name + '.removing')
    with contextlib.suppress(FileNotFoundError):
        os.replace(chunk_dir, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _submit(
    client,
    source,
    chunks,
    reference_image,
    settings,
    chunk_dir,
    *,
    run_id,
    retries,
):
    """One task per chunk; frames are read by the workers when possible."""
    reference = client.scatter(reference_image, broadcast=True, hash=False)
    if source.kind == 'array':
        # A lazy array's graph is sent once, not with every task.
        frames = client.scatter(source, broadcast=True, hash=False)
    futures = []
    for start, stop in chunks:
        if source.kind == 'memory':
            frames = client.scatter(
                np.ascontiguousarray(source.array[start:stop]), hash=False
            )
        elif source.kind != 'array':
            frames = source
        futures.append(
            client.submit(
                correct_chunk,
                frames,
                start,
                stop,
                reference,
                settings,
                os.fspath(chunk_dir),
                key=f'flowscope-chunk-{run_id}-{start}',
                retries=retries,
            )
        )
    return futures


def _collect(
    futures,
    chunks,
    sink,
    chunk_dir,
    reference_image,
    *,
    batch_size,
    n_frames,
    progress_callback,
    cancel,
    length,
):
    """Wait for chunks, report progress, copy them into the sink in order.

    Returns False when cancelled through ``cancel``, True when every
    chunk is in the sink.
    """
    from distributed import wait

    chunk_of = dict(zip(futures, chunks, strict=True))
    stats = {}
    pending = set(futures)
    next_chunk = 0
    last_w = None
    done_frames = 0
    while pending:
        if cancel is not None and cancel.is_set():
            return False
        try:
            done, pending = wait(
                pending, timeout=_POLL_INTERVAL, return_when='FIRST_COMPLETED'
            )
        except (TimeoutError, asyncio.TimeoutError):
            continue
        for future in done:
            start, stop = chunk_of[future]
            stats[start] = future.result()
            # The chunk's files hold its results: Dask must not recompute
            # it if the worker holding these statistics is lost later.
            future.release()
            done_frames += stop - start
            if progress_callback is not None:
                progress_callback(done_frames, n_frames)
        # Chunks finish in any order; the files are written in frame order.
        while next_chunk < len(chunks) and chunks[next_chunk][0] in stats:
            start, stop = chunks[next_chunk]
            last_w = _copy_chunk(
                sink,
                chunk_dir,
                start,
                stop,
                stats.pop(start),
                reference_image,
                batch_size,
                last_w,
                length,
            )
            next_chunk += 1
    return True


def _copy_chunk(
    sink,
    chunk_dir,
    start,
    stop,
    stats,
    reference_image,
    batch_size,
    last_w,
    length,
):
    """Write one chunk into the sink; return the flow of its last frame.

    A chunk is registered without its predecessor, so the velocity of its
    first frame is measured here, against ``last_w``, the flow of the
    frame before it (None for the first chunk), with ``length`` (the
    session's :meth:`~MotionSession.displacement_magnitude`), as the
    session would.
    """
    arrays = open_chunk(chunk_dir, start, stop)
    if last_w is not None:
        velocity = length(arrays['w'][0] - last_w)
        stats.mean_velocity[0] = velocity.mean()
        stats.max_velocity[0] = velocity.max()
    last_w = np.array(arrays['w'][-1])
    for first in range(0, stop - start, batch_size):
        last = min(first + batch_size, stop - start)
        part = slice(first, last)
        sink.write(
            FlowBatch(
                start=start + first,
                stop=start + last,
                w=arrays['w'][part],
                reliability=arrays['reliability'][part],
                confidence=arrays['confidence'][part],
                registered=arrays['registered'][part],
                stats=FrameStats(
                    *(column[part] for column in stats.as_columns().values())
                ),
                reference=reference_image,
            )
        )
    del arrays
    remove_chunk(chunk_dir, start, stop)
    return last_w


@contextlib.contextmanager
def _connect(client, n_workers):
    """The Dask client to use; clusters and clients made here are closed."""
    try:
        from distributed import Client, default_client
    except ImportError as error:
        raise ImportError(
            'distributed correction needs Dask: pip install '
            '"napari-flowscope[distributed]"'
        ) from error
    if isinstance(client, Client):
        yield client
        return
    if client is None:
        with contextlib.suppress(ValueError):
            client = default_client()
        if client is not None:
            yield client
            return
        client = 'local'
    if client == 'local':
        with (
            local_cluster(n_workers) as cluster,
            Client(cluster) as local_client,
        ):
            yield local_client
        return
    if not isinstance(client, str):
        raise TypeError(
            "client must be None, 'local', a scheduler address or a "
            f'distributed.Client; got {type(client).__name__}'
        )
    with Client(client) as remote_client:
        yield remote_client


#: Dask's default for worker processes; see :func:`local_cluster`.
_MALLOC_TRIM_CONFIG = (
    'distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_'
)


def local_cluster(n_workers: int = 2, **cluster_kwargs):
    """A :class:`distributed.LocalCluster` suited to flow estimation.

    Worker processes with one thread each, the dashboard on any free local
    port (8787 may belong to another cluster), and:

    - OpenCV's thread pool in each worker sized to its share of the cores
      (``OPENCV_FOR_THREADS_NUM``), so that workers do not oversubscribe
      the machine (on 2 cores, 2 workers: 91 instead of 69 frames/s);
    - without Dask's default ``MALLOC_TRIM_THRESHOLD_=65536`` for workers:
      setting it turns off glibc's adaptive mmap threshold, so every
      frame-sized temporary array becomes a fresh ``mmap`` that is
      zero-filled on first touch, which makes the per-frame numerics about
      4 times slower.  Memory stays bounded by the batch size either way.

    Parameters
    ----------
    n_workers : int
    **cluster_kwargs
        Passed on to :class:`distributed.LocalCluster` (e.g.
        ``memory_limit``).

    Returns
    -------
    distributed.LocalCluster
    """
    import dask

    from distributed import LocalCluster

    n_workers = int(n_workers)
    cores_per_worker = max(1, (os.cpu_count() or 1) // n_workers)
    options = {
        'threads_per_worker': 1,
        'processes': True,
        'dashboard_address': '127.0.0.1:0',
        **cluster_kwargs,
    }
    options['env'] = {
        'OPENCV_FOR_THREADS_NUM': str(cores_per_worker),
        **options.get('env', {}),
    }
    with dask.config.set({_MALLOC_TRIM_CONFIG: None}):
        return LocalCluster(n_workers=n_workers, **options)


def _channel_axis(axes):
    if 'C' in axes:
        return axes.index('C')
    if axes.endswith('S'):
        return len(axes) - 1
    return None


def _spatial(axes, values):
    """Entries of a per-axis tuple for T, (Z,) Y and X (None if absent)."""
    if values is None or not {'T', 'Y', 'X'} <= set(axes):
        return None
    wanted = 'TZYX' if 'Z' in axes else 'TYX'
    return tuple(values[axes.index(axis)] for axis in wanted)
