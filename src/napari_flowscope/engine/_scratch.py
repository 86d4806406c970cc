"""Per-thread scratch arrays for solvers that one estimator shares between
threads (2-D and volume Lucas-Kanade)."""

from __future__ import annotations

import threading
import types

import numpy as np

__all__ = ['ThreadScratch']


class ThreadScratch:
    """Named ``np.empty`` arrays, allocated once per thread.

    Allocating megabyte temporaries for every operation costs page faults,
    and one estimator serves several threads at once, so each thread gets
    its own set on first use.

    Parameters
    ----------
    **arrays : tuple
        ``name=(shape, dtype)`` of each array.
    """

    def __init__(self, **arrays):
        self._arrays = arrays
        self._local = threading.local()

    def get(self):
        """This thread's arrays, as attributes of a namespace."""
        work = getattr(self._local, 'work', None)
        if work is None:
            work = types.SimpleNamespace(
                **{
                    name: np.empty(shape, dtype)
                    for name, (shape, dtype) in self._arrays.items()
                }
            )
            self._local.work = work
        return work
