"""Sample data: the synthetic sequences as calibrated napari layers.

The sequences themselves (determinism, exact ground truth) are tested with
napari_flowscope.synthetic; here each sample is compared with the sequence it
wraps (generated once per process: the tissue samples take seconds).
"""

import numpy as np
import pytest

from napari_flowscope import _sample_data

SAMPLES = [
    'moving_disk',
    'rotating_particles',
    'drifting_tissue',
    'bleaching_tissue',
]


@pytest.mark.parametrize('key', SAMPLES)
def test_sample_is_a_calibrated_grey_time_lapse(key):
    layers = getattr(_sample_data, key)()
    data, kwargs, layer_type = layers[-1]  # the data come last
    assert layer_type == 'image'
    assert data.ndim == 3
    assert data.dtype == np.float32
    assert kwargs['colormap'] == 'gray'
    assert kwargs['axis_labels'] == ('t', 'y', 'x')
    assert len(kwargs['scale']) == len(kwargs['units']) == 3
    assert kwargs['units'][0] == 's'
    np.testing.assert_array_equal(data, _sample_data._sequence(key).stack)


def test_moving_disk_is_the_notebook_disk():
    [(data, _, _)] = _sample_data.moving_disk()
    assert data.shape[1:] == (60, 60)
    # The disk's centre of mass moves one pixel down and right per frame.
    y, x = np.mgrid[0:60, 0:60]
    centres = [
        (np.sum(frame * y) / frame.sum(), np.sum(frame * x) / frame.sum())
        for frame in data[:5]
    ]
    np.testing.assert_allclose(np.diff(centres, axis=0), 1.0, atol=0.01)


def test_drifting_tissue_returns_its_ground_truth_flow():
    vx, vy, stack = _sample_data.drifting_tissue()
    truth = _sample_data._sequence('drifting_tissue').flow
    np.testing.assert_array_equal(vx[0], truth[..., 0])
    np.testing.assert_array_equal(vy[0], truth[..., 1])
    assert vx[1]['metadata']['flow_component'] == 'x'
    assert vy[1]['metadata']['flow_component'] == 'y'
    assert vx[1]['scale'] == stack[1]['scale']
    low, high = vx[1]['contrast_limits']
    assert low == -high
    assert high == pytest.approx(np.abs(truth).max())


def test_samples_are_fresh_copies():
    first = _sample_data.moving_disk()[0][0]
    first[:] = -1
    assert _sample_data.moving_disk()[0][0].min() >= 0


def test_bleaching_tissue_fades():
    [(data, _, _)] = _sample_data.bleaching_tissue()
    assert data[-1].mean() < 0.6 * data[0].mean()
