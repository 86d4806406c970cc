"""Parameters of sparse feature tracking."""

from dataclasses import asdict, dataclass, fields

MODES = ('lucas_kanade', 'dense_flow')
FLOW_REFERENCES = ('first', 'previous')
DRIFT_CORRECTIONS = ('off', 'auto', 'template', 'spot')


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
    drift_correction : {'auto', 'template', 'spot', 'off'}
        After each frame-to-frame step (Lucas-Kanade, or dense flow against
        the previous frame), move every point back onto its feature so that
        step errors do not add up along long tracks (see
        :mod:`napari_flowscope.tracking.drift`). ``'template'``: to where
        its track's own template fits best (for corners, texture, spots).
        ``'auto'``: the same, except for a point on the centre of a bright
        object larger than the template (a nucleus, a cell body), which
        follows the object's intensity-weighted centroid instead, since
        its texture moves inside it. ``'spot'``: ``'auto'``, and points
        that follow their template are also put on the centre of a
        Gaussian fitted to the spot under them (beads, vesicles, puncta;
        tracks then start on the spot centre nearest each seed).
        ``'off'``: plain frame-to-frame tracking. Dense flow against the
        first frame does not drift and ignores it.
    template_size : int
        Side (px, odd, >= 5) of each track's template; its pixels are
        weighted by a Gaussian of a fifth of that, so the feature's centre
        counts most. About twice the feature's diameter for spots.
    template_renewal : float
        Renew a track's template from the current frame when its match
        score (weighted zero-mean normalised cross-correlation, 1 =
        identical up to brightness and contrast) falls below this.
    min_match : float
        End a track when its template matches worse than this (the
        feature has gone), or cannot be fitted within ``max_correction``.
    max_correction : float
        Largest distance (px) between the stepped position and the template
        fit; a track whose template fits further away ends (unless the fit
        from its constant-velocity prediction succeeds).
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
    drift_correction: str = 'auto'
    template_size: int = 15
    template_renewal: float = 0.8
    min_match: float = 0.5
    max_correction: float = 3.0
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
        if self.drift_correction not in DRIFT_CORRECTIONS:
            raise ValueError(
                f'drift_correction must be one of {DRIFT_CORRECTIONS}; '
                f'got {self.drift_correction!r}'
            )
        _check(
            self.template_size >= 5 and self.template_size % 2 == 1,
            'template_size must be odd and >= 5',
        )
        _check(
            -1 <= self.min_match <= self.template_renewal <= 1,
            'need -1 <= min_match <= template_renewal <= 1',
        )
        _check(self.max_correction > 0, 'max_correction must be > 0')
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
