"""The work of one chunk of frames, run on a Dask worker.

A chunk is registered by the same code as a single-process run: a
:class:`~napari_flowscope.session.MotionSession` over the chunk's frames
with the broadcast reference as an
:class:`~napari_flowscope.session.ImageReference`.  For a fixed reference
every frame's result depends only on that frame and the reference, so the
chunk's results equal those frames' results in a whole-stack run.

Results go to per-chunk ``.npy`` files in a shared folder, written under
a unique temporary name and renamed when complete: a task retried after a
lost worker rewrites identical files, and a half-written chunk is never
mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_flowscope.engine import FlowParams
from napari_flowscope.session import (
    FrameStats,
    ImageReference,
    MotionSession,
    NonFiniteFrameError,
)

from .sources import FrameWindow, StackSource

__all__ = [
    'ChunkSettings',
    'chunk_paths',
    'correct_chunk',
    'open_chunk',
    'remove_chunk',
]

#: Arrays stored per chunk, by the :class:`FlowBatch` attribute they hold.
CHUNK_ARRAYS = ('registered', 'w', 'reliability', 'confidence')


@dataclass(frozen=True)
class ChunkSettings:
    """Everything a worker needs besides the frames and the reference.

    Attributes
    ----------
    params : FlowParams
    channel_axis : int or None
        Channel axis of the input stack (time is axis 0).
    channel : int or tuple of float
        Channel (or channel weights) the flow is estimated on.
    batch_size : int
        Frames held in memory at once inside a chunk.
    interpolation : {'linear', 'cubic'}
    spacing : tuple of float or None
        Volumes: ``(z, y, x)`` voxel size.
    per_plane : bool
        Volumes: 2-D flow plane by plane.
    """

    params: FlowParams
    channel_axis: int | None
    channel: int | tuple
    batch_size: int
    interpolation: str
    spacing: tuple | None = None
    per_plane: bool = False


def chunk_paths(chunk_dir, start: int, stop: int) -> dict[str, Path]:
    """File of each result array of chunk ``start:stop``."""
    stem = f'{start:09d}-{stop:09d}'
    return {
        name: Path(chunk_dir) / f'{stem}.{name}.npy' for name in CHUNK_ARRAYS
    }


def correct_chunk(
    frames,
    start: int,
    stop: int,
    reference: np.ndarray,
    settings: ChunkSettings,
    chunk_dir: str,
) -> FrameStats:
    """Register frames ``start:stop`` and store the results on disk.

    Parameters
    ----------
    frames : StackSource or ndarray
        The whole input (the worker reads ``start:stop`` itself), or the
        chunk's frames when they were scattered from memory.
    start, stop : int
        The chunk's frame range in the whole stack.
    reference : ndarray, shape (Y, X) or (Z, Y, X), float32
        The reference, as the single-process session builds it.
    settings : ChunkSettings
    chunk_dir : str
        Shared folder receiving the chunk files (see :func:`chunk_paths`).

    Returns
    -------
    FrameStats
        Statistics of the chunk's frames.
    """
    if isinstance(frames, StackSource):
        window = FrameWindow(frames.open()[0], start, stop)
    else:
        window = FrameWindow(frames, 0, stop - start)
    session = MotionSession(
        window,
        reference=ImageReference(reference),
        params=settings.params,
        channel_axis=settings.channel_axis,
        channel=settings.channel,
        batch_size=settings.batch_size,
        # Dask runs chunks in parallel; threads inside a chunk would only
        # compete with the other chunks for the same cores.
        n_threads=1,
        interpolation=settings.interpolation,
        spacing=settings.spacing,
        per_plane=settings.per_plane,
    )
    channels = () if session.n_channels is None else (session.n_channels,)
    n, frame_shape = stop - start, session.frame_shape
    shapes = {
        'registered': ((n, *frame_shape, *channels), session.dtype),
        'w': ((n, *frame_shape, session.flow_components), np.float32),
        'reliability': ((n, *frame_shape), np.float32),
        'confidence': ((n, *frame_shape), np.float32),
    }
    paths = chunk_paths(chunk_dir, start, stop)
    writers = {
        name: _NpyAppender(paths[name], *shapes[name]) for name in paths
    }
    stats = []
    try:
        for batch in session.iter_batches():
            for name, writer in writers.items():
                writer.append(getattr(batch, name))
            stats.append(batch.stats)
        for writer in writers.values():
            writer.commit()
    except NonFiniteFrameError as error:
        # the session counts the chunk's frames from 0
        raise NonFiniteFrameError(start + error.frame) from None
    finally:
        for writer in writers.values():
            writer.discard()
    return FrameStats.concatenate(stats)


def open_chunk(chunk_dir, start: int, stop: int) -> dict[str, np.ndarray]:
    """The stored arrays of a chunk, memory-mapped read-only."""
    return {
        name: np.load(path, mmap_mode='r')
        for name, path in chunk_paths(chunk_dir, start, stop).items()
    }


def remove_chunk(chunk_dir, start: int, stop: int) -> None:
    """Delete a chunk's files (after they were copied into the outputs)."""
    for path in chunk_paths(chunk_dir, start, stop).values():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


class _NpyAppender:
    """Write a ``.npy`` file batch by batch with plain sequential writes.

    No memory map: mapped pages of a large output would count towards the
    worker's memory and could trip Dask's memory limit.
    """

    def __init__(self, path: Path, shape, dtype):
        self.path = path
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        # Unique per attempt: a retried task never shares a file with a
        # previous attempt that may still be running on a lost worker.
        self.partial = path.with_name(
            f'{path.name}.{uuid.uuid4().hex}.partial'
        )
        self._file = open(self.partial, 'wb')  # noqa: SIM115 closed below
        np.lib.format.write_array_header_1_0(
            self._file,
            {
                'descr': np.lib.format.dtype_to_descr(self.dtype),
                'fortran_order': False,
                'shape': self.shape,
            },
        )
        self._frames = 0

    def append(self, frames: np.ndarray):
        frames = np.ascontiguousarray(frames, dtype=self.dtype)
        self._file.write(frames.data)
        self._frames += len(frames)

    def commit(self):
        if self._frames != self.shape[0]:
            raise RuntimeError(
                f'{self.path.name}: {self._frames} of {self.shape[0]} '
                'frames written'
            )
        self._file.close()
        os.replace(self.partial, self.path)

    def discard(self):
        """Close and remove the temporary file if it was not committed."""
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.partial)
