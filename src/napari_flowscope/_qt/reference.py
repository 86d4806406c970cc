"""The "Reference" section: source layer, reference strategy, channels.

Multichannel data: napari opens channels as separate layers
(``channel_axis``), so the flow is estimated on one layer (the source) and
the other channels are listed under "also correct": they get the same
flow.  An RGB layer is one layer; its flow is estimated on the luminance
or on one colour channel.

A 4-D layer is a volumetric time-lapse ``(T, Z, Y, X)``: its flow is 3-D,
with the layer's scale as the voxel size, or 2-D plane by plane when
"planes separately" is ticked.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    PushButton,
    RangeSlider,
    Select,
    SpinBox,
)
from napari.layers import Image
from psygnal import Signal
from qtpy.QtCore import Qt

from napari_flowscope.session import (
    AdaptiveReference,
    FrameReference,
    ImageReference,
    PreviousReference,
    RangeReference,
)

from .layers import current_frame

__all__ = [
    'ReferencePanel',
    'is_stack_layer',
    'is_volume_layer',
    'voxel_size',
]

MODES = [
    ('one frame', 'frame'),
    ('mean / median of frames', 'range'),
    ('previous frame (StackReg order)', 'previous'),
    ('another layer', 'layer'),
    ('adaptive (follows the sample)', 'adaptive'),
]
MODE_TOOLTIPS = {
    'frame': 'Every frame registered to one frame of the stack.',
    'range': 'Every frame registered to the mean or median of a range of '
    'frames (less noisy than one frame).',
    'previous': 'Each frame registered to the previous frame once that is '
    "registered (Fiji StackReg's order): neighbours stay alike when the "
    'sample changes slowly, but match errors add up along the stack.  '
    'The whole stack ends up aligned with frame 0; the live preview '
    'compares the frame with frame 0.',
    'layer': 'Every frame registered to an image of another layer.',
    'adaptive': 'A reference that starts as the mean of the first frames '
    'and blends in registered frames as the run goes (FlowRegLive), for '
    'samples that change slowly.',
}
RGB_CHANNELS = [
    ('luminance', (0.299, 0.587, 0.114)),
    ('red', 0),
    ('green', 1),
    ('blue', 2),
]


def is_stack_layer(layer) -> bool:
    """Whether ``layer`` is an image time-lapse: (T, Y, X), RGB, or
    volumes (T, Z, Y, X)."""
    return _is_image(layer) and (
        layer.ndim == 3 or (layer.ndim == 4 and not layer.rgb)
    )


def is_volume_layer(layer) -> bool:
    """Whether ``layer`` is a volumetric time-lapse (T, Z, Y, X)."""
    return is_stack_layer(layer) and layer.ndim == 4


def voxel_size(layer) -> tuple:
    """``(z, y, x)`` scale of a volume layer, its voxel size."""
    return tuple(float(value) for value in tuple(layer.scale)[-3:])


def _is_image(layer) -> bool:
    # isinstance also sees through napari's PublicOnlyProxy; a flow
    # component (ground truth of a sample, vx / vy read from a flow file)
    # is a map of motion, not an image to register
    return (
        isinstance(layer, Image)
        and not layer.multiscale
        and 'flow_component' not in layer.metadata
    )


class ReferencePanel(Container):
    """Source layer, reference strategy and channels.

    Parameters
    ----------
    viewer : napari.Viewer or ViewerModel
        Layer lists are read from it and kept in sync.
    is_output : callable, optional
        ``is_output(layer)`` is True for layers a run created; they are
        not offered as inputs.

    Signals
    -------
    reference_changed()
        The source layer, the reference or the channel changed.
    """

    reference_changed = Signal()

    def __init__(self, viewer, *, is_output=None):
        self._viewer = viewer
        self.is_output = is_output or (lambda layer: False)
        self.source = ComboBox(
            label='source layer',
            choices=self._source_choices,
            nullable=True,
            tooltip='Time-lapse (T, Y, X) the flow is estimated on.',
        )
        self.rgb_channel = ComboBox(
            label='estimate on',
            choices=RGB_CHANNELS,
            visible=False,
            tooltip='RGB layers: the channel (or combination) that '
            'drives the flow; all channels are corrected.',
        )
        self.also_correct = Select(
            label='also correct',
            choices=self._extra_choices,
            tooltip='Other channels (layers of the same shape) to '
            'correct with the flow of the source layer.',
        )
        self.also_correct.native.setMaximumHeight(70)
        self.per_plane = CheckBox(
            text='planes separately (2-D flow per plane)',
            visible=False,
            tooltip='Volumes: register each z plane on its own, for '
            'stacks whose planes are not one volume (planes far apart or '
            'imaged at different times).  Otherwise the flow is 3-D, with '
            "the layer's scale as the voxel size.",
        )
        self.mode = ComboBox(
            label='reference',
            choices=MODES,
            tooltip='What each frame is registered to (hover over a '
            'choice for details).',
        )
        for index, (_label, mode) in enumerate(MODES):
            self.mode.native.setItemData(
                index, MODE_TOOLTIPS[mode], Qt.ItemDataRole.ToolTipRole
            )
        self.frame = SpinBox(label='frame', min=0, max=0)
        self.current_frame_button = PushButton(text='current frame')
        self._frame_row = Container(
            layout='horizontal',
            label='frame',
            widgets=[self.frame, self.current_frame_button],
            labels=False,
        )
        self._frame_row.margins = (0, 0, 0, 0)
        self.frame_range = RangeSlider(
            label='frames', min=0, max=1, value=(0, 1)
        )
        # the handles show the range; edge labels would show 47 as 5e+01
        range_slider = self.frame_range.native
        range_slider.setEdgeLabelMode(range_slider.EdgeLabelMode.NoLabel)
        self.statistic = ComboBox(
            label='statistic', choices=['mean', 'median']
        )
        self.preregister = CheckBox(
            text='pre-register frames first',
            tooltip='Register the range frames to their mean before '
            'averaging, so drift inside the range does not blur it.',
        )
        self.reference_layer = ComboBox(
            label='reference layer',
            choices=self._reference_layer_choices,
            nullable=True,
            tooltip='A (Y, X) image, or the current frame of a stack.',
        )
        self.buffer_size = SpinBox(
            label='initial frames',
            value=50,
            min=1,
            max=10000,
            tooltip='Frames pre-registered and averaged into the first '
            'reference.',
        )
        self.update_interval = SpinBox(
            label='update every', value=20, min=1, max=10000
        )
        self.update_weight = FloatSlider(
            label='update weight', value=0.2, min=0.0, max=1.0, step=0.05
        )
        self._mode_widgets = {
            'frame': [self._frame_row],
            'range': [self.frame_range, self.statistic, self.preregister],
            'previous': [],
            'layer': [self.reference_layer],
            'adaptive': [
                self.buffer_size,
                self.update_interval,
                self.update_weight,
            ],
        }
        super().__init__(
            widgets=[
                self.source,
                self.rgb_channel,
                self.per_plane,
                self.also_correct,
                self.mode,
                self._frame_row,
                self.frame_range,
                self.statistic,
                self.preregister,
                self.reference_layer,
                self.buffer_size,
                self.update_interval,
                self.update_weight,
            ]
        )
        self.margins = (0, 0, 0, 0)

        self.source.changed.connect(self._on_source)
        self.mode.changed.connect(self._on_mode)
        self.current_frame_button.changed.connect(self.use_current_frame)
        for widget in (
            self.rgb_channel,
            self.per_plane,
            self.also_correct,
            self.frame,
            self.frame_range,
            self.statistic,
            self.preregister,
            self.reference_layer,
            self.buffer_size,
            self.update_interval,
            self.update_weight,
        ):
            widget.changed.connect(self._emit_changed)
        layers = viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layers_changed)
        layers.events.reordered.connect(self._on_layers_changed)
        for layer in layers:
            layer.events.name.connect(self._on_layers_changed)
        layers.events.inserted.connect(self._watch_name)
        layers.events.removed.connect(self._unwatch_name)
        self._on_layers_changed()
        self._on_mode(self.mode.value)

    # -- choices ---------------------------------------------------------

    def _source_choices(self, _widget=None):
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if is_stack_layer(layer) and not self.is_output(layer)
        ]

    def _extra_choices(self, _widget=None):
        source = self.source.value if hasattr(self, 'source') else None
        if source is None:
            return []
        shape = source.data.shape[: source.ndim]
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if is_stack_layer(layer)
            and not layer.rgb
            and layer != source
            and layer.data.shape[: source.ndim] == shape
            and not self.is_output(layer)
        ]

    def _reference_layer_choices(self, _widget=None):
        source = self.source.value if hasattr(self, 'source') else None
        if source is None:
            return []
        frame_shape = source.data.shape[1 : source.ndim]
        frame_ndim = len(frame_shape)
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if _is_image(layer)
            and layer != source
            and not layer.rgb
            and layer.ndim in (frame_ndim, frame_ndim + 1)
            and layer.data.shape[-frame_ndim:] == frame_shape
            and not self.is_output(layer)
        ]

    def _watch_name(self, event):
        event.value.events.name.connect(self._on_layers_changed)

    def _unwatch_name(self, event):
        event.value.events.name.disconnect(self._on_layers_changed)

    def disconnect_viewer(self) -> None:
        """Stop following the viewer's layers (the dock is going away)."""
        layers = self._viewer.layers
        for emitter in (
            layers.events.inserted,
            layers.events.removed,
            layers.events.reordered,
        ):
            for callback in (
                self._on_layers_changed,
                self._watch_name,
                self._unwatch_name,
            ):
                emitter.disconnect(callback)
        for layer in layers:
            layer.events.name.disconnect(self._on_layers_changed)

    def _on_layers_changed(self, _event=None):
        """Keep the layer lists in sync (added, removed, renamed).

        magicgui re-adds a renamed item, which would silently select
        another layer, so the selections are restored explicitly.
        """
        before = self.source.value
        with self.source.changed.blocked():
            self.source.reset_choices()
            available = [layer for layer in self.source.choices if layer]
            if before is not None and before in available:
                self.source.value = before
            else:
                self.source.value = available[0] if available else None
        after = self.source.value
        if before is None or after is None:
            changed = (before is None) != (after is None)
        else:
            changed = after != before
        self._on_source(after, quiet=not changed)

    # -- state -----------------------------------------------------------

    @property
    def n_frames(self) -> int:
        source = self.source.value
        return 0 if source is None else int(source.data.shape[0])

    def _on_source(self, source, quiet=False):
        n_frames = self.n_frames
        last = max(n_frames - 1, 1)
        self.frame.max = max(n_frames - 1, 0)
        low, high = self.frame_range.value
        self.frame_range.max = last
        if high > last or (low, high) == (0, 1):
            self.frame_range.value = (0, min(last, 49))
        self.rgb_channel.visible = bool(source is not None and source.rgb)
        self.per_plane.visible = bool(
            source is not None and is_volume_layer(source)
        )
        extras = list(self.also_correct.value)
        reference = self.reference_layer.value
        with self.also_correct.changed.blocked():
            self.also_correct.reset_choices()
            self.also_correct.value = [
                layer for layer in extras if layer in self.also_correct.choices
            ]
        # only worth the space when there is another channel to offer
        self.also_correct.visible = bool(self.also_correct.choices)
        with self.reference_layer.changed.blocked():
            self.reference_layer.reset_choices()
            if reference in self.reference_layer.choices:
                self.reference_layer.value = reference
        if not quiet:
            self._emit_changed()

    def _on_mode(self, mode):
        for name, widgets in self._mode_widgets.items():
            for widget in widgets:
                widget.visible = name == mode
        self._emit_changed()

    def _emit_changed(self, _value=None):
        self.reference_changed.emit()

    def use_current_frame(self, _value=None) -> None:
        """Set the reference frame to the frame under the time slider."""
        source = self.source.value
        if source is None:
            return
        self.mode.value = 'frame'
        self.frame.value = current_frame(self._viewer, source, self.n_frames)

    # -- what the session needs -----------------------------------------

    def strategy(self):
        """The reference strategy the widgets describe.

        Raises
        ------
        ValueError
            When the widgets do not describe a usable reference (e.g. no
            reference layer chosen).
        """
        mode = self.mode.value
        if mode == 'frame':
            return FrameReference(int(self.frame.value))
        if mode == 'range':
            low, high = self.frame_range.value
            return RangeReference(
                int(low),
                int(high) + 1,
                statistic=self.statistic.value,
                preregister=bool(self.preregister.value),
            )
        if mode == 'previous':
            return PreviousReference()
        if mode == 'adaptive':
            return AdaptiveReference(
                buffer_size=int(self.buffer_size.value),
                update_interval=int(self.update_interval.value),
                update_weight=float(self.update_weight.value),
            )
        layer = self.reference_layer.value
        if layer is None:
            raise ValueError('choose a reference layer')
        data = layer.data
        if layer.ndim == self.source.value.ndim:
            index = current_frame(self._viewer, layer, data.shape[0])
            data = data[index]
        return ImageReference(np.asarray(data, dtype=np.float32))

    def session_kwargs(self) -> dict:
        """``channel_axis`` / ``channel`` (RGB) or ``spacing`` /
        ``per_plane`` (volumes) for :class:`MotionSession`."""
        source = self.source.value
        if source is None:
            return {}
        if is_volume_layer(source):
            return {
                'spacing': voxel_size(source),
                'per_plane': bool(self.per_plane.value),
            }
        if not source.rgb:
            return {}
        return {'channel_axis': 3, 'channel': self.rgb_channel.value}

    @property
    def extra_layers(self) -> list:
        """Layers corrected with the source's flow."""
        return list(self.also_correct.value)
