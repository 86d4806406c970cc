"""Run events shared by the docks of one viewer.

The "Motion correction" dock drives a run; other docks (the "Motion over
time" plots) only listen.  They meet through one :class:`RunEvents` per
viewer, found with :func:`run_events`, so neither dock needs a reference
to the other.  All signals are emitted on the main thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from psygnal import Signal, SignalGroup

if TYPE_CHECKING:
    import numpy as np

    from napari_flowscope.engine import FlowParams

__all__ = ['RunEvents', 'RunInfo', 'run_events']


@dataclass(frozen=True)
class RunInfo:
    """What a listener needs to know when a run starts.

    Attributes
    ----------
    n_frames : int
        Frames in the run (``T``).
    frame_shape : tuple of int
        ``(Y, X)``, or ``(Z, Y, X)`` for volumes.
    scale : tuple of float
        ``(t, y, x)`` scale of the source layer (frame interval, pixel
        size), so plots can label axes in physical units.
    units : tuple of str
        ``(t, y, x)`` units of the source layer, e.g. ``('s', 'um', 'um')``
        (``'pixel'`` when the layer has none).
    axis_labels : tuple of str
        ``(t, y, x)`` axis labels of the source layer.
    source_name : str
        Name of the layer the flow is estimated on.
    params : FlowParams
        Parameters the run starts with.
    batch_size : int
        Frames per :class:`~napari_flowscope.session.FlowBatch`.
    flow : ndarray, shape (T, Y, X, 2), float32, or None
        The array the run writes each batch's flow into before ``batch``
        is emitted (frames not done yet hold zeros), so listeners can
        read past frames without keeping a copy; None when the run keeps
        no flow in memory.
    """

    n_frames: int
    frame_shape: tuple[int, int]
    scale: tuple[float, float, float]
    units: tuple[str, str, str]
    axis_labels: tuple[str, str, str]
    source_name: str
    params: FlowParams
    batch_size: int
    flow: np.ndarray | None = field(default=None, compare=False, repr=False)


class RunEvents(SignalGroup):
    """Signals of the run going on in one viewer.

    Signals
    -------
    started(RunInfo)
        A run was started.
    batch(FlowBatch)
        A batch arrived; its layers are already updated.
    finished()
        The run ended: completed, cancelled or failed.
    """

    started = Signal(object)
    batch = Signal(object)
    finished = Signal()


_EVENTS: WeakKeyDictionary = WeakKeyDictionary()


def run_events(viewer) -> RunEvents:
    """The run events of ``viewer``, created on first use.

    Parameters
    ----------
    viewer : napari.Viewer or napari.components.ViewerModel
        The viewer, or the ``PublicOnlyProxy`` napari hands to plugin
        widgets: both give the same :class:`RunEvents`.

    Returns
    -------
    RunEvents
        Lives as long as the viewer does.
    """
    # napari hands each plugin widget its own proxy object, so the proxy
    # cannot be the key.  ``__wrapped__`` is the wrapt proxy protocol
    # (public, like ``functools.wraps``), not a private napari attribute.
    key = getattr(viewer, '__wrapped__', viewer)
    events = _EVENTS.get(key)
    if events is None:
        events = _EVENTS[key] = RunEvents()
    return events
