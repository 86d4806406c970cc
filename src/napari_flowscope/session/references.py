"""Reference strategies: what each frame of a stack is registered to.

A strategy is a small immutable description.  The session asks it for the
initial reference image (:meth:`~ReferenceStrategy.build`); only
:class:`AdaptiveReference` changes the reference while the run goes on.
All reference images are float32 ``(Y, X)`` (volumes: ``(Z, Y, X)``) in the
intensity units of the frames (for multichannel stacks: of the channel
combination used for flow).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from napari_flowscope.engine import FlowEstimator, FlowParams, warp
from napari_flowscope.engine.volume import volume_flow_estimator, warp_volume

__all__ = [
    'AdaptiveReference',
    'FrameReference',
    'ImageReference',
    'PreviousReference',
    'RangeReference',
    'ReferenceStrategy',
    'as_reference_strategy',
    'preregistered_mean',
    'reference_from_string',
]

#: ``read(start, stop) -> (n, Y, X) or (n, Z, Y, X) float32``: frames as
#: used for flow.
FrameReader = Callable[[int, int], np.ndarray]

STATISTICS = ('mean', 'median')


class ReferenceStrategy:
    """Base of the reference strategies.

    Attributes
    ----------
    adaptive : bool
        False when the reference stays fixed for the whole run, so frames
        can be registered independently (and in parallel).
    """

    adaptive = False

    def build(
        self,
        read: FrameReader,
        n_frames: int,
        *,
        params: FlowParams,
        interpolation: str = 'linear',
        spacing=None,
        per_plane: bool = False,
    ) -> np.ndarray:
        """Initial reference image.

        Parameters
        ----------
        read : callable
            ``read(start, stop)`` returns frames ``start:stop`` as float32
            ``(n, Y, X)`` or, for volumes, ``(n, Z, Y, X)``.
        n_frames : int
            Length of the stack.
        params : FlowParams
            Used by strategies that pre-register frames.
        interpolation : {'linear', 'cubic'}
            Used by strategies that pre-register frames.
        spacing : tuple of float, optional
            Volumes: ``(z, y, x)`` voxel size, for pre-registration.
        per_plane : bool
            Volumes: pre-register plane by plane.

        Returns
        -------
        ndarray, shape (Y, X) / (Z, Y, X), or with channels last, float32
        """
        raise NotImplementedError

    def to_dict(self) -> dict:
        """JSON-serialisable description (for ``params.json``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class FrameReference(ReferenceStrategy):
    """Register every frame to one frame of the stack.

    Parameters
    ----------
    index : int
        Frame index; negative values count from the end.
    """

    index: int = 0

    def build(self, read, n_frames, *, params, **options):
        index = _check_index(self.index, n_frames)
        return read(index, index + 1)[0]

    def to_dict(self):
        return {'strategy': 'frame', 'index': self.index}


@dataclass(frozen=True)
class RangeReference(ReferenceStrategy):
    """Register every frame to the mean or median of a frame range.

    Parameters
    ----------
    start, stop : int
        Frame range ``start:stop`` (``stop`` excluded, clipped to the
        stack length).
    statistic : {'mean', 'median'}
        How the range frames are combined.
    preregister : bool
        Register the range frames to their own mean first, then combine
        the registered frames (as PyFlowReg does), so drift within the
        range does not blur the reference.
    """

    start: int = 0
    stop: int = 50
    statistic: str = 'mean'
    preregister: bool = False

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(
                f'statistic must be one of {STATISTICS}; '
                f'got {self.statistic!r}'
            )
        if not 0 <= self.start < self.stop:
            raise ValueError(
                'need 0 <= start < stop; '
                f'got start={self.start}, stop={self.stop}'
            )

    def build(self, read, n_frames, *, params, **options):
        if self.start >= n_frames:
            raise ValueError(
                f'reference range starts at frame {self.start} but the '
                f'stack has {n_frames} frames'
            )
        frames = read(self.start, min(self.stop, n_frames))
        if self.preregister:
            return preregistered_mean(
                frames, params, statistic=self.statistic, **options
            )
        return _combine(frames, self.statistic)

    def to_dict(self):
        return {
            'strategy': 'range',
            'start': self.start,
            'stop': self.stop,
            'statistic': self.statistic,
            'preregister': self.preregister,
        }


@dataclass(frozen=True, eq=False)
class ImageReference(ReferenceStrategy):
    """Register every frame to a user-supplied image (e.g. another layer).

    Parameters
    ----------
    image : ndarray, shape (Y, X) or (Y, X, C)
        The reference; a volume ``(Z, Y, X)`` or ``(Z, Y, X, C)`` for a
        volumetric time-lapse.  A multichannel image is combined like the
        frames (the session's ``channel`` / weights).
    """

    image: np.ndarray = field(repr=False)

    def __post_init__(self):
        image = np.asarray(self.image)
        if image.ndim not in (2, 3, 4):
            raise ValueError(
                'reference image must be (Y, X), (Y, X, C), (Z, Y, X) or '
                f'(Z, Y, X, C); got shape {image.shape}'
            )
        object.__setattr__(self, 'image', image)

    def build(self, read, n_frames, *, params, **options):
        return self.image.astype(np.float32)

    def to_dict(self):
        return {'strategy': 'image', 'shape': list(self.image.shape)}


@dataclass(frozen=True)
class AdaptiveReference(ReferenceStrategy):
    """A reference that follows slow changes of the sample (FlowRegLive).

    The reference starts as the pre-registered mean of the first
    ``buffer_size`` frames.  After every ``update_interval`` frames the
    last registered frame is blended into it::

        reference = (1 - update_weight) * reference
                    + update_weight * registered

    and the flow of each frame starts from the previous frame's flow.
    Frames are therefore registered one after the other.

    Parameters
    ----------
    buffer_size : int
        Frames averaged into the initial reference.
    update_interval : int
        Frames between reference updates.
    update_weight : float
        Weight (0 to 1) of the registered frame in an update.
    """

    buffer_size: int = 50
    update_interval: int = 20
    update_weight: float = 0.2

    adaptive = True

    def __post_init__(self):
        if self.buffer_size < 1 or self.update_interval < 1:
            raise ValueError(
                'buffer_size and update_interval must be >= 1; got '
                f'{self.buffer_size} and {self.update_interval}'
            )
        if not 0.0 <= self.update_weight <= 1.0:
            raise ValueError(
                f'update_weight must be in [0, 1]; got {self.update_weight}'
            )

    def build(self, read, n_frames, *, params, **options):
        frames = read(0, min(self.buffer_size, n_frames))
        return preregistered_mean(frames, params, **options)

    def update_due(self, index: int) -> bool:
        """Whether frame ``index`` (0-based) is blended into the reference."""
        return (index + 1) % self.update_interval == 0

    def blend(
        self, reference: np.ndarray, registered: np.ndarray
    ) -> np.ndarray:
        """The updated reference, float32, shape of ``reference``."""
        weight = np.float32(self.update_weight)
        return (np.float32(1) - weight) * reference + weight * registered

    def to_dict(self):
        return {
            'strategy': 'adaptive',
            'buffer_size': self.buffer_size,
            'update_interval': self.update_interval,
            'update_weight': self.update_weight,
        }


@dataclass(frozen=True)
class PreviousReference(AdaptiveReference):
    """Each frame registered to the previous frame, once registered.

    What Fiji's StackReg does: frame 1 is registered to frame 0, frame 2 to
    the registered frame 1, and so on, so the whole stack ends up aligned
    with frame 0 while each match is between neighbours, which stay alike
    when the sample changes slowly.  Errors of the matches add up along the
    stack.  It is an :class:`AdaptiveReference` that starts from frame 0
    and replaces the reference with every registered frame.
    """

    buffer_size: int = field(default=1, init=False)
    update_interval: int = field(default=1, init=False)
    update_weight: float = field(default=1.0, init=False)

    def build(self, read, n_frames, **_options):
        return np.asarray(read(0, 1)[0], dtype=np.float32)

    def to_dict(self):
        return {'strategy': 'previous'}


def preregistered_mean(
    frames: np.ndarray,
    params: FlowParams | None = None,
    *,
    statistic: str = 'mean',
    interpolation: str = 'linear',
    spacing=None,
    per_plane: bool = False,
) -> np.ndarray:
    """Register frames to their own mean, then combine them.

    Parameters
    ----------
    frames : ndarray, shape (n, Y, X) or (n, Z, Y, X)
        Frames (or volumes) to average.
    params : FlowParams, optional
        Flow parameters (default preset when None).
    statistic : {'mean', 'median'}
        How the registered frames are combined.
    interpolation : {'linear', 'cubic'}
        Interpolation of the warp.
    spacing : tuple of float, optional
        Volumes: ``(z, y, x)`` voxel size.
    per_plane : bool
        Volumes: register plane by plane with the 2-D engine.

    Returns
    -------
    ndarray, shape (Y, X) or (Z, Y, X), float32
        A sharper reference than the plain mean when the frames drift.
    """
    frames = np.asarray(frames, dtype=np.float32)
    plain_mean = frames.mean(axis=0)
    if frames.ndim == 4:
        estimator = volume_flow_estimator(
            plain_mean, params, spacing=spacing, per_plane=per_plane
        )
        apply = warp_volume
    else:
        estimator = FlowEstimator(plain_mean, params)
        apply = warp
    registered = np.empty_like(frames)
    for i, frame in enumerate(frames):
        flow = estimator.estimate(frame)
        registered[i] = apply(frame, flow.w, interpolation=interpolation)
    return _combine(registered, statistic)


def as_reference_strategy(reference) -> ReferenceStrategy:
    """A strategy from a strategy, an image (ndarray) or a frame index."""
    if isinstance(reference, ReferenceStrategy):
        return reference
    if isinstance(reference, (int, np.integer)) and not isinstance(
        reference, bool
    ):
        return FrameReference(int(reference))
    if isinstance(reference, str):
        return reference_from_string(reference)
    if hasattr(reference, 'shape') and hasattr(reference, '__array__'):
        return ImageReference(np.asarray(reference))
    raise TypeError(
        'reference must be a reference strategy, an image array or a '
        f'frame index; got {type(reference).__name__}'
    )


def reference_from_string(text: str) -> ReferenceStrategy:
    """Parse the command-line spelling of a reference strategy.

    Accepted: ``frame:N``, ``range:A-B``, ``range:A-B:median``,
    ``range:A-B:mean:preregister``, ``previous``, ``adaptive`` and
    ``adaptive:BUFFER:INTERVAL:WEIGHT`` (trailing parts optional).
    """
    kind, _, rest = text.strip().partition(':')
    parts = [part for part in rest.split(':') if part] if rest else []
    try:
        if kind == 'frame':
            return FrameReference(int(parts[0]) if parts else 0)
        if kind == 'range':
            start, _, stop = parts[0].partition('-')
            options = parts[1:]
            unknown = set(options) - {*STATISTICS, 'preregister'}
            if unknown or not stop:
                raise ValueError
            statistic = 'median' if 'median' in options else 'mean'
            return RangeReference(
                int(start),
                int(stop),
                statistic=statistic,
                preregister='preregister' in options,
            )
        if kind == 'previous' and not parts:
            return PreviousReference()
        if kind == 'adaptive':
            if len(parts) > 3:
                raise ValueError
            casts = (int, int, float)
            values = [
                cast(part) for cast, part in zip(casts, parts, strict=False)
            ]
            return AdaptiveReference(*values)
    except (ValueError, IndexError):
        pass
    raise ValueError(
        f'cannot read reference {text!r}; use frame:N, range:A-B, '
        'range:A-B:median, range:A-B:mean:preregister, previous or adaptive'
    )


def _check_index(index: int, n_frames: int) -> int:
    if not -n_frames <= index < n_frames:
        raise ValueError(
            f'reference frame {index} is outside a stack of {n_frames} frames'
        )
    return index % n_frames


def _combine(frames: np.ndarray, statistic: str) -> np.ndarray:
    if statistic == 'median':
        return np.median(frames, axis=0).astype(np.float32)
    return frames.mean(axis=0, dtype=np.float32)
