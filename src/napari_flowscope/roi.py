"""Motion inside regions of interest, headless.

Regions come as vertex arrays the way napari's Shapes layer stores them
(``rectangle``, ``polygon`` or ``ellipse``; only the last two columns, ``[y,
x]`` in pixels of the flow grid, are used, so a shape drawn on one time point
applies to every frame). Each region becomes a boolean mask, and the flow
``w`` (T, Y, X, 2) is averaged over it per frame.

No Qt and no napari here: the plot widget calls these functions and tests
call them with arrays.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AREA_SHAPE_TYPES = ('rectangle', 'polygon', 'ellipse')
_FRAMES_PER_STEP = 32
CSV_COLUMNS = ('roi', 'frame', 'time', 'dx', 'dy', 'displacement')


@dataclass(frozen=True)
class RoiMotion:
    """Per-frame mean motion inside each region.

    Attributes
    ----------
    dx, dy : ndarray, shape (T, R), float32
        Mean displacement along x (columns) and y (rows), in pixels, with the
        sign convention of ``w``: ``registered(x) = moving(x + w(x))``.
    displacement : ndarray, shape (T, R), float32
        Mean of the per-pixel displacement from the reference ``|w|``, in
        pixels. It is not the length of the mean displacement: opposite
        motions inside one region do not cancel.
    """

    dx: np.ndarray
    dy: np.ndarray
    displacement: np.ndarray

    @property
    def n_rois(self):
        return self.dx.shape[1]


def shape_mask(vertices, shape_type, frame_shape):
    """Rasterise one shape onto the flow grid.

    Parameters
    ----------
    vertices : array_like, shape (V, D), D >= 2
        Vertices in pixel coordinates; the last two columns are ``[y, x]``.
        A rectangle or an ellipse has the four corners of its (possibly
        rotated) bounding box, in order, as napari stores them.
    shape_type : {'rectangle', 'polygon', 'ellipse'}
    frame_shape : tuple of int
        ``(Y, X)`` of the flow grid.

    Returns
    -------
    mask : ndarray, shape (Y, X), bool
        True at pixels whose centre lies inside the shape or on its boundary.

    Raises
    ------
    ValueError
        For shapes without area (``line``, ``path``) or unknown types.
    """
    corners = np.asarray(vertices, dtype=np.float64)[:, -2:]
    if shape_type in ('rectangle', 'polygon'):
        from skimage.draw import polygon2mask

        return polygon2mask(frame_shape, corners)
    if shape_type == 'ellipse':
        return _ellipse_mask(corners, frame_shape)
    raise ValueError(
        f'a region needs an area; got shape type {shape_type!r} '
        f'(use one of {AREA_SHAPE_TYPES})'
    )


def _ellipse_mask(corners, frame_shape):
    # The ellipse is inscribed in the bounding box given by four corners;
    # two adjacent edges give its (possibly rotated) axes.
    centre = corners.mean(axis=0)
    axis_a = (corners[1] - corners[0]) / 2
    axis_b = (corners[2] - corners[1]) / 2
    half_extent = np.abs(axis_a) + np.abs(axis_b)
    low = np.maximum(np.floor(centre - half_extent), 0).astype(int)
    upper = np.ceil(centre + half_extent) + 1
    high = np.minimum(upper, frame_shape).astype(int)
    mask = np.zeros(frame_shape, dtype=bool)
    if np.any(high <= low) or not (np.any(axis_a) and np.any(axis_b)):
        return mask
    rows, cols = np.mgrid[low[0] : high[0], low[1] : high[1]]
    offset = np.stack([rows - centre[0], cols - centre[1]], axis=-1)
    along_a = offset @ axis_a / (axis_a @ axis_a)
    along_b = offset @ axis_b / (axis_b @ axis_b)
    mask[low[0] : high[0], low[1] : high[1]] = (
        along_a**2 + along_b**2 <= 1 + 1e-9
    )
    return mask


def roi_masks(shapes, shape_types, frame_shape):
    """Rasterise several shapes; see `shape_mask`.

    Returns
    -------
    masks : ndarray, shape (R, Y, X), bool
    """
    masks = np.zeros((len(shapes), *frame_shape), dtype=bool)
    for index, (vertices, shape_type) in enumerate(
        zip(shapes, shape_types, strict=True)
    ):
        masks[index] = shape_mask(vertices, shape_type, frame_shape)
    return masks


def roi_motion(w, masks):
    """Mean displacement (x, y and length) inside each region, per frame.

    Parameters
    ----------
    w : ndarray, shape (T, Y, X, 2)
        Flow, ``[x, y]`` displacement in pixels.
    masks : ndarray, shape (R, Y, X), bool
        One mask per region, e.g. from `roi_masks`.

    Returns
    -------
    RoiMotion
        ``(T, R)`` curves; NaN for a region whose mask is empty.
    """
    w = np.asarray(w)
    if w.ndim != 4 or w.shape[-1] != 2:
        raise ValueError(f'w must have shape (T, Y, X, 2), got {w.shape}')
    return roi_motion_xy(w[..., 0], w[..., 1], masks)


def roi_motion_xy(dx, dy, masks):
    """`roi_motion` for the flow given as two component stacks.

    Only the pixels inside the regions are read, so ``dx`` and ``dy`` can
    be strided views (e.g. ``w[..., 0]``) or memory maps of long runs.

    Parameters
    ----------
    dx, dy : ndarray, shape (T, Y, X)
        x (columns) and y (rows) displacement in pixels.
    masks : ndarray, shape (R, Y, X), bool

    Returns
    -------
    RoiMotion
    """
    masks = np.asarray(masks, dtype=bool)
    if dx.shape != dy.shape or dx.ndim != 3:
        raise ValueError(
            f'dx and dy must be (T, Y, X) stacks, got {dx.shape} and '
            f'{dy.shape}'
        )
    if masks.shape[1:] != dx.shape[1:]:
        raise ValueError(
            f'masks of shape {masks.shape[1:]} do not match the flow grid '
            f'{dx.shape[1:]}'
        )
    n_frames, n_rois = dx.shape[0], masks.shape[0]
    curves = {
        name: np.full((n_frames, n_rois), np.nan, dtype=np.float32)
        for name in ('dx', 'dy', 'displacement')
    }
    for index, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        # Only the region's bounding box is read, a few frames at a time
        # so the temporaries stay small for long runs.
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        inside = mask[box]
        count = np.count_nonzero(inside)
        for first in range(0, n_frames, _FRAMES_PER_STEP):
            frames = slice(first, first + _FRAMES_PER_STEP)
            box_x = dx[(frames, *box)].astype(np.float32, copy=False)
            box_y = dy[(frames, *box)].astype(np.float32, copy=False)
            for name, values in (
                ('dx', box_x),
                ('dy', box_y),
                ('displacement', np.hypot(box_x, box_y)),
            ):
                # float64 sums: float32 drifts over 1e5+ pixels.
                total = np.where(inside, values, 0).sum(
                    axis=(1, 2), dtype=np.float64
                )
                curves[name][frames, index] = total / count
    return RoiMotion(**curves)


def write_roi_csv(path, motion, *, frames=None, times=None, names=None):
    """Write per-ROI curves as a long-format CSV table.

    One row per region and frame, columns ``roi, frame, time, dx, dy,
    displacement`` (displacements in pixels). Frames whose values are NaN
    (not computed yet) are skipped.

    Parameters
    ----------
    path : str or Path
    motion : RoiMotion
    frames : array_like of int, shape (T,), optional
        Frame index of each row of ``motion``; defaults to ``0..T-1``.
    times : array_like of float, shape (T,), optional
        Time of each frame (e.g. in seconds); defaults to ``frames``.
    names : sequence of str, optional
        Region names; default ``roi_0, roi_1, ...``.

    Returns
    -------
    path : Path
    """
    path = Path(path)
    n_frames = motion.dx.shape[0]
    frames = np.arange(n_frames) if frames is None else np.asarray(frames)
    times = frames if times is None else np.asarray(times)
    if names is None:
        names = [f'roi_{index}' for index in range(motion.n_rois)]
    with path.open('w', newline='') as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for index, name in enumerate(names):
            for row in range(n_frames):
                values = (
                    motion.dx[row, index],
                    motion.dy[row, index],
                    motion.displacement[row, index],
                )
                if np.isnan(values).all():
                    continue
                writer.writerow(
                    [name, int(frames[row]), repr(float(times[row]))]
                    + [repr(float(value)) for value in values]
                )
    return path


def read_roi_csv(path):
    """Read a table written by `write_roi_csv`.

    Returns
    -------
    table : dict of str to ndarray
        One array per column; ``roi`` holds strings, ``frame`` ints and the
        rest float32.
    """
    with Path(path).open(newline='') as file:
        rows = list(csv.DictReader(file))
    table = {'roi': np.array([row['roi'] for row in rows], dtype=str)}
    table['frame'] = np.array([int(row['frame']) for row in rows], dtype=int)
    for column in CSV_COLUMNS[2:]:
        table[column] = np.array(
            [float(row[column]) for row in rows], dtype=np.float32
        )
    return table
