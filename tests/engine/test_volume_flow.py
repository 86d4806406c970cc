"""3-D flow (estimate_volume_flow, warp_volume) against exact ground truth.

The synthetic volumes move by a translation of several voxels along every
axis plus a smooth deformation defined on the moving grid; their ground
truth on the reference grid solves ``w(p) = d(p + w(p))`` (fixed-point
iteration in :func:`napari_flowscope.synthetic.drifting_volume`).
"""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_flowscope import synthetic
from napari_flowscope.engine import FlowParams
from napari_flowscope.engine.volume import (
    VolumeFlowEstimator,
    decimate_volume_flow,
    displacement_length,
    estimate_volume_flow,
    vector_steps,
    warp_volume,
)
from napari_flowscope.engine.volume.filters import blur, gradients
from napari_flowscope.engine.volume.lucas_kanade import min_eigenvalue
from napari_flowscope.engine.volume.pyramid import plan_levels


@pytest.fixture(scope='module')
def volumes():
    return synthetic.drifting_volume(
        n_frames=3, shape=(20, 64, 64), shift=(4.0, -3.0, 2.5), noise=0.01
    )


def mean_error(w, truth, valid):
    return float(np.linalg.norm(w - truth, axis=-1)[valid].mean())


def test_ground_truth_registers_each_volume_onto_the_reference(volumes):
    for t in (1, 2):
        truth = volumes.flow[t]
        # several voxels along each axis: x, y, z
        assert np.abs(truth[volumes.valid].mean(axis=0)).min() > 0.9
        registered = warp_volume(
            volumes.stack[t], truth, interpolation='cubic'
        )
        difference = np.abs(registered - volumes.reference)[volumes.valid]
        # only the noise (0.01) and spline interpolation remain
        assert difference.mean() < 0.015


@pytest.mark.parametrize('preset', ['balanced', 'quality'])
def test_drift_and_deformation_recovered(volumes, preset):
    estimator = VolumeFlowEstimator(
        volumes.reference, FlowParams.preset(preset)
    )
    for t in (1, 2):
        field = estimator.estimate(volumes.stack[t])
        assert field.w.shape == (*volumes.reference.shape, 3)
        assert field.w.dtype == np.float32
        error = mean_error(field.w, volumes.flow[t], volumes.valid)
        assert error < 0.15, (preset, t, error)


def test_sign_and_axis_order_of_known_shifts():
    reference = synthetic.volume_texture((32, 48, 48), seed=1)
    # Away from the faces, where entering content biases the flow (as at
    # the borders of a 2-D frame).
    inner = (slice(10, -10), slice(12, -12), slice(12, -12))
    # content moves +2 voxels along z (planes), then +2 along x (columns)
    for axis, component in ((0, 2), (2, 0)):
        moving = ndi.shift(reference, np.roll([2, 0, 0], axis), order=1)
        w = estimate_volume_flow(reference, moving).w
        expected = np.roll([2.0, 0.0, 0.0], component)
        np.testing.assert_allclose(
            np.median(w[inner].reshape(-1, 3), axis=0), expected, atol=0.03
        )


def test_zero_motion_gives_zero_flow(volumes):
    field = estimate_volume_flow(volumes.reference, volumes.reference.copy())
    assert np.abs(field.w).max() < 1e-3


def test_anisotropic_voxels_keep_their_planes_and_are_measured():
    sequence = synthetic.drifting_volume(
        n_frames=2,
        shape=(10, 64, 64),
        spacing=(3.0, 1.0, 1.0),
        shift=(3.0, 2.0, 1.0),
        noise=0.01,
    )
    estimator = VolumeFlowEstimator(
        sequence.reference, spacing=sequence.spacing
    )
    # Z is only halved once its voxels are as thin as the coarse pixels,
    # and never below 4 planes.
    assert [level.shape[0] for level in estimator.levels] == [10, 10, 10, 5]
    w = estimator.estimate(sequence.stack[1]).w
    assert mean_error(w, sequence.flow[1], sequence.valid) < 0.15


def test_pyramid_plan_isotropic_and_thin_stacks():
    isotropic = plan_levels((32, 128, 128), (1, 1, 1), 5)
    assert [level.shape for level in isotropic] == [
        (32, 128, 128),
        (16, 64, 64),
        (8, 32, 32),
        (4, 16, 16),
        (4, 8, 8),
    ]
    assert isotropic[1].window(4.0) == (4.0, 4.0, 4.0)
    thin = plan_levels((5, 64, 64), (2.0, 0.5, 0.5), 5)
    assert {level.shape[0] for level in thin} == {5}
    # the window spans the same physical distance along every axis
    assert thin[0].window(4.0) == pytest.approx((1.0, 4.0, 4.0))


def test_warm_start_from_the_truth_stays_there(volumes):
    estimator = VolumeFlowEstimator(volumes.reference)
    w = estimator.estimate(volumes.stack[2], init=volumes.flow[2]).w
    assert mean_error(w, volumes.flow[2], volumes.valid) < 0.15


def test_untextured_region_is_filled_from_its_surroundings():
    shape = (24, 64, 64)
    texture = synthetic.volume_texture(shape, seed=3)
    distance = np.sqrt(
        sum(
            (index - n // 2) ** 2
            for index, n in zip(np.indices(shape), shape, strict=True)
        )
    )
    hole = distance < 11
    texture[hole] = 0.5
    moving = ndi.shift(texture, (0.0, 0.0, 1.5), order=3, mode='nearest')
    # A 2 px window (with the pyramid blurs, about 6 px of reach) leaves
    # the middle of the hole without texture.
    field = estimate_volume_flow(texture, moving, FlowParams(sigma=2.0))
    assert (field.reliability[distance < 4] < 1e-4).all()
    np.testing.assert_allclose(
        field.w[hole].mean(axis=0), (1.5, 0.0, 0.0), atol=0.15
    )


def test_constant_volume_gives_zero_flow_and_reliability():
    flat = np.full((4, 16, 16), 7, np.uint16)
    field = estimate_volume_flow(flat, flat)
    assert not field.w.any() and not field.reliability.any()


@pytest.mark.parametrize(
    ('reference', 'moving', 'message'),
    [
        (np.zeros((8, 8)), np.zeros((8, 8)), '3-D'),
        (np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), '2 planes'),
        (np.zeros((4, 8, 8)), np.zeros((4, 8, 9)), 'shape'),
        (np.full((4, 8, 8), np.nan), np.zeros((4, 8, 8)), 'NaN'),
    ],
)
def test_invalid_volumes_are_refused(reference, moving, message):
    with pytest.raises(ValueError, match=message):
        estimate_volume_flow(reference, moving)


def test_invalid_spacing_is_refused(volumes):
    with pytest.raises(ValueError, match='spacing'):
        VolumeFlowEstimator(volumes.reference, spacing=(1.0, 0.0, 1.0))


def test_trilinear_warp_equals_map_coordinates_order_1():
    rng = np.random.default_rng(1)
    volume = rng.random((6, 20, 24), dtype=np.float32)
    w = rng.uniform(-2.5, 2.5, (6, 20, 24, 3)).astype(np.float32)
    z, y, x = np.indices(volume.shape)
    expected = ndi.map_coordinates(
        volume,
        [z + w[..., 2], y + w[..., 1], x + w[..., 0]],
        order=1,
        mode='nearest',
    )
    np.testing.assert_allclose(warp_volume(volume, w), expected, atol=1e-4)
    both = warp_volume(np.stack([volume, 2 * volume], axis=-1), w)
    np.testing.assert_allclose(both[..., 1], 2 * both[..., 0], atol=1e-5)
    with pytest.raises(ValueError, match='shape'):
        warp_volume(volume, w[..., :2])


def test_separable_filters_match_their_definitions():
    rng = np.random.default_rng(2)
    volume = rng.random((12, 40, 40), dtype=np.float32)
    expected = ndi.gaussian_filter(
        volume, (1.0, 1.5, 1.5), mode='reflect', truncate=2.0
    )
    np.testing.assert_allclose(
        blur(volume, (1.0, 1.5, 1.5)), expected, atol=2e-3
    )
    z, y, x = np.indices((8, 16, 16)).astype(np.float32)
    ramp = 0.5 * x - 0.25 * y + 0.75 * z
    for component, slope in zip(
        gradients(ramp), (0.5, -0.25, 0.75), strict=True
    ):
        np.testing.assert_allclose(component[2:-2, 2:-2, 2:-2], slope)


def test_smallest_eigenvalue_of_3x3_fields():
    rng = np.random.default_rng(3)
    factors = rng.normal(size=(500, 3, 3))
    matrices = factors @ np.swapaxes(factors, 1, 2)
    matrices[:100] = np.diag([2.0, 1.0, 0.0])  # a sheet: one zero
    entries = [matrices[:, i, j] for i, j in ((0, 0), (0, 1), (0, 2))]
    entries += [matrices[:, i, j] for i, j in ((1, 1), (1, 2), (2, 2))]
    np.testing.assert_allclose(
        min_eigenvalue(*entries),
        np.linalg.eigvalsh(matrices)[:, 0].clip(0),
        atol=2e-3 * np.abs(matrices).max(),
    )


def test_volume_vector_grid_and_lengths():
    w = np.zeros((8, 16, 16, 3), np.float32)
    w[..., 0] = 1.0  # x
    w[..., 2] = 0.5  # z, in planes twice as deep as the pixels
    assert vector_steps(16, (2.0, 0.5, 0.5)) == (4, 16, 16)
    grid = decimate_volume_flow(w, steps=(4, 8, 8), spacing=(2.0, 1.0, 1.0))
    assert sorted({tuple(p) for p in grid.positions.tolist()}) == [
        (z, y, x) for z in (2, 6) for y in (4, 12) for x in (4, 12)
    ]
    np.testing.assert_array_equal(grid.displacements, [[0.5, 0, 1]] * 8)
    np.testing.assert_allclose(grid.speed, np.sqrt(2))
    np.testing.assert_allclose(
        displacement_length(w[:1, :1, :1]), np.sqrt(1.25)
    )
    masked = decimate_volume_flow(
        w,
        steps=(4, 8, 8),
        reliability=np.indices(w.shape[:3])[0],
        reliability_threshold=4,
    )
    assert (masked.positions[:, 0] == 6).all() and len(masked.speed) == 4
