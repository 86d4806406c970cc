"""Volumetric time-lapses (T, Z, Y, X) through the session and its sinks."""

import json

import numpy as np
import pytest
import tifffile

from napari_flowscope import compensate, formats, synthetic
from napari_flowscope.engine import FlowEstimator, warp_volume
from napari_flowscope.session import (
    AdaptiveReference,
    DiskSink,
    FrameReference,
    ImageReference,
    MemorySink,
    MotionSession,
    RangeReference,
)


@pytest.fixture(scope='module')
def volumes():
    """5 volumes of 12 x 40 x 40 voxels, z voxels twice as deep."""
    return synthetic.drifting_volume(
        n_frames=5,
        shape=(12, 40, 40),
        spacing=(2.0, 1.0, 1.0),
        shift=(3.0, -2.0, 1.5),
        noise=0.01,
        seed=5,
    )


@pytest.fixture(scope='module')
def run(volumes):
    registered, w = compensate(
        volumes.stack, FrameReference(0), spacing=volumes.spacing
    )
    return registered, w


def test_compensate_returns_volumes_and_3d_flow(volumes, run):
    registered, w = run
    assert registered.shape == volumes.stack.shape
    assert registered.dtype == np.float32
    assert w.shape == (*volumes.stack.shape, 3) and w.dtype == np.float32
    # against the exact ground truth, every volume
    error = np.linalg.norm(w - volumes.flow, axis=-1)[:, volumes.valid]
    assert error.mean(axis=1).max() < 0.15
    # the registered volumes are the warped inputs, frame by frame
    for t in (1, 4):
        np.testing.assert_array_equal(
            registered[t], warp_volume(volumes.stack[t], w[t])
        )


def test_batches_and_threads_do_not_change_results(volumes, run):
    session = MotionSession(
        volumes.stack, spacing=volumes.spacing, batch_size=2, n_threads=1
    )
    assert session.is_volume and session.frame_shape == (12, 40, 40)
    sink = session.run()
    np.testing.assert_array_equal(sink.w, run[1])
    np.testing.assert_array_equal(sink.registered, run[0])
    assert sink.stats.ncc_after[1:].min() > sink.stats.ncc_before[1:].max()


def test_default_batch_holds_a_bounded_number_of_voxels():
    small = MotionSession(np.zeros((40, 8, 32, 32), np.float32))
    large = MotionSession(np.zeros((40, 64, 512, 512), np.float32))
    assert small.batch_size == 16 and large.batch_size == 1


def test_volumes_are_read_one_batch_at_a_time(volumes, counting):
    stack = counting(volumes.stack)
    batches = MotionSession(
        stack, spacing=volumes.spacing, batch_size=2
    ).iter_batches()
    for batch in batches:
        assert batch.w.shape == (len(batch), 12, 40, 40, 3)
        # never more than the reference and one batch read at once
        assert max(stop - start for start, stop in stack.reads) <= 2
    assert (stack.frames_read()[1:] == 1).all()


def test_disk_sink_writes_imagej_tzyx_and_flow_with_its_axes(
    tmp_path, volumes, run
):
    stack = np.round(volumes.stack * 3000).astype(np.uint16)
    scale, units = (1.5, 0.8, 0.4, 0.4), ('s', 'um', 'um', 'um')
    session = MotionSession(stack, spacing=scale[1:], batch_size=2)
    sink = session.run(sink=DiskSink(tmp_path, scale=scale, units=units))
    memory = MotionSession(stack, spacing=scale[1:]).run(sink=MemorySink())

    with tifffile.TiffFile(sink.paths['registered']) as tif:
        assert tif.imagej_metadata['spacing'] == pytest.approx(0.8)
    data, metadata = formats.open_stack(sink.paths['registered'])
    assert metadata.axes == 'TZYX' and data.dtype == np.uint16
    assert metadata.scale == pytest.approx(scale)
    np.testing.assert_array_equal(data, memory.registered)

    w, flow_metadata = formats.read_flow(sink.paths['flow'])
    assert flow_metadata['axes'] == 'TZYXC'
    assert flow_metadata['components'] == ['x', 'y', 'z']
    assert flow_metadata['scale'] == pytest.approx(scale)
    np.testing.assert_array_equal(w, memory.w)
    reliability = np.load(sink.paths['reliability'])
    np.testing.assert_array_equal(reliability, memory.reliability)
    params = json.loads(sink.paths['params'].read_text())
    assert params['spacing'] == pytest.approx(scale[1:])
    assert params['per_plane'] is False


def test_disk_sink_wants_a_scale_for_every_axis(tmp_path, volumes):
    session = MotionSession(volumes.stack[:2])
    with pytest.raises(ValueError, match='TZYX'):
        session.run(sink=DiskSink(tmp_path, scale=(1.0, 1.0, 1.0)))


def test_per_plane_mode_registers_each_plane_in_2d(volumes):
    stack = volumes.stack[:3]
    registered, w = compensate(stack, 0, per_plane=True)
    assert w.shape == (*stack.shape, 3)
    assert not w[..., 2].any()
    for z in (0, 7):
        expected = FlowEstimator(stack[0, z]).estimate(stack[2, z]).w
        np.testing.assert_array_equal(w[2, z, ..., :2], expected)
    np.testing.assert_allclose(
        registered[2], warp_volume(stack[2], w[2]), atol=1e-6
    )


@pytest.mark.parametrize(
    'reference',
    [
        FrameReference(-1),
        RangeReference(0, 3, preregister=True),
        AdaptiveReference(buffer_size=2, update_interval=2),
    ],
    ids=['last frame', 'preregistered range', 'adaptive'],
)
def test_every_reference_strategy_works_on_volumes(volumes, reference):
    session = MotionSession(
        volumes.stack,
        reference=reference,
        spacing=volumes.spacing,
        batch_size=1,
    )
    references = [batch.reference for batch in session.iter_batches()]
    assert references[-1].shape == (12, 40, 40)
    sink = session.run()
    assert sink.w.shape == (5, 12, 40, 40, 3)
    # registration brings every volume onto its reference
    assert (sink.stats.ncc_after >= sink.stats.ncc_before - 1e-3).all()
    assert sink.stats.ncc_after.min() > 0.95
    assert sink.stats.ncc_before.min() < 0.85
    # the adaptive reference follows the sample (updated every 2 volumes)
    changed = not np.array_equal(references[0], references[-1])
    assert changed == reference.adaptive


def test_image_reference_volume_equals_frame_reference(volumes, run):
    _, w = compensate(
        volumes.stack[:3],
        ImageReference(volumes.stack[0]),
        spacing=volumes.spacing,
    )
    np.testing.assert_array_equal(w, run[1][:3])


def test_channel_axis_between_depth_and_rows(volumes, run):
    both = np.stack([volumes.stack, 2 * volumes.stack], axis=2)
    registered, w = compensate(
        both, 0, channel_axis=2, channel=0, spacing=volumes.spacing
    )
    assert registered.shape == both.shape
    np.testing.assert_array_equal(w, run[1])
    np.testing.assert_allclose(
        registered[:, :, 1], 2 * registered[:, :, 0], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ('shape', 'channel_axis', 'message'),
    [
        ((3, 20, 20, 3), None, 'channel_axis=3'),
        ((3, 1, 20, 20), None, 'single plane'),
        ((3, 4, 2, 20, 20, 2), 2, r'\(T, Z, Y, X\)'),
    ],
)
def test_ambiguous_stacks_are_refused(shape, channel_axis, message):
    with pytest.raises(ValueError, match=message):
        MotionSession(np.zeros(shape, np.float32), channel_axis=channel_axis)


def test_extra_stacks_and_one_frame_estimates(volumes, run):
    session = MotionSession(
        volumes.stack[:3],
        spacing=volumes.spacing,
        extra_stacks=[2 * volumes.stack[:3]],
    )
    sink = session.run()
    np.testing.assert_allclose(
        sink.extras[0], 2 * sink.registered, rtol=1e-5, atol=1e-6
    )
    # the live preview's estimate equals the run's flow of that frame
    np.testing.assert_array_equal(session.estimate_frame(2).w, run[1][2])
