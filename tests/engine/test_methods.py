"""The method table: a method is one solver class and one table row."""

import cv2
import numpy as np
import pytest

from napari_flowscope import synthetic
from napari_flowscope.engine import (
    METHODS,
    FlowEstimator,
    FlowParams,
    Method,
    estimate_flow,
    register_method,
)


class GlobalTranslation:
    """Toy level solver: one translation for the whole level.

    Gauss-Newton on the sum of squared differences, the reference's
    gradients precomputed in ``prepare``.
    """

    calls = []

    def __init__(self, params, reliability):
        self.iterations = params.warps
        self.reliability_shape = reliability.shape

    def prepare(self, reference_level, *, level):
        gy, gx = np.gradient(reference_level)
        cross = np.vdot(gx, gy)
        normal = np.array([[np.vdot(gx, gx), cross], [cross, np.vdot(gy, gy)]])
        return reference_level, gx, gy, np.linalg.inv(normal), level

    def solve(self, state, moving_level, w):
        reference, gx, gy, inverse, level = state
        self.calls.append((level, reference.shape, w.mean(axis=(0, 1))))
        shift = w.mean(axis=(0, 1))
        for _ in range(self.iterations):
            warped = cv2.remap(
                moving_level,
                np.broadcast_to(shift.astype(np.float32), w.shape).copy(),
                None,
                cv2.INTER_LINEAR | cv2.WARP_RELATIVE_MAP,
                borderMode=cv2.BORDER_REFLECT,
            )
            difference = (warped - reference)[4:-4, 4:-4]
            gradient = np.array(
                [
                    np.vdot(gx[4:-4, 4:-4], difference),
                    np.vdot(gy[4:-4, 4:-4], difference),
                ]
            )
            shift = shift - inverse @ gradient
        w[...] = shift
        return w


@pytest.fixture
def toy_method():
    GlobalTranslation.calls = []
    method = register_method(
        Method(
            'global_translation',
            GlobalTranslation,
            'global',
            'one translation per frame (test toy)',
        )
    )
    yield method
    del METHODS[method.name]


def test_a_registered_method_runs_through_estimate_flow(blobs, toy_method):
    shape = (96, 80)
    shift = (3.4, -2.2)
    reference, moving = blobs(shape), blobs(shape, shift)
    params = FlowParams(method='global_translation', levels=3, warps=8)

    field = estimate_flow(reference, moving, params)

    # coarse to fine over the shared pyramid: each level starts from the
    # coarser level's result, doubled
    calls = toy_method.make_solver.calls
    assert [call[:2] for call in calls] == [
        (2, (24, 20)),
        (1, (48, 40)),
        (0, (96, 80)),
    ]
    starts = np.array([call[2] for call in calls])
    np.testing.assert_allclose(
        starts, [(0, 0), np.divide(shift, 2), shift], atol=0.1
    )
    np.testing.assert_allclose(
        field.w[20:-20, 20:-20].reshape(-1, 2).mean(axis=0), shift, atol=0.02
    )
    # reliability and confidence come with it, as for built-in methods
    expected = FlowEstimator(reference, FlowParams()).reliability
    np.testing.assert_array_equal(field.reliability, expected)
    assert np.mean(field.confidence[20:-20, 20:-20] >= 0.5) > 0.9


def test_an_unknown_method_names_the_registered_ones(toy_method):
    registered = "'variational', 'patch_search', 'global_translation'"
    with pytest.raises(ValueError, match=registered):
        FlowParams(method='horn_schunck')


def test_a_name_is_registered_once(toy_method):
    with pytest.raises(ValueError, match='is registered'):
        register_method(toy_method)
    with pytest.raises(ValueError, match='intensities'):
        Method('other', GlobalTranslation, 'per-level', '')


def test_patch_search_preset_recovers_a_large_translation():
    sequence = synthetic.large_translation(n_frames=2, shape=(192, 192))
    params = FlowParams.preset('detail')
    assert params.method == 'patch_search'

    field = estimate_flow(sequence.reference, sequence.stack[1], params)

    error = np.linalg.norm(field.w - sequence.flow[1], axis=-1)
    assert np.median(error[sequence.valid]) < 0.05
    assert (field.confidence[sequence.valid] >= 0.5).mean() > 0.9
    # the warm start is its starting point: a 60 px shift found from 55
    moving = np.roll(sequence.reference, 60, axis=1)
    init = np.broadcast_to(np.float32([55, 0]), field.w.shape)
    warm = estimate_flow(sequence.reference, moving, params, init=init)
    assert np.median(warm.w[..., 0]) == pytest.approx(60, abs=0.05)
