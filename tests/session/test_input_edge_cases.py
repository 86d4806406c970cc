"""Inputs that must give a clear error, or a correct result (#15)."""

import time

import numpy as np
import pytest
import tifffile

from napari_flowscope import cli, formats
from napari_flowscope.distributed.chunks import ChunkSettings, correct_chunk
from napari_flowscope.engine import FlowParams
from napari_flowscope.session import (
    DiskSink,
    FrameReference,
    MotionSession,
    NonFiniteFrameError,
    compensate,
)


def _texture(n_frames=6, shape=(40, 48)):
    """A smooth texture drifting by (0.4 t, -0.3 t) px, in [0, 1]."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    frames = [
        np.sin((x - 0.4 * t) / 3.0) * np.cos((y + 0.3 * t) / 4.0)
        for t in range(n_frames)
    ]
    return (np.stack(frames) + 1) / 2


def test_a_huge_temporal_sigma_is_refused_at_once(tmp_path, capsys):
    stack = _texture()
    with pytest.raises(ValueError, match='between 0 and 10'):
        MotionSession(stack, temporal_smoothing=1e6)
    source = tmp_path / 'in.tif'
    tifffile.imwrite(source, (stack * 1000).astype(np.uint16))
    command = ['correct', str(source), '-o', str(tmp_path / 'out')]
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, '--temporal-smoothing', '1e6'])
    assert time.perf_counter() - started < 5
    assert exit_info.value.code == 2
    assert 'between 0 and 10 frames' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('dtype', [np.int32, np.uint32])
def test_integers_near_their_maximum_do_not_wrap(tmp_path, dtype):
    top = np.iinfo(dtype).max
    depth = np.round((1 - _texture()) * 2**20).astype(np.int64)
    stack = (top - depth).astype(dtype)
    registered, w = compensate(stack, 0)
    assert registered.dtype == dtype
    # Wrapped values would be near the minimum of the type.
    assert registered.min() >= top - 2**21
    # Registered onto frame 0 (in float32: near 2**32 in steps of 512).
    inner = np.s_[:, 8:-8, 8:-8]
    difference = registered[inner].astype(np.float64) - stack[:1][inner]
    assert np.abs(difference).mean() < 2**20 * 0.03
    # ... and they are stored in registered.tif, exactly.
    MotionSession(stack).run(sink=DiskSink(tmp_path))
    stored, _ = formats.open_stack(tmp_path / 'registered.tif')
    np.testing.assert_array_equal(stored, registered)


def test_complex_input_is_refused_with_what_to_do():
    stack = _texture().astype(np.complex64)
    with pytest.raises(ValueError, match=r'complex.*numpy\.abs'):
        MotionSession(stack)


@pytest.mark.parametrize('temporal_smoothing', [None, True])
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_nan_or_inf_error_names_the_frame(temporal_smoothing, bad):
    stack = _texture(n_frames=12)
    stack[7, 10, 11] = bad
    session = MotionSession(
        stack, batch_size=4, temporal_smoothing=temporal_smoothing
    )
    with pytest.raises(NonFiniteFrameError, match='frame 7 ') as info:
        session.run()
    assert info.value.frame == 7


def test_nan_in_the_reference_says_so():
    stack = _texture(n_frames=8)
    stack[5, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r'reference \(FrameReference'):
        MotionSession(stack, reference=FrameReference(5)).run()


def test_nan_in_a_distributed_chunk_names_the_frame_of_the_stack(tmp_path):
    stack = _texture(n_frames=16)
    stack[11, 3, 3] = np.nan
    settings = ChunkSettings(
        params=FlowParams(),
        channel_axis=None,
        channel=0,
        batch_size=4,
        interpolation='linear',
    )
    with pytest.raises(NonFiniteFrameError, match='frame 11 '):
        correct_chunk(stack[8:16], 8, 16, stack[0], settings, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def z_stack(tmp_path):
    path = tmp_path / 'slices.tif'
    tifffile.imwrite(
        path,
        (_texture() * 1000).astype(np.uint16),
        imagej=True,
        metadata={'axes': 'ZYX', 'spacing': 2.0},
    )
    return path


@pytest.mark.parametrize('ome', [False, True])
def test_a_z_stack_is_not_corrected_as_a_time_lapse(tmp_path, ome, capsys):
    path = tmp_path / ('zyx.ome.tif' if ome else 'zyx.tif')
    data = (_texture() * 1000).astype(np.uint16)
    if ome:
        tifffile.imwrite(path, data, ome=True, metadata={'axes': 'ZYX'})
    else:
        tifffile.imwrite(path, data, imagej=True, metadata={'axes': 'ZYX'})
    out = tmp_path / 'out'
    assert cli.main(['correct', str(path), '-o', str(out), '-q']) == 1
    error = capsys.readouterr().err
    assert 'is a Z-stack (axes ZYX) without a time axis' in error
    assert 'Re-order Hyperstacks' in error
    assert not out.exists()


def test_a_z_stack_is_refused_by_the_distributed_run(z_stack, tmp_path):
    from napari_flowscope.distributed import correct_distributed

    with pytest.raises(ValueError, match='Z-stack'):
        correct_distributed(z_stack, tmp_path / 'out', client='local')
    assert not (tmp_path / 'out').exists()
