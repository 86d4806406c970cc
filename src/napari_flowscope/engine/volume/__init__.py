"""Dense 3-D optical flow for volumes ``(Z, Y, X)``.

Flow convention: ``w`` has shape ``(Z, Y, X, 3)`` holding ``[x, y, z]``
displacement in voxels with ``registered(p) = moving(p + w(p)) ~
reference(p)``, the 2-D convention extended.
"""

from .estimator import VolumeFlowEstimator, estimate_volume_flow
from .fields import decimate_volume_flow, displacement_length, vector_steps
from .planes import PlaneFlowEstimator, volume_flow_estimator
from .warp import warp_volume

__all__ = [
    'PlaneFlowEstimator',
    'VolumeFlowEstimator',
    'decimate_volume_flow',
    'displacement_length',
    'estimate_volume_flow',
    'vector_steps',
    'volume_flow_estimator',
    'warp_volume',
]
