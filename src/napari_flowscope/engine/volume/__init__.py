"""Dense 3-D optical flow for volumes ``(Z, Y, X)``.

Flow convention: ``w`` has shape ``(Z, Y, X, 3)`` holding ``[x, y, z]``
displacement in voxels with ``registered(p) = moving(p + w(p)) ~
reference(p)``, the 2-D convention extended.
"""

from .estimator import VolumeFlowEstimator, estimate_volume_flow
from .warp import warp_volume

__all__ = ['VolumeFlowEstimator', 'estimate_volume_flow', 'warp_volume']
