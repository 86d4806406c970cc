"""Live preview: the flow of the frame under the time slider.

Requests are debounced (a slider drag gives one computation, not dozens)
and numbered: one worker runs at a time, a request made while it runs is
computed next, and a result that is no longer the latest request is
dropped.  The session computes the flow (``MotionSession.estimate_frame``);
the result is shown in the dock's output layers, on the previewed frame
only: after a run, in the run's own layers (no second heatmap or vector
layer), which show the run again when the preview ends.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from napari.utils.notifications import show_error
from superqt.utils import qdebounced

from napari_flowscope.session import ImageReference, MotionSession

from .layers import (
    PREVIEW_ROLES,
    FrameFields,
    OutputLayers,
    displacement_scale,
    frame_vectors,
    output_limits,
)
from .workers import start_job

__all__ = ['PreviewController', 'PreviewRequest', 'compute_preview']

DEBOUNCE_MS = 50


@dataclass(frozen=True)
class PreviewRequest:
    """Everything a preview computation needs (no layers)."""

    number: int
    frame: int
    params: object
    style: object


@dataclass(frozen=True)
class PreviewResult:
    """The flow of one frame and what the preview layers show of it.

    Attributes
    ----------
    request : PreviewRequest
    reference : ndarray, shape (Y, X), float32
        The reference the frame was registered to.
    flow : FlowField
        The frame's flow, as a run computes it.
    fields : FrameFields
        ``flow`` with a leading frame axis, for the heatmaps.
    limits : dict
        Contrast limits of the preview roles (``output_limits``).
    vectors : (ndarray, ndarray)
        ``frame_vectors`` of the frame.
    scale : float
        ``displacement_scale`` of the frame (automatic arrow length).
    """

    request: PreviewRequest
    reference: np.ndarray
    flow: object
    fields: FrameFields
    limits: dict
    vectors: tuple
    scale: float


def compute_preview(session, request: PreviewRequest) -> PreviewResult:
    """Worker body: the flow of one frame against the run's reference.

    The session computes the flow (reading only the frames it needs); the
    colour limits and the vector grid are computed here too, so the main
    thread only assigns layer data.
    """
    flow = session.estimate_frame(request.frame, params=request.params)
    reference = session.reference_image
    fields = FrameFields.of(flow, reference, session.spacing)
    return PreviewResult(
        request,
        reference,
        flow,
        fields,
        output_limits(fields, PREVIEW_ROLES),
        _vectors(
            flow, request.frame, request.style, reference, session.spacing
        ),
        displacement_scale(fields),
    )


def _vectors(flow, frame, style, reference, spacing=None):
    return frame_vectors(
        flow.w,
        frame,
        style=style,
        reliability=flow.reliability,
        image=reference,
        spacing=spacing,
        confidence=flow.confidence,
    )


def _session_key(stack, strategy, params, session_kwargs):
    """What a preview session's reference depends on (None: do not
    keep the session)."""
    if isinstance(strategy, ImageReference):
        return None
    uses_params = strategy.adaptive or getattr(strategy, 'preregister', False)
    return (
        id(stack),
        strategy,
        params if uses_params else None,
        tuple(sorted(session_kwargs.items())),
    )


class PreviewController:
    """Compute and show the flow of the current frame on request.

    Parameters
    ----------
    viewer : napari.Viewer or ViewerModel
    describe : callable
        ``describe()`` returns ``(source_layer, frame, strategy, params,
        session_kwargs, vector_style)`` for the request to make, or None
        when nothing can be previewed.
    outputs : OutputLayers, optional
        The layers the preview is shown in (the dock's, which its runs
        write into); default: layers of its own.
    on_shown : callable, optional
        Called after a result is shown.

    Attributes
    ----------
    last_result : PreviewResult or None
        The result shown in the preview layers.
    worker : Job or None
        The computation in flight.
    """

    def __init__(self, viewer, describe, outputs=None, on_shown=None):
        self._viewer = viewer
        self._describe = describe
        if outputs is None:
            outputs = OutputLayers(viewer, label='preview')
        self._outputs = outputs
        self._on_shown = on_shown
        self._requests = 0
        self._pending = False
        self._session = (None, None)
        self._source = None
        self._paused = False
        self.worker = None
        self.last_result = None
        self.request = qdebounced(self.request_now, timeout=DEBOUNCE_MS)

    def pause(self) -> None:
        """Ignore requests, and drop the result in flight (a run goes)."""
        self._paused = True
        self.request.cancel()
        self._pending = False
        self._requests += 1
        self.last_result = None

    def resume(self) -> None:
        """Take requests again."""
        self._paused = False

    @property
    def layers(self) -> list:
        """Preview layers still in the viewer."""
        return self._outputs.layers

    def request_now(self) -> None:
        """Preview now (``request`` is the debounced version)."""
        if self._paused:
            return
        if self.worker is not None:
            # superseded: the newest state is computed when this one ends
            self._pending = True
            self._requests += 1
            return
        described = self._describe()
        if described is None:
            return
        source, frame, strategy, params, kwargs, style = described
        self._requests += 1
        key = _session_key(source.data, strategy, params, kwargs)
        kept_key, session = self._session
        if key is None or key != kept_key:
            try:
                session = MotionSession(
                    source.data, reference=strategy, params=params, **kwargs
                )
            except (ValueError, TypeError) as error:
                self._on_error(error)
                return
            # the session keeps the reference it builds, for the next
            # requests with the same key
            self._session = (key, session)
        request = PreviewRequest(
            number=self._requests, frame=frame, params=params, style=style
        )
        self._source = source
        self.worker = start_job(
            functools.partial(compute_preview, session, request),
            handlers={
                'returned': self._on_result,
                'errored': self._on_error,
                'finished': self._on_finished,
            },
        )

    def _on_result(self, result: PreviewResult) -> None:
        if result.request.number != self._requests:
            return  # a newer request is on its way
        self.last_result = result
        self._outputs.set_style(result.request.style)
        self._outputs.show_preview(
            self._source,
            result.request.frame,
            result.fields,
            result.vectors,
            result.limits,
            result.scale,
        )
        if self._on_shown is not None:
            self._on_shown()

    def _on_error(self, error: Exception) -> None:
        show_error(f'Motion correction preview failed: {error}')

    def _on_finished(self) -> None:
        self.worker = None
        if self._pending:
            self._pending = False
            self.request_now()

    def restyle(self, style) -> None:
        """Redraw the last preview with new vector display options."""
        result = self.last_result
        self._outputs.set_style(style)
        if result is not None:
            self._outputs.restyle_preview(
                _vectors(
                    result.flow,
                    result.request.frame,
                    style,
                    result.reference,
                    result.fields.spacing,
                )
            )

    def end(self) -> None:
        """Preview switched off: the layers show the run again (layers
        made for the preview only are removed)."""
        self.request.cancel()
        self._pending = False
        self._requests += 1  # a result in flight is dropped
        self._outputs.end_preview()
        self.last_result = None

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Drop pending requests and wait for the computation in flight."""
        self.request.cancel()
        self._pending = False
        job, self.worker = self.worker, None
        if job is not None:
            job.stop(timeout_s)
