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
    used everywhere ``params=None`` is accepted: noise-adaptive pyramidal
    Lucas-Kanade, tuned to register a 512 x 512 frame in about 14 ms of
    one core.

    Parameters
    ----------
    method : str
        A name in the method table
        :data:`napari_flowscope.engine.methods.METHODS`.
        ``'patch_search'``: patch inverse search with variational
        refinement (OpenCV's DIS at full resolution, see
        :mod:`napari_flowscope.engine.patch_search`).
        ``'lucas_kanade'``: dense pyramidal Lucas-Kanade with warping on
        locally contrast-normalised frames (fast; bleaching and smooth
        illumination changes cancel).  ``'variational'``: robust
        variational flow with a smoothness term weighted by ``alpha``
        (slower; smooth fields, fills untextured regions, noisy data).
    sigma : float
        Lucas-Kanade: standard deviation (px, at each pyramid level) of the
        Gaussian window of the structure tensor, and the narrowest window
        of the final averaging.  Patch search: patches of ``2 sigma`` px.
        All methods: window of the reliability structure tensor.
        Allowed: 0.3 to 50.
    reliability_threshold : float
        Pixels whose reliability (smallest eigenvalue of the structure
        tensor of the normalised reference, see
        :func:`napari_flowscope.engine.estimate_flow`) is below this value
        are treated as unreliable: they are not trusted (confidence below
        0.5), and Lucas-Kanade weighs each pixel's flow by
        ``r / (r + threshold)`` when averaging, so untextured regions take
        the flow of their surroundings.  Allowed: 0 to 1.
    levels : int
        Number of pyramid levels, including the full-resolution one (1 =
        single scale).  Each level halves the image; the pyramid stops early
        when the coarsest level would be smaller than 8 px.  Motion up to
        about ``2 ** (levels - 1)`` pixels is recovered.  Patch search
        builds its own pyramid (use 1).  Allowed: 1 to 12.
    alpha : float
        Variational and patch search: weight of the smoothness term
        (larger = smoother flow; patch search on 0-255 intensities).
        Allowed: > 0 to 1e4.
    iterations : int
        Variational: inner solver iterations per warp.  Patch search:
        variational refinement iterations per scale.
        Allowed: 1 to 10000.
    warps : int
        Linearise-and-warp iterations per pyramid level.  Lucas-Kanade uses
        ``warps`` at the two finest levels, ``warps + 1`` at the coarser
        ones, which are cheap, and one more at full resolution when the
        frames are clean (residual noise below 0.35 of the local
        contrast).  Allowed: 1 to 100.
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
        'detail',
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
        name : {'fast', 'balanced', 'quality', 'detail'}
            ``'fast'``: Lucas-Kanade with a 3 px window (follows finer
            local motion; noisier than ``'balanced'`` on photon-limited
            frames).  ``'balanced'`` (the default, ``FlowParams()``):
            noise-adaptive Lucas-Kanade with a 4 px window, about twice as
            fast as OpenCV's DIS (medium preset) and as accurate or more
            on photon-limited and most real frames (docs/benchmarks.md).
            ``'quality'``: variational flow (smooth fields, untextured
            regions, bleaching; slower).  ``'detail'``: patch inverse
            search with variational refinement at full resolution (sharp
            motion boundaries and large motion in clean, textured frames;
            worse than ``'balanced'`` on noisy frames and under changing
            illumination).
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
    'detail': {
        'method': 'patch_search',
        'sigma': 4.0,
        'reliability_threshold': 1e-4,
        'levels': 1,
        'alpha': 20.0,
        'iterations': 10,
        'warps': 1,
    },
}
