"""Tracks as napari Tracks data, with per-point features and CSV files."""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_COLUMNS = ('track_id', 't', 'y', 'x')


@dataclass(frozen=True)
class TrackStep:
    """The points alive in one frame, as streamed while tracking.

    Attributes
    ----------
    t : int
        Frame index.
    track_ids : ndarray, shape (n,), int64
    positions : ndarray, shape (n, 2), float32
        ``[y, x]`` in pixels.
    speed : ndarray, shape (n,), float32
        Distance (px) from the same track's point in frame ``t - 1``
        (px/frame); 0 where a track starts.
    fb_error : ndarray, shape (n,), float32
        Forward-backward error (px) of the step that reached this point; NaN
        where not measured (a track's first point, the dense-flow mode, or
        the check switched off).
    match : ndarray, shape (n,), float32
        Drift correction's template match score of this point (weighted
        zero-mean normalised cross-correlation, 1 = identical up to
        brightness and contrast); NaN where not measured (a track's first
        point, drift correction off or not applicable).
    """

    t: int
    track_ids: np.ndarray
    positions: np.ndarray
    speed: np.ndarray
    fb_error: np.ndarray
    match: np.ndarray

    @property
    def data(self):
        """Rows ``[track_id, t, y, x]``, shape (n, 4), float32."""
        return _rows(
            self.track_ids,
            np.full(len(self.track_ids), self.t),
            self.positions,
        )

    @property
    def features(self):
        return {
            'speed': self.speed,
            'fb_error': self.fb_error,
            'match': self.match,
        }


@dataclass(frozen=True)
class TrackSummary:
    """One value per track, in ascending ``track_id`` order.

    Attributes
    ----------
    track_id : ndarray, shape (K,), int64
    length : ndarray, shape (K,), int64
        Number of points (frames) in the track.
    mean_speed : ndarray, shape (K,), float32
        Path length divided by the number of steps (px/frame); 0 for
        single-point tracks.
    net_displacement : ndarray, shape (K,), float32
        Straight-line distance (px) from the first to the last point.
    """

    track_id: np.ndarray
    length: np.ndarray
    mean_speed: np.ndarray
    net_displacement: np.ndarray


@dataclass(frozen=True)
class Tracks:
    """Tracked points, ready for ``viewer.add_tracks(data, features=...)``.

    Attributes
    ----------
    data : ndarray, shape (N, 4), float32
        ``[track_id, t, y, x]`` rows sorted by track id, then time.
    features : dict of str to ndarray, shape (N,) each
        Per-point values aligned with ``data``: at least ``speed``,
        ``fb_error`` and ``match`` (see :class:`TrackStep`).
    """

    data: np.ndarray
    features: dict

    @classmethod
    def from_steps(cls, steps):
        """Assemble the per-frame output of :func:`iter_tracks`."""
        steps = list(steps)
        if not steps:
            return cls(
                np.empty((0, 4), np.float32),
                {
                    name: np.empty(0, np.float32)
                    for name in ('speed', 'fb_error', 'match')
                },
            )
        data = np.concatenate([step.data for step in steps])
        features = {
            name: np.concatenate([step.features[name] for step in steps])
            for name in steps[0].features
        }
        return cls._sorted(data, features)

    @classmethod
    def _sorted(cls, data, features):
        order = np.lexsort((data[:, 1], data[:, 0]))
        return cls(
            data[order],
            {name: values[order] for name, values in features.items()},
        )

    def __len__(self):
        return len(self.data)

    @property
    def track_ids(self):
        """Distinct track ids, ascending, (K,) int64."""
        return np.unique(self.data[:, 0]).astype(np.int64)

    def summary(self):
        """Per-track length, mean speed and net displacement."""
        ids, starts, lengths = np.unique(
            self.data[:, 0], return_index=True, return_counts=True
        )
        ends = starts + lengths - 1
        positions = self.data[:, 2:].astype(np.float64)
        steps = np.zeros(len(positions))
        steps[:-1] = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        # The step after a track's last point leads into the next track.
        steps[ends] = 0
        path = np.add.reduceat(steps, starts) if len(ids) else np.empty(0)
        net = np.linalg.norm(positions[ends] - positions[starts], axis=1)
        mean_speed = np.divide(
            path, lengths - 1, out=np.zeros(len(ids)), where=lengths > 1
        )
        return TrackSummary(
            track_id=ids.astype(np.int64),
            length=lengths.astype(np.int64),
            mean_speed=mean_speed.astype(np.float32),
            net_displacement=net.astype(np.float32),
        )

    def to_csv(self, path):
        """Write one row per point: ``track_id, t, y, x`` then the features.

        Floats are written with 9 significant digits, which round-trips
        float32 exactly; NaN is written as ``nan``.
        """
        names = list(self.features)
        with Path(path).open('w', newline='') as file:
            writer = csv.writer(file)
            writer.writerow([*DATA_COLUMNS, *names])
            columns = [self.data[:, i] for i in range(4)]
            columns += [self.features[name] for name in names]
            for track_id, t, *values in zip(*columns, strict=True):
                writer.writerow(
                    [int(track_id), int(t), *(f'{v:.9g}' for v in values)]
                )
        return Path(path)

    @classmethod
    def from_csv(cls, path):
        """Read a file written by :meth:`to_csv`.

        The first four columns must be ``track_id, t, y, x``; every further
        column becomes a float32 feature.
        """
        with Path(path).open(newline='') as file:
            reader = csv.reader(file)
            header = next(reader)
            rows = [row for row in reader if row]
        if tuple(header[:4]) != DATA_COLUMNS:
            raise ValueError(
                f'{path}: expected columns {", ".join(DATA_COLUMNS)} first; '
                f'got {", ".join(header[:4])}'
            )
        table = np.array(rows, dtype=np.float64).reshape(-1, len(header))
        features = {
            name: table[:, 4 + i].astype(np.float32)
            for i, name in enumerate(header[4:])
        }
        return cls._sorted(table[:, :4].astype(np.float32), features)


def _rows(track_ids, times, positions):
    return np.column_stack([track_ids, times, positions]).astype(np.float32)
