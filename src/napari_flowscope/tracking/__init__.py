"""Sparse feature tracking: Shi-Tomasi corners followed by pyramidal
Lucas-Kanade, or carried through the session's dense flow.

Headless (no Qt, no napari): arrays in, napari Tracks data out. The dock
widget in :mod:`napari_flowscope._qt.tracking_widget` only drives
:func:`iter_tracks` in a worker and draws what it yields.
"""

from .advection import advect, sample_flow, to_reference
from .detection import detect_features
from .intensity import stack_intensity_range, to_uint8
from .lucas_kanade import lk_step
from .params import MODES, TrackingParams
from .tracker import iter_tracks, track_features
from .tracks import Tracks, TrackStep, TrackSummary

__all__ = [
    'MODES',
    'TrackStep',
    'TrackSummary',
    'TrackingParams',
    'Tracks',
    'advect',
    'detect_features',
    'iter_tracks',
    'lk_step',
    'sample_flow',
    'stack_intensity_range',
    'to_reference',
    'to_uint8',
    'track_features',
]
