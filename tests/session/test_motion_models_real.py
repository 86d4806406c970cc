"""pc12: global motion models against ImageJ StackReg's own outputs.

StackReg registers each frame to the registered frame before it, which is
``PreviousReference``.  Each output is the raw frame resampled through a
transform; StackReg's is recovered with OpenCV's ECC (an independent
method), ours is exact (the model's flow).  The distance between the two is
averaged over the frame (docs/benchmarks.md, "Motion models").
"""

import cv2
import numpy as np
import pytest
import tifffile

from napari_flowscope.engine import FlowParams
from napari_flowscope.engine.motion_models import fit_motion
from napari_flowscope.session import MotionSession, PreviousReference

pytestmark = pytest.mark.realdata

OUTPUTS = {
    'translation': ('pc12-reg-translation.tif', cv2.MOTION_TRANSLATION),
    'rigid': ('pc12-reg-rigid-body.tif', cv2.MOTION_EUCLIDEAN),
}


def _stackreg_transform(registered, raw, motion):
    """``A`` with ``registered(x) = raw(A x)``, StackReg's zero fill masked."""
    registered = registered.astype(np.float32)
    raw = raw.astype(np.float32)
    valid = cv2.erode(
        (registered != 0).astype(np.uint8), np.ones((7, 7), np.uint8)
    )
    (dx, dy), _ = cv2.phaseCorrelate(registered, raw)
    start = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 500, 1e-8)
    _, matrix = cv2.findTransformECC(
        registered, raw, start, motion, criteria, valid, 1
    )
    return matrix.astype(np.float64)


@pytest.mark.parametrize('model', list(OUTPUTS))
def test_pc12_matches_stackreg_within_a_quarter_pixel(real_data, model):
    folder = real_data / 'pc12_stackreg'
    raw = tifffile.imread(folder / 'pc12-unreg.tif')
    file_name, motion = OUTPUTS[model]
    imagej = tifffile.imread(folder / file_name)
    sink = MotionSession(
        raw,
        reference=PreviousReference(),
        params=FlowParams(motion_model=model),
    ).run()

    height, width = raw.shape[1:]
    y, x = np.mgrid[:height, :width]
    grid = np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
    for t in range(1, len(raw)):
        ours = fit_motion(sink.w[t], model='affine').matrix
        theirs = _stackreg_transform(imagej[t], raw[t], motion)
        distance = np.hypot(*((ours - theirs) @ grid))
        assert distance.mean() < 0.25, (t, distance.mean())
        # before correction the frames are 8 to 15 px away
        assert np.hypot(*theirs[:, 2]) > 8
