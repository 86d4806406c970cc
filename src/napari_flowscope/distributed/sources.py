"""Where the frames of a distributed run come from.

A :class:`StackSource` is a small picklable description of the input that
a worker turns back into a lazy array, so the frames travel from the file
system to the worker that needs them and never through the scheduler.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ['FrameWindow', 'StackSource', 'stack_source']

_TIFF_SUFFIXES = ('.tif', '.tiff')


@dataclass(frozen=True)
class StackSource:
    """A stack that workers can open themselves.

    Attributes
    ----------
    kind : {'tiff', 'npy', 'zarr', 'memmap', 'array', 'memory'}
        ``'tiff'``, ``'npy'`` and ``'zarr'`` are files opened lazily by
        path; ``'memmap'`` is a raw :class:`numpy.memmap`; ``'array'`` a
        lazy array (dask or zarr) pickled to the workers as is;
        ``'memory'`` an in-memory array whose chunks are scattered.
    path : str or None
        File (or zarr directory) for the file kinds.
    array : array_like or None
        The array itself for ``'array'`` and ``'memory'``.
    memmap_layout : tuple or None
        ``(offset, shape, dtype, order)`` of a ``'memmap'`` source.
    """

    kind: str
    path: str | None = None
    array: object = field(default=None, repr=False, compare=False)
    memmap_layout: tuple | None = None

    def open(self):
        """The whole stack as a lazy array (T first).

        Returns
        -------
        data : array_like, shape (T, ...)
            Memory map, zarr or dask array (numpy for ``'memory'``).
        axes : str or None
            Axes of ``data`` when the file records them (TIFF), else None.
        scale, units : tuple or None
            Per-axis scale and units aligned with ``axes`` (TIFF only).
        """
        if self.kind == 'tiff':
            data, metadata = _open_tiff(self.path)
            return data, metadata.axes, metadata.scale, metadata.units
        if self.kind == 'npy':
            data = np.load(self.path, mmap_mode='r')
        elif self.kind == 'zarr':
            import zarr

            data = zarr.open_array(self.path, mode='r')
        elif self.kind == 'memmap':
            offset, shape, dtype, order = self.memmap_layout
            data = np.memmap(
                self.path,
                dtype=dtype,
                mode='r',
                offset=offset,
                shape=shape,
                order=order,
            )
        else:
            data = self.array
        return data, None, None, None

    @property
    def is_file(self) -> bool:
        """Whether workers read the frames themselves (vs. scattered)."""
        return self.kind != 'memory'


def stack_source(stack_or_path) -> StackSource:
    """Describe an input so that workers can read it.

    Parameters
    ----------
    stack_or_path : str, Path or array_like
        A ``.tif``/``.tiff`` (read with :func:`napari_flowscope.formats.
        open_stack`), ``.npy`` or ``.zarr`` path; a :class:`numpy.memmap`
        of a whole file; a zarr or dask array (their task graph or store
        description is sent to the workers, so dask arrays should read from
        files, not wrap in-memory data); or an in-memory numpy array (each
        chunk is scattered to a worker).

    Returns
    -------
    StackSource
    """
    if isinstance(stack_or_path, (str, os.PathLike)):
        path = Path(stack_or_path)
        suffix = path.suffix.lower()
        if suffix in _TIFF_SUFFIXES:
            kind = 'tiff'
        elif suffix == '.npy':
            kind = 'npy'
        elif suffix == '.zarr' or (path / 'zarr.json').is_file():
            kind = 'zarr'
        else:
            raise ValueError(
                f'cannot read {path.name!r}: give a .tif/.tiff, .npy or '
                '.zarr path, or an array'
            )
        if not path.exists():
            raise FileNotFoundError(f'{path} does not exist')
        # Absolute, so workers started elsewhere find the same file.
        return StackSource(kind, path=os.fspath(path.resolve()))
    if _is_whole_file_memmap(stack_or_path):
        data = stack_or_path
        return StackSource(
            'memmap',
            path=os.fspath(Path(data.filename).resolve()),
            memmap_layout=(
                data.offset,
                data.shape,
                data.dtype.str,
                'F' if data.flags.f_contiguous and data.ndim > 1 else 'C',
            ),
        )
    if isinstance(stack_or_path, np.ndarray):
        return StackSource('memory', array=stack_or_path)
    if hasattr(stack_or_path, 'shape') and hasattr(stack_or_path, 'dtype'):
        return StackSource('array', array=stack_or_path)
    raise TypeError(
        'stack_or_path must be a file path or an array; got '
        f'{type(stack_or_path).__name__}'
    )


#: The last compressed or tiled TIFF opened in this process, by
#: ``(path, mtime, size)``.
_OPENED_TIFF = {}


def _open_tiff(path):
    """`formats.open_stack` (lazy), reusing a dask-backed opening.

    Opening a compressed or tiled TIFF parses the index of every page,
    which each chunk would repeat; such an opening (a dask array that reads
    only the pages sliced) is kept for the next chunk on this worker.  An
    uncompressed stack opens as a memory map in no time and is not kept:
    the pages it has read would count as the worker's memory.
    """
    from napari_flowscope.formats import check_time_lapse, open_stack

    status = os.stat(path)
    key = (path, status.st_mtime_ns, status.st_size)
    opened = _OPENED_TIFF.get(key)
    if opened is None:
        opened = open_stack(path, lazy=True)
        check_time_lapse(opened[1], path)
        if not isinstance(opened[0], np.memmap):
            _OPENED_TIFF.clear()
            _OPENED_TIFF[key] = opened
    return opened


def _is_whole_file_memmap(data) -> bool:
    # A slice of a memmap keeps the parent's filename and offset, so only
    # the array that owns the mapping can be described by them.
    return (
        isinstance(data, np.memmap)
        and data.filename is not None
        and isinstance(data.base, mmap.mmap)
        and (data.flags.c_contiguous or data.flags.f_contiguous)
    )


class FrameWindow:
    """Frames ``start:stop`` of a lazy stack, read only when sliced.

    What :class:`~napari_flowscope.session.MotionSession` needs of a stack
    (``shape``, ``dtype`` and ``window[a:b]`` along time), without reading
    anything up front: the session then reads one batch at a time.

    Parameters
    ----------
    data : array_like, shape (T, ...)
        numpy, memory-mapped, zarr or dask array.
    start, stop : int
        The frame range exposed as frames ``0:stop - start``.
    """

    def __init__(self, data, start: int, stop: int):
        self._data = data
        self._start = int(start)
        self.shape = (int(stop) - int(start), *data.shape[1:])
        self.dtype = np.dtype(data.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, frames):
        if not isinstance(frames, slice) or frames.step not in (None, 1):
            raise TypeError('FrameWindow supports [start:stop] only')
        first, last, _ = frames.indices(self.shape[0])
        block = self._data[self._start + first : self._start + last]
        if hasattr(block, 'dask'):
            import dask

            # A task must not submit more tasks to the cluster it runs on.
            with dask.config.set(scheduler='synchronous'):
                return np.asarray(block)
        return np.asarray(block)
