"""npe2 reader: microscopy time-lapses and flow fields as napari layers.

Implements the ``napari.manifest`` reader contribution
(https://napari.org/stable/plugins/building_a_plugin/guides.html#readers).

What opens, and how:

* ImageJ hyperstacks and OME-TIFF: time first (ImageJ *frames*, OME ``T``),
  one layer per channel (``channel_axis``, named after the OME channel names
  when present), ``scale`` / ``units`` / ``axis_labels`` from the pixel size
  (resolution tags or OME ``PhysicalSizeX/Y``), z spacing and frame interval
  (ImageJ ``finterval`` or OME ``TimeIncrement``).
* The page axis of a plain multipage TIFF becomes T, and so do the slices
  of a plain ImageJ stack (ImageJ calls every image of a stack saved without
  dimensions a slice). A Z-stack without time (OME Z; the slices of an
  ImageJ hyperstack or of a stack with a z spacing) opens with its Z axis
  labelled ``z`` and its z spacing: depth is not taken for time (the
  correction refuses it).
* Stacks larger than :func:`napari_flowscope.formats.lazy_threshold_bytes`
  open lazily (a memory-map, or dask over tifffile's zarr store).
* A folder, or a list, of numbered single-frame TIFF/PNG/JPEG files opens as
  one time-lapse in natural order (``frame2`` before ``frame10``).
* Flow files written by :mod:`napari_flowscope.formats` (``.npy`` with its
  ``.json`` sidecar, or a flowscope ``.tif``) open as two layers ``vx`` and
  ``vy`` (volumes: ``vx``, ``vy``, ``vz``) with a diverging colormap and
  symmetric contrast limits.
* Any other ``.npy`` of 3 or 4 dimensions opens as a ``(T, Y, X[, C])``
  stack.
* The output folder of a finished run (``registered.tif``, ``flow.npy`` +
  ``flow.json``, ``reliability.npy``, ``confidence.npy``, ``params.json``)
  opens as the registered stack, the registered extra channels
  (``registered_<name>.tif``, listed in ``params.json``) plus hidden
  ``vx``, ``vy``, reliability and confidence layers.

A single 2-D image is not a time-lapse: the reader function raises a
``ValueError`` that says so, as it does for corrupt or truncated files.
"""

import json
import os
from pathlib import Path

import numpy as np

from napari_flowscope import formats

__all__ = ['get_reader']

_TIFF_SUFFIXES = ('.tif', '.tiff')
_FRAME_SUFFIXES = ('.png', '.jpg', '.jpeg')
_FLOW_COLORMAP = 'RdBu_r'
# The files of a run's output folder (docs/architecture.md).
_RESULT_FILES = {
    'registered': 'registered.tif',
    'flow': 'flow.npy',
    'reliability': 'reliability.npy',
    'confidence': 'confidence.npy',
    'params': 'params.json',
}


def get_reader(path):
    """Return a reader function for `path`, or None if it is not ours.

    Parameters
    ----------
    path : str or list of str
        A file, a folder of numbered images, or a list of image files.

    Returns
    -------
    callable or None
        Never raises: anything unexpected means "not for this reader".
    """
    try:
        return _choose_reader(path)
    except (OSError, ValueError, TypeError):
        return None


def _choose_reader(path):
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            return _choose_reader(path[0])
        suffixes = {Path(p).suffix.lower() for p in path}
        if suffixes <= set(_TIFF_SUFFIXES + _FRAME_SUFFIXES):
            return read_image_sequence
        return None
    path = Path(path)
    if path.is_dir():
        if _is_results_folder(path):
            return read_results_folder
        if len(formats.image_sequence_files(path)) >= 2:
            return read_image_sequence
        return None
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix == '.npy':
        if formats.read_flow_metadata(path) is not None:
            return read_flow_layers
        array = np.load(path, mmap_mode='r')
        if array.ndim in (3, 4) and array.dtype.kind in 'uif':
            return read_npy_stack
        return None
    if suffix in _TIFF_SUFFIXES:
        if formats.read_flow_metadata(path) is not None:
            return read_flow_layers
        # Even a broken TIFF is ours: its reader explains what is wrong.
        return read_tiff_stack
    if suffix in _FRAME_SUFFIXES:
        return read_single_image
    return None


def _single_path(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            raise ValueError(f'expected one file, got {len(path)}')
        path = path[0]
    return Path(path)


def _source_metadata(path, metadata):
    return {
        'source_path': os.fspath(path),
        'axes': metadata.axes,
        'time_source': metadata.time_source,
    }


def stack_layer_data(data, metadata, *, name, path=None):
    """LayerData for a stack described by a :class:`StackMetadata`.

    Channels are split with ``channel_axis`` (one layer each), RGB(A)
    samples make an ``rgb`` layer; scale, units and axis labels follow the
    metadata with the channel axis left out.
    """
    axes = metadata.axes
    keep = [i for i, axis in enumerate(axes) if axis not in 'CS']
    geometry = {
        'scale': tuple(metadata.scale[i] for i in keep),
        'units': tuple(metadata.units[i] for i in keep),
        'axis_labels': tuple(metadata.axis_labels[i] for i in keep),
    }
    kwargs = {
        'name': name,
        'metadata': _source_metadata(path or name, metadata),
        'multiscale': False,
    }
    channel_axis = metadata.channel_axis
    if metadata.rgb:
        kwargs['rgb'] = True
    if channel_axis is None:
        return [(data, {**kwargs, **geometry}, 'image')]
    n_channels = metadata.shape[channel_axis]
    names = metadata.channel_names or tuple(
        f'ch{c}' for c in range(n_channels)
    )
    # Per-channel lists: napari would split a tuple of n_channels strings
    # (units, labels) across channels instead of repeating it.
    kwargs.update(
        {key: [value] * n_channels for key, value in geometry.items()}
    )
    kwargs['name'] = [f'{name} {channel}' for channel in names]
    kwargs['metadata'] = [
        {**kwargs['metadata'], 'channel': channel} for channel in names
    ]
    kwargs['channel_axis'] = channel_axis
    return [(data, kwargs, 'image')]


def read_tiff_stack(path):
    """Read an ImageJ / OME / plain multipage TIFF time-lapse.

    Returns
    -------
    list of LayerData

    Raises
    ------
    ValueError
        Not a TIFF, corrupt or truncated, or a single 2-D image.
    """
    path = _single_path(path)
    data, metadata = formats.open_stack(path)
    return stack_layer_data(
        data, metadata, name=_stem(path), path=os.fspath(path)
    )


def read_image_sequence(path):
    """Read a folder or list of numbered single-frame images as (T, Y, X).

    Returns
    -------
    list of LayerData
    """
    if isinstance(path, (list, tuple)) and len(path) == 1:
        path = path[0]  # a folder handed over in a list
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        source = files[0].parent
    else:
        files = source = Path(path)
    data, metadata = formats.open_image_sequence(files)
    return stack_layer_data(
        data, metadata, name=source.name or 'sequence', path=source
    )


def read_npy_stack(path):
    """Read a ``(T, Y, X)`` or ``(T, Y, X, C)`` ``.npy`` array.

    Memory-mapped when larger than the lazy-loading threshold.
    """
    path = _single_path(path)
    array = np.load(path, mmap_mode='r')
    if array.nbytes <= formats.lazy_threshold_bytes():
        array = np.array(array)
    axes = 'TYX' if array.ndim == 3 else 'TYXC'
    metadata = formats.StackMetadata(
        shape=array.shape,
        dtype=array.dtype,
        axes=axes,
        scale=(1.0,) * array.ndim,
        units=('pixel',) * array.ndim,
        time_source='T',
        source_axes=axes,
    )
    return stack_layer_data(
        array, metadata, name=_stem(path), path=os.fspath(path)
    )


def read_flow_layers(path):
    """Read a flowscope flow file as layers ``<name> vx``, ``<name> vy``.

    Returns
    -------
    list of LayerData
        One float32 image layer per component (``vz`` too for volumes)
        with a diverging colormap and contrast limits symmetric about
        zero, on the recorded scale.
    """
    path = _single_path(path)
    w, metadata = formats.read_flow(path, mmap_mode='r')
    if w.nbytes <= formats.lazy_threshold_bytes():
        w = np.array(w)
    limit = _symmetric_limit(w)
    field_axes = metadata['axes'][:-1]
    layers = []
    for index, component in enumerate(metadata.get('components', 'xy')):
        kwargs = {
            'name': f'{_stem(path)} v{component}',
            'scale': tuple(metadata['scale']),
            'units': tuple(metadata['units']),
            'axis_labels': tuple(field_axes.lower()),
            'colormap': _FLOW_COLORMAP,
            'contrast_limits': (-limit, limit),
            'metadata': {
                'source_path': os.fspath(path),
                'flow_component': component,
                'flow_convention': metadata['convention'],
            },
        }
        layers.append((w[..., index], kwargs, 'image'))
    return layers


def _is_results_folder(path):
    # params.json is written last: its presence marks a finished run.
    return (path / _RESULT_FILES['params']).is_file() and any(
        (path / _RESULT_FILES[key]).is_file() for key in ('registered', 'flow')
    )


def read_results_folder(path):
    """Read the output folder of a motion-correction run.

    The registered stack, each registered extra channel (``<folder>
    <channel> registered``), the flow as ``vx`` / ``vy``, the reliability
    and the confidence (contrast limits 0-1), each on the recorded scale,
    named after the folder.  Folders of older runs without
    ``confidence.npy`` open without it.

    Returns
    -------
    list of LayerData
    """
    folder = _single_path(path)
    layers = []
    registered = folder / _RESULT_FILES['registered']
    stacks = [(folder.name, registered)] if registered.is_file() else []
    stacks += [
        (f'{folder.name} {channel}', path)
        for channel, path in _extra_channel_files(folder)
    ]
    for name, stack_path in stacks:
        data, metadata = formats.open_stack(stack_path)
        layers += stack_layer_data(
            data,
            metadata,
            name=f'{name} registered',
            path=os.fspath(stack_path),
        )
    flow = folder / _RESULT_FILES['flow']
    geometry = {}
    if flow.is_file():
        for data, kwargs, layer_type in read_flow_layers(flow):
            component = kwargs['metadata']['flow_component']
            kwargs['name'] = f'{folder.name} v{component}'
            kwargs['visible'] = False
            layers.append((data, kwargs, layer_type))
        geometry = {
            key: kwargs[key] for key in ('scale', 'units', 'axis_labels')
        }
    maps = {
        'reliability': {'colormap': 'viridis'},
        'confidence': {'colormap': 'magma', 'contrast_limits': (0.0, 1.0)},
    }
    for key, style in maps.items():
        path = folder / _RESULT_FILES[key]
        if not path.is_file():
            continue
        if len(geometry.get('scale', ())) == 4:
            # (T, Z, Y, X): not a stack with channels
            data = np.load(path, mmap_mode='r')
            if data.nbytes <= formats.lazy_threshold_bytes():
                data = np.array(data)
            kwargs, layer_type = {}, 'image'
        else:
            [(data, kwargs, layer_type)] = read_npy_stack(path)
        kwargs.update(geometry)
        kwargs.update(style, name=f'{folder.name} {key}', visible=False)
        layers.append((data, kwargs, layer_type))
    return layers


def _extra_channel_files(folder):
    """``(name, path)`` of each extra channel ``params.json`` lists."""
    try:
        record = json.loads((folder / _RESULT_FILES['params']).read_text())
        entries = [
            (str(entry['name']), str(entry['file']))
            for entry in record.get('extra_channels', ())
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [
        (name, folder / file)
        for name, file in entries
        if Path(file).name == file and (folder / file).is_file()
    ]


def read_single_image(path):
    """Refuse a single PNG/JPEG frame with an explanation."""
    path = _single_path(path)
    raise ValueError(
        f'{path.name} is a single 2-D image, not a time-lapse; open the '
        'folder of numbered frames (or select several files) instead'
    )


def _symmetric_limit(w, *, max_frames=3):
    """Largest |component| in a few frames (all of a small field), >0."""
    if w.ndim == 4 and len(w) > max_frames:
        frames = np.linspace(0, len(w) - 1, max_frames).round().astype(int)
        sample = np.asarray(w[frames])
    else:
        sample = np.asarray(w)
    finite = np.abs(sample[np.isfinite(sample)])
    limit = float(finite.max()) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def _stem(path):
    name = Path(path).name
    for suffix in ('.ome.tiff', '.ome.tif'):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
