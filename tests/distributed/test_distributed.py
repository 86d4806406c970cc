"""Dask batch correction against the single-process session.

One LocalCluster (2 worker processes, 1 thread each, 400 MB each) serves
the whole module.
"""

import json
import os
import signal
import sys
import threading

import numpy as np
import pytest
import tifffile

from napari_flowscope import formats, synthetic
from napari_flowscope.distributed import correct_distributed, local_cluster
from napari_flowscope.engine import FlowParams
from napari_flowscope.session import (
    AdaptiveReference,
    DiskSink,
    FrameReference,
    MotionSession,
    RangeReference,
)

distributed = pytest.importorskip('distributed')

MEMORY_LIMIT = 400e6
FAST = FlowParams.preset('fast')
SCALE, UNITS = (0.5, 0.25, 0.25), ('s', 'um', 'um')
RESULT_FILES = (
    'registered.tif',
    'flow.npy',
    'flow.json',
    'reliability.npy',
    'confidence.npy',
    'stats.csv',
    'params.json',
)


@pytest.fixture(scope='module')
def client():
    cluster = local_cluster(2, memory_limit=MEMORY_LIMIT)
    with cluster, distributed.Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture(scope='module')
def drifting_stack():
    sequence = synthetic.drifting_tissue(n_frames=30, shape=(96, 112), seed=2)
    return np.round(sequence.stack * 20000).astype(np.uint16)


@pytest.fixture
def tiff_path(tmp_path, drifting_stack):
    path = tmp_path / 'input.tif'
    formats.write_imagej_stack(path, drifting_stack, scale=SCALE, units=UNITS)
    return path


def single_process(stack, output_dir, *, reference, **kwargs):
    """The same correction through MotionSession and DiskSink."""
    session = MotionSession(stack, reference=reference, params=FAST, **kwargs)
    session.run(sink=DiskSink(output_dir, scale=SCALE, units=UNITS))
    return output_dir


def read_results(directory):
    with tifffile.TiffFile(directory / 'registered.tif') as tif:
        registered = tif.asarray()
        ij = tif.imagej_metadata
    return {
        'registered': registered,
        'finterval': ij.get('finterval'),
        'flow': np.load(directory / 'flow.npy'),
        'flow_json': json.loads((directory / 'flow.json').read_text()),
        'reliability': np.load(directory / 'reliability.npy'),
        'confidence': np.load(directory / 'confidence.npy'),
        'stats': (directory / 'stats.csv').read_text(),
        'params': json.loads((directory / 'params.json').read_text()),
    }


def assert_identical(directory, expected_directory):
    """Bitwise equal arrays, statistics and metadata."""
    result = read_results(directory)
    expected = read_results(expected_directory)
    for name in ('registered', 'flow', 'reliability', 'confidence'):
        assert result[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(result[name], expected[name])
    assert result['stats'] == expected['stats']
    assert result['flow_json'] == expected['flow_json']
    assert result['finterval'] == expected['finterval']
    for key in ('params', 'reference', 'params_history', 'channel'):
        assert result['params'][key] == expected['params'][key]


def leftovers(directory):
    """Everything in an output folder, hidden chunk folders included."""
    if not directory.exists():
        return []
    return sorted(path.name for path in directory.rglob('*'))


@pytest.mark.parametrize(
    'reference',
    [FrameReference(7), RangeReference(3, 12, preregister=True)],
    ids=['frame', 'preregistered-range'],
)
def test_identical_to_single_process(
    client, tmp_path, tiff_path, drifting_stack, reference
):
    progress = []
    sink = correct_distributed(
        tiff_path,
        tmp_path / 'dask',
        reference=reference,
        params=FAST,
        chunk_size=7,
        client=client,
        progress_callback=lambda done, total: progress.append((done, total)),
    )
    expected = single_process(
        drifting_stack, tmp_path / 'single', reference=reference
    )

    assert sink.complete
    assert_identical(tmp_path / 'dask', expected)
    assert sorted(leftovers(tmp_path / 'dask')) == sorted(RESULT_FILES)
    # One report per chunk (30 frames in chunks of 7), counting up to 30.
    assert [done for done, _ in progress] == sorted(
        done for done, _ in progress
    )
    assert len(progress) == 5
    assert progress[-1] == (30, 30)
    # The run registered the drift: frames now match the reference.
    stats = np.genfromtxt(
        tmp_path / 'dask' / 'stats.csv', delimiter=',', names=True
    )
    assert np.mean(stats['ncc_after']) > np.mean(stats['ncc_before']) + 0.1


@pytest.mark.parametrize(
    'kind', ['npy-path', 'memmap', 'zarr', 'dask', 'memory']
)
def test_other_inputs(client, tmp_path, drifting_stack, kind):
    if kind in ('npy-path', 'memmap'):
        path = tmp_path / 'input.npy'
        np.save(path, drifting_stack)
        stack = path if kind == 'npy-path' else np.load(path, mmap_mode='r')
    elif kind in ('zarr', 'dask'):
        zarr = pytest.importorskip('zarr')
        stack = zarr.create_array(
            tmp_path / 'input.zarr',
            shape=drifting_stack.shape,
            chunks=(4, *drifting_stack.shape[1:]),
            dtype=drifting_stack.dtype,
        )
        stack[:] = drifting_stack
        if kind == 'dask':
            import dask.array as da

            stack = da.from_zarr(str(tmp_path / 'input.zarr'))
    else:
        stack = drifting_stack
    correct_distributed(
        stack,
        tmp_path / 'dask',
        params=FAST,
        chunk_size=8,
        client=client,
        scale=SCALE,
        units=UNITS,
    )
    expected = single_process(
        drifting_stack, tmp_path / 'single', reference=FrameReference(0)
    )
    assert_identical(tmp_path / 'dask', expected)


def test_multichannel_tiff(client, tmp_path, drifting_stack):
    # Channel 1 is a dimmer copy: the flow comes from channel 0 and moves
    # both channels alike.
    stack = np.stack([drifting_stack, drifting_stack // 3], axis=1)
    path = tmp_path / 'input.tif'
    formats.write_imagej_stack(
        path,
        stack,
        axes='TCYX',
        scale=(SCALE[0], 1.0, *SCALE[1:]),
        units=(UNITS[0], 'pixel', *UNITS[1:]),
    )
    correct_distributed(
        path, tmp_path / 'dask', params=FAST, chunk_size=8, client=client
    )
    expected = single_process(
        stack, tmp_path / 'single', reference=FrameReference(0), channel_axis=1
    )
    assert_identical(tmp_path / 'dask', expected)
    assert read_results(tmp_path / 'dask')['registered'].shape == (
        30,
        2,
        96,
        112,
    )


def test_volume_tiff(client, tmp_path):
    sequence = synthetic.drifting_volume(
        n_frames=5, shape=(8, 32, 32), spacing=(2.0, 1.0, 1.0), seed=4
    )
    stack = np.round(sequence.stack * 20000).astype(np.uint16)
    path = tmp_path / 'input.tif'
    scale = (SCALE[0], 0.5, *SCALE[1:])
    formats.write_imagej_stack(
        path, stack, axes='TZYX', scale=scale, units=('s', 'um', 'um', 'um')
    )
    correct_distributed(
        path, tmp_path / 'dask', params=FAST, chunk_size=2, client=client
    )
    # the file's voxel size is the flow's spacing, as in one process
    session = MotionSession(stack, params=FAST, spacing=scale[1:])
    session.run(
        sink=DiskSink(
            tmp_path / 'single', scale=scale, units=('s', 'um', 'um', 'um')
        )
    )
    assert_identical(tmp_path / 'dask', tmp_path / 'single')
    result = read_results(tmp_path / 'dask')
    assert result['flow'].shape == (5, 8, 32, 32, 3)
    assert result['params']['spacing'] == [0.5, 0.25, 0.25]


def test_lost_worker_is_retried(client, tmp_path, tiff_path, drifting_stack):
    client.wait_for_workers(2)
    pids = client.run(os.getpid)
    killed = []

    def kill_a_busy_worker(done, total):
        # Once, while a worker is running a chunk and more chunks are left.
        if killed or done > total - 8:
            return
        busy = [
            address for address, keys in client.processing().items() if keys
        ]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

    correct_distributed(
        tiff_path,
        tmp_path / 'dask',
        params=FAST,
        chunk_size=2,
        client=client,
        progress_callback=kill_a_busy_worker,
    )
    expected = single_process(
        drifting_stack, tmp_path / 'single', reference=FrameReference(0)
    )

    assert len(killed) == 1
    assert_identical(tmp_path / 'dask', expected)
    client.wait_for_workers(2)
    # The killed worker's process is gone; its nanny started a new one.
    assert pids[killed[0]] not in client.run(os.getpid).values()


def test_cancel_leaves_no_output(client, tmp_path, tiff_path):
    cancel = threading.Event()
    progress = []

    def cancel_after_first_chunk(done, total):
        progress.append(done)
        cancel.set()

    sink = correct_distributed(
        tiff_path,
        tmp_path / 'out',
        params=FAST,
        chunk_size=2,
        client=client,
        progress_callback=cancel_after_first_chunk,
        cancel=cancel,
    )

    assert not sink.complete
    assert progress and progress[-1] < 30
    assert leftovers(tmp_path / 'out') == []


@pytest.mark.parametrize('error', [KeyboardInterrupt, RuntimeError])
def test_interrupt_or_error_leaves_no_output(
    client, tmp_path, tiff_path, error
):
    def interrupt(done, total):
        raise error('stop')

    with pytest.raises(error):
        correct_distributed(
            tiff_path,
            tmp_path / 'out',
            params=FAST,
            chunk_size=4,
            client=client,
            progress_callback=interrupt,
        )
    assert leftovers(tmp_path / 'out') == []


def test_adaptive_reference_is_refused(client, tmp_path, tiff_path):
    with pytest.raises(ValueError, match='adaptive reference cannot be'):
        correct_distributed(
            tiff_path,
            tmp_path / 'out',
            reference=AdaptiveReference(),
            client=client,
        )
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith('linux'), reason='reads /proc/self/status'
)
def test_memory_per_worker_bounded(client, tmp_path):
    # 572 frames of 512 x 512 float32: 600 MB, 1.5 times a worker's limit.
    # (float32 rather than uint16 halves the frames to register for the
    # same size, which keeps this test short.)
    n_frames, shape = 572, (512, 512)
    path = tmp_path / 'big.npy'
    stack = np.lib.format.open_memmap(
        path, mode='w+', dtype=np.float32, shape=(n_frames, *shape)
    )
    texture = synthetic.tissue_texture(shape) * 1000
    shifts = np.arange(n_frames) % 5
    for t in range(n_frames):
        stack[t] = np.roll(texture, shifts[t], axis=1)
    stack.flush()
    del stack
    assert path.stat().st_size > 1.4 * MEMORY_LIMIT
    client.wait_for_workers(2)
    pids = client.run(os.getpid)
    client.run(_reset_peak_memory)

    correct_distributed(
        path,
        tmp_path / 'out',
        params=FAST,
        chunk_size=48,
        batch_size=4,
        client=client,
    )

    # No worker was restarted for exceeding its limit ...
    assert client.run(os.getpid) == pids
    # ... and none ever held more than the limit.
    peaks = client.run(_peak_memory_bytes)
    assert max(peaks.values()) < MEMORY_LIMIT, peaks
    # The integer shifts were measured: frame t moved by t % 5 pixels.
    flow = np.load(tmp_path / 'out' / 'flow.npy', mmap_mode='r')
    inner = (slice(64, -64), slice(64, -64))
    for t in (0, 3, 289, 571):
        assert np.median(flow[t][inner][..., 0]) == pytest.approx(
            shifts[t], abs=0.05
        )


def _reset_peak_memory():
    # Linux >= 4.0: the peak (VmHWM) restarts from the current RSS.
    with open('/proc/self/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')


def _peak_memory_bytes():
    """This worker's peak resident memory since the last reset.

    Not ``ru_maxrss``: a spawned worker's ``ru_maxrss`` includes the
    resident memory of the process that started it (kept across ``exec``).
    """
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('no VmHWM in /proc/self/status')


def test_cli_scheduler_matches_single_process(client, tmp_path, tiff_path):
    from napari_flowscope.cli import main

    common = ['correct', str(tiff_path), '--preset', 'fast', '-q']
    assert main([*common, '-o', str(tmp_path / 'single')]) == 0
    address = client.scheduler.address
    status = main(
        [
            *common,
            *('-o', str(tmp_path / 'dask'), '--scheduler', address),
            *('--chunk-size', '8'),
        ]
    )
    assert status == 0
    assert_identical(tmp_path / 'dask', tmp_path / 'single')
    params = read_results(tmp_path / 'dask')['params']
    assert params['distributed']['scheduler'] == address


def test_cli_refuses_adaptive_on_a_cluster(
    client, tmp_path, tiff_path, capsys
):
    from napari_flowscope.cli import main

    status = main(
        [
            *('correct', str(tiff_path), '-o', str(tmp_path / 'out')),
            *('--reference', 'adaptive'),
            *('--scheduler', client.scheduler.address),
        ]
    )
    assert status == 1
    assert (
        'adaptive reference cannot be distributed' in capsys.readouterr().err
    )
    assert leftovers(tmp_path / 'out') == []


def test_bad_inputs_fail_before_any_cluster_is_used(tmp_path, tiff_path):
    # An address nobody listens on: reaching it would fail differently.
    nowhere = 'tcp://127.0.0.1:9'
    with pytest.raises(ValueError, match='cannot read'):
        correct_distributed(tmp_path / 'movie.avi', tmp_path, client=nowhere)
    with pytest.raises(FileNotFoundError):
        correct_distributed(tmp_path / 'gone.tif', tmp_path, client=nowhere)
    with pytest.raises(ValueError, match='chunk_size'):
        correct_distributed(tiff_path, tmp_path, chunk_size=0, client=nowhere)
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'registered.tif').write_bytes(b'earlier run')
    with pytest.raises(FileExistsError):
        correct_distributed(
            tiff_path, tmp_path / 'out', params=FAST, client=nowhere
        )
    assert (tmp_path / 'out' / 'registered.tif').read_bytes() == (
        b'earlier run'
    )
