"""Ground truth of the synthetic sequences is exact (pure tier)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_flowscope import synthetic


def _register_with_truth(sequence, t):
    height, width = sequence.reference.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    w = sequence.flow[t]
    # cubic B-splines: OpenCV's INTER_CUBIC remap is biased (see synthetic)
    return ndi.map_coordinates(
        sequence.stack[t],
        [y + w[..., 1], x + w[..., 0]],
        order=3,
        mode='mirror',
    )


@pytest.mark.parametrize(
    'make',
    [
        lambda: synthetic.rigid_drift(n_frames=6, shape=(96, 96)),
        lambda: synthetic.nonrigid_motion(n_frames=6, shape=(96, 96)),
        lambda: synthetic.large_translation(n_frames=4, shape=(96, 96)),
        lambda: synthetic.drifting_tissue(n_frames=6, shape=(96, 96)),
        lambda: synthetic.moving_disk(n_frames=6),
    ],
)
def test_moving_frame_sampled_at_x_plus_w_is_the_reference(make):
    sequence = make()
    moved = np.abs(sequence.stack[-1] - sequence.reference)[sequence.valid]
    registered = _register_with_truth(sequence, len(sequence.stack) - 1)
    residual = np.abs(registered - sequence.reference)[sequence.valid]
    assert moved.mean() > 0.02  # there is real motion to undo
    assert residual.mean() < 0.005


def test_flow_sign_and_axis_order_of_a_translation():
    sequence = synthetic.large_translation(n_frames=3, shape=(64, 64))
    u, v = sequence.flow[2, 10, 10]
    assert u == pytest.approx(15 * np.cos(0.6), abs=1e-4)
    assert v == pytest.approx(15 * np.sin(0.6), abs=1e-4)


def test_moving_disk_moves_one_pixel_per_frame_diagonally():
    sequence = synthetic.moving_disk(n_frames=5)
    centroids = []
    for frame in sequence.stack:
        y, x = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]]
        centroids.append(
            [(frame * x).sum() / frame.sum(), (frame * y).sum() / frame.sum()]
        )
    np.testing.assert_allclose(np.diff(centroids, axis=0), 1.0, atol=1e-3)
    assert sequence.stack.shape == (5, 60, 60)


def test_bleaching_decays_intensity_while_motion_stays_known():
    sequence = synthetic.bleaching_tissue(n_frames=8, shape=(64, 64))
    means = sequence.stack.mean(axis=(1, 2))
    assert means[-1] < 0.7 * means[0]
    plain = synthetic.drifting_tissue(n_frames=8, shape=(64, 64))
    np.testing.assert_array_equal(sequence.flow, plain.flow)


def test_generators_are_deterministic():
    first = synthetic.drifting_tissue(n_frames=3, shape=(48, 48), seed=4)
    second = synthetic.drifting_tissue(n_frames=3, shape=(48, 48), seed=4)
    np.testing.assert_array_equal(first.stack, second.stack)
    assert first.stack.dtype == np.float32
    assert first.flow.dtype == np.float32
