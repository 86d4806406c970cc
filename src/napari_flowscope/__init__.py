"""Optical-flow motion measurement and correction for microscopy time-lapses.

The headless API (no Qt needed) is re-exported here; napari widgets live in
:mod:`napari_flowscope._qt` and are reached through the plugin manifest.
"""

from importlib import import_module

try:
    from ._version import version as __version__
except ImportError:  # running from a source tree without a build
    __version__ = 'unknown'

# Attributes are imported on first use so that `import napari_flowscope`
# (which napari does when it scans the manifest) stays cheap.
_LAZY_ATTRIBUTES = {
    'FlowParams': 'napari_flowscope.engine',
    'FlowField': 'napari_flowscope.engine',
    'FlowEstimator': 'napari_flowscope.engine',
    'estimate_flow': 'napari_flowscope.engine',
    'warp': 'napari_flowscope.engine',
    'VolumeFlowEstimator': 'napari_flowscope.engine',
    'estimate_volume_flow': 'napari_flowscope.engine',
    'warp_volume': 'napari_flowscope.engine',
    'smooth_temporal': 'napari_flowscope.engine',
    'speed': 'napari_flowscope.engine',
    'divergence': 'napari_flowscope.engine',
    'curl': 'napari_flowscope.engine',
    'decimate_flow': 'napari_flowscope.engine',
    'flow_to_row_col': 'napari_flowscope.engine',
    'MotionSession': 'napari_flowscope.session',
    'FlowBatch': 'napari_flowscope.session',
    'FrameReference': 'napari_flowscope.session',
    'RangeReference': 'napari_flowscope.session',
    'ImageReference': 'napari_flowscope.session',
    'AdaptiveReference': 'napari_flowscope.session',
    'PreviousReference': 'napari_flowscope.session',
    'compensate': 'napari_flowscope.session',
    'track_features': 'napari_flowscope.tracking',
    'correct_distributed': 'napari_flowscope.distributed',
}

__all__ = ['__version__', *_LAZY_ATTRIBUTES]


def __getattr__(name):
    try:
        module_name = _LAZY_ATTRIBUTES[name]
    except KeyError:
        raise AttributeError(
            f'module {__name__!r} has no attribute {name!r}'
        ) from None
    return getattr(import_module(module_name), name)


def __dir__():
    return sorted(__all__)
