"""Volumes whose planes are not a true volume: 2-D flow plane by plane."""

from __future__ import annotations

import numpy as np

from napari_flowscope.engine.estimator import FlowEstimator, FlowField

from .estimator import VolumeFlowEstimator, check_volume

__all__ = ['PlaneFlowEstimator', 'volume_flow_estimator']


class PlaneFlowEstimator:
    """Flow of each Z plane against the same plane of the reference.

    For stacks whose planes are not samples of one volume: planes far
    apart (no overlap in depth), acquired at different times (a resonant
    or multi-plane 2-photon recording), or cut from different specimens.
    Each plane is registered on its own with the 2-D engine; the flow has
    the volume layout with a zero z component.

    Parameters
    ----------
    reference : array_like, shape (Z, Y, X)
    params : FlowParams, optional
    """

    def __init__(self, reference, params=None):
        reference = check_volume(reference, 'reference')
        self.shape = reference.shape
        self.params = params
        self._planes = [FlowEstimator(plane, params) for plane in reference]

    def estimate(self, moving, *, init=None):
        """Flow from each reference plane to the same plane of ``moving``.

        Parameters
        ----------
        moving : array_like, shape (Z, Y, X)
        init : array_like, shape (Z, Y, X, 3), optional
            Warm start (its z component is ignored).

        Returns
        -------
        FlowField
            ``w`` float32 (Z, Y, X, 3) with ``w[..., 2] == 0``,
            ``reliability`` and ``confidence`` float32 (Z, Y, X) of each
            plane.
        """
        moving = check_volume(moving, 'moving')
        if moving.shape != self.shape:
            raise ValueError(
                f'moving has shape {moving.shape} but the reference has '
                f'shape {self.shape}'
            )
        w = np.zeros((*self.shape, 3), np.float32)
        reliability = np.empty(self.shape, np.float32)
        confidence = np.empty(self.shape, np.float32)
        for z, estimator in enumerate(self._planes):
            field = estimator.estimate(
                moving[z], init=None if init is None else init[z, ..., :2]
            )
            w[z, ..., :2] = field.w
            reliability[z] = field.reliability
            confidence[z] = field.confidence
        return FlowField(w=w, reliability=reliability, confidence=confidence)


def volume_flow_estimator(
    reference, params=None, *, spacing=None, per_plane=False
):
    """The estimator of a volume time-lapse's flow.

    Parameters
    ----------
    reference : array_like, shape (Z, Y, X)
    params : FlowParams, optional
    spacing : tuple of float, optional
        ``(z, y, x)`` voxel size (3-D flow only).
    per_plane : bool
        Register each plane on its own with the 2-D engine
        (:class:`PlaneFlowEstimator`) instead of estimating 3-D flow.

    Returns
    -------
    VolumeFlowEstimator or PlaneFlowEstimator
    """
    if per_plane:
        return PlaneFlowEstimator(reference, params)
    return VolumeFlowEstimator(reference, params, spacing=spacing)
