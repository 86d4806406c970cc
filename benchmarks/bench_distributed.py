"""Benchmark of Dask batch correction (results go to docs/benchmarks.md).

Run by hand from the repository root::

    python benchmarks/bench_distributed.py            # 2,000 x 512 x 512
    python benchmarks/bench_distributed.py --frames 200 --workers 2
    python benchmarks/bench_distributed.py --single   # + one process

Writes a 1 GB uint16 ``.npy`` input and about 7 GB of results per run under
``/tmp`` (``--tmp``), and deletes them afterwards.  For each number of
workers a fresh ``LocalCluster`` (processes, one thread each) corrects the
whole stack from the file; the time runs from the call to
:func:`~napari_flowscope.distributed.correct_distributed` until every output
file is final.  Peak memory per worker is the peak resident memory
(Linux VmHWM, file-backed pages included) of each worker process during the
run; the baseline is its resident memory after importing napari-flowscope.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

FRAME_SHAPE = (512, 512)


def machine():
    import psutil

    return (
        f'{os.cpu_count()} CPU cores, '
        f'{psutil.virtual_memory().total / 2**30:.0f} GB RAM, Python '
        f'{platform.python_version()}'
    )


def write_stack(path, n_frames, *, seed=0):
    """A drifting 512 x 512 uint16 tissue stack, memory-mapped to `path`."""
    from napari_flowscope import synthetic

    # Rendering is slow; 16 rendered frames shifted by whole pixels give a
    # long sequence whose motion differs from frame to frame.
    base = synthetic.rigid_drift(
        n_frames=16, shape=FRAME_SHAPE, max_shift=4.0, seed=seed
    ).stack
    base = np.round(base * 20000).astype(np.uint16)
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.integers(-1, 2, size=(n_frames, 2)), axis=0)
    offsets = np.clip(offsets, -6, 6)
    stack = np.lib.format.open_memmap(
        path, mode='w+', dtype=np.uint16, shape=(n_frames, *FRAME_SHAPE)
    )
    for t in range(n_frames):
        stack[t] = np.roll(base[t % len(base)], tuple(offsets[t]), (0, 1))
    stack.flush()


def _worker_memory():
    """(current, peak) resident memory of this worker process, in MB.

    The peak is Linux's VmHWM, not ``ru_maxrss``: a spawned worker's
    ``ru_maxrss`` includes the resident memory of the process that started
    it (Linux keeps it across ``exec``), here this script after writing the
    input stack.
    """
    values = {}
    with open('/proc/self/status') as status:
        for line in status:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                values[key] = int(value.split()[0]) / 1e3
    return values['VmRSS'], values['VmHWM']


def _reset_peak_memory():
    # Linux >= 4.0: VmHWM restarts from the current resident memory.
    with open('/proc/self/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')


def _import_package():
    import napari_flowscope.distributed  # noqa: F401


def _set_opencv_threads(n_threads):
    import cv2

    cv2.setNumThreads(n_threads)


def run(
    path, output, n_workers, *, chunk_size, batch_size, preset, cv2_threads
):
    import distributed
    from napari_flowscope.distributed import correct_distributed, local_cluster
    from napari_flowscope.engine import FlowParams

    n_frames = np.load(path, mmap_mode='r').shape[0]
    with (
        local_cluster(n_workers, silence_logs=40) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(_import_package)
        if cv2_threads is not None:
            client.run(_set_opencv_threads, cv2_threads)
        client.run(_reset_peak_memory)
        baseline = client.run(_worker_memory)
        computed = []
        start = time.perf_counter()
        correct_distributed(
            path,
            output,
            params=FlowParams.preset(preset),
            chunk_size=chunk_size,
            batch_size=batch_size,
            client=client,
            progress_callback=lambda done, total: computed.append(
                time.perf_counter()
            ),
        )
        seconds = time.perf_counter() - start
        memory = client.run(_worker_memory)
    shutil.rmtree(output)
    return {
        'workers': n_workers,
        'seconds': seconds,
        'frames_per_s': n_frames / seconds,
        'last_chunk_s': computed[-1] - start,
        'baseline_mb': max(rss for rss, _ in baseline.values()),
        'peak_mb': [peak for _, peak in memory.values()],
    }


def run_single_process(path, output, *, batch_size, preset):
    """The same correction by one MotionSession (2 threads) into DiskSink."""
    from napari_flowscope.engine import FlowParams
    from napari_flowscope.session import DiskSink, MotionSession

    stack = np.load(path, mmap_mode='r')
    session = MotionSession(
        stack,
        params=FlowParams.preset(preset),
        batch_size=batch_size,
        n_threads=2,
    )
    start = time.perf_counter()
    session.run(sink=DiskSink(output))
    seconds = time.perf_counter() - start
    shutil.rmtree(output)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=2000)
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--chunk-size', type=int, default=64)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--preset', default='balanced')
    parser.add_argument('--tmp', default='/tmp')
    parser.add_argument(
        '--cv2-threads',
        type=int,
        default=None,
        help='OpenCV threads per worker (default: cores / workers)',
    )
    parser.add_argument(
        '--single',
        action='store_true',
        help='also time the single-process session on the same stack',
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix='bench-distributed-', dir=args.tmp))
    try:
        path = scratch / 'stack.npy'
        write_stack(path, args.frames)
        size = path.stat().st_size / 1e9
        print(
            f'{time.strftime("%Y-%m-%d", time.gmtime())}, {machine()}, '
            f'load average {os.getloadavg()[0]:.1f} at start'
        )
        print(
            f'{args.frames} x {FRAME_SHAPE[0]} x {FRAME_SHAPE[1]} uint16 '
            f'({size:.2f} GB .npy), preset {args.preset!r}, chunk '
            f'{args.chunk_size} frames, batch {args.batch_size}, OpenCV '
            'threads per worker '
            f'{args.cv2_threads or "cores / workers (local_cluster)"}'
        )
        print(
            '| workers | total time | frames/s | last chunk done | '
            'worker baseline | peak per worker | load average |'
        )
        print('| --- | --- | --- | --- | --- | --- | --- |')
        for n_workers in args.workers:
            result = run(
                path,
                scratch / 'out',
                n_workers,
                chunk_size=args.chunk_size,
                batch_size=args.batch_size,
                preset=args.preset,
                cv2_threads=args.cv2_threads,
            )
            peaks = ', '.join(f'{peak:.0f}' for peak in result['peak_mb'])
            print(
                f'| {n_workers} | {result["seconds"]:.1f} s | '
                f'{result["frames_per_s"]:.1f} | '
                f'{result["last_chunk_s"]:.1f} s | '
                f'{result["baseline_mb"]:.0f} MB | {peaks} MB | '
                f'{os.getloadavg()[1]:.1f} |',
                flush=True,
            )
        if args.single:
            seconds = run_single_process(
                path,
                scratch / 'out',
                batch_size=args.batch_size,
                preset=args.preset,
            )
            print(
                f'| single process (MotionSession, 2 threads) | '
                f'{seconds:.1f} s | {args.frames / seconds:.1f} | | | | '
                f'{os.getloadavg()[1]:.1f} |',
                flush=True,
            )
        print('(load average: mean of the last 5 minutes of each run)')
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
    main()
