"""Flow parameters: one frozen, validated dataclass and its named presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .methods import METHODS, get_method
from .motion_models import MOTION_MODELS

__all__ = ['FlowParams', 'METHODS', 'PRESETS']


@dataclass(frozen=True)
class FlowParams:
    """Parameters of the optical-flow engine.

    ``FlowParams()`` equals ``FlowParams.preset('balanced')``, the default
    used everywhere ``params=None`` is accepted: pyramidal Lucas-Kanade with
    one warp per level, tuned to register a 512 x 512 frame in about
    10 ms.

    Parameters
    ----------
    method : str
        A name in the method table
        :data:`napari_flowscope.engine.methods.METHODS`.
        ``'lucas_kanade'``: dense pyramidal Lucas-Kanade with warping on
        locally contrast-normalised frames (fast; bleaching and smooth
        illumination changes cancel).  ``'variational'``: robust
        variational flow with a smoothness term weighted by ``alpha``
        (slower; smooth fields, fills untextured regions, noisy data).
    sigma : float
        Lucas-Kanade: standard deviation (px, at each pyramid level) of the
        Gaussian window of the structure tensor and
        of the final averaging of the flow.  Both methods: window of the
        reliability structure tensor.  Allowed: 0.3 to 50.
    reliability_threshold : float
        Pixels whose reliability (smallest eigenvalue of the structure
        tensor of the normalised reference, see
        :func:`napari_flowscope.engine.estimate_flow`) is below this value
        are treated as unreliable.  Allowed: 0 to 1.
    levels : int
        Number of pyramid levels, including the full-resolution one (1 =
        single scale).  Each level halves the image; the pyramid stops early
        when the coarsest level would be smaller than 8 px.  Motion up to
        about ``2 ** (levels - 1)`` pixels is recovered.  Allowed: 1 to 12.
    alpha : float
        Variational only: weight of the smoothness term (larger = smoother
        flow).  Allowed: > 0 to 1e4.
    iterations : int
        Variational only: inner solver iterations per warp.
        Allowed: 1 to 10000.
    warps : int
        Linearise-and-warp iterations per pyramid level.  Lucas-Kanade uses
        ``warps`` at the two finest levels and ``warps + 2`` at the coarser
        ones, which are cheap.  Allowed: 1 to 100.
    motion_model : {'dense', 'translation', 'rigid', 'affine'}
        ``'dense'``: the optical flow itself, one displacement per pixel
        (deformation, beating, crawling cells).  ``'translation'``,
        ``'rigid'`` (rotation + translation), ``'affine'`` (+ scaling and
        shear): one transform of the whole frame, fitted robustly to the
        trusted flow and refined on the images
        (:mod:`napari_flowscope.engine.motion_models`); the flow is then
        that transform's field.  For drift, like Fiji's StackReg.  Presets
        do not set it.
    """

    method: str = 'lucas_kanade'
    sigma: float = 4.0
    reliability_threshold: float = 1e-4
    levels: int = 5
    alpha: float = 1.0
    iterations: int = 20
    warps: int = 1
    motion_model: str = 'dense'

    _PRESET_NAMES: ClassVar[tuple[str, ...]] = (
        'fast',
        'balanced',
        'quality',
    )

    def __post_init__(self):
        get_method(self.method)  # raises, naming the registered methods
        _set(self, 'sigma', _real(self, 'sigma', 0.3, 50.0))
        _set(
            self,
            'reliability_threshold',
            _real(self, 'reliability_threshold', 0.0, 1.0),
        )
        _set(self, 'alpha', _real(self, 'alpha', 0.0, 1e4, open_low=True))
        _set(self, 'levels', _integer(self, 'levels', 1, 12))
        _set(self, 'iterations', _integer(self, 'iterations', 1, 10000))
        _set(self, 'warps', _integer(self, 'warps', 1, 100))
        if self.motion_model not in MOTION_MODELS:
            raise ValueError(
                'motion_model must be one of '
                f'{", ".join(map(repr, MOTION_MODELS))}; '
                f'got {self.motion_model!r}'
            )

    @classmethod
    def preset(cls, name: str) -> FlowParams:
        """Return a named preset.

        Presets set the flow method and its parameters; their motion model
        is ``'dense'`` (change it with :meth:`replace`).

        Parameters
        ----------
        name : {'fast', 'balanced', 'quality'}
            ``'fast'``: Lucas-Kanade with a 3 px window (slightly faster,
            follows finer local motion, noisier).  ``'balanced'`` (the
            default, ``FlowParams()``): Lucas-Kanade with a 4 px window,
            about twice as fast as OpenCV's DIS (medium preset) and more
            accurate on smooth motion.  ``'quality'``: variational flow
            (smooth fields, untextured regions, noisy data; slower).
        """
        try:
            values = PRESETS[name]
        except (KeyError, TypeError):
            raise ValueError(
                f'preset must be one of {", ".join(map(repr, PRESETS))}; '
                f'got {name!r}'
            ) from None
        return cls(**values)

    def replace(self, **changes: Any) -> FlowParams:
        """Return a copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FlowParams:
        """Inverse of :meth:`to_dict`; missing fields take their defaults.

        Raises
        ------
        ValueError
            If ``values`` has unknown keys or invalid values.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f'unknown FlowParams field(s) {unknown}; '
                f'known fields are {sorted(names)}'
            )
        return cls(**values)


def _set(params, name, value):
    object.__setattr__(params, name, value)


def _real(params, name, low, high, *, open_low=False):
    value = getattr(params, name)
    low_text = f'> {low}' if open_low else f'>= {low}'
    message = (
        f'{name} must be a real number {low_text} and <= {high}; got {value!r}'
    )
    if isinstance(value, (bool, str)):
        raise ValueError(message)
    try:
        value = float(value)  # also accepts numpy scalars
    except (TypeError, ValueError):
        raise ValueError(message) from None
    too_low = value <= low if open_low else value < low
    if not math.isfinite(value) or too_low or value > high:
        raise ValueError(message)
    return value


def _integer(params, name, low, high):
    value = getattr(params, name)
    message = f'{name} must be an integer from {low} to {high}; got {value!r}'
    if isinstance(value, bool):
        raise ValueError(message)
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if as_int != value or not low <= as_int <= high:
        raise ValueError(message)
    return as_int


#: Field values of the named presets (see :meth:`FlowParams.preset`).
PRESETS: dict[str, dict[str, Any]] = {
    'fast': {
        'method': 'lucas_kanade',
        'sigma': 3.0,
        'reliability_threshold': 1e-4,
        'levels': 5,
        'alpha': 1.0,
        'iterations': 20,
        'warps': 1,
    },
    'balanced': {
        'method': 'lucas_kanade',
        'sigma': 4.0,
        'reliability_threshold': 1e-4,
        'levels': 5,
        'alpha': 1.0,
        'iterations': 20,
        'warps': 1,
    },
    'quality': {
        'method': 'variational',
        'sigma': 2.0,
        'reliability_threshold': 1e-4,
        'levels': 5,
        'alpha': 0.5,
        'iterations': 15,
        'warps': 2,
    },
}
