"""Tracking the annotated Cell Tracking Challenge nuclei (skips without
the real data)."""

import numpy as np
import pytest

from napari_flowscope import track_features

pytestmark = pytest.mark.realdata


def test_nuclei_stay_within_two_pixels_of_their_annotation(real_data):
    import tifffile

    folder = real_data / 'ctc_timelapse_napari'
    stack = tifffile.imread(folder / '2D_timelapse.tif')
    annotated = np.load(folder / 'timelapse_track.npy')
    first = annotated[annotated[:, 1] == 0]
    tracks = track_features(stack, seeds=first[:, 2:])

    errors = []
    for index, track_id in enumerate(first[:, 0]):
        truth = annotated[annotated[:, 0] == track_id]
        mine = tracks.data[tracks.data[:, 0] == index]
        _, i, j = np.intersect1d(truth[:, 1], mine[:, 1], return_indices=True)
        errors.append(np.hypot(*(truth[i, 2:] - mine[j, 2:]).T))
    errors = np.concatenate(errors)
    # Not tracking at all leaves the seeds a median 11 px away.
    assert len(errors) > 250
    assert np.median(errors) < 1.5
