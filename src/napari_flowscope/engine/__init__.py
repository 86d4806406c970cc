"""Optical-flow engine: pure numerics on arrays (numpy, scipy, OpenCV).

Flow convention: ``w`` has shape ``(H, W, 2)`` holding ``[x, y]``
displacement in pixels with ``registered(x) = moving(x + w(x)) ~
reference(x)``; volumes ``(Z, Y, X)`` extend it to ``(Z, Y, X, 3)``
holding ``[x, y, z]`` in voxels (:mod:`.volume`).  Nothing here imports
Qt or napari.
"""

from .estimator import FlowEstimator, FlowField, estimate_flow
from .fields import (
    VectorGrid,
    curl,
    decimate_flow,
    divergence,
    flow_to_row_col,
    speed,
)
from .params import FlowParams
from .smoothing import smooth_temporal
from .volume import VolumeFlowEstimator, estimate_volume_flow, warp_volume
from .warp import warp

__all__ = [
    'FlowEstimator',
    'FlowField',
    'FlowParams',
    'VectorGrid',
    'VolumeFlowEstimator',
    'curl',
    'decimate_flow',
    'divergence',
    'estimate_flow',
    'estimate_volume_flow',
    'flow_to_row_col',
    'smooth_temporal',
    'speed',
    'warp',
    'warp_volume',
]
