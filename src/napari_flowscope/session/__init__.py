"""Streaming motion correction: references, batches, callbacks, sinks.

Imports no Qt; widgets run :meth:`MotionSession.iter_batches` in a thread
worker, scripts call :func:`compensate` or :meth:`MotionSession.run`.
"""

from .references import (
    AdaptiveReference,
    FrameReference,
    ImageReference,
    PreviousReference,
    RangeReference,
    ReferenceStrategy,
    as_reference_strategy,
    preregistered_mean,
    reference_from_string,
)
from .session import (
    FlowBatch,
    MotionSession,
    NonFiniteFrameError,
    compensate,
    output_dtype,
)
from .sinks import DiskSink, MappedDiskSink, MemorySink
from .stats import (
    FrameStats,
    MotionUnits,
    displacement_magnitude,
    normalized_cross_correlation,
    velocity_magnitude,
)

__all__ = [
    'AdaptiveReference',
    'DiskSink',
    'FlowBatch',
    'FrameReference',
    'FrameStats',
    'ImageReference',
    'MappedDiskSink',
    'MemorySink',
    'MotionSession',
    'MotionUnits',
    'NonFiniteFrameError',
    'PreviousReference',
    'RangeReference',
    'ReferenceStrategy',
    'as_reference_strategy',
    'compensate',
    'displacement_magnitude',
    'normalized_cross_correlation',
    'output_dtype',
    'preregistered_mean',
    'reference_from_string',
    'velocity_magnitude',
]
