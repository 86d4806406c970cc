"""Benchmarks of the streaming session (results go to docs/benchmarks.md).

Run by hand from the repository root::

    python benchmarks/bench_session.py threads   # 1 vs 2 threads, 512 x 512
    python benchmarks/bench_session.py memory    # 2000 x 512 x 512 to disk
    python benchmarks/bench_session.py pc12      # real data vs StackReg
    python benchmarks/bench_session.py all

``memory`` writes a 1 GB input stack and about 7 GB of results under
``/tmp`` (override with ``--tmp``) and deletes them afterwards.  Each
memory measurement runs in a fresh interpreter, whose resident memory after
imports and after opening the input is the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REAL_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'real'
FRAME_SHAPE = (512, 512)


def machine():
    return (
        f'{platform.node()}: {os.cpu_count()} CPU cores, '
        f'{_total_memory_gb():.0f} GB RAM, Python '
        f'{platform.python_version()}, {platform.platform()}'
    )


def _total_memory_gb():
    import psutil

    return psutil.virtual_memory().total / 2**30


# -- test stacks -------------------------------------------------------------


def drifting_frames(n_frames, *, seed=0):
    """float32 frames of 512 x 512 tissue with a smooth random drift."""
    from napari_flowscope import synthetic

    # Rendering is slow; a short sequence shifted by whole pixels gives a
    # long one whose motion is still different in every frame.
    base = synthetic.rigid_drift(
        n_frames=16, shape=FRAME_SHAPE, max_shift=4.0, seed=seed
    ).stack
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.integers(-1, 2, size=(n_frames, 2)), axis=0)
    offsets = np.clip(offsets, -6, 6)
    for t in range(n_frames):
        yield np.roll(base[t % len(base)], tuple(offsets[t]), axis=(0, 1))


# -- threads -----------------------------------------------------------------


def bench_threads(n_frames=64, repeats=5):
    """Frames per second with 1 and 2 threads (best of ``repeats``)."""
    import cv2

    from napari_flowscope.session import MotionSession

    stack = np.stack(list(drifting_frames(n_frames)))
    results = {}
    for cv2_threads in (cv2.getNumThreads(), 1):
        previous = cv2.getNumThreads()
        cv2.setNumThreads(cv2_threads)
        try:
            for n_threads in (1, 2):
                best = np.inf
                for _ in range(repeats):
                    session = MotionSession(
                        stack, batch_size=16, n_threads=n_threads
                    )
                    _ = session.reference_image
                    start = time.perf_counter()
                    session.run()
                    best = min(best, time.perf_counter() - start)
                results[(cv2_threads, n_threads)] = n_frames / best
        finally:
            cv2.setNumThreads(previous)
    control = _control_speedup(stack)
    lines = [
        (
            f'threads benchmark: {n_frames} frames of {FRAME_SHAPE}, float32, '
            "preset 'balanced', batch 16, best of "
            f'{repeats}'
        )
    ]
    for cv2_threads in sorted({key[0] for key in results}, reverse=True):
        one = results[(cv2_threads, 1)]
        two = results[(cv2_threads, 2)]
        lines.append(
            f'  OpenCV threads {cv2_threads}: 1 thread {one:.1f} frames/s, '
            f'2 threads {two:.1f} frames/s, speed-up {two / one:.2f}x'
        )
    lines.append(
        '  control (what this machine allows): 20 cv2.GaussianBlur per '
        'frame, OpenCV threads 1, no GIL held, no shared state: '
        f'1 thread {control[0]:.1f} frames/s, 2 threads {control[1]:.1f} '
        f'frames/s, speed-up {control[1] / control[0]:.2f}x'
    )
    return '\n'.join(lines)


def _control_speedup(stack, repeats=3):
    """Frames/s of trivially parallel OpenCV work with 1 and 2 threads."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    def blur(frame):
        for _ in range(20):
            frame = cv2.GaussianBlur(frame, (0, 0), 2.0)
        return frame

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    rates = []
    try:
        for n_threads in (1, 2):
            best = np.inf
            for _ in range(repeats):
                start = time.perf_counter()
                with ThreadPoolExecutor(n_threads) as pool:
                    list(pool.map(blur, stack))
                best = min(best, time.perf_counter() - start)
            rates.append(len(stack) / best)
    finally:
        cv2.setNumThreads(previous)
    return rates


# -- memory ------------------------------------------------------------------


def _memory_status():
    """Resident memory in MiB: total, anonymous and file-backed."""
    values = {}
    with open('/proc/self/status') as status:
        for line in status:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'RssAnon', 'RssFile'):
                values[key] = int(value.split()[0]) / 1024
    return values


class PeakSampler:
    """Sample /proc/self/status in a thread and keep the maxima."""

    def __init__(self, interval=0.02):
        self.interval = interval
        self.peak = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for key, value in _memory_status().items():
                self.peak[key] = max(self.peak.get(key, 0.0), value)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_input(path, n_frames):
    from napari_flowscope import formats

    with formats.ImageJStackWriter(
        path, frame_shape=FRAME_SHAPE, dtype=np.uint16, n_frames=n_frames
    ) as writer:
        for frame in drifting_frames(n_frames):
            writer.write(np.round(frame * 4000).astype(np.uint16))


def memory_child(input_path, output, kind, batch_size):
    """Run one streamed correction; print a JSON line of measurements."""
    import dask.array as da
    import tifffile

    from napari_flowscope import formats
    from napari_flowscope.session import DiskSink, MotionSession

    if kind == 'memmap':
        stack, _ = formats.open_stack(input_path, lazy=True)
        assert isinstance(stack, np.memmap)
    else:
        # Pages read through tifffile's zarr store (file reads, no map).
        stack = da.from_zarr(tifffile.imread(input_path, aszarr=True))
    session = MotionSession(stack, batch_size=batch_size)
    _ = session.reference_image
    baseline = _memory_status()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        session.run(sink=DiskSink(output, overwrite=True))
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                'kind': kind,
                'frames': session.n_frames,
                'seconds': seconds,
                'baseline': baseline,
                'peak': sampler.peak,
            }
        )
    )


def bench_memory(n_frames=2000, tmp=None, batch_size=16):
    workdir = Path(tempfile.mkdtemp(prefix='flowscope-bench-', dir=tmp))
    lines = []
    try:
        input_path = workdir / 'input.tif'
        start = time.perf_counter()
        write_input(input_path, n_frames)
        lines.append(
            f'memory benchmark: {n_frames} x {FRAME_SHAPE} uint16 input '
            f'({input_path.stat().st_size / 2**30:.2f} GiB TIFF, written in '
            f'{time.perf_counter() - start:.0f} s), batch {batch_size}, '
            'streamed to disk (registered.tif, flow.npy, reliability.npy)'
        )
        for kind in ('dask', 'memmap'):
            output = workdir / f'out-{kind}'
            completed = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    'memory-child',
                    str(input_path),
                    str(output),
                    kind,
                    str(batch_size),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            shutil.rmtree(output)
            base, peak = result['baseline'], result['peak']
            lines.append(
                f'  {kind} input: {result["frames"]} frames in '
                f'{result["seconds"]:.0f} s '
                f'({result["frames"] / result["seconds"]:.1f} frames/s); '
                f'baseline RSS {base["VmRSS"]:.0f} MiB; peak above baseline: '
                f'RSS {peak["VmRSS"] - base["VmRSS"]:.0f} MiB '
                f'(anonymous {peak["RssAnon"] - base["RssAnon"]:.0f} MiB, '
                f'file-backed {peak["RssFile"] - base["RssFile"]:.0f} MiB)'
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return '\n'.join(lines)


# -- real data ---------------------------------------------------------------


def bench_pc12(presets=('balanced', 'quality')):
    """pc12 corrected to frame 0 against ImageJ StackReg (translation)."""
    from skimage.registration import phase_cross_correlation

    from napari_flowscope import formats
    from napari_flowscope.engine import FlowParams
    from napari_flowscope.session import FrameReference, compensate

    folder = REAL_DATA / 'pc12_stackreg'
    unregistered, _ = formats.open_stack(folder / 'pc12-unreg.tif')
    stackreg, _ = formats.open_stack(folder / 'pc12-reg-translation.tif')
    # Both outputs fill what moved in from outside differently (StackReg
    # with zeros, we with the edge), so compare away from the border.
    inner = np.s_[20:-20, 20:-20]

    def shift(reference, moving):
        found, _, _ = phase_cross_correlation(
            reference[inner].astype(np.float64),
            moving[inner].astype(np.float64),
            upsample_factor=10,
        )
        return found

    lines = [
        (
            'pc12 (5 x 201 x 199 uint16), reference frame:0; residual '
            'global shift (dy, dx) in px of our output against StackReg '
            'translation (phase_cross_correlation, upsample 10, 20 px '
            'border excluded)'
        ),
        '  before correction: '
        + ', '.join(
            _pair(shift(stackreg[t], unregistered[t]))
            for t in range(len(unregistered))
        ),
        '  StackReg against frame 0: '
        + ', '.join(
            _pair(shift(unregistered[0], stackreg[t]))
            for t in range(len(unregistered))
        ),
    ]
    for preset in presets:
        start = time.perf_counter()
        registered, _ = compensate(
            unregistered, FrameReference(0), FlowParams.preset(preset)
        )
        seconds = time.perf_counter() - start
        residuals = [
            shift(stackreg[t], registered[t]) for t in range(len(unregistered))
        ]
        largest = max(float(np.hypot(*r)) for r in residuals)
        lines.append(
            f"  preset '{preset}' ({seconds:.2f} s): "
            + ', '.join(_pair(r) for r in residuals)
            + f'; largest |residual| {largest:.2f} px (target 0.3 px)'
        )
    return '\n'.join(lines)


def _pair(values):
    return f'({values[0]:+.1f}, {values[1]:+.1f})'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        'which', choices=['threads', 'memory', 'pc12', 'all', 'memory-child']
    )
    parser.add_argument('rest', nargs='*', help=argparse.SUPPRESS)
    parser.add_argument('--frames', type=int, default=2000)
    parser.add_argument('--tmp', default=None)
    args = parser.parse_args(argv)
    if args.which == 'memory-child':
        input_path, output, kind, batch_size = args.rest
        memory_child(input_path, output, kind, int(batch_size))
        return
    print(machine())
    print(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
    if args.which in ('threads', 'all'):
        print(bench_threads())
    if args.which in ('pc12', 'all'):
        print(bench_pc12())
    if args.which in ('memory', 'all'):
        print(bench_memory(args.frames, tmp=args.tmp))


if __name__ == '__main__':
    main()
