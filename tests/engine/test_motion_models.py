"""Global motion models: exact fits, image refinement, robustness."""

import numpy as np
import pytest

from napari_flowscope import synthetic
from napari_flowscope.engine import estimate_flow
from napari_flowscope.engine.motion_models import (
    GlobalMotion,
    MotionRefiner,
    fit_motion,
    motion_field,
)

SHAPE = (96, 128)


def _field_error(w, truth, valid):
    return float(np.linalg.norm(w - truth, axis=-1)[valid].max())


@pytest.mark.parametrize(
    ('model', 'matrix'),
    [
        ('translation', [[1, 0, 2.5], [0, 1, -1.25]]),
        ('rigid', [[0.9986, -0.0523, 3.0], [0.0523, 0.9986, -2.0]]),
        ('affine', [[1.02, 0.01, -1.0], [-0.015, 0.97, 4.0]]),
    ],
)
def test_fit_recovers_a_transform_despite_outliers(model, matrix):
    matrix = np.array(matrix)
    if model == 'rigid':  # exactly orthonormal
        angle = np.arctan2(matrix[1, 0], matrix[0, 0])
        matrix[:, :2] = [
            [np.cos(angle), -np.sin(angle)],
            [np.sin(angle), np.cos(angle)],
        ]
    w = motion_field(matrix, SHAPE)
    rng = np.random.default_rng(0)
    corrupted = w.copy()
    outliers = rng.random(SHAPE) < 0.25  # a quarter of wild vectors
    corrupted[outliers] += rng.normal(0, 8, (outliers.sum(), 2))
    weights = np.ones(SHAPE, np.float32)
    weights[:8] = 0  # untrusted rows: ignored whatever their flow
    corrupted[:8] = 50

    fit = fit_motion(corrupted, model=model, weights=weights)

    np.testing.assert_allclose(fit.matrix, matrix, atol=1e-4)
    assert not fit.inliers[:8].any()  # untrusted, and far off the model
    assert fit.inliers[~outliers & (corrupted[..., 0] < 50)].all()


def test_motion_field_follows_the_flow_convention():
    # rotation by 90 degrees about the origin: (x, y) -> (-y, x)
    w = motion_field([[0, -1, 0], [1, 0, 0]], (3, 4))
    y, x = 2, 3
    np.testing.assert_allclose(w[y, x], [-y - x, x - y])


SEQUENCES = {
    'rigid': lambda: synthetic.rigid_drift(
        n_frames=4, shape=SHAPE, max_shift=4, max_rotation=2, seed=1
    ),
    'affine': lambda: synthetic.affine_drift(n_frames=4, shape=SHAPE, seed=2),
    # noise of 3 % of the intensity range
    'noisy affine': lambda: synthetic.affine_drift(
        n_frames=4, shape=SHAPE, seed=3, noise=0.03
    ),
}


@pytest.mark.parametrize(
    ('name', 'tolerance'),
    [('rigid', 0.01), ('affine', 0.01), ('noisy affine', 0.1)],
)
def test_global_model_matches_ground_truth(name, tolerance):
    """Dense flow, robust fit, refinement on the images: the model's field
    is within hundredths of a pixel of the exact motion everywhere, corners
    included, and closer than the fit to the flow alone."""
    sequence = SEQUENCES[name]()
    model = name.split()[-1]
    motion = GlobalMotion(sequence.reference, model=model)
    everywhere = np.ones(SHAPE, bool)
    for frame, truth in zip(
        sequence.stack[1:], sequence.flow[1:], strict=True
    ):
        dense = estimate_flow(sequence.reference, frame).w
        error = _field_error(motion.field(dense, frame), truth, everywhere)
        fitted = motion_field(fit_motion(dense, model=model).matrix, SHAPE)
        assert error < tolerance
        assert error < 0.7 * _field_error(fitted, truth, everywhere)


def test_translation_ignores_a_crawling_cell():
    sequence = synthetic.drift_with_crawling_cell(
        n_frames=6, shape=(128, 128), radius=20, seed=4
    )
    motion = GlobalMotion(sequence.reference, model='translation')
    for frame, truth in zip(
        sequence.stack[1:], sequence.flow[1:], strict=True
    ):
        dense = estimate_flow(sequence.reference, frame).w
        field = motion.field(dense, frame)
        # the drift, not the drift plus a share of the cell's motion
        assert _field_error(field, truth, sequence.valid) < 0.03


def test_refiner_keeps_an_exact_start_and_refuses_flat_frames():
    texture = synthetic.tissue_texture(SHAPE, seed=5)
    identity = np.eye(2, 3)
    refiner = MotionRefiner(texture, model='rigid')
    np.testing.assert_allclose(
        refiner.refine(texture, identity), identity, atol=1e-3
    )
    flat = MotionRefiner(np.ones(SHAPE, np.float32), model='translation')
    start = np.array([[1, 0, 0.3], [0, 1, 0.2]])
    np.testing.assert_array_equal(flat.refine(texture, start), start)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='model must be one of'):
        fit_motion(np.zeros((4, 4, 2)), model='dense')
    with pytest.raises(ValueError, match='weights must have shape'):
        fit_motion(np.zeros((4, 4, 2)), model='rigid', weights=np.ones(3))
    with pytest.raises(ValueError, match=r'shape \(2, 3\)'):
        motion_field(np.eye(3), (4, 4))
