"""npe2 sample data: generated time-lapses with known motion (no downloads).

Implements the ``napari.manifest`` sample-data contribution
(https://napari.org/stable/plugins/building_a_plugin/guides.html#sample-data).
Every sample is deterministic and comes from :mod:`napari_flowscope.synthetic`,
where the exact ground-truth flow of each one is available for tests and
benchmarks.
"""

from functools import cache

import numpy as np

from napari_flowscope import synthetic

__all__ = [
    'bleaching_tissue',
    'drifting_tissue',
    'drifting_volume',
    'moving_disk',
    'rotating_particles',
]

_AXIS_LABELS = ('t', 'y', 'x')
# The tissue samples pretend to be a 10x widefield recording: 0.65 um pixels
# and one frame every 2 s, so the physical axes show in the viewer.
_TISSUE_SCALE = (2.0, 0.65, 0.65)
_TISSUE_UNITS = ('s', 'um', 'um')
_PIXEL_SCALE = (1.0, 1.0, 1.0)
_PIXEL_UNITS = ('s', 'pixel', 'pixel')


# The volume sample: a light-sheet-like stack, z planes twice as deep as
# the 0.65 um pixels, a volume every 5 s.
_VOLUME_SHAPE = (24, 96, 96)
_VOLUME_SPACING = (2.0, 1.0, 1.0)
_VOLUME_SCALE = (5.0, 1.3, 0.65, 0.65)
_VOLUME_UNITS = ('s', 'um', 'um', 'um')
_VOLUME_AXIS_LABELS = ('t', 'z', 'y', 'x')


@cache
def _sequence(name):
    # The tissue samples take seconds to render; opening one again is free.
    return getattr(synthetic, name)()


@cache
def _volume_sequence():
    return synthetic.drifting_volume(
        n_frames=10,
        shape=_VOLUME_SHAPE,
        spacing=_VOLUME_SPACING,
        shift=(4.0, -3.0, 2.0),
        deformation=1.5,
        noise=0.01,
    )


def _stack_layer(stack, name, scale, units, axis_labels=_AXIS_LABELS):
    return (
        stack.copy(),
        {
            'name': name,
            'scale': scale,
            'units': units,
            'axis_labels': axis_labels,
            'colormap': 'gray',
            'contrast_limits': (float(stack.min()), float(stack.max())),
        },
        'image',
    )


def _flow_layers(w, name, scale, units, axis_labels=_AXIS_LABELS):
    """Ground-truth vx, vy (vz) heatmaps (diverging, symmetric limits)."""
    limit = float(np.abs(w).max()) or 1.0
    return [
        (
            np.ascontiguousarray(w[..., index]),
            {
                'name': f'{name} v{component}',
                'scale': scale,
                'units': units,
                'axis_labels': axis_labels,
                'colormap': 'RdBu_r',
                'contrast_limits': (-limit, limit),
                'opacity': 0.6,
                'visible': False,
                'metadata': {
                    'flow_component': component,
                    'flow_convention': 'registered(x) = moving(x + w(x))',
                },
            },
            'image',
        )
        for index, component in enumerate('xyz'[: w.shape[-1]])
    ]


def moving_disk():
    """The teaching notebook's disk: 60x60, 1 px per frame diagonally."""
    sequence = _sequence('moving_disk')
    return [
        _stack_layer(sequence.stack, 'moving disk', _PIXEL_SCALE, _PIXEL_UNITS)
    ]


def rotating_particles():
    """Three Gaussian particles rotating on a circle."""
    sequence = _sequence('rotating_particles')
    return [
        _stack_layer(
            sequence.stack, 'rotating particles', _PIXEL_SCALE, _PIXEL_UNITS
        )
    ]


def drifting_tissue():
    """Textured tissue with drift and smooth non-rigid motion.

    Returns its ground-truth flow as two hidden layers ``ground truth
    vx`` / ``ground truth vy`` (pixels; the full field is
    ``napari_flowscope.synthetic.drifting_tissue().flow``), then the
    stack: napari selects the layer added last, which should be the data.
    """
    sequence = _sequence('drifting_tissue')
    return [
        *_flow_layers(
            sequence.flow, 'ground truth', _TISSUE_SCALE, _TISSUE_UNITS
        ),
        _stack_layer(
            sequence.stack, 'drifting tissue', _TISSUE_SCALE, _TISSUE_UNITS
        ),
    ]


def bleaching_tissue():
    """Drifting tissue under bleaching and a sweeping illumination gradient."""
    sequence = _sequence('bleaching_tissue')
    return [
        _stack_layer(
            sequence.stack, 'bleaching tissue', _TISSUE_SCALE, _TISSUE_UNITS
        )
    ]


def drifting_volume():
    """A volumetric time-lapse (T, Z, Y, X) drifting and deforming in 3-D.

    Returns the volumes and their ground-truth flow as three hidden layers
    ``ground truth vx`` / ``vy`` / ``vz`` (voxels; the full field is
    ``napari_flowscope._sample_data._volume_sequence().flow``).
    """
    sequence = _volume_sequence()
    geometry = (_VOLUME_SCALE, _VOLUME_UNITS, _VOLUME_AXIS_LABELS)
    return [
        _stack_layer(sequence.stack, 'drifting volume', *geometry),
        *_flow_layers(sequence.flow, 'ground truth', *geometry),
    ]
