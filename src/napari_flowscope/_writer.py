"""npe2 writers: a stack as an ImageJ TIFF, vx / vy (/ vz) layers as a flow.

Implements the ``napari.manifest`` writer contributions
(https://napari.org/stable/plugins/building_a_plugin/guides.html#writers).
Both go through :mod:`napari_flowscope.formats`, so files are written under
a ``.partial`` name and appear only when complete, and what they write opens
again through the reader bit for bit.
"""

from pathlib import Path

import numpy as np

from napari_flowscope import formats

__all__ = ['write_flow_layers', 'write_registered_stack']

# napari axis labels (case-insensitive) that name an ImageJ axis.
_AXIS_LETTERS = {
    't': 'T',
    'time': 'T',
    'frame': 'T',
    'frames': 'T',
    'z': 'Z',
    'depth': 'Z',
    'c': 'C',
    'channel': 'C',
    'y': 'Y',
    'row': 'Y',
    'x': 'X',
    'col': 'X',
    'column': 'X',
}
# Layout assumed when the labels say nothing (napari's '-3', '-2', ...).
_DEFAULT_AXES = {2: 'YX', 3: 'TYX', 4: 'TZYX', 5: 'TZCYX'}


def _unit_names(units, ndim):
    if units is None:
        return None
    return tuple(formats.normalise_unit(str(unit)) for unit in units)[-ndim:]


def _stack_axes(labels, ndim):
    """ImageJ axes letters for a layer's axis labels (T Y X by default)."""
    letters = tuple(_AXIS_LETTERS.get(str(label).lower()) for label in labels)
    if (
        len(letters) == ndim
        and None not in letters
        and len(set(letters)) == ndim
        and {'Y', 'X'} <= set(letters)
    ):
        return ''.join(letters)
    axes = _DEFAULT_AXES.get(ndim)
    if axes is None:
        raise ValueError(
            f'cannot save a {ndim}-D layer as an ImageJ TIFF without axis '
            "labels such as ('t', 'z', 'c', 'y', 'x')"
        )
    return axes


def write_registered_stack(path, data, attributes):
    """Write one image layer as an ImageJ hyperstack TIFF.

    Keeps the dtype (see :func:`napari_flowscope.formats.imagej_dtype` for
    the few types ImageJ cannot hold), the axes (from the layer's axis
    labels; ``(T, Y, X)`` when they are napari's defaults) and the scale and
    units (pixel size, z spacing, frame interval). RGB layers keep their
    samples. Lazy (dask, memory-mapped) layers are written frame by frame.

    Parameters
    ----------
    path : str
        ``*.tif`` or ``*.tiff``.
    data : array-like
        The layer data (the full-resolution level of a multiscale layer).
    attributes : dict
        The layer attributes napari passes (``scale``, ``units``,
        ``axis_labels``, ``rgb``, ...).

    Returns
    -------
    list of str
        The written file.
    """
    if attributes.get('multiscale') or isinstance(data, list):
        data = data[0]
    rgb = bool(attributes.get('rgb'))
    ndim = np.ndim(data) - rgb
    labels = tuple(attributes.get('axis_labels') or ())[-ndim:]
    axes = _stack_axes(labels, ndim)
    scale = attributes.get('scale')
    scale = None if scale is None else tuple(float(s) for s in scale)[-ndim:]
    units = _unit_names(attributes.get('units'), ndim)
    if 'T' not in axes:
        # A single image is saved as a one-frame stack.
        data = data[np.newaxis]
        axes = 'T' + axes
        scale = None if scale is None else (1.0, *scale)
        units = None if units is None else ('pixel', *units)
    if rgb:
        axes += 'S'
        scale = None if scale is None else (*scale, 1.0)
        units = None if units is None else (*units, 'pixel')
    written = formats.write_imagej_stack(
        path, data, axes=axes, scale=scale, units=units
    )
    return [str(written)]


def _flow_component(layer_data, position, names):
    """'x', 'y' (or 'z') for one of the layers napari passes."""
    _, attributes, _ = layer_data
    component = (attributes.get('metadata') or {}).get('flow_component')
    if component in names:
        return component
    name = str(attributes.get('name', '')).strip().lower()
    for component in names:
        if name.endswith((f'v{component}', f' {component}')):
            return component
    return names[position]


def write_flow_layers(path, layer_data):
    """Write ``vx`` and ``vy`` (volumes: and ``vz``) layers as one flow.

    The layers are recognised by their metadata (``flow_component``, set by
    the reader) or their names (ending in ``vx`` / ``vy`` / ``vz``);
    otherwise they are taken in x, y, z order. The result is
    ``(T, Y, X, 2)`` float32 ``[x, y]`` displacement (volumes:
    ``(T, Z, Y, X, 3)`` ``[x, y, z]``) in ``.npy`` (+ ``.json`` sidecar) or
    ``.tif``, with the x layer's scale and units.

    Parameters
    ----------
    path : str
        ``*.npy``, ``*.tif`` or ``*.tiff``.
    layer_data : list of (data, attributes, layer_type)
        Two image layers (three for volumes) of the same shape.

    Returns
    -------
    list of str
        The written file(s): the flow file, and its ``.json`` sidecar for
        ``.npy``.
    """
    if len(layer_data) not in (2, 3):
        raise ValueError(
            'a flow field needs exactly two layers (vx, vy), or three for '
            f'volumes (vx, vy, vz); got {len(layer_data)}'
        )
    names = tuple('xyz'[: len(layer_data)])
    components = [
        _flow_component(layer, position, names)
        for position, layer in enumerate(layer_data)
    ]
    if sorted(components) != sorted(names):
        components = list(names)
    by_component = dict(zip(components, layer_data, strict=True))
    arrays = [by_component[name][0] for name in names]
    x_attributes = by_component['x'][1]
    shapes = {np.shape(array) for array in arrays}
    if len(shapes) != 1:
        raise ValueError(
            f'{", ".join("v" + name for name in names)} must have the same '
            f'shape; got {", ".join(str(np.shape(a)) for a in arrays)}'
        )
    spatial = len(names)
    if np.ndim(arrays[0]) not in (spatial, spatial + 1):
        frame = '(Y, X)' if spatial == 2 else '(Z, Y, X)'
        raise ValueError(
            f'{", ".join("v" + name for name in names)} must be (T, '
            f'{frame[1:]} or {frame}; got {np.shape(arrays[0])}'
        )
    w = np.stack([np.asarray(array, np.float32) for array in arrays], axis=-1)
    ndim = w.ndim - 1
    scale = x_attributes.get('scale')
    scale = None if scale is None else tuple(float(s) for s in scale)[-ndim:]
    units = _unit_names(x_attributes.get('units'), ndim)
    written = Path(formats.write_flow(path, w, scale=scale, units=units))
    if written.suffix.lower() == '.npy':
        return [str(written), str(written.with_suffix('.json'))]
    return [str(written)]
