"""The "Parameters" section: flow parameters, presets and live preview."""

from __future__ import annotations

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    LogSlider,
    SpinBox,
)
from psygnal import Signal
from superqt import QCollapsible

from napari_flowscope.engine import FlowParams
from napari_flowscope.engine.params import PRESETS

__all__ = ['ParametersPanel']

CUSTOM = 'custom'
METHOD_CHOICES = [
    ('Lucas-Kanade (fast)', 'lucas_kanade'),
    ('Variational (robust)', 'variational'),
]
# Only these fields mean something to the variational solver.
VARIATIONAL_ONLY = ('alpha', 'iterations')


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
            tooltip='Set all parameters at once; editing one makes it '
            '"custom".',
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
            min=1e-6,
            max=1e-1,
            base=10,
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
            min=0.01,
            max=100.0,
            base=10,
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
        self.append(self.live_preview)
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
        return FlowParams(
            **{name: self._value(name) for name in PRESETS['balanced']}
        )

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
                    value = max(value, widget.min)
                if name != 'method':
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
        if value == shown:
            return exact
        if isinstance(getattr(self, name), LogSlider):
            # a dragged log slider lands on 10 ** (k / 20); keep two
            # significant digits so parameter files stay readable
            return float(f'{value:.2g}')
        return value

    def _param_widgets(self):
        return [getattr(self, name) for name in PRESETS['balanced']]

    def _on_preset(self, name: str) -> None:
        if name != CUSTOM and not self._applying_preset:
            self.set_params(FlowParams.preset(name))

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
        variational = self.method.value == 'variational'
        for name in VARIATIONAL_ONLY:
            getattr(self, name).enabled = variational


def _preset_name(params: FlowParams) -> str:
    for name in PRESETS:
        if FlowParams.preset(name) == params:
            return name
    return CUSTOM
