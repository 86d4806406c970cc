"""The "Parameters" section: flow parameters, presets and live preview."""

from __future__ import annotations

import math

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    SpinBox,
)
from psygnal import Signal
from superqt import QCollapsible

from napari_flowscope.engine import FlowParams
from napari_flowscope.engine.methods import METHODS, get_method
from napari_flowscope.engine.params import PRESETS

__all__ = ['ParametersPanel']

CUSTOM = 'custom'
METHOD_CHOICES = [(method.label, name) for name, method in METHODS.items()]
MOTION_MODEL_CHOICES = [
    ('dense (every pixel)', 'dense'),
    ('translation (drift)', 'translation'),
    ('rigid (drift + rotation)', 'rigid'),
    ('affine (+ scaling, shear)', 'affine'),
]
# The fields the widgets show, in FlowParams order; presets leave the
# motion model alone.
FIELDS = (*PRESETS['balanced'], 'motion_model')
# The bottom of the log slider; 0 (keep every pixel) shows as this.
LOWEST_RELIABILITY = 1e-6
# Fields some methods do not use (each method lists its own).
METHOD_SPECIFIC = ('levels', 'alpha', 'iterations', 'warps')


class LogSlider(Container):
    """A slider over decades whose readout shows the value.

    (magicgui's ``LogSlider`` reads out its internal linear position.)
    Positions are 1/20 decade apart; ``value`` is the exact number set
    until the slider is moved.
    """

    def __init__(self, *, label, low, high, tooltip=''):
        self._slider = FloatSlider(
            min=math.log10(low),
            max=math.log10(high),
            step=0.05,
            readout=False,
            tooltip=tooltip,
        )
        self._readout = Label()
        self._readout.native.setMinimumWidth(48)
        self._value = 10**self._slider.value
        # before Container relays the slider's signal, so listeners of
        # ``changed`` read the new value
        self._slider.changed.connect(self._on_slide)
        super().__init__(
            layout='horizontal',
            labels=False,
            label=label,
            widgets=[self._slider, self._readout],
        )
        self.margins = (0, 0, 0, 0)
        self._show()

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        """Set a value (> 0); the range widens to include it."""
        value = float(value)
        position = math.log10(value)
        # widen on the 1/20-decade grid (the slider rounds its bounds)
        low, high = math.floor(position * 20), math.ceil(position * 20)
        self._slider.min = min(self._slider.min, low / 20)
        self._slider.max = max(self._slider.max, high / 20)
        if value != self._value:
            self._value = value
            with self._slider.changed.blocked():
                self._slider.value = position
            self._show()
            self.changed.emit(self)

    def _on_slide(self, position):
        # two significant digits keep parameter files readable
        self._value = float(f'{10**position:.2g}')
        self._show()

    def _show(self):
        self._readout.value = f'{self._value:.2g}'


class ParametersPanel(Container):
    """Widgets for every :class:`FlowParams` field plus temporal smoothing.

    Slider ranges are the useful part of what :class:`FlowParams` allows;
    :meth:`set_params` widens a range when a value falls outside it, so
    every valid ``FlowParams`` round-trips (except a reliability threshold
    below 1e-6, the bottom of its log slider).

    Signals
    -------
    params_changed(FlowParams)
        Any flow parameter changed (also once per preset change).
    """

    params_changed = Signal(object)

    def __init__(self):
        self.preset = ComboBox(
            label='preset',
            choices=[CUSTOM, *PRESETS],
            value='balanced',
            tooltip='Set all flow parameters at once (the motion model '
            'stays); editing one makes it "custom".',
        )
        self.motion_model = ComboBox(
            label='motion model',
            choices=MOTION_MODEL_CHOICES,
            value='dense',
            tooltip='Dense: one displacement per pixel (deformation, '
            'beating, crawling cells). Translation, rigid, affine: one '
            'transform of the whole frame, fitted to the trusted flow and '
            'refined on the images, like StackReg (drift correction).',
        )
        self.method = ComboBox(
            label='method',
            choices=METHOD_CHOICES,
            tooltip='Lucas-Kanade: fast, local. Variational: smooth, '
            'robust to bleaching and uneven illumination.',
        )
        self.sigma = FloatSlider(
            label='window σ (px)',
            min=0.5,
            max=10.0,
            step=0.1,
            tooltip='Gaussian window of the local fit (px per pyramid '
            'level); larger is smoother and more robust.',
        )
        self.reliability_threshold = LogSlider(
            label='reliability ≥',
            low=LOWEST_RELIABILITY,
            high=1e-1,
            tooltip='Pixels whose structure-tensor eigenvalue is below '
            'this are unreliable (masked in vectors, filled in flow).',
        )
        self.levels = SpinBox(
            label='pyramid levels',
            min=1,
            max=10,
            tooltip='Motion up to about 2**(levels - 1) px is recovered.',
        )
        self.alpha = LogSlider(
            label='smoothness α',
            low=0.01,
            high=100.0,
            tooltip='Variational only: weight of the smoothness term.',
        )
        self.iterations = SpinBox(
            label='iterations',
            min=1,
            max=1000,
            tooltip='Variational only: solver iterations per warp.',
        )
        self.warps = SpinBox(
            label='warps per level',
            min=1,
            max=20,
            tooltip='Linearise-and-warp iterations per pyramid level.',
        )
        self.temporal_smoothing = FloatSpinBox(
            label='temporal σ (frames)',
            min=0.0,
            max=10.0,
            step=0.5,
            value=0.0,
            tooltip='Smooth the stack over time before estimating flow '
            '(0 = off).',
        )
        self.live_preview = CheckBox(
            text='live preview (current frame)',
            tooltip='Recompute the flow of the frame under the time '
            'slider whenever a parameter or the frame changes.',
        )
        self._advanced = Container(
            widgets=[self.iterations, self.warps, self.temporal_smoothing],
        )
        self._advanced.margins = (0, 0, 0, 0)
        super().__init__(
            widgets=[
                self.motion_model,
                self.preset,
                self.method,
                self.sigma,
                self.reliability_threshold,
                self.levels,
                self.alpha,
            ]
        )
        self.advanced_section = QCollapsible('Advanced')
        self.advanced_section.addWidget(self._advanced.native)
        self.native.layout().addWidget(self.advanced_section)
        # live_preview is placed by the dock, beside the run buttons
        self.margins = (0, 0, 0, 0)

        self._applying_preset = False
        self._shown = {}
        self.set_params(FlowParams.preset('balanced'))
        self.preset.changed.connect(self._on_preset)
        for widget in self._param_widgets():
            widget.changed.connect(self._on_param)

    @property
    def params(self) -> FlowParams:
        """The :class:`FlowParams` the widgets show."""
        return FlowParams(**{name: self._value(name) for name in FIELDS})

    @property
    def temporal_sigma(self) -> float | None:
        """Temporal smoothing sigma in frames, None when off."""
        value = float(self.temporal_smoothing.value)
        return value if value > 0 else None

    def set_params(self, params: FlowParams) -> None:
        """Show ``params`` (one ``params_changed`` emission at most)."""
        self._applying_preset = True
        try:
            for name, value in params.to_dict().items():
                widget = getattr(self, name)
                if name == 'reliability_threshold':
                    value = max(value, LOWEST_RELIABILITY)
                if isinstance(widget, (FloatSlider, SpinBox)):
                    widget.min = min(widget.min, value)
                    widget.max = max(widget.max, value)
                widget.value = value
                # remember the exact value: log sliders quantise it
                self._shown[name] = (widget.value, value)
        finally:
            self._applying_preset = False
        self.preset.value = _preset_name(params)
        self._update_enabled()
        self.params_changed.emit(self.params)

    def _value(self, name):
        value = getattr(self, name).value
        shown, exact = self._shown.get(name, (None, None))
        return exact if value == shown else value

    def _param_widgets(self):
        return [getattr(self, name) for name in FIELDS]

    def _on_preset(self, name: str) -> None:
        if name != CUSTOM and not self._applying_preset:
            model = self.motion_model.value
            self.set_params(
                FlowParams.preset(name).replace(motion_model=model)
            )

    def _on_param(self, _value=None) -> None:
        if self._applying_preset:
            return
        params = self.params
        self._applying_preset = True
        try:
            self.preset.value = _preset_name(params)
        finally:
            self._applying_preset = False
        self._update_enabled()
        self.params_changed.emit(params)

    def _update_enabled(self) -> None:
        used = get_method(self.method.value).parameters
        for name in METHOD_SPECIFIC:
            getattr(self, name).enabled = used is None or name in used


def _preset_name(params: FlowParams) -> str:
    for name in PRESETS:
        preset = FlowParams.preset(name)
        if preset.replace(motion_model=params.motion_model) == params:
            return name
    return CUSTOM
