"""Where the batches of a session go: memory, or files streamed to disk.

A sink is opened by :meth:`MotionSession.run` with the session (shapes,
dtype, parameters), receives every :class:`FlowBatch` in order through
:meth:`write`, and is either closed (complete) or aborted (cancelled or
failed).
"""

from __future__ import annotations

import numpy as np

from .stats import FrameStats

__all__ = ['MemorySink']


class MemorySink:
    """Collect a whole run in memory.

    Attributes
    ----------
    registered : ndarray, shape (T, Y, X[, C])
        Registered frames, dtype of :attr:`MotionSession.dtype`.
    w : ndarray, shape (T, Y, X, 2), float32
    reliability : ndarray, shape (T, Y, X), float32
    stats : FrameStats
        Per-frame statistics, length T.
    reference : ndarray, shape (Y, X), float32
        The reference at the end of the run.
    complete : bool
        True once every frame has been written and the sink closed.
    """

    def __init__(self):
        self.registered = None
        self.w = None
        self.reliability = None
        self.stats = None
        self.reference = None
        self.complete = False

    def open(self, session):
        n_frames = session.n_frames
        frame_shape = session.frame_shape
        channels = () if session.n_channels is None else (session.n_channels,)
        self.registered = np.empty(
            (n_frames, *frame_shape, *channels), session.dtype
        )
        self.w = np.empty((n_frames, *frame_shape, 2), np.float32)
        self.reliability = np.empty((n_frames, *frame_shape), np.float32)
        self.stats = FrameStats.empty(n_frames)
        self.complete = False

    def write(self, batch):
        frames = slice(batch.start, batch.stop)
        self.registered[frames] = batch.registered
        self.w[frames] = batch.w
        self.reliability[frames] = batch.reliability
        for name, values in batch.stats.as_columns().items():
            getattr(self.stats, name)[frames] = values
        self.reference = batch.reference

    def close(self, session):
        self.complete = True

    def abort(self):
        self.complete = False
