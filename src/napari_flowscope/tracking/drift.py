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

**Objects larger than the template** (``'auto'`` and ``'spot'``). A
template sees only what lies under it; on a nucleus or cell body larger
than the template that is interior texture, which moves inside the object
as it deforms, so the template would carry the point away from the object
it marks. A track therefore follows the centroid of its object instead
(:func:`~napari_flowscope.tracking.blobs.blob_centroids`) when, in the
frame where it starts, the point sits on a bright blob (its
scale-normalised Laplacian peaks at a scale ``sigma`` with a response of at
least a tenth of the 8-bit range) whose radius ``sqrt(2) * sigma`` exceeds
the template's, within 15 % of that radius of the blob's centroid. The
track keeps its starting offset from the centroid; each step is refined to
the centroid of a disc of that radius, and the track ends where that
moves the point further than ``params.max_correction`` or the object's
brightness above its surroundings halves or doubles from one frame to the
next (it vanished or merged). Its ``match`` is still its template's score,
for information; it does not end the track.

With ``params.drift_correction == 'spot'`` each corrected template point is
then moved onto the centre of a Gaussian fitted to the spot under it
(:func:`~napari_flowscope.tracking.spots.fit_spots`), which removes the
error the template carried from the frame it was cut in.
"""

import numpy as np

from .blobs import blob_centroids, blob_scales
from .lucas_kanade import inside
from .spots import fit_spots
from .template import Templates, align_templates, cut_templates

# The template's pixels are weighted by a Gaussian of this fraction of its
# side: about 3 px for the default 15 px template, the size of a
# diffraction-limited spot plus its nearest surroundings.
_WEIGHT_FRACTION = 0.2
# A bright object: its Laplacian response (8-bit frames, so about 0.74 x
# the contrast of a disc) is at least this.
_MIN_OBJECT_RESPONSE = 0.1 * 255
# The point marks the object (rather than some texture on it) when it lies
# within this fraction of the object's radius of the object's centroid;
# the starting offset then turns with the object by little.
_CENTRED_FRACTION = 0.15
# The object's brightness above its surroundings may change by at most
# this factor from one frame to the next (gradual bleaching is fine).
_MAX_MASS_CHANGE = 2.0


class DriftCorrection:
    """Per-track templates and velocities, in the tracker's track order.

    Parameters
    ----------
    params : TrackingParams
        ``drift_correction`` (``'auto'``, ``'template'`` or ``'spot'``),
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
        self.objects = params.drift_correction in ('auto', 'spot')
        self.templates = Templates(
            np.empty(
                (0, 2 * self.radius + 1, 2 * self.radius + 1), np.float32
            ),
            np.empty((0, 2), np.float32),
        )
        self.velocity = np.empty((0, 2), np.float32)
        # Tracks that follow an object's centroid: its disc radius (0 for
        # template tracks), the point's offset from the centroid, and the
        # object's mass above its background in the last frame.
        self.object_radius = np.empty(0, np.float32)
        self.offset = np.empty((0, 2), np.float32)
        self.mass = np.empty(0, np.float32)

    def __len__(self):
        return len(self.templates)

    def add(self, frame, positions):
        """Start tracks at ``positions`` ``[y, x]`` (N, 2) of ``frame``.

        Returns the positions the tracks start at: the spot centres in
        ``'spot'`` mode (where a spot is found), else ``positions``.
        """
        positions = np.clip(
            np.asarray(positions, np.float32).reshape(-1, 2),
            0,
            np.subtract(frame.shape, 1),
        ).astype(np.float32)
        radius, offset, mass = self._objects(frame, positions)
        template = radius == 0
        positions[template] = self._centred(frame, positions[template])
        positions = np.clip(positions, 0, np.subtract(frame.shape, 1))
        self.templates = Templates.concatenate(
            [
                self.templates,
                cut_templates(frame, positions, radius=self.radius),
            ]
        )
        self.velocity = np.concatenate(
            [self.velocity, np.zeros((len(positions), 2), np.float32)]
        )
        self.object_radius = np.concatenate([self.object_radius, radius])
        self.offset = np.concatenate([self.offset, offset])
        self.mass = np.concatenate([self.mass, mass])
        return positions

    def _objects(self, frame, positions):
        """Disc radius (0: not an object track), offset from the centroid
        and mass of the object under each new point."""
        n = len(positions)
        radius = np.zeros(n, np.float32)
        offset = np.zeros((n, 2), np.float32)
        mass = np.zeros(n, np.float32)
        if not self.objects or not n:
            return radius, offset, mass
        sigma, response, peaked = blob_scales(frame, positions)
        size = np.float32(np.sqrt(2)) * sigma
        candidate = (
            peaked & (response >= _MIN_OBJECT_RESPONSE) & (size > self.radius)
        )
        # Mean shift moves steadily away from a point off the object's
        # centre: three steps tell, and only the centred points go on to
        # converge.
        index = np.flatnonzero(candidate)
        centres = positions[index]
        found = np.zeros(len(index), np.float32)
        for iterations in (3, 10):
            if not len(index):
                break
            centres, found = blob_centroids(
                frame,
                centres,
                radii=size[index],
                max_iterations=iterations,
            )
            away = np.hypot(*(positions[index] - centres).T)
            keep = (found > 0) & (away <= _CENTRED_FRACTION * size[index])
            index, centres, found = index[keep], centres[keep], found[keep]
        radius[index] = size[index]
        offset[index] = positions[index] - centres
        mass[index] = found
        return radius, offset, mass

    def _select(self, keep):
        self.templates = self.templates[keep]
        self.velocity = self.velocity[keep]
        self.object_radius = self.object_radius[keep]
        self.offset = self.offset[keep]
        self.mass = self.mass[keep]

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
        on_object = self.object_radius > 0
        positions, kept, score, mass = self._refine(
            frame, stepped, stepped_valid, on_object
        )
        retry = ~kept
        if retry.any():
            predicted = previous[retry] + self.velocity[retry]
            (
                positions[retry],
                kept[retry],
                score[retry],
                mass[retry],
            ) = self._refine(
                frame,
                predicted,
                np.ones(len(predicted), bool),
                on_object[retry],
                select=retry,
            )
        centre = kept & ~on_object
        if params.drift_correction == 'spot' and centre.any():
            positions[centre] = self._centred(frame, positions[centre])
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
        self.mass = np.where(on_object & kept, mass, self.mass).astype(
            np.float32
        )
        self._select(kept)
        return positions, kept, score

    def _refine(self, frame, start, valid, on_object, select=slice(None)):
        """Template fit, or object centroid, of the selected tracks from
        ``start``: positions, kept, score, object mass."""
        templates = self.templates[select]
        positions, converged, score = align_templates(
            frame,
            templates[~on_object],
            start[~on_object],
            sigma=self.sigma,
        )
        fitted = np.array(start, np.float32)
        fitted[~on_object] = positions
        good = np.zeros(len(start), bool)
        good[~on_object] = converged & (score >= self.params.min_match)
        matched = np.zeros(len(start), np.float32)
        matched[~on_object] = score
        mass = np.zeros(len(start), np.float32)
        if on_object.any():
            offset = self.offset[select][on_object]
            centres, found = blob_centroids(
                frame,
                start[on_object] - offset,
                radii=self.object_radius[select][on_object],
            )
            fitted[on_object] = centres + offset
            change = found / np.maximum(
                self.mass[select][on_object], np.finfo(np.float32).tiny
            )
            good[on_object] = (change >= 1 / _MAX_MASS_CHANGE) & (
                change <= _MAX_MASS_CHANGE
            )
            mass[on_object] = found
            # The template is not what places these points; its score is
            # reported (and renews the template) but ends nothing.
            _, _, matched[on_object] = align_templates(
                frame,
                templates[on_object],
                fitted[on_object],
                sigma=self.sigma,
                max_iterations=0,
            )
        moved = np.hypot(*(fitted - start).T)
        kept = (
            valid
            & good
            & inside(fitted, frame.shape)
            & (moved <= self.params.max_correction)
        )
        return fitted, kept, matched, mass

    def _centred(self, frame, positions):
        """Spot centres in ``'spot'`` mode, the positions unchanged
        otherwise."""
        positions = np.asarray(positions, np.float32).reshape(-1, 2)
        if self.params.drift_correction != 'spot' or not len(positions):
            return positions
        centres, _ = fit_spots(
            frame, positions, radius=self.radius, sigma=self.sigma
        )
        return centres
