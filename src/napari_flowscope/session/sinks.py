"""Where the batches of a session go: memory, or files streamed to disk.

A sink is opened by :meth:`MotionSession.run` with the session (shapes,
dtype, parameters), receives every :class:`FlowBatch` in order through
:meth:`write`, and is either closed (complete) or aborted (cancelled or
failed).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from napari_flowscope import formats

from .stats import FrameStats

__all__ = ['DiskSink', 'MemorySink']


class MemorySink:
    """Collect a whole run in memory.

    Attributes
    ----------
    registered : ndarray, shape (T, Y, X[, C])
        Registered frames, dtype of :attr:`MotionSession.dtype`.
    w : ndarray, shape (T, Y, X, 2), float32
    reliability : ndarray, shape (T, Y, X), float32
    stats : FrameStats
        Per-frame statistics, length T.
    reference : ndarray, shape (Y, X), float32
        The reference at the end of the run.
    complete : bool
        True once every frame has been written and the sink closed.
    """

    def __init__(self):
        self.registered = None
        self.w = None
        self.reliability = None
        self.stats = None
        self.reference = None
        self.complete = False

    def open(self, session):
        n_frames = session.n_frames
        frame_shape = session.frame_shape
        channels = () if session.n_channels is None else (session.n_channels,)
        self.registered = np.empty(
            (n_frames, *frame_shape, *channels), session.dtype
        )
        self.w = np.empty((n_frames, *frame_shape, 2), np.float32)
        self.reliability = np.empty((n_frames, *frame_shape), np.float32)
        self.stats = FrameStats.empty(n_frames)
        self.complete = False

    def views(self, start, stop):
        """Writable views of frames ``start:stop``.

        :meth:`MotionSession.run` registers into these, so that
        :meth:`write` has nothing left to copy.

        Returns
        -------
        w, reliability, registered : ndarray
        stats : FrameStats
        """
        frames = slice(start, stop)
        return (
            self.w[frames],
            self.reliability[frames],
            self.registered[frames],
            FrameStats(
                *(
                    values[frames]
                    for values in self.stats.as_columns().values()
                )
            ),
        )

    def write(self, batch):
        if not np.may_share_memory(batch.w, self.w):
            frames = slice(batch.start, batch.stop)
            self.registered[frames] = batch.registered
            self.w[frames] = batch.w
            self.reliability[frames] = batch.reliability
            for name, values in batch.stats.as_columns().items():
                getattr(self.stats, name)[frames] = values
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
    (``(T, Y, X, 2)`` float32), ``reliability.npy`` (``(T, Y, X)``
    float32), ``stats.csv`` (one row per frame) and ``params.json``.

    Every file is written as ``<name>.partial`` and renamed only when the
    whole run is complete (``params.json`` last), so a cancelled or crashed
    run leaves no file that looks finished.  Memory stays bounded by one
    batch: the large files are written through memory maps.

    Parameters
    ----------
    directory : str or Path
        Output folder (created if needed).
    scale, units : tuple, optional
        Frame interval and pixel size aligned with ``'TYX'`` (like a napari
        layer's ``scale`` / ``units``), e.g. ``(2.0, 0.3, 0.3)`` and
        ``('s', 'um', 'um')``.
    source : str, optional
        Where the input came from (recorded in ``params.json``).
    extra : dict, optional
        More JSON-serialisable entries for ``params.json``.
    overwrite : bool
        Whether the files of an earlier run in ``directory`` may be
        replaced.  They are removed when the new run starts, so a cancelled
        run never leaves older results that look like its own.

    Raises
    ------
    FileExistsError
        From :meth:`open`, when ``directory`` holds results and
        ``overwrite`` is False.

    Attributes
    ----------
    paths : dict of str to Path
        Final path of each file, by key ``'registered'``, ``'flow'``,
        ``'flow_metadata'``, ``'reliability'``, ``'stats'``, ``'params'``.
    complete : bool
        True once every file has its final name.
    """

    FILE_NAMES = {
        'registered': 'registered.tif',
        'flow': 'flow.npy',
        'flow_metadata': 'flow.json',
        'reliability': 'reliability.npy',
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
    ):
        self.directory = Path(directory)
        self.scale = None if scale is None else tuple(map(float, scale))
        self.units = None if units is None else tuple(units)
        for name, values in (('scale', self.scale), ('units', self.units)):
            if values is not None and len(values) != 3:
                raise ValueError(
                    f'{name} must have 3 entries (T, Y, X); got {values}'
                )
        self.source = None if source is None else str(source)
        self.extra = dict(extra or {})
        self.paths = {
            key: self.directory / name for key, name in self.FILE_NAMES.items()
        }
        self.overwrite = overwrite
        self.complete = False
        self._writers = []
        self._committed = []
        self._stats = None

    def open(self, session):
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = [path for path in self.paths.values() if path.exists()]
        if existing and not self.overwrite:
            raise FileExistsError(
                f'{self.directory} already holds results '
                f'({", ".join(path.name for path in existing)}); choose '
                'another folder or allow overwriting'
            )
        for path in existing:
            _remove(path)
        n_frames, frame_shape = session.n_frames, session.frame_shape
        channels = session.n_channels
        stack_axes = 'TYX' if channels is None else 'TYXC'
        extra_axis = () if channels is None else (1.0,)
        extra_unit = () if channels is None else ('pixel',)
        self.complete = False
        self._stats = FrameStats.empty(n_frames)
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
                frame_shape=frame_shape,
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
        except BaseException:
            self.abort()
            raise

    def write(self, batch):
        self._registered.write(batch.registered)
        self._flow.write(batch.w)
        self._reliability.write(batch.reliability)
        frames = slice(batch.start, batch.stop)
        for name, values in batch.stats.as_columns().items():
            getattr(self._stats, name)[frames] = values

    def close(self, session):
        """Commit every file (``params.json`` last)."""
        try:
            for writer in self._writers:
                writer.commit()
                self._committed.append(writer.path)
                if writer is self._flow:
                    self._committed.append(self.paths['flow_metadata'])
            _write_atomically(self.paths['stats'], self._stats_csv())
            self._committed.append(self.paths['stats'])
            _write_atomically(
                self.paths['params'],
                json.dumps(self._params_record(session), indent=2) + '\n',
            )
        except BaseException:
            self.abort()
            raise
        self.complete = True

    def abort(self):
        """Remove everything this run wrote, partial or committed.

        Does nothing once the sink is complete: finished results stay.
        """
        if self.complete:
            return
        for writer in self._writers:
            writer.abort()
        self._writers = []
        for path in self.paths.values():
            _remove(_partial(path))
        # Files committed before a failure in close() go too: a folder with
        # some final files would look like a finished run.
        for path in self._committed:
            _remove(path)
        self._committed = []

    def _stats_csv(self):
        columns = self._stats.as_columns()
        lines = [','.join(['frame', *columns])]
        for frame in range(len(self._stats)):
            values = (f'{column[frame]:.6g}' for column in columns.values())
            lines.append(','.join([str(frame), *values]))
        return '\n'.join(lines) + '\n'

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
            'files': {key: path.name for key, path in self.paths.items()},
        }
        record.update(self.extra)
        return record


def _partial(path):
    return path.with_name(path.name + '.partial')


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _write_atomically(path, text):
    partial = _partial(path)
    try:
        partial.write_text(text)
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise
