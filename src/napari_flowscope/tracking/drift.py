"""Drift correction: keep each track on the feature it started on.

After every frame-to-frame step the tracker hands the stepped positions to
:meth:`DriftCorrection.correct`, which moves each point to where the
track's own template fits best (:mod:`~napari_flowscope.tracking.
template`) and decides, per track, between three outcomes by the template
match score ``s`` (a weighted zero-mean normalised cross-correlation, 1 =
identical up to brightness and contrast):

* ``s >= params.template_renewal``: the template still looks like the
  feature. The point is where the template fits; the template is kept, so
  no error accumulates however long the track.
* ``params.min_match <= s < params.template_renewal``: the feature has
  changed its looks (it turned, deformed, a neighbour came close). The
  point is still where the template fits, and the template is renewed from
  this frame at that point: the "last trusted" template, which drifts by
  at most one match per renewal rather than one step per frame.
* no fit within ``params.max_correction`` px of the stepped position,
  or ``s < params.min_match``: the step and the template disagree, or the
  feature is gone. Before giving up, the fit is tried once more from the
  track's constant-velocity prediction (where it would be had it kept its
  last velocity), which rescues steps that latched onto a neighbour or
  the background; if that fails too, the track ends.

This is the drift-correcting template update of Matthews, Ishikawa and
Baker (2004), with the frame-to-frame step standing in for their update
of the template to the previous frame, and a renewal rule based on the
match score so that slowly changing features can be followed.

With ``params.drift_correction == 'spot'`` each corrected point is then
moved onto the centre of a Gaussian fitted to the spot under it
(:func:`~napari_flowscope.tracking.spots.fit_spots`), which removes the
error the template carried from the frame it was cut in.
"""

import numpy as np

from .lucas_kanade import inside
from .spots import fit_spots
from .template import Templates, align_templates, cut_templates

# The template's pixels are weighted by a Gaussian of this fraction of its
# side: about 3 px for the default 15 px template, the size of a
# diffraction-limited spot plus its nearest surroundings.
_WEIGHT_FRACTION = 0.2


class DriftCorrection:
    """Per-track templates and velocities, in the tracker's track order.

    Parameters
    ----------
    params : TrackingParams
        ``drift_correction`` (``'template'`` or ``'spot'``),
        ``template_size``, ``template_renewal``, ``min_match``,
        ``max_correction``.

    Notes
    -----
    The tracker keeps its tracks in arrays; this object keeps its per-track
    state in the same order. :meth:`correct` forgets the tracks that end
    (it decides that for all of them, given whether the step succeeded)
    and :meth:`add` appends new tracks at the end.
    """

    def __init__(self, params):
        self.params = params
        self.radius = params.template_size // 2
        self.sigma = _WEIGHT_FRACTION * params.template_size
        self.templates = Templates(
            np.empty(
                (0, 2 * self.radius + 1, 2 * self.radius + 1), np.float32
            ),
            np.empty((0, 2), np.float32),
        )
        self.velocity = np.empty((0, 2), np.float32)

    def __len__(self):
        return len(self.templates)

    def add(self, frame, positions):
        """Start tracks at ``positions`` ``[y, x]`` (N, 2) of ``frame``.

        Returns the positions the tracks start at: the spot centres in
        ``'spot'`` mode (where a spot is found), else ``positions``.
        """
        positions = self._centred(frame, positions)
        positions = np.clip(positions, 0, np.subtract(frame.shape, 1)).astype(
            np.float32
        )
        self.templates = Templates.concatenate(
            [
                self.templates,
                cut_templates(frame, positions, radius=self.radius),
            ]
        )
        self.velocity = np.concatenate(
            [self.velocity, np.zeros((len(positions), 2), np.float32)]
        )
        return positions

    def _select(self, keep):
        self.templates = self.templates[keep]
        self.velocity = self.velocity[keep]

    def correct(self, frame, previous, stepped, stepped_valid):
        """Drift-corrected positions of every track in ``frame``.

        Parameters
        ----------
        frame : ndarray, shape (Y, X)
            The new frame (the same 8-bit image the step used).
        previous : ndarray, shape (N, 2)
            ``[y, x]`` of each track in the frame before.
        stepped : ndarray, shape (N, 2)
            ``[y, x]`` after the frame-to-frame step.
        stepped_valid : ndarray, shape (N,), bool
            Whether the step itself succeeded (converged, passed the
            forward-backward check, stayed inside the frame).

        Returns
        -------
        positions : ndarray, shape (N, 2), float32
            Corrected ``[y, x]`` (the stepped position where ``kept`` is
            False).
        kept : ndarray, shape (N,), bool
            False for the tracks that end here; this object has already
            forgotten them.
        score : ndarray, shape (N,), float32
            Template match score of each point.
        """
        params = self.params
        previous = np.asarray(previous, np.float32).reshape(-1, 2)
        stepped = np.asarray(stepped, np.float32).reshape(-1, 2)
        stepped_valid = np.asarray(stepped_valid, bool)
        positions, kept, score = self._fit(frame, stepped, stepped_valid)
        retry = ~kept
        if retry.any():
            predicted = previous[retry] + self.velocity[retry]
            again, again_kept, again_score = self._fit(
                frame,
                predicted,
                np.ones(len(predicted), bool),
                templates=self.templates[retry],
            )
            positions[retry] = again
            kept[retry] = again_kept
            score[retry] = again_score
        if params.drift_correction == 'spot' and kept.any():
            positions[kept] = self._centred(frame, positions[kept])
            kept &= inside(positions, frame.shape)
        positions[~kept] = stepped[~kept]
        renew = kept & (score < params.template_renewal)
        if renew.any():
            self.templates = self.templates.replaced(
                renew,
                cut_templates(frame, positions[renew], radius=self.radius),
            )
        self.velocity = np.where(
            kept[:, None], positions - previous, self.velocity
        ).astype(np.float32)
        self._select(kept)
        return positions, kept, score

    def _fit(self, frame, start, valid, templates=None):
        templates = self.templates if templates is None else templates
        positions, converged, score = align_templates(
            frame, templates, start, sigma=self.sigma
        )
        moved = np.hypot(*(positions - start).T)
        kept = (
            valid
            & converged
            & inside(positions, frame.shape)
            & (moved <= self.params.max_correction)
            & (score >= self.params.min_match)
        )
        return positions, kept, score

    def _centred(self, frame, positions):
        """Spot centres in ``'spot'`` mode, the positions unchanged
        otherwise."""
        positions = np.asarray(positions, np.float32).reshape(-1, 2)
        if self.params.drift_correction != 'spot':
            return positions
        centres, _ = fit_spots(
            frame, positions, radius=self.radius, sigma=self.sigma
        )
        return centres
