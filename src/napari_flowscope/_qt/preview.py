"""Live preview: the flow of the frame under the time slider.

Requests are debounced (a slider drag gives one computation, not dozens)
and numbered: one worker runs at a time, a request made while it runs is
computed next, and a result that is no longer the latest request is
dropped.  Results go into two preview layers that cover only the previewed
frame, so they never show on a frame they were not computed for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from superqt.utils import qdebounced

from napari_flowscope.engine import FlowField, estimate_flow, speed
from napari_flowscope.session import (
    AdaptiveReference,
    ImageReference,
    MotionSession,
)

from .layers import SPEED_COLORMAP, frame_vectors, layer_geometry, nice_ceiling
from .run_control import stop_and_wait, track

__all__ = ['PreviewController', 'PreviewRequest', 'compute_preview']

DEBOUNCE_MS = 50


@dataclass(frozen=True)
class PreviewRequest:
    """Everything a preview computation needs (no layers)."""

    number: int
    stack: object
    frame: int
    strategy: object
    params: object
    session_kwargs: dict
    style: object
    reference_key: object
    reference: np.ndarray | None


@dataclass(frozen=True)
class PreviewResult:
    """The flow of one frame and what the preview layers show of it."""

    request: PreviewRequest
    reference: np.ndarray
    flow: FlowField
    speed: np.ndarray
    limit: float
    vectors: tuple


def compute_preview(request: PreviewRequest) -> PreviewResult:
    """Worker body: the flow of one frame against the run's reference.

    The speed map, its colour limit and the vector grid are computed here
    too, so the main thread only assigns layer data.
    """
    session = MotionSession(
        request.stack,
        reference=request.strategy,
        params=request.params,
        **request.session_kwargs,
    )
    reference = request.reference
    if reference is None:
        reference = session.reference_image
    moving = session.flow_images(
        session.read_frames(request.frame, request.frame + 1)
    )[0]
    flow = estimate_flow(reference, moving, request.params)
    frame_speed = speed(flow.w)
    limit = nice_ceiling(
        float(np.percentile(frame_speed[::2, ::2], 99.5)) * 1.25
    )
    return PreviewResult(
        request,
        reference,
        flow,
        frame_speed,
        limit,
        _vectors(flow, request.frame, request.style, reference),
    )


def _vectors(flow, frame, style, reference):
    return frame_vectors(
        flow.w,
        frame,
        style=style,
        reliability=flow.reliability,
        image=reference,
    )


def _reference_key(stack, strategy, params, session_kwargs):
    """What the preview reference depends on (None: do not cache)."""
    if isinstance(strategy, ImageReference):
        return None
    uses_params = isinstance(strategy, AdaptiveReference) or getattr(
        strategy, 'preregister', False
    )
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

    Attributes
    ----------
    last_result : PreviewResult or None
        The result shown in the preview layers.
    worker : FunctionWorker or None
        The computation in flight.
    """

    def __init__(self, viewer, describe):
        self._viewer = viewer
        self._describe = describe
        self._requests = 0
        self._pending = False
        self._reference_cache = (None, None)
        self._layers = {}
        self._style = None
        self._source = None
        self._speed = None
        self._speed_frame = None
        self._shown_source = None
        self.worker = None
        self._done = None
        self.last_result = None
        self.request = qdebounced(self.request_now, timeout=DEBOUNCE_MS)

    @property
    def layers(self) -> list:
        """Preview layers still in the viewer."""
        return [
            layer
            for layer in self._layers.values()
            if layer in self._viewer.layers
        ]

    def request_now(self) -> None:
        """Preview now (``request`` is the debounced version)."""
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
        key = _reference_key(source.data, strategy, params, kwargs)
        cached_key, cached = self._reference_cache
        if key is None or key != cached_key:
            cached = None
        request = PreviewRequest(
            number=self._requests,
            stack=source.data,
            frame=frame,
            strategy=strategy,
            params=params,
            session_kwargs=kwargs,
            style=style,
            reference_key=key,
            reference=cached,
        )
        self._source = source
        self._style = style
        worker = create_worker(compute_preview, request, _ignore_errors=True)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._done = track(worker)
        worker.start()

    def _on_result(self, result: PreviewResult) -> None:
        self._reference_cache = (
            result.request.reference_key,
            result.reference,
        )
        if result.request.number != self._requests:
            return  # a newer request is on its way
        self.last_result = result
        self._show(result)

    def _on_error(self, error: Exception) -> None:
        show_error(f'Motion correction preview failed: {error}')

    def _on_finished(self) -> None:
        self.worker = None
        self._done = None
        if self._pending:
            self._pending = False
            self.request_now()

    def restyle(self, style) -> None:
        """Redraw the last preview with new vector display options."""
        self._style = style
        result = self.last_result
        if result is not None and self._layers:
            self._show_vectors(
                _vectors(
                    result.flow, result.request.frame, style, result.reference
                ),
                result.limit,
            )

    def _show(self, result: PreviewResult) -> None:
        source, frame = self._source, result.request.frame
        if self._shown_source is not None and self._shown_source != source:
            # another source: its preview gets its own (named) layers
            for layer in self.layers:
                self._viewer.layers.remove(layer)
            self._layers = {}
        self._shown_source = source
        geometry = layer_geometry(source)
        shape = (source.data.shape[0], *result.speed.shape)
        heatmap = self._layers.get('speed')
        if (
            heatmap is None
            or heatmap not in self._viewer.layers
            or heatmap.data.shape != shape
        ):
            if heatmap is not None and heatmap in self._viewer.layers:
                self._viewer.layers.remove(heatmap)
            # (T, Y, X) like the source, so the preview shows on its own
            # frame only; np.zeros pages cost memory only once written
            self._speed = np.zeros(shape, np.float32)
            self._speed_frame = None
            heatmap = self._layers['speed'] = self._viewer.add_image(
                self._speed,
                name=f'{source.name} preview speed',
                colormap=SPEED_COLORMAP,
                contrast_limits=(0.0, result.limit),
                auto_contrast=False,
                blending='additive',
                opacity=0.7,
                **geometry,
            )
        if self._speed_frame not in (None, frame):
            self._speed[self._speed_frame] = 0
        self._speed[frame] = result.speed
        self._speed_frame = frame
        if tuple(heatmap.contrast_limits) != (0.0, result.limit):
            heatmap.contrast_limits = (0.0, result.limit)
        heatmap.refresh()
        self._show_vectors(result.vectors, result.limit)

    def _show_vectors(self, vectors_data, limit):
        data, lengths = vectors_data
        vectors = self._layers.get('vectors')
        if vectors is None or vectors not in self._viewer.layers:
            self._layers['vectors'] = self._viewer.add_vectors(
                data,
                name=f'{self._source.name} preview vectors',
                features={'speed': lengths},
                edge_color='speed',
                edge_colormap=SPEED_COLORMAP,
                edge_contrast_limits=(0.0, limit),
                vector_style='arrow',
                length=self._style.length,
                **layer_geometry(self._source),
            )
            return
        vectors.data = data
        vectors.features = {'speed': lengths}
        vectors.edge_color = 'speed'
        if tuple(vectors.edge_contrast_limits) != (0.0, limit):
            vectors.edge_contrast_limits = (0.0, limit)
        if vectors.length != self._style.length:
            vectors.length = self._style.length

    def remove_layers(self) -> None:
        """Remove the preview layers (preview switched off)."""
        for layer in self.layers:
            self._viewer.layers.remove(layer)
        self._layers = {}
        self._shown_source = None
        self.last_result = None

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Drop pending requests and wait for the computation in flight."""
        self.request.cancel()
        self._pending = False
        worker, done = self.worker, self._done
        if worker is not None:
            for signal, slot in (
                (worker.returned, self._on_result),
                (worker.errored, self._on_error),
                (worker.finished, self._on_finished),
            ):
                with contextlib.suppress(TypeError, RuntimeError):
                    signal.disconnect(slot)
            stop_and_wait(worker, done, timeout_s)
            self.worker = None
