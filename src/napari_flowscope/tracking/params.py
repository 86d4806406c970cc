"""Parameters of sparse feature tracking."""

from dataclasses import asdict, dataclass, fields

MODES = ('lucas_kanade', 'dense_flow')
FLOW_REFERENCES = ('first', 'previous')


@dataclass(frozen=True)
class TrackingParams:
    """How features are found and followed.

    Parameters
    ----------
    mode : {'lucas_kanade', 'dense_flow'}
        ``'lucas_kanade'`` follows each point from frame to frame with
        OpenCV's pyramidal Lucas-Kanade; ``'dense_flow'`` carries points
        through the session's dense flow fields (see
        :func:`napari_flowscope.tracking.advect`).
    flow_reference : {'first', 'previous'}
        Dense mode only: ``'first'`` measures every frame's flow against
        frame 0 (one lookup per frame, no drift, but fails once content has
        moved further than the flow can reach); ``'previous'`` measures it
        against the frame before and chains the steps (follows large
        cumulative motion, errors add up like in Lucas-Kanade mode).
    max_corners : int
        Most points alive at once; detection and re-detection never exceed
        it (user-given seeds may).
    quality_level : float
        Shi-Tomasi threshold, relative to the strongest corner's minimum
        eigenvalue, in (0, 1].
    min_distance : float
        Minimum distance (px) between detected points, and between a newly
        detected point and the points already being tracked.
    block_size : int
        Side (px) of the window over which the structure tensor is summed.
    mask_percentile : float or None
        Detect only where a frame is brighter than this percentile of its own
        intensities (None: everywhere).
    win_size : int
        Side (px) of the Lucas-Kanade window at each pyramid level.
    max_level : int
        Number of pyramid levels above the full resolution (0: none).
    max_iterations, epsilon : int, float
        Lucas-Kanade stops after ``max_iterations`` or when an update is
        shorter than ``epsilon`` px.
    fb_threshold : float or None
        Forward-backward check: a point is dropped when tracking it forward
        and then back lands more than this many px from where it started.
        None skips the backward pass (faster, no check).
    redetect_every : int
        Every this many frames, detect new corners to replace lost points
        (0: never). New points get new track ids and keep ``min_distance``
        from the points being tracked.
    intensity_percentiles : tuple of float
        Percentiles of the stack mapped to 0 and 255 when frames are turned
        into the 8-bit images OpenCV's tracker needs.
    """

    mode: str = 'lucas_kanade'
    flow_reference: str = 'first'
    max_corners: int = 200
    quality_level: float = 0.01
    min_distance: float = 7.0
    block_size: int = 7
    mask_percentile: float | None = None
    win_size: int = 21
    max_level: int = 3
    max_iterations: int = 30
    epsilon: float = 0.01
    fb_threshold: float | None = 1.0
    redetect_every: int = 0
    intensity_percentiles: tuple[float, float] = (0.5, 99.99)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}; got {self.mode!r}')
        if self.flow_reference not in FLOW_REFERENCES:
            raise ValueError(
                f'flow_reference must be one of {FLOW_REFERENCES}; '
                f'got {self.flow_reference!r}'
            )
        _check(self.max_corners >= 1, 'max_corners must be >= 1')
        _check(0 < self.quality_level <= 1, 'quality_level must be in (0, 1]')
        _check(self.min_distance >= 0, 'min_distance must be >= 0')
        _check(self.block_size >= 1, 'block_size must be >= 1')
        _check(
            self.mask_percentile is None or 0 <= self.mask_percentile < 100,
            'mask_percentile must be None or in [0, 100)',
        )
        _check(self.win_size >= 3, 'win_size must be >= 3')
        _check(self.max_level >= 0, 'max_level must be >= 0')
        _check(self.max_iterations >= 1, 'max_iterations must be >= 1')
        _check(self.epsilon > 0, 'epsilon must be > 0')
        _check(
            self.fb_threshold is None or self.fb_threshold > 0,
            'fb_threshold must be None or > 0',
        )
        _check(self.redetect_every >= 0, 'redetect_every must be >= 0')
        low, high = self.intensity_percentiles
        _check(
            0 <= low < high <= 100,
            'intensity_percentiles must be (low, high) with '
            '0 <= low < high <= 100',
        )
        object.__setattr__(
            self, 'intensity_percentiles', (float(low), float(high))
        )

    def to_dict(self):
        """Plain JSON-ready dictionary."""
        values = asdict(self)
        values['intensity_percentiles'] = list(self.intensity_percentiles)
        return values

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        known = {field.name for field in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f'unknown tracking parameters: {sorted(unknown)}')
        values = dict(values)
        if 'intensity_percentiles' in values:
            values['intensity_percentiles'] = tuple(
                values['intensity_percentiles']
            )
        return cls(**values)


def _check(condition, message):
    if not condition:
        raise ValueError(message)
