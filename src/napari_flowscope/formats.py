"""File formats: ImageJ TIFF stacks, flow fields and atomic streaming writers.

Everything here is plain numpy / tifffile (no napari, no Qt), so the session,
the CLI and the napari reader and writers share one implementation.

Axis conventions
----------------
Stacks are described by an axes string of single letters, as in tifffile:
``T`` time, ``Z`` depth, ``C`` channel, ``Y`` rows, ``X`` columns and ``S``
RGB(A) samples. ``scale`` and ``units`` are per-axis tuples aligned with that
string, exactly like a napari layer's ``scale`` and ``units`` (the channel
and sample axes get 1.0 and ``'pixel'``).

Flow fields are ``(T, Y, X, 2)`` float32 ``[x, y]`` displacements in pixels
(``registered(x) = moving(x + w(x))``); their ``scale`` and ``units`` are
aligned with ``'TYX'``.  Volumes extend this: ``(T, Z, Y, X, 3)`` holding
``[x, y, z]`` in voxels, ``scale`` and ``units`` aligned with ``'TZYX'``.

Every writer works on ``<path>.partial`` and renames to ``<path>`` only when
the file is complete, so a cancelled or crashed run never leaves a file that
looks finished. Frames are written with plain (positioned) writes, never
through memory maps, so a full disk is an :class:`NotEnoughSpaceError`
rather than a SIGBUS that kills the process.
"""

import atexit
import contextlib
import errno
import importlib.util
import json
import math
import os
import re
import shutil
import threading
import warnings
import weakref
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

__all__ = [
    'FLOW_CONVENTION',
    'FLOW_FORMAT',
    'FlowWriter',
    'ImageJStackWriter',
    'NotEnoughSpaceError',
    'NpyStackWriter',
    'StackMetadata',
    'available_memory',
    'check_free_space',
    'check_time_lapse',
    'defer_interrupt',
    'flow_axes',
    'flow_metadata',
    'format_size',
    'free_bytes',
    'image_sequence_files',
    'imagej_dtype',
    'lazy_threshold_bytes',
    'natural_sort_key',
    'normalise_unit',
    'open_image_sequence',
    'open_stack',
    'publishing',
    'read_flow',
    'read_flow_metadata',
    'read_image',
    'read_stack_metadata',
    'write_flow',
    'write_imagej_stack',
]

FLOW_CONVENTION = 'registered(x) = moving(x + w(x))'
FLOW_FORMAT = 'napari-flowscope flow'

#: Stacks larger than this many bytes open lazily (memory-map or dask).
#: ``None`` means a quarter of the memory available when the file is opened.
LAZY_THRESHOLD_BYTES = None
_LAZY_FRACTION_OF_AVAILABLE_MEMORY = 0.25

# ImageJ stores only these sample types (tifffile refuses the others).
_IMAGEJ_DTYPES = {np.dtype(t) for t in ('uint8', 'uint16', 'int16', 'float32')}
# Lossless widening for types ImageJ cannot hold.
_IMAGEJ_WIDENING = {
    np.dtype('bool'): np.dtype('uint8'),
    np.dtype('int8'): np.dtype('int16'),
    np.dtype('float16'): np.dtype('float32'),
}
# float32 holds every integer up to 2**24 exactly.
_FLOAT32_EXACT_INTEGER = 2**24

_UNIT_ALIASES = {
    '': 'pixel',
    'pixel': 'pixel',
    'pixels': 'pixel',
    'px': 'pixel',
    'micron': 'um',
    'microns': 'um',
    'micrometer': 'um',
    'um': 'um',
    '\u00b5m': 'um',
    '\u03bcm': 'um',
    '\\u00b5m': 'um',
    'nanometer': 'nm',
    'millimeter': 'mm',
    'sec': 's',
    'second': 's',
    'seconds': 's',
    'msec': 'ms',
    'millisecond': 'ms',
    'milliseconds': 'ms',
    'minute': 'min',
    'minutes': 'min',
    'hour': 'h',
    'hours': 'h',
    'hr': 'h',
}
# Micrometres per TIFF ResolutionUnit; INCH (2) is left out on purpose:
# 72 dpi is the default of desktop software, not a calibration.
_MICROMETRES_PER_RESOLUTION_UNIT = {3: 1e4, 4: 1e3, 5: 1.0}


def normalise_unit(unit):
    """Return a pint-parsable spelling of a microscopy unit string.

    ImageJ writes ``'micron'`` or ``'\\u00B5m'``, OME writes ``'µm'``; all
    become ``'um'``. Unknown units are returned unchanged, empty ones as
    ``'pixel'``.
    """
    if unit is None:
        return 'pixel'
    text = str(unit).strip()
    return _UNIT_ALIASES.get(text.lower(), _UNIT_ALIASES.get(text, text))


# --------------------------------------------------------------------------
# dtypes


def imagej_dtype(dtype):
    """Return the dtype an ImageJ TIFF stores for data of type `dtype`.

    uint8, uint16, int16 and float32 are kept. bool, int8 and float16 are
    widened losslessly (uint8, int16, float32). float64 becomes float32 (the
    package never writes float64). Other integer types (int32, uint32,
    int64, uint64) become float32, which is exact up to 2**24; writers check
    every frame and raise ``ValueError`` if a value would change.

    Raises
    ------
    ValueError
        For complex or non-numeric dtypes.
    """
    dtype = np.dtype(dtype)
    if dtype in _IMAGEJ_DTYPES:
        return dtype
    if dtype in _IMAGEJ_WIDENING:
        return _IMAGEJ_WIDENING[dtype]
    if dtype.kind in 'iuf':
        return np.dtype('float32')
    raise ValueError(f'ImageJ TIFF cannot store {dtype} data')


def _cast_exactly(frame, dtype):
    """Cast `frame` to `dtype`, raising if an integer value would change."""
    if frame.dtype == dtype:
        return frame
    cast = frame.astype(dtype, copy=False)
    if (
        frame.dtype.kind in 'iu'
        and frame.dtype.itemsize >= 4
        and frame.size
        and (
            frame.min() < -_FLOAT32_EXACT_INTEGER
            or frame.max() > _FLOAT32_EXACT_INTEGER
        )
        # beyond 2**24 only some integers are float32 values (registered
        # frames, computed in float32, hold only those)
        and not np.array_equal(cast.astype(frame.dtype), frame)
    ):
        raise ValueError(
            f'{frame.dtype} values beyond +-2**24 cannot be stored exactly '
            'in an ImageJ TIFF (float32); rescale the data to uint16 or '
            'float32 first'
        )
    return cast


# --------------------------------------------------------------------------
# atomic files, full disks and interrupts

# errno values that mean "the file system is full" (or the quota is).
_NO_SPACE = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, 'EDQUOT', None)) if code
)
# Kept free beyond what the outputs need: file system metadata, the small
# files (stats, parameters) and whatever else writes there meanwhile.
_FREE_SPACE_MARGIN = 16 << 20


class NotEnoughSpaceError(OSError):
    """A file system has too little free space for the files being written.

    ``errno`` is :data:`errno.ENOSPC`; ``str(error)`` is a sentence for the
    user (no ``[Errno 28]`` prefix).
    """

    def __init__(self, message):
        super().__init__(errno.ENOSPC, message)

    def __str__(self):
        return self.strerror


def format_size(nbytes):
    """``'1.2 GB'``, ``'340 MB'``, ``'12 kB'`` (decimal, as ``df -H``)."""
    nbytes = float(nbytes)
    for unit, size in (('TB', 1e12), ('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if nbytes >= size:
            return f'{nbytes / size:.3g} {unit}'
    return f'{int(nbytes)} bytes'


def free_bytes(directory):
    """Free bytes (for this user) on the file system that holds `directory`.

    `directory` need not exist yet: its nearest existing parent is asked.
    """
    probe = Path(directory).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_free_space(directory, nbytes, *, what='the results'):
    """Raise :class:`NotEnoughSpaceError` unless `nbytes` fit in `directory`.

    Parameters
    ----------
    directory : str or Path
        Where the files will be written (need not exist yet).
    nbytes : int
        Bytes the files will take.
    what : str
        What needs the space, for the message.
    """
    free = free_bytes(directory)
    if nbytes + _FREE_SPACE_MARGIN > free:
        raise NotEnoughSpaceError(
            f'not enough free space in {directory}: {what} need '
            f'{format_size(nbytes)}, but only {format_size(free)} are free '
            'there; free some space or choose a folder on another disk'
        )


def _no_space_error(error, path, detail):
    """An OSError from a write, reworded when the disk is full."""
    if error.errno not in _NO_SPACE or isinstance(error, NotEnoughSpaceError):
        return error
    return NotEnoughSpaceError(
        f'the disk holding {Path(path).parent} is full: {Path(path).name} '
        f'could not be written ({detail}); nothing was saved. Free some '
        'space or choose a folder on another disk'
    )


def _partial_path(path):
    path = Path(path)
    return path.with_name(path.name + '.partial')


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _pwrite_all(fd, data, offset):
    """Write all of `data` (C-contiguous) at `offset` of file `fd`."""
    view = memoryview(data).cast('B')
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class _Publishing:
    """Counts renames in progress that turn partial files into results.

    The command line's SIGINT / SIGTERM handlers ask :func:`defer_interrupt`
    first: an interrupt arriving while the files of a run are renamed one by
    one is raised once they all are, so a folder never holds half the files
    of one run and half of another.
    """

    lock = threading.Lock()
    depth = 0
    deferred = []


@contextlib.contextmanager
def publishing():
    """Context of the renames that publish a set of result files."""
    with _Publishing.lock:
        _Publishing.depth += 1
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        with _Publishing.lock:
            _Publishing.depth -= 1
            deferred = _Publishing.deferred if not _Publishing.depth else []
            if not _Publishing.depth:
                _Publishing.deferred = []
        if deferred and not failed:
            raise deferred[0]


def defer_interrupt(exception):
    """Keep `exception` (an interrupt) until the files being published are.

    Returns
    -------
    bool
        True when it was kept (results are being renamed; it is raised
        when they are done), False when the caller should raise it now.
    """
    with _Publishing.lock:
        if _Publishing.depth:
            _Publishing.deferred.append(exception)
            return True
    return False


# Writers with a partial file on disk; whatever is still open when the
# interpreter exits (an uncaught error, a closed window) is removed.
_OPEN_WRITERS = weakref.WeakSet()


@atexit.register
def _abort_open_writers():
    for writer in list(_OPEN_WRITERS):
        with contextlib.suppress(Exception):
            writer.abort()


class _AtomicWriter:
    """Context manager base: exception -> abort(), normal exit -> commit()."""

    committed = False
    aborted = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif not (self.committed or self.aborted):
            self.commit()
        return False

    def _check_open(self):
        if self.committed or self.aborted:
            state = 'committed' if self.committed else 'aborted'
            raise ValueError(f'writer for {self.path} is already {state}')


class _FrameWriter(_AtomicWriter):
    """Streams frames into a `.partial` file with plain positioned writes.

    Subclasses create the file (header, then the data region at its full
    size, sparse where the file system allows) and call :meth:`_attach`.
    Frames go to disk with ``os.pwrite``, never through a memory map: a
    write to a full disk through a map kills the process with SIGBUS,
    a plain write raises ``OSError(ENOSPC)``, reported as
    :class:`NotEnoughSpaceError`.  Written data sit in the page cache, not
    in the process's memory.

    :meth:`commit` is :meth:`finish` (everything on disk, companion files
    written, nothing renamed yet) then :meth:`publish` (the renames), so a
    caller writing several files can finish all of them before the first
    one replaces an older file.
    """

    def __init__(self, path, *, n_frames, frame_shape):
        self.path = Path(path)
        self.partial_path = _partial_path(self.path)
        self.n_frames = int(n_frames)
        self.frame_shape = tuple(int(n) for n in frame_shape)
        if self.n_frames < 1:
            raise ValueError(f'n_frames must be >= 1, got {n_frames}')
        self.frames_written = 0
        self.finished = False
        self._fd = None
        self._data_offset = 0
        self._stored_frame_bytes = 0

    @property
    def nbytes(self):
        """Size of the finished file, in bytes."""
        return self._data_offset + self.n_frames * self._stored_frame_bytes

    def _attach(self, data_offset, stored_frame_shape, dtype):
        """Open the created partial file for writing frames."""
        self._data_offset = int(data_offset)
        self._stored_frame_shape = tuple(stored_frame_shape)
        self._stored_dtype = np.dtype(dtype)
        self._stored_frame_bytes = math.prod(stored_frame_shape) * (
            np.dtype(dtype).itemsize
        )
        self._fd = os.open(self.partial_path, os.O_RDWR)
        _OPEN_WRITERS.add(self)

    def _create(self, create):
        """Run `create()` (it writes the partial file); clean up on error."""
        self.partial_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            create()
        except OSError as error:
            _remove(self.partial_path)
            raise _no_space_error(
                error, self.path, 'while creating it'
            ) from error
        except BaseException:
            _remove(self.partial_path)
            raise

    def write(self, frames):
        """Append one frame ``frame_shape`` or a batch ``(n, *frame_shape)``.

        Returns
        -------
        int
            The number of frames written so far.

        Raises
        ------
        NotEnoughSpaceError
            When the disk is full (the caller aborts, which removes the
            partial file).
        """
        self._check_open()
        if self.finished:
            raise ValueError(f'writer for {self.path} is already finished')
        frames = np.asarray(frames)
        if frames.shape == self.frame_shape:
            frames = frames[np.newaxis]
        if frames.shape[1:] != self.frame_shape:
            raise ValueError(
                f'expected frames of shape {self.frame_shape}, got '
                f'{frames.shape}'
            )
        start, stop = self.frames_written, self.frames_written + len(frames)
        if stop > self.n_frames:
            raise ValueError(
                f'{self.path.name}: writing frames {start}..{stop - 1} '
                f'exceeds n_frames={self.n_frames}'
            )
        stored = np.ascontiguousarray(self._stored(frames))
        try:
            _pwrite_all(
                self._fd,
                stored,
                self._data_offset + start * self._stored_frame_bytes,
            )
        except OSError as error:
            raise _no_space_error(
                error,
                self.path,
                f'frames {start}-{stop - 1} of {self.n_frames}, '
                f'{format_size(self.nbytes)} in all',
            ) from error
        self.frames_written = stop
        return stop

    def _stored(self, frames):
        """`frames` as stored in the file (layout and dtype)."""
        return frames

    def _from_stored(self, array):
        """The stored ``(n, ...)`` array seen in the order of `write`."""
        return array

    def mapped(self):
        """The whole file as a read-only memory map, shape ``(n_frames,
        *frame_shape)`` (a view in the order of :meth:`write`).

        Readable while frames are written (frames not written yet read as
        zeros: the file has its full size from the start) and after
        :meth:`commit` or :meth:`abort` (the mapping keeps the data until
        it is released).  Only reads go through the map, so a full disk
        never turns into a SIGBUS.
        """
        array = np.memmap(
            self.partial_path if not self.committed else self.path,
            dtype=self._stored_dtype,
            mode='r',
            offset=self._data_offset,
            shape=(self.n_frames, *self._stored_frame_shape),
        )
        return self._from_stored(array)

    def _close_file(self):
        fd, self._fd = self._fd, None
        _OPEN_WRITERS.discard(self)
        if fd is not None:
            os.close(fd)

    def _finish(self):
        """Write companion files (sidecars, as partial files)."""

    def _publish_companions(self):
        """Rename the companion files (before the main file)."""

    def _remove_companions(self):
        """Remove partial companion files."""

    def finish(self):
        """Put every byte on disk and write companion files; rename nothing.

        Raises
        ------
        ValueError
            If fewer than ``n_frames`` frames were written (the partial file
            is removed: an incomplete file must never look finished).
        NotEnoughSpaceError
            If the file system reports a full disk only now (network file
            systems do).
        """
        self._check_open()
        if self.finished:
            return
        if self.frames_written != self.n_frames:
            self.abort()
            raise ValueError(
                f'{self.path.name}: only {self.frames_written} of '
                f'{self.n_frames} frames were written; nothing was saved'
            )
        try:
            os.fsync(self._fd)
            self._close_file()
            self._finish()
        except OSError as error:
            self.abort()
            raise _no_space_error(
                error, self.path, 'while flushing it to disk'
            ) from error
        self.finished = True

    def publish(self):
        """Give the finished file (and its companions) their final names."""
        if not self.finished:
            raise ValueError(f'writer for {self.path} is not finished')
        if self.committed:
            return self.path
        self._publish_companions()
        os.replace(self.partial_path, self.path)
        self.committed = True
        return self.path

    def commit(self):
        """:meth:`finish`, then :meth:`publish`.

        Raises
        ------
        ValueError
            If fewer than ``n_frames`` frames were written (the partial file
            is removed: an incomplete file must never look finished).
        """
        self.finish()
        return self.publish()

    def abort(self):
        """Discard everything written; no file is left behind."""
        if self.committed or self.aborted:
            return
        self.aborted = True
        with contextlib.suppress(OSError):
            self._close_file()
        _remove(self.partial_path)
        self._remove_companions()


# --------------------------------------------------------------------------
# ImageJ stacks

_IMAGEJ_ORDER = 'TZCYXS'


def _default_axes(ndim):
    # The package's internal stack layout: (T, Y, X) or (T, Y, X, C).
    return {3: 'TYX', 4: 'TYXC'}.get(ndim)


def _check_axes(axes, ndim):
    if axes is None:
        axes = _default_axes(ndim)
        if axes is None:
            raise ValueError(f'axes must be given for {ndim}-dimensional data')
    axes = axes.upper()
    if len(axes) != ndim:
        raise ValueError(f'axes {axes!r} do not match {ndim}-D data')
    if len(set(axes)) != len(axes) or not set(axes) <= set(_IMAGEJ_ORDER):
        raise ValueError(
            f'axes {axes!r} must be distinct letters from {_IMAGEJ_ORDER!r}'
        )
    if not {'T', 'Y', 'X'} <= set(axes):
        raise ValueError(f'axes {axes!r} need T, Y and X')
    if 'S' in axes and axes[-1] != 'S':
        raise ValueError('the RGB sample axis S must be last')
    return axes


def _per_axis(values, axes, default, name):
    if values is None:
        return (default,) * len(axes)
    values = tuple(values)
    if len(values) != len(axes):
        raise ValueError(
            f'{name} {values} must have one entry per axis of {axes!r}'
        )
    return values


def _imagej_kwargs(axes, scale, units):
    """tifffile.imwrite keyword arguments carrying scale and units."""
    scale = dict(zip(axes, _per_axis(scale, axes, 1.0, 'scale'), strict=True))
    units = {
        axis: normalise_unit(unit)
        for axis, unit in zip(
            axes, _per_axis(units, axes, None, 'units'), strict=True
        )
    }
    ij_axes = ''.join(a for a in _IMAGEJ_ORDER if a in axes)
    metadata = {'axes': ij_axes}
    kwargs = {'imagej': True, 'metadata': metadata}
    if (scale['X'], scale['Y']) != (1.0, 1.0) or units['X'] != 'pixel':
        kwargs['resolution'] = (1.0 / scale['X'], 1.0 / scale['Y'])
        metadata['unit'] = units['X']
    if 'Z' in axes:
        metadata['spacing'] = float(scale['Z'])
    if scale['T'] != 1.0 or units['T'] != 'pixel':
        metadata['finterval'] = float(scale['T'])
        if units['T'] not in ('s', 'pixel'):
            metadata['tunit'] = units['T']
    return kwargs


class ImageJStackWriter(_FrameWriter):
    """Stream a stack into an ImageJ hyperstack TIFF, frame by frame.

    The file is created at ``<path>.partial`` as an uncompressed ImageJ
    hyperstack and memory-mapped, so memory stays bounded by one batch
    whatever the stack size. :meth:`commit` renames it to `path`;
    :meth:`abort` removes it. Used as a context manager, an exception aborts
    and a normal exit commits.

    Parameters
    ----------
    path : str or Path
        Final file name (``.tif``).
    frame_shape : tuple of int
        Shape of one frame in `axes` order without T, e.g. ``(Y, X)`` or
        ``(Y, X, C)``.
    dtype : dtype
        Data type of the frames; stored as :func:`imagej_dtype` (kept for
        uint8, uint16, int16 and float32).
    n_frames : int
        Number of time points that will be written.
    axes : str, optional
        Axes of the whole stack, T first, e.g. ``'TYX'``, ``'TYXC'``,
        ``'TCYX'``, ``'TZYX'``. Default ``'TYX'`` or ``'TYXC'`` (the
        package's internal layout). Frames are transposed to ImageJ's TZCYXS
        order on the way to disk.
    scale, units : tuple, optional
        Per-axis pixel size / frame interval and units aligned with `axes`
        (like napari layer ``scale`` and ``units``), e.g.
        ``(0.5, 0.2, 0.2)`` and ``('s', 'um', 'um')``.
    """

    def __init__(
        self,
        path,
        *,
        frame_shape,
        dtype,
        n_frames,
        axes=None,
        scale=None,
        units=None,
    ):
        super().__init__(path, n_frames=n_frames, frame_shape=frame_shape)
        self.axes = _check_axes(axes, len(self.frame_shape) + 1)
        if self.axes[0] != 'T':
            raise ValueError(f'axes {self.axes!r} must start with T')
        self.input_dtype = np.dtype(dtype)
        self.dtype = imagej_dtype(self.input_dtype)
        frame_axes = self.axes[1:]
        ij_frame_axes = [a for a in _IMAGEJ_ORDER[1:] if a in frame_axes]
        self._frame_order = tuple(frame_axes.index(a) for a in ij_frame_axes)
        stored_shape = (self.n_frames,) + tuple(
            self.frame_shape[i] for i in self._frame_order
        )
        kwargs = _imagej_kwargs(self.axes, scale, units)
        stored_frame_shape = stored_shape[1:]

        def create():
            with warnings.catch_warnings():
                # Above 4 GB tifffile writes what ImageJ itself writes: IFDs
                # for the first pages only, the pixel data contiguous and the
                # frame count in the description (ImageJ and tifffile read
                # the whole stack back).
                warnings.filterwarnings(
                    'ignore', '.*truncating ImageJ file', UserWarning
                )
                # No data: tifffile writes the header and leaves the data
                # region empty (sparse), in native byte order.
                offset, _ = tifffile.imwrite(
                    self.partial_path,
                    data=None,
                    shape=stored_shape,
                    dtype=self.dtype,
                    returnoffset=True,
                    **kwargs,
                )
            self._attach(offset, stored_frame_shape, self.dtype)

        self._create(create)

    def _stored(self, frames):
        frames = _cast_exactly(frames, self.dtype)
        order = (0,) + tuple(i + 1 for i in self._frame_order)
        return frames.transpose(order)

    def _from_stored(self, array):
        order = (0,) + tuple(i + 1 for i in self._frame_order)
        return array.transpose(np.argsort(order))


def write_imagej_stack(path, data, *, axes=None, scale=None, units=None):
    """Write a whole stack to an ImageJ hyperstack TIFF (atomically).

    Parameters
    ----------
    path : str or Path
        Output file name.
    data : array-like, shape (T, ...)
        numpy, memory-mapped or dask array; written one frame at a time, so
        lazy inputs are never loaded whole.
    axes : str, optional
        Axes of `data` (any order of T, Z, C, Y, X, S with S last); default
        ``'TYX'`` for 3-D and ``'TYXC'`` for 4-D data.
    scale, units : tuple, optional
        Per-axis sizes and units aligned with `axes`.

    Returns
    -------
    Path
        The written file.

    Notes
    -----
    The dtype is kept for uint8, uint16, int16 and float32; other types are
    converted as described in :func:`imagej_dtype`.
    """
    axes = _check_axes(axes, np.ndim(data))
    if axes[0] != 'T':
        t = axes.index('T')
        order = [t, *(i for i in range(len(axes)) if i != t)]
        data = data.transpose(order)  # numpy and dask alike, no copy
        axes = ''.join(axes[i] for i in order)
        scale = None if scale is None else tuple(scale[i] for i in order)
        units = None if units is None else tuple(units[i] for i in order)
    with ImageJStackWriter(
        path,
        frame_shape=data.shape[1:],
        dtype=data.dtype,
        n_frames=data.shape[0],
        axes=axes,
        scale=scale,
        units=units,
    ) as writer:
        for t in range(data.shape[0]):
            writer.write(np.asarray(data[t]))
    return writer.path


# --------------------------------------------------------------------------
# .npy stacks and flow fields


class NpyStackWriter(_FrameWriter):
    """Stream a ``(n_frames, *frame_shape)`` array into a `.npy` file.

    Written at ``<path>.partial`` (header, then the data with positioned
    writes); renamed on :meth:`commit`, removed on :meth:`abort`.
    """

    def __init__(self, path, *, n_frames, frame_shape, dtype='float32'):
        super().__init__(path, n_frames=n_frames, frame_shape=frame_shape)
        self.dtype = np.dtype(dtype)
        shape = (self.n_frames, *self.frame_shape)

        def create():
            with open(self.partial_path, 'wb') as file:
                np.lib.format.write_array_header_1_0(
                    file,
                    {
                        'descr': np.lib.format.dtype_to_descr(self.dtype),
                        'fortran_order': False,
                        'shape': shape,
                    },
                )
                offset = file.tell()
                # full size now (sparse): the file can be read while written
                file.truncate(offset + math.prod(shape) * self.dtype.itemsize)
            self._attach(offset, self.frame_shape, self.dtype)

        self._create(create)

    def _stored(self, frames):
        return frames.astype(self.dtype, copy=False)


def flow_metadata(shape, *, scale=None, units=None):
    """The metadata recorded with a flow field of `shape`.

    `shape` is ``(T, Y, X, 2)``, ``(Y, X, 2)``, ``(T, Z, Y, X, 3)`` or
    ``(Z, Y, X, 3)``; `scale` and `units` are aligned with the field's axes
    without the components (``'TYX'``, ``'YX'``, ``'TZYX'``, ``'ZYX'``).
    """
    from . import __version__

    field_axes = flow_axes(shape)
    return {
        'format': FLOW_FORMAT,
        'axes': field_axes + 'C',
        'components': list('xyz'[: shape[-1]]),
        'convention': FLOW_CONVENTION,
        'displacement_unit': 'pixel',
        'shape': [int(n) for n in shape],
        'dtype': 'float32',
        'scale': [
            float(s) for s in _per_axis(scale, field_axes, 1.0, 'scale')
        ],
        'units': [
            normalise_unit(u)
            for u in _per_axis(units, field_axes, None, 'units')
        ],
        'version': __version__,
    }


def _sidecar_path(path):
    return Path(path).with_suffix('.json')


def _write_json_atomically(path, content):
    with _partial_file(path) as partial:
        partial.write_text(json.dumps(content, indent=2) + '\n')


@contextlib.contextmanager
def _partial_file(path):
    """Yield ``<path>.partial`` to write; renamed to `path` on success,
    removed on any error (a full disk reported as such)."""
    partial = _partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    except OSError as error:
        _remove(partial)
        raise _no_space_error(error, path, 'while writing it') from error
    except BaseException:
        _remove(partial)
        raise


def _check_flow_shape(shape):
    if (
        not shape
        or shape[-1] not in (2, 3)
        or len(shape) - shape[-1] not in (1, 2)
    ):
        raise ValueError(
            'flow must have shape (T, Y, X, 2), (Y, X, 2), (T, Z, Y, X, 3) '
            f'or (Z, Y, X, 3); got {shape}'
        )


def flow_axes(shape):
    """Axes of a flow field of `shape` without its components: ``'TYX'``,
    ``'YX'``, ``'TZYX'`` or ``'ZYX'``."""
    shape = tuple(shape)
    _check_flow_shape(shape)
    spatial = 'ZYX'[-shape[-1] :]
    return spatial if len(shape) == shape[-1] + 1 else 'T' + spatial


class FlowWriter(NpyStackWriter):
    """Stream a flow field ``(T, Y, X, 2)`` float32 into `.npy` + `.json`.

    The JSON sidecar (same stem) records the axes ``'TYXC'``, the components
    ``['x', 'y']``, the convention ``registered(x) = moving(x + w(x))``, the
    ``scale`` and ``units`` (aligned with ``'TYX'``) and the package version.
    Both files appear only on :meth:`commit`, the `.npy` last.  A volume
    flow ``(T, Z, Y, X, 3)`` (``frame_shape=(Z, Y, X, 3)``) records axes
    ``'TZYXC'`` and components ``['x', 'y', 'z']``.
    """

    def __init__(self, path, *, n_frames, frame_shape, scale=None, units=None):
        frame_shape = tuple(int(n) for n in frame_shape)
        if len(frame_shape) == 2:
            frame_shape += (2,)
        _check_flow_shape((n_frames, *frame_shape))
        self.metadata = flow_metadata(
            (n_frames, *frame_shape), scale=scale, units=units
        )
        super().__init__(
            path, n_frames=n_frames, frame_shape=frame_shape, dtype='float32'
        )
        self.sidecar_path = _sidecar_path(self.path)

    def _finish(self):
        _partial_path(self.sidecar_path).write_text(
            json.dumps(self.metadata, indent=2) + '\n'
        )

    def _publish_companions(self):
        os.replace(_partial_path(self.sidecar_path), self.sidecar_path)

    def _remove_companions(self):
        _remove(_partial_path(self.sidecar_path))


def write_flow(path, w, *, scale=None, units=None):
    """Write a flow field to `.npy` (+ `.json` sidecar) or `.tif`.

    Parameters
    ----------
    path : str or Path
        ``*.npy`` or ``*.tif`` / ``*.tiff``.
    w : array-like, shape (T, Y, X, 2) or (Y, X, 2)
        ``[x, y]`` displacement in pixels; stored as float32.  Volumes:
        ``(T, Z, Y, X, 3)`` or ``(Z, Y, X, 3)`` holding ``[x, y, z]``.
    scale, units : tuple, optional
        Frame interval and pixel size aligned with ``'TYX'`` (``'YX'`` for
        one frame; ``'TZYX'`` or ``'ZYX'`` for volumes).

    Returns
    -------
    Path
        The written file.

    Notes
    -----
    A TIFF holds the components as separate pages in ``(T, C, Y, X)`` order
    (``(T, Z, C, Y, X)`` for volumes), so Fiji shows a multichannel
    hyperstack; the flow metadata is stored as JSON in the ImageDescription
    under the key ``'flowscope'``.
    """
    path = Path(path)
    shape = tuple(np.shape(w))
    field_axes = flow_axes(shape)
    suffix = path.suffix.lower()
    if suffix == '.npy' and not field_axes.startswith('T'):
        metadata = flow_metadata(shape, scale=scale, units=units)
        with _partial_file(path) as partial:
            with open(partial, 'wb') as file:
                np.save(file, np.asarray(w, np.float32))
            _write_json_atomically(_sidecar_path(path), metadata)
        return path
    if suffix == '.npy':
        with FlowWriter(
            path,
            n_frames=shape[0],
            frame_shape=shape[1:],
            scale=scale,
            units=units,
        ) as writer:
            for t in range(shape[0]):
                writer.write(np.asarray(w[t]))
        return path
    if suffix in ('.tif', '.tiff'):
        metadata = flow_metadata(shape, scale=scale, units=units)
        components_first = np.moveaxis(np.asarray(w, np.float32), -1, -3)
        with _partial_file(path) as partial:
            tifffile.imwrite(
                partial,
                components_first,
                photometric='minisblack',
                metadata={
                    'axes': field_axes[:-2] + 'CYX',
                    'flowscope': metadata,
                },
            )
        return path
    raise ValueError(
        f'flow files must end in .npy, .tif or .tiff, got {path.name!r}'
    )


def read_flow_metadata(path):
    """Return the flow metadata dict of a flow file, or None if it has none.

    Never raises for unreadable files (returns None): used to recognise
    flow files cheaply.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == '.npy':
            sidecar = _sidecar_path(path)
            if not sidecar.is_file():
                return None
            metadata = json.loads(sidecar.read_text())
        else:
            with tifffile.TiffFile(path) as tif:
                shaped = tif.shaped_metadata
                if not shaped:
                    return None
                metadata = shaped[0].get('flowscope')
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(metadata, dict) or metadata.get('format') != FLOW_FORMAT:
        return None
    return metadata


def read_flow(path, *, mmap_mode=None):
    """Read a flow field written by :func:`write_flow` or :class:`FlowWriter`.

    Parameters
    ----------
    path : str or Path
        ``.npy`` (with its ``.json`` sidecar) or ``.tif``.
    mmap_mode : {None, 'r'}
        ``'r'`` memory-maps a ``.npy`` file instead of loading it.

    Returns
    -------
    w : ndarray, shape (T, Y, X, 2) or (Y, X, 2), float32
        ``[x, y]`` displacement; volumes ``(T, Z, Y, X, 3)`` or
        ``(Z, Y, X, 3)`` holding ``[x, y, z]``.
    metadata : dict
        Keys ``axes``, ``components``, ``convention``, ``scale``, ``units``,
        ``version``, ...

    Raises
    ------
    ValueError
        If the file is not a flowscope flow file.
    """
    path = Path(path)
    metadata = read_flow_metadata(path)
    if metadata is None:
        raise ValueError(
            f'{path} is not a napari-flowscope flow file (a .npy needs its '
            '.json sidecar; a .tif needs the flowscope description)'
        )
    if path.suffix.lower() == '.npy':
        w = np.load(path, mmap_mode=mmap_mode)
    else:
        w = np.moveaxis(tifffile.imread(path), -3, -1)
        w = np.ascontiguousarray(w)
    if list(w.shape) != metadata['shape']:
        raise ValueError(
            f'{path}: data shape {w.shape} does not match the recorded '
            f'shape {tuple(metadata["shape"])}'
        )
    return w, metadata


# --------------------------------------------------------------------------
# reading TIFF stacks


@dataclass(frozen=True)
class StackMetadata:
    """How a stack file maps onto the package's axes.

    Attributes
    ----------
    shape : tuple of int
        Shape of the array returned by :func:`open_stack` (T first).
    dtype : numpy.dtype
    axes : str
        Axes of that array, T first, e.g. ``'TYX'``, ``'TCYX'``,
        ``'TZYX'``, ``'TYXS'`` (RGB samples last); a Z-stack without time
        keeps its own axes (``'ZYX'``, ``'ZCYX'``).
    scale, units : tuple
        Per-axis frame interval / spacing / pixel size and pint-parsable
        units (``'pixel'`` and 1.0 where the file says nothing).
    channel_names : tuple of str or None
        Names of the C axis entries when the file records them (OME).
    time_source : str or None
        Which axis of the file became T: ``'T'`` (frames), ``'I'`` (the
        page axis of a plain multipage TIFF) or ``'Z'`` (the slices of a
        plain ImageJ stack: ImageJ calls every image of a stack saved
        without dimensions a slice); None for a Z-stack without time (see
        :meth:`is_time_lapse`).
    source_axes : str
        The axes reported by tifffile for the file.
    """

    shape: tuple
    dtype: np.dtype
    axes: str
    scale: tuple
    units: tuple
    channel_names: tuple | None = None
    time_source: str | None = 'T'
    source_axes: str = ''

    @property
    def is_time_lapse(self):
        """Whether the stack has a time axis (the first)."""
        return self.axes.startswith('T')

    @property
    def axis_labels(self):
        """Lower-case axis names for napari (``('t', 'y', 'x')``)."""
        return tuple(a.lower() for a in self.axes)

    @property
    def channel_axis(self):
        """Index of the C axis, or None."""
        return self.axes.index('C') if 'C' in self.axes else None

    @property
    def rgb(self):
        """True when the last axis holds RGB(A) samples."""
        return self.axes.endswith('S')

    @property
    def nbytes(self):
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def check_time_lapse(metadata, path):
    """Raise ValueError, saying what to do, if `metadata` has no time axis.

    Motion correction needs time; a Z-stack (OME ``Z``, the slices of an
    ImageJ hyperstack or of a stack with a z spacing) without frames is
    refused rather than corrected as if depth were time.
    """
    if metadata.is_time_lapse:
        return
    raise ValueError(
        f'{Path(path).name} is a Z-stack (axes {metadata.source_axes}) '
        'without a time axis; motion correction needs a time-lapse '
        '(T, Y, X). If its slices are really time points, save it with '
        'frames instead of slices (Fiji: Image > Hyperstacks > Re-order '
        'Hyperstacks, swap slices and frames)'
    )


def lazy_threshold_bytes():
    """Size above which stacks open lazily (see ``LAZY_THRESHOLD_BYTES``)."""
    if LAZY_THRESHOLD_BYTES is not None:
        return int(LAZY_THRESHOLD_BYTES)
    return int(available_memory() * _LAZY_FRACTION_OF_AVAILABLE_MEMORY)


def available_memory():
    """Bytes of memory available to new allocations now (psutil's view)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def _time_axis(axes, *, slices_are_frames=False):
    """Index of the file axis that is time, and where it came from.

    The file's axes decide: ImageJ frames / OME ``T``, or the pages of a
    plain multipage TIFF.  A Z axis is depth, except the slices of a plain
    ImageJ stack (`slices_are_frames`, see :func:`_plain_imagej_stack`).
    """
    if 'T' in axes:
        return axes.index('T'), 'T'
    for code in 'IQ':
        if code in axes:
            return axes.index(code), 'I'
    if slices_are_frames and 'Z' in axes:
        return axes.index('Z'), 'Z'
    return None, None


def _plain_imagej_stack(tif):
    """Whether `tif` is an ImageJ stack saved without its dimensions.

    ImageJ calls every image of a plain stack a slice (``images=N
    slices=N``), time-lapses included (StackReg's output, for one): such a
    stack is a sequence of frames.  Its slices are depth only when the file
    says so: a hyperstack (dimensions set) or a z spacing (voxel depth).
    """
    if not tif.is_imagej:
        return False
    ij = tif.imagej_metadata or {}
    return not (
        ij.get('hyperstack')
        or 'spacing' in ij
        or ij.get('frames', 1) > 1
        or ij.get('channels', 1) > 1
    )


def _ome_pixels(tif, series_index):
    """The OME <Pixels> attributes and channel names of one image."""
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except (ElementTree.ParseError, TypeError, ValueError):
        return {}, None
    images = [e for e in root if e.tag.endswith('}Image') or e.tag == 'Image']
    if series_index >= len(images):
        return {}, None
    pixels = next(
        (e for e in images[series_index] if e.tag.split('}')[-1] == 'Pixels'),
        None,
    )
    if pixels is None:
        return {}, None
    names = tuple(
        channel.get('Name') or f'channel {i}'
        for i, channel in enumerate(
            e for e in pixels if e.tag.split('}')[-1] == 'Channel'
        )
    )
    return dict(pixels.attrib), names or None


def _float(value, default=1.0):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) and value > 0 else default


def _calibration(tif, series, series_index):
    """Per-file-axis (scale, unit) from ImageJ, OME or resolution tags."""
    calibration = {}
    page = series.keyframe
    if tif.is_ome:
        pixels, names = _ome_pixels(tif, series_index)
        for axis in 'XYZ':
            size = pixels.get(f'PhysicalSize{axis}')
            if size is not None:
                unit = pixels.get(f'PhysicalSize{axis}Unit', '\u00b5m')
                calibration[axis] = (_float(size), normalise_unit(unit))
        if pixels.get('TimeIncrement') is not None:
            unit = pixels.get('TimeIncrementUnit', 's')
            calibration['T'] = (
                _float(pixels['TimeIncrement']),
                normalise_unit(unit),
            )
        return calibration, names
    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        unit = normalise_unit(ij.get('unit'))
        # ImageJ writes ResolutionUnit NONE and the unit in its description;
        # an INCH resolution comes from other software (72 dpi defaults).
        calibrated = int(page.resolutionunit) == 1 and (
            unit != 'pixel' or page.resolution != (1.0, 1.0)
        )
        if calibrated:
            x_res, y_res = page.resolution
            calibration['X'] = (1.0 / _float(x_res), unit)
            calibration['Y'] = (1.0 / _float(y_res), unit)
        if 'spacing' in ij:
            calibration['Z'] = (_float(ij['spacing']), unit)
        if 'finterval' in ij:
            calibration['T'] = (
                _float(ij['finterval']),
                normalise_unit(ij.get('tunit', 's')),
            )
        if calibrated:
            return calibration, None
    micrometres = _MICROMETRES_PER_RESOLUTION_UNIT.get(
        int(page.resolutionunit)
    )
    if micrometres is not None:
        x_res, y_res = page.resolution
        calibration['X'] = (micrometres / _float(x_res), 'um')
        calibration['Y'] = (micrometres / _float(y_res), 'um')
    return calibration, None


def _normalised_axes(source_axes, shape, *, slices_are_frames=False):
    """Return (order, axes, time_source) putting time first.

    A Z-stack without time keeps its axes (Z first, ``time_source`` None):
    it opens for viewing, and :func:`check_time_lapse` refuses to correct
    it.  Raises ValueError for a single 2-D image.
    """
    t, time_source = _time_axis(
        source_axes, slices_are_frames=slices_are_frames
    )
    spatial = [a for a in source_axes if a not in 'YXS']
    if t is None and 'Z' in source_axes and {'Y', 'X'} <= set(source_axes):
        return list(range(len(source_axes))), source_axes, None
    if t is None or 'Y' not in source_axes or 'X' not in source_axes:
        dims = ' x '.join(str(n) for n in shape)
        raise ValueError(
            f'a single 2-D image ({dims}, axes {source_axes}) is not a '
            'time-lapse; napari-flowscope needs a stack of frames (T, Y, X)'
            if not spatial
            else f'cannot find time, Y and X in axes {source_axes!r}'
        )
    order = [t, *(i for i in range(len(source_axes)) if i != t)]
    axes = ['T']
    seen = set('T')
    for i in order[1:]:
        code = source_axes[i]
        if code in 'IQ' or code in seen:
            # Extra unnamed axes: keep them, with distinct names.
            code = next(c for c in 'QPRVLMOEHA' if c not in seen)
        seen.add(code)
        axes.append(code)
    return order, ''.join(axes), time_source


def _series_metadata(tif, series_index=0):
    series = tif.series[series_index]
    _check_complete(tif, series)
    source_axes = series.axes
    shape = tuple(series.shape)
    if 'S' in source_axes and shape[source_axes.index('S')] not in (3, 4):
        source_axes = source_axes.replace('S', 'C')
    order, axes, time_source = _normalised_axes(
        source_axes, shape, slices_are_frames=_plain_imagej_stack(tif)
    )
    calibration, channel_names = _calibration(tif, series, series_index)
    scale = tuple(calibration.get(a, (1.0, 'pixel'))[0] for a in axes)
    units = tuple(calibration.get(a, (1.0, 'pixel'))[1] for a in axes)
    if channel_names is not None and (
        'C' not in axes or len(channel_names) != shape[order[axes.index('C')]]
    ):
        channel_names = None
    return order, StackMetadata(
        shape=tuple(shape[i] for i in order),
        dtype=np.dtype(series.dtype),
        axes=axes,
        scale=scale,
        units=units,
        channel_names=channel_names,
        time_source=time_source,
        source_axes=series.axes,
    )


def _open_tiff(path):
    try:
        return tifffile.TiffFile(path)
    except tifffile.TiffFileError as error:
        raise ValueError(f'{path} is not a readable TIFF file: {error}') from (
            error
        )


def read_stack_metadata(path):
    """Axes, scale and units of a TIFF stack without reading its pixels.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    StackMetadata

    Raises
    ------
    ValueError
        If the file is not a TIFF, or holds a single 2-D image.
    OSError
        If the file cannot be read.
    """
    with _open_tiff(path) as tif:
        return _series_metadata(tif)[1]


def open_stack(path, *, lazy=None):
    """Open a TIFF stack with time first, lazily when it is large.

    ImageJ hyperstacks and OME-TIFF keep their axes (ImageJ frames and OME T
    become the time axis); a plain multipage TIFF uses its pages, and a
    plain ImageJ stack (saved without dimensions) its slices, as time.
    A Z-stack without time (OME Z, the slices of an ImageJ hyperstack or of
    a stack with a z spacing) keeps Z first, for viewing:
    :func:`check_time_lapse` refuses it for correction.

    Parameters
    ----------
    path : str or Path
    lazy : bool, optional
        Force (True) or forbid (False) lazy opening. By default a stack
        opens lazily when larger than :func:`lazy_threshold_bytes`: as a
        read-only :class:`numpy.memmap` when its pixels are stored
        contiguously and uncompressed, otherwise as a dask array over
        tifffile's zarr store (one chunk per page; without zarr installed,
        decoded once into a temporary memory-mapped file).

    Returns
    -------
    data : ndarray, numpy.memmap or dask.array.Array
        Axes as in ``metadata.axes``.
    metadata : StackMetadata

    Raises
    ------
    ValueError
        Not a TIFF, corrupt or truncated, or a single 2-D image.
    """
    path = os.fspath(path)
    with _open_tiff(path) as tif:
        order, metadata = _series_metadata(tif)
        if lazy is None:
            lazy = metadata.nbytes > lazy_threshold_bytes()
        series = tif.series[0]
        try:
            if not lazy:
                data = series.asarray()
            elif series.dataoffset is not None:
                data = tifffile.memmap(path, series=0, mode='r')
            elif _zarr_available():
                data = _dask_from_tiff(path)
            else:
                # Without zarr: decode once into a temporary memory-mapped
                # file (slow for huge files, but memory stays bounded).
                data = series.asarray(out='memmap')
        except Exception as e:  # codecs raise their own error types
            raise ValueError(
                f'{path} is corrupt or truncated ({type(e).__name__}: {e})'
            ) from e
    data = data.reshape(tuple(series.shape)).transpose(order)
    if tuple(data.shape) != metadata.shape:
        raise ValueError(f'{path}: unexpected data shape {data.shape}')
    return data, metadata


def _check_complete(tif, series):
    """Raise ValueError when the pixel data run past the end of the file.

    Cheap (looks at the last page only), so truncation is reported when the
    file is opened rather than when a lazy array is first read.
    """
    size = tif.filehandle.size
    for kind in ('imagej', 'ome', 'shaped'):
        if getattr(tif, f'is_{kind}') and series.kind != kind:
            # tifffile falls back to the pages it could read.
            raise ValueError(
                f'{tif.filename} is truncated or damaged: its {kind} '
                'metadata describe more image data than the file holds'
            )
    n_pages = math.prod(series.shape) // math.prod(series.keyframe.shape)
    try:
        last = series[n_pages - 1] if n_pages > 1 else series.keyframe
        offsets, counts = last.dataoffsets, last.databytecounts
    except (IndexError, TypeError, ValueError, tifffile.TiffFileError):
        last = None
    if series.dataoffset is not None:
        complete = series.dataoffset + series.nbytes <= size
    else:
        complete = last is not None and all(
            offset + count <= size
            for offset, count in zip(offsets, counts, strict=True)
        )
    if not complete:
        raise ValueError(
            f'{tif.filename} is truncated: its {n_pages} pages of pixel '
            f'data do not fit in the {size} bytes of the file'
        )


def _zarr_available():
    return importlib.util.find_spec('zarr') is not None


def _dask_from_tiff(path):
    import dask.array as da

    tif = tifffile.TiffFile(path)
    store = tif.series[0].aszarr()
    # The store reads through `tif` for as long as dask holds it; close the
    # file when the last dask graph referencing the store is gone.
    weakref.finalize(store, tif.close)
    return da.from_zarr(store)


# --------------------------------------------------------------------------
# numbered image sequences

_IMAGE_SUFFIXES = ('.tif', '.tiff', '.png', '.jpg', '.jpeg')


def natural_sort_key(path):
    """Sort key that orders ``frame2`` before ``frame10``."""
    name = Path(path).name
    return [
        (0, int(part), '') if part.isdigit() else (1, 0, part.lower())
        for part in re.split(r'(\d+)', name)
        if part
    ]


def image_sequence_files(paths):
    """Image files of a folder or list, in natural order.

    Parameters
    ----------
    paths : str, Path or list of them
        A folder (its TIFF/PNG/JPEG files are used; hidden files skipped) or
        a list of image files.

    Returns
    -------
    list of Path
    """
    if isinstance(paths, (str, os.PathLike)):
        folder = Path(paths)
        paths = [
            p
            for p in folder.iterdir()
            if p.is_file()
            and p.suffix.lower() in _IMAGE_SUFFIXES
            and not p.name.startswith('.')
        ]
    return sorted((Path(p) for p in paths), key=natural_sort_key)


def read_image(path):
    """Read one single-frame image (TIFF with tifffile, PNG/JPEG with cv2).

    Colour images are returned RGB(A) ``(Y, X, 3|4)``; a constant alpha
    channel is dropped, and colour images whose channels are identical
    (greyscale saved as colour) come back as ``(Y, X)``.

    Raises
    ------
    ValueError
        If the file cannot be decoded.
    """
    path = Path(path)
    if path.suffix.lower() in ('.tif', '.tiff'):
        with _open_tiff(path) as tif:
            image = tif.asarray()
    else:
        import cv2

        image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f'{path} is not a readable image file')
        if image.ndim == 3:
            # OpenCV decodes colour as BGR(A).
            code = (
                cv2.COLOR_BGR2RGB
                if image.shape[2] == 3
                else cv2.COLOR_BGRA2RGBA
            )
            image = cv2.cvtColor(image, code)
    if image.ndim not in (2, 3) or (
        image.ndim == 3 and image.shape[2] not in (3, 4)
    ):
        raise ValueError(
            f'{path.name} holds an array of shape {image.shape}, not a '
            'single frame; open multi-frame files one at a time'
        )
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[..., 3]
        if (alpha == alpha.flat[0]).all():
            # A constant alpha channel carries nothing.
            image = image[..., :3]
    if image.ndim == 3 and image.shape[2] == 3:
        if (image == image[..., :1]).all():
            image = image[..., 0]
        image = np.ascontiguousarray(image)
    return image


def open_image_sequence(paths, *, lazy=None):
    """Open numbered single-frame images as one ``(T, Y, X[, S])`` stack.

    Parameters
    ----------
    paths : str, Path or list
        A folder or a list of image files (sorted naturally:
        ``frame2`` before ``frame10``).
    lazy : bool, optional
        Force or forbid a dask array (one chunk per file); by default lazy
        when the stack exceeds :func:`lazy_threshold_bytes`.

    Returns
    -------
    data : ndarray or dask.array.Array
    metadata : StackMetadata
        ``time_source`` is ``'files'``.

    Raises
    ------
    ValueError
        Fewer than two images, or images of different shapes or types.
    """
    files = image_sequence_files(paths)
    if len(files) < 2:
        where = paths if isinstance(paths, (str, os.PathLike)) else 'list'
        raise ValueError(
            f'{where}: a time-lapse needs at least two image files '
            f'(TIFF/PNG/JPEG), found {len(files)}'
        )
    first = read_image(files[0])
    frame_shape, dtype = first.shape, first.dtype
    axes = 'TYX' if first.ndim == 2 else 'TYXS'
    metadata = StackMetadata(
        shape=(len(files), *frame_shape),
        dtype=dtype,
        axes=axes,
        scale=(1.0,) * len(axes),
        units=('pixel',) * len(axes),
        time_source='files',
        source_axes=axes,
    )
    if lazy is None:
        lazy = metadata.nbytes > lazy_threshold_bytes()

    def read_checked(path):
        image = first if path == files[0] else read_image(path)
        if image.shape != frame_shape or image.dtype != dtype:
            raise ValueError(
                f'{path.name} is {image.shape} {image.dtype}, but '
                f'{files[0].name} is {frame_shape} {dtype}; all frames must '
                'match'
            )
        return image

    if lazy:
        import dask
        import dask.array as da

        frames = [
            da.from_delayed(
                dask.delayed(read_checked)(path), frame_shape, dtype=dtype
            )
            for path in files
        ]
        return da.stack(frames), metadata
    data = np.empty(metadata.shape, dtype)
    for t, path in enumerate(files):
        data[t] = read_checked(path)
    return data, metadata
