"""Where the batches of a session go: memory, or files streamed to disk.

A sink is opened by :meth:`MotionSession.run` with the session (shapes,
dtype, parameters), receives every :class:`FlowBatch` in order through
:meth:`write`, and is either closed (complete) or aborted (cancelled or
failed).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from napari_flowscope import formats

from .stats import FrameStats, MotionUnits

__all__ = ['DiskSink', 'MappedDiskSink', 'MemorySink']


class MemorySink:
    """Collect a whole run in memory.

    Attributes
    ----------
    registered : ndarray, shape (T, Y, X[, C]) or (T, Z, Y, X[, C])
        Registered frames, dtype of :attr:`MotionSession.dtype`.
    w : ndarray, shape (T, Y, X, 2) or (T, Z, Y, X, 3), float32
    reliability : ndarray, shape (T, Y, X) or (T, Z, Y, X), float32
    confidence : ndarray, shape of ``reliability``, float32
    stats : FrameStats
        Per-frame statistics, length T.
    reference : ndarray, shape (Y, X) or (Z, Y, X), float32
        The reference at the end of the run.
    extras : list of ndarray, shape (T, Y, X[, C])
        Registered frames of the session's ``extra_stacks``.
    spacing : tuple of float or None
        Volumes: the session's ``(z, y, x)`` voxel size (lengths of 3-D
        flow vectors are distances with it); None for 2-D frames.
    complete : bool
        True once every frame has been written and the sink closed.
    """

    @staticmethod
    def required_bytes(session):
        """Bytes the arrays of a run of ``session`` take in memory."""
        pixels = session.n_frames * math.prod(session.frame_shape)
        channels = session.n_channels or 1
        per_pixel = (
            channels * np.dtype(session.dtype).itemsize
            + session.flow_components * 4  # w, float32
            + 4  # reliability
            + 4  # confidence
        )
        extras = sum(
            math.prod(shape) * np.dtype(dtype).itemsize
            for shape, dtype in getattr(session, 'extra_shapes', ())
        )
        return pixels * per_pixel + extras

    def __init__(self):
        self.registered = None
        self.w = None
        self.reliability = None
        self.confidence = None
        self.stats = None
        self.reference = None
        self.extras = []
        self.spacing = None
        self.complete = False

    def open(self, session):
        n_frames = session.n_frames
        frame_shape = session.frame_shape
        channels = () if session.n_channels is None else (session.n_channels,)
        self.registered = np.empty(
            (n_frames, *frame_shape, *channels), session.dtype
        )
        self.w = np.empty(
            (n_frames, *frame_shape, session.flow_components), np.float32
        )
        self.reliability = np.empty((n_frames, *frame_shape), np.float32)
        self.confidence = np.empty((n_frames, *frame_shape), np.float32)
        self.stats = FrameStats.empty(n_frames)
        self.spacing = getattr(session, 'spacing', None)
        self.extras = [
            np.empty(shape, dtype)
            for shape, dtype in getattr(session, 'extra_shapes', ())
        ]
        self.complete = False

    def views(self, start, stop):
        """Writable views of frames ``start:stop``.

        :meth:`MotionSession.run` registers into these, so that
        :meth:`write` has nothing left to copy.

        Returns
        -------
        w, reliability, confidence, registered : ndarray
        stats : FrameStats
        extras : tuple of ndarray
        """
        frames = slice(start, stop)
        return (
            self.w[frames],
            self.reliability[frames],
            self.confidence[frames],
            self.registered[frames],
            FrameStats(
                *(
                    values[frames]
                    for values in self.stats.as_columns().values()
                )
            ),
            tuple(extra[frames] for extra in self.extras),
        )

    def write(self, batch):
        if not np.may_share_memory(batch.w, self.w):
            frames = slice(batch.start, batch.stop)
            self.registered[frames] = batch.registered
            self.w[frames] = batch.w
            self.reliability[frames] = batch.reliability
            self.confidence[frames] = batch.confidence
            for name, values in batch.stats.as_columns().items():
                getattr(self.stats, name)[frames] = values
            for extra, registered in zip(
                self.extras, batch.extras, strict=True
            ):
                extra[frames] = registered
        self.reference = batch.reference

    def close(self, session):
        self.complete = True

    def abort(self):
        self.complete = False


class DiskSink:
    """Stream a run into an output folder, frame batch by frame batch.

    Files (see ``docs/architecture.md``): ``registered.tif`` (ImageJ
    hyperstack, axes ``TYX`` or ``TYXC`` stored as ImageJ's ``TCYX``, dtype
    of :attr:`MotionSession.dtype`, scale kept), ``flow.npy`` + ``flow.json``
    (``(T, Y, X, 2)`` float32), ``reliability.npy`` and ``confidence.npy``
    (each ``(T, Y, X)`` float32), ``stats.csv`` (one row per frame,
    displacement and velocity in the units of :attr:`motion_units`) and
    ``params.json``.  Volumes: ``registered.tif`` is ``TZYX`` (``TZCYX``
    with channels, z spacing kept), ``flow.npy`` ``(T, Z, Y, X, 3)``,
    ``reliability.npy`` and ``confidence.npy`` ``(T, Z, Y, X)``.  Each of
    the session's ``extra_stacks`` (other channels corrected with the
    flow) goes to its own ImageJ TIFF ``registered_<name>.tif``, written
    like ``registered.tif`` and listed in ``params.json`` under
    ``extra_channels`` (name and file).

    Every file is written as ``<name>.partial`` and renamed only when the
    whole run is complete (``params.json`` last), so a cancelled or crashed
    run leaves no file that looks finished.  Memory stays bounded by one
    batch: frames go to disk with plain writes as they come.

    :meth:`open` checks that the folder's disk has room for every file and
    refuses the run otherwise (:class:`~napari_flowscope.formats.
    NotEnoughSpaceError`, saying how much is needed); a disk that fills up
    anyway (another program writing) stops the run with the same error,
    and everything it wrote is removed.

    Parameters
    ----------
    directory : str or Path
        Output folder (created if needed).
    scale, units : tuple, optional
        Frame interval and pixel size aligned with ``'TYX'`` (like a napari
        layer's ``scale`` / ``units``), e.g. ``(2.0, 0.3, 0.3)`` and
        ``('s', 'um', 'um')``; for volumes aligned with ``'TZYX'``.
    source : str, optional
        Where the input came from (recorded in ``params.json``).
    extra : dict, optional
        More JSON-serialisable entries for ``params.json``.
    overwrite : bool
        Whether the files of an earlier run in ``directory`` may be
        replaced.  They are replaced only once the new run is complete:
        a run that fails, is cancelled or interrupted leaves them as they
        were.
    scratch_bytes : int
        Bytes the run needs in ``directory`` besides its results while it
        runs (a distributed run's chunk files), for the free-space check.
    extra_names : sequence of str, optional
        A name for each of the session's ``extra_stacks`` (e.g. the
        channel's layer name), used in its file name: characters other
        than letters, digits, ``.``, ``-`` and ``_`` become ``_``, and a
        name taken already gets a number.  Default ``extra0``,
        ``extra1``, ...

    Raises
    ------
    FileExistsError
        From :meth:`open`, when ``directory`` holds results and
        ``overwrite`` is False.
    ValueError
        From :meth:`open`, when ``extra_names`` does not name every extra
        stack of the session.
    NotEnoughSpaceError
        From :meth:`open` when the files will not fit, from :meth:`write`
        or :meth:`close` when the disk fills up.

    Attributes
    ----------
    paths : dict of str to Path
        Final path of each file, by key ``'registered'``, ``'flow'``,
        ``'flow_metadata'``, ``'reliability'``, ``'confidence'``,
        ``'stats'``, ``'params'``, and, after :meth:`open`, one key per
        extra stack (its file name without ``.tif``).
    extra_files : list of (str, Path)
        After :meth:`open`: name and final path of each extra stack's
        file, in the order of the session's ``extra_stacks``.
    motion_units : MotionUnits
        Units of the displacement and velocity columns of ``stats.csv``
        (µm and µm/s, say, when ``scale`` and ``units`` give a pixel size
        and a frame interval; px and px/frame otherwise).
    stats : FrameStats or None
        Per-frame statistics of the run (px, px / frame), filled as
        batches arrive.
    complete : bool
        True once every file has its final name.
    """

    FILE_NAMES = {
        'registered': 'registered.tif',
        'flow': 'flow.npy',
        'flow_metadata': 'flow.json',
        'reliability': 'reliability.npy',
        'confidence': 'confidence.npy',
        'stats': 'stats.csv',
        'params': 'params.json',
    }

    def __init__(
        self,
        directory,
        *,
        scale=None,
        units=None,
        source=None,
        extra=None,
        overwrite=False,
        scratch_bytes=0,
        extra_names=None,
    ):
        self.directory = Path(directory)
        self.scale = None if scale is None else tuple(map(float, scale))
        self.units = None if units is None else tuple(units)
        for name, values in (('scale', self.scale), ('units', self.units)):
            if values is not None and len(values) not in (3, 4):
                raise ValueError(
                    f'{name} must have 3 entries (T, Y, X) or, for volumes, '
                    f'4 (T, Z, Y, X); got {values}'
                )
        self.source = None if source is None else str(source)
        self.extra = dict(extra or {})
        self.paths = self._fixed_paths()
        self.extra_names = (
            None if extra_names is None else [str(n) for n in extra_names]
        )
        self.extra_files = []
        self.overwrite = overwrite
        self.scratch_bytes = int(scratch_bytes)
        self.motion_units = MotionUnits.from_scale(self.scale, self.units)
        self.complete = False
        self.stats = None
        self._writers = []
        self._extra_writers = []
        self._committed = []

    def required_bytes(self, session):
        """Bytes the files of a run of ``session`` take on disk.

        Headers, ``stats.csv`` and ``params.json`` included (rounded up).
        """
        pixels = session.n_frames * math.prod(session.frame_shape)
        channels = session.n_channels or 1
        bytes_per_pixel = {
            'registered': channels
            * formats.imagej_dtype(session.dtype).itemsize,
            'flow': session.flow_components * np.dtype(np.float32).itemsize,
            'reliability': np.dtype(np.float32).itemsize,
            'confidence': np.dtype(np.float32).itemsize,
        }
        extras = sum(
            math.prod(shape) * formats.imagej_dtype(dtype).itemsize
            for shape, dtype in getattr(session, 'extra_shapes', ())
        )
        small_files = (1 << 20) + 128 * session.n_frames
        return pixels * sum(bytes_per_pixel.values()) + extras + small_files

    def _fixed_paths(self):
        return {
            key: self.directory / name for key, name in self.FILE_NAMES.items()
        }

    def _name_extra_files(self, session):
        """``extra_files`` and their ``paths`` entries for ``session``."""
        n_extras = len(getattr(session, 'extra_shapes', ()))
        names = self.extra_names
        if names is None:
            names = [f'extra{index}' for index in range(n_extras)]
        if len(names) != n_extras:
            raise ValueError(
                f'extra_names names {len(names)} extra stacks; the session '
                f'has {n_extras}'
            )
        self.paths = self._fixed_paths()
        taken = {path.name.lower() for path in self.paths.values()}
        self.extra_files = []
        for index, name in enumerate(names):
            stem = 'registered_' + (
                re.sub(r'[^\w.-]+', '_', name, flags=re.ASCII).strip('._')
                or f'extra{index}'
            )
            unique, number = stem, 2
            while f'{unique}.tif'.lower() in taken:
                unique, number = f'{stem}_{number}', number + 1
            taken.add(f'{unique}.tif'.lower())
            path = self.directory / f'{unique}.tif'
            self.paths[unique] = path
            self.extra_files.append((name, path))

    def open(self, session):
        self._name_extra_files(session)
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = [path for path in self.paths.values() if path.exists()]
        if existing and not self.overwrite:
            raise FileExistsError(
                f'{self.directory} already holds results '
                f'({", ".join(path.name for path in existing)}); choose '
                'another folder or allow overwriting'
            )
        # Left by a run that was killed (SIGKILL, power cut): never
        # finished, and nothing else writes these names.
        for path in self.paths.values():
            _remove(_partial(path))
        formats.check_free_space(
            self.directory,
            self.required_bytes(session) + self.scratch_bytes,
            what='the results of this run',
        )
        n_frames, frame_shape = session.n_frames, session.frame_shape
        self._check_geometry(session)
        channels = session.n_channels
        spatial = 'ZYX' if session.is_volume else 'YX'
        stack_axes = 'T' + spatial + ('' if channels is None else 'C')
        extra_axis = () if channels is None else (1.0,)
        extra_unit = () if channels is None else ('pixel',)
        self.complete = False
        self._committed = []
        self.stats = FrameStats.empty(n_frames)
        try:
            self._registered = formats.ImageJStackWriter(
                self.paths['registered'],
                frame_shape=(
                    frame_shape
                    if channels is None
                    else (*frame_shape, channels)
                ),
                dtype=session.dtype,
                n_frames=n_frames,
                axes=stack_axes,
                scale=None if self.scale is None else self.scale + extra_axis,
                units=None if self.units is None else self.units + extra_unit,
            )
            self._writers.append(self._registered)
            self._flow = formats.FlowWriter(
                self.paths['flow'],
                n_frames=n_frames,
                frame_shape=(*frame_shape, session.flow_components),
                scale=self.scale,
                units=self.units,
            )
            self._writers.append(self._flow)
            self._reliability = formats.NpyStackWriter(
                self.paths['reliability'],
                n_frames=n_frames,
                frame_shape=frame_shape,
                dtype='float32',
            )
            self._writers.append(self._reliability)
            self._confidence = formats.NpyStackWriter(
                self.paths['confidence'],
                n_frames=n_frames,
                frame_shape=frame_shape,
                dtype='float32',
            )
            self._writers.append(self._confidence)
            self._extra_writers = []
            spatial_ndim = len(frame_shape)
            for (_name, path), (shape, dtype) in zip(
                self.extra_files,
                getattr(session, 'extra_shapes', ()),
                strict=True,
            ):
                has_channels = len(shape) > spatial_ndim + 1
                writer = formats.ImageJStackWriter(
                    path,
                    frame_shape=shape[1:],
                    dtype=dtype,
                    n_frames=n_frames,
                    axes='T' + spatial + ('C' if has_channels else ''),
                    scale=None
                    if self.scale is None
                    else self.scale + (1.0,) * has_channels,
                    units=None
                    if self.units is None
                    else self.units + ('pixel',) * has_channels,
                )
                self._writers.append(writer)
                self._extra_writers.append(writer)
        except BaseException:
            self.abort()
            raise

    def _check_geometry(self, session):
        expected = len(session.frame_shape) + 1
        axes = 'TZYX' if session.is_volume else 'TYX'
        for name, values in (('scale', self.scale), ('units', self.units)):
            if values is not None and len(values) != expected:
                raise ValueError(
                    f'{name} must have one entry per axis {axes} of the '
                    f'stack; got {values}'
                )

    def write(self, batch):
        self._registered.write(batch.registered)
        self._flow.write(batch.w)
        self._reliability.write(batch.reliability)
        self._confidence.write(batch.confidence)
        for writer, registered in zip(
            self._extra_writers, batch.extras, strict=True
        ):
            writer.write(registered)
        frames = slice(batch.start, batch.stop)
        for name, values in batch.stats.as_columns().items():
            getattr(self.stats, name)[frames] = values

    def close(self, session):
        """Finish every file, then give them their final names.

        The files of an earlier run (``overwrite``) are replaced only here,
        once every new file is complete on disk: its ``params.json`` (the
        mark of a finished run) goes first, the new one comes last.
        """
        try:
            for writer in self._writers:
                writer.finish()
            small_files = {
                'stats': stats_csv(self.stats, self.motion_units),
                'params': json.dumps(self._params_record(session), indent=2)
                + '\n',
            }
            for key, text in small_files.items():
                _write_partial(self.paths[key], text)
            # An interrupt arriving now waits until the folder holds one
            # run's files, old or new, never a mixture.
            stale = self._stale_extra_files()
            with formats.publishing():
                _remove(self.paths['params'])
                for path in stale:
                    _remove(path)
                for writer in self._writers:
                    self._committed.append(writer.publish())
                    if writer is self._flow:
                        self._committed.append(self.paths['flow_metadata'])
                for key in small_files:
                    os.replace(_partial(self.paths[key]), self.paths[key])
                    self._committed.append(self.paths[key])
        except BaseException:
            self.abort()
            raise
        self.complete = True

    def _stale_extra_files(self):
        """Extra-channel files of the earlier run this one replaces that
        this run does not write (its ``params.json`` lists them)."""
        try:
            record = json.loads(self.paths['params'].read_text())
            names = [entry['file'] for entry in record['extra_channels']]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        ours = {path.name for path in self.paths.values()}
        return [
            self.directory / name
            for name in names
            if isinstance(name, str)
            and name not in ours
            and Path(name).name == name
            and name.startswith('registered_')
            and name.endswith('.tif')
        ]

    def abort(self):
        """Remove everything this run wrote, partial or committed.

        Does nothing once the sink is complete: finished results stay.
        Files of an earlier run stay too (until :meth:`close` replaces
        them).
        """
        if self.complete:
            return
        for writer in self._writers:
            writer.abort()
        self._writers = []
        for path in self.paths.values():
            _remove(_partial(path))
        # Files published before a failure in close() go too: a folder with
        # some final files would look like a finished run.
        for path in self._committed:
            _remove(path)
        self._committed = []

    def _params_record(self, session):
        from napari_flowscope import __version__

        record = {
            'napari_flowscope_version': __version__,
            'source': self.source,
            **session.describe(),
            'input_dtype': str(np.dtype(session.input_dtype)),
            'output_dtype': str(session.dtype),
            'frame_shape': list(session.frame_shape),
            'n_channels': session.n_channels,
            'scale': None if self.scale is None else list(self.scale),
            'units': None if self.units is None else list(self.units),
            'stats_units': {
                'displacement': self.motion_units.displacement_unit,
                'velocity': self.motion_units.velocity_unit,
            },
            'files': {key: path.name for key, path in self.paths.items()},
            'extra_channels': [
                {'name': name, 'file': path.name}
                for name, path in self.extra_files
            ],
        }
        record.update(self.extra)
        return record


class MappedDiskSink(DiskSink):
    """A :class:`DiskSink` whose arrays can be read while it writes them.

    For runs whose results do not fit in memory: the files are written as
    by :class:`DiskSink` (plain writes, ``.partial`` until complete, the
    registered frames of the session's ``extra_stacks`` too, as
    ``registered_<name>.tif``), and after :meth:`open` the sink has the
    attributes of a :class:`MemorySink` (``registered``, ``w``,
    ``reliability``, ``confidence``, ``extras``, ``stats``, ``reference``,
    ``spacing``), the arrays being read-only memory maps of the files:
    napari layers show them lazily, reading only the frames on screen.
    Frames not written yet read as zeros.  The maps stay valid after
    :meth:`close` (renamed files) and :meth:`abort` (removed files: their
    space is freed once the maps are released).
    """

    def open(self, session):
        super().open(session)
        try:
            self.registered = self._registered.mapped()
            self.w = self._flow.mapped()
            self.reliability = self._reliability.mapped()
            self.confidence = self._confidence.mapped()
            self.extras = [writer.mapped() for writer in self._extra_writers]
        except BaseException:
            self.abort()
            raise
        self.spacing = getattr(session, 'spacing', None)
        self.reference = None

    def write(self, batch):
        super().write(batch)
        self.reference = batch.reference


def stats_csv(stats, units=None):
    """``stats.csv`` text: a row per frame, the columns of
    :meth:`MotionUnits.table` (default units: px, px / frame)."""
    columns = (MotionUnits() if units is None else units).table(stats)
    lines = [','.join(columns)]
    for frame in range(len(stats)):
        values = (
            str(column[frame])
            if np.issubdtype(column.dtype, np.integer)
            else f'{column[frame]:.6g}'
            for column in columns.values()
        )
        lines.append(','.join(values))
    return '\n'.join(lines) + '\n'


def _partial(path):
    return path.with_name(path.name + '.partial')


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _write_partial(path, text):
    """Write ``<path>.partial`` (removed again if that fails)."""
    partial = _partial(path)
    try:
        partial.write_text(text)
    except OSError as error:
        _remove(partial)
        if error.errno == errno.ENOSPC:
            raise formats.NotEnoughSpaceError(
                f'the disk holding {path.parent} is full: {path.name} could '
                'not be written; nothing was saved'
            ) from error
        raise
    except BaseException:
        _remove(partial)
        raise
