"""Optical-flow engine: pure numerics on arrays (numpy, scipy, OpenCV).

Flow convention: ``w`` has shape ``(H, W, 2)`` holding ``[x, y]``
displacement in pixels with ``registered(x) = moving(x + w(x)) ~
reference(x)``; volumes ``(Z, Y, X)`` extend it to ``(Z, Y, X, 3)``
holding ``[x, y, z]`` in voxels (:mod:`.volume`).  Nothing here imports
Qt or napari.
"""

from .confidence import (
    COLLAPSED_TRUSTED_FRACTION,
    CONFIDENCE_THRESHOLD,
    match_confidence,
    trusted_fraction,
)
from .estimator import FlowEstimator, FlowField, estimate_flow
from .fields import (
    VectorGrid,
    curl,
    decimate_flow,
    divergence,
    flow_to_row_col,
    speed,
)
from .methods import METHODS, LevelSolver, Method, register_method
from .params import FlowParams
from .smoothing import smooth_temporal
from .volume import VolumeFlowEstimator, estimate_volume_flow, warp_volume
from .warp import warp

__all__ = [
    'COLLAPSED_TRUSTED_FRACTION',
    'CONFIDENCE_THRESHOLD',
    'METHODS',
    'FlowEstimator',
    'FlowField',
    'FlowParams',
    'LevelSolver',
    'Method',
    'VectorGrid',
    'VolumeFlowEstimator',
    'curl',
    'decimate_flow',
    'divergence',
    'estimate_flow',
    'estimate_volume_flow',
    'flow_to_row_col',
    'match_confidence',
    'register_method',
    'smooth_temporal',
    'speed',
    'trusted_fraction',
    'warp',
    'warp_volume',
]
