"""Reader and writer timings (run by hand; results go to docs/benchmarks.md).

    python benchmarks/bench_reader.py [--scratch DIR]

Measures
* opening an ImageJ stack larger than RAM (a sparse file: only the frames
  written use disk) -> memory-map;
* opening a zlib-compressed BigTIFF of several GB -> dask over tifffile's
  zarr store;
* streaming writers (ImageJ TIFF, flow .npy) throughput;
* opening the real recordings in ../shared/data/real when present.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile

from napari_flowscope import formats
from napari_flowscope._reader import get_reader

REAL_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'real'


def _open(path):
    """(seconds, layer data, RSS increase in MB) of get_reader + reader."""
    process = psutil.Process()
    rss = process.memory_info().rss
    start = time.perf_counter()
    layers = get_reader(str(path))(str(path))
    seconds = time.perf_counter() - start
    return seconds, layers, (process.memory_info().rss - rss) / 1e6


def bench_larger_than_ram(scratch):
    path = scratch / 'huge.tif'
    frame_shape, n_frames = (2048, 4096), 4000
    writer = formats.ImageJStackWriter(
        path,
        frame_shape=frame_shape,
        dtype='uint16',
        n_frames=n_frames,
        scale=(0.1, 0.3, 0.3),
        units=('s', 'um', 'um'),
    )
    writer.write(np.full(frame_shape, 7, np.uint16))
    # Sparse benchmark file: skip the middle frames, write the last one.
    writer.frames_written = n_frames - 1
    writer.write(np.full(frame_shape, 9, np.uint16))
    writer.commit()
    size = os.stat(path).st_size / 1e9
    seconds, [(data, kwargs, _)], rss = _open(path)
    start = time.perf_counter()
    last = np.asarray(data[-1])
    read = time.perf_counter() - start
    assert last[0, 0] == 9 and isinstance(data, np.memmap)
    viewer_seconds, viewer_rss = _open_in_viewer_model(path)
    path.unlink()
    ram = psutil.virtual_memory().total / 1e9
    name = (
        f'ImageJ TIFF {n_frames}x{frame_shape[0]}x{frame_shape[1]} uint16, '
        f'{size:.0f} GB ({size / ram:.1f}x RAM)'
    )
    return (
        f'| {name} | memmap | {seconds:.3f} s | {rss:.0f} MB '
        f'| last frame {read:.3f} s |\n'
        f'| same, `ViewerModel.open(..., plugin=...)` (napari adds the '
        f'layer, contrast limits included) | memmap | {viewer_seconds:.2f} s '
        f'| {viewer_rss:.0f} MB | |'
    )


def _open_in_viewer_model(path):
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    viewer = ViewerModel()
    process = psutil.Process()
    rss = process.memory_info().rss
    start = time.perf_counter()
    viewer.open(str(path), plugin='napari-flowscope')
    seconds = time.perf_counter() - start
    return seconds, (process.memory_info().rss - rss) / 1e6


def bench_compressed(scratch):
    path = scratch / 'compressed.tif'
    frame_shape, n_frames = (2048, 2048), 1000
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 50, frame_shape, dtype=np.uint16)

    def frames():
        for t in range(n_frames):
            yield texture + t

    tifffile.imwrite(
        path,
        frames(),
        shape=(n_frames, *frame_shape),
        dtype=np.uint16,
        bigtiff=True,
        photometric='minisblack',
        compression='zlib',
        compressionargs={'level': 1},
    )
    size = os.stat(path).st_size / 1e9
    formats.LAZY_THRESHOLD_BYTES = None
    seconds, [(data, kwargs, _)], rss = _open(path)
    start = time.perf_counter()
    frame = np.asarray(data[n_frames // 2])
    read = time.perf_counter() - start
    assert (frame == texture + n_frames // 2).all()
    path.unlink()
    raw = n_frames * np.prod(frame_shape) * 2 / 1e9
    return (
        f'| zlib BigTIFF {n_frames}x{frame_shape[0]}x{frame_shape[1]} '
        f'uint16, {raw:.1f} GB raw / {size:.1f} GB on disk | '
        f'{type(data).__module__.split(".")[0]} | {seconds:.3f} s '
        f'| {rss:.0f} MB | one frame {read:.3f} s |'
    )


def bench_writers(scratch):
    rows = []
    frame_shape, n_frames, batch = (1024, 1024), 200, 16
    frames = np.random.default_rng(1).integers(
        0, 4000, (batch, *frame_shape), dtype=np.uint16
    )
    flow = np.random.default_rng(2).normal(size=(batch, *frame_shape, 2))
    flow = flow.astype(np.float32)
    for name, make, block in (
        (
            'ImageJStackWriter uint16',
            lambda: formats.ImageJStackWriter(
                scratch / 'r.tif',
                frame_shape=frame_shape,
                dtype='uint16',
                n_frames=n_frames,
            ),
            frames,
        ),
        (
            'FlowWriter float32 (T, Y, X, 2)',
            lambda: formats.FlowWriter(
                scratch / 'flow.npy',
                n_frames=n_frames,
                frame_shape=frame_shape,
            ),
            flow,
        ),
    ):
        start = time.perf_counter()
        with make() as writer:
            for first in range(0, n_frames, batch):
                writer.write(block[: min(batch, n_frames - first)])
        seconds = time.perf_counter() - start
        megabytes = block[0].nbytes * n_frames / 1e6
        os.remove(writer.path)
        rows.append(
            f'| {name}, {n_frames} frames {frame_shape[0]}x'
            f'{frame_shape[1]} | {megabytes:.0f} MB | {seconds:.2f} s '
            f'| {megabytes / seconds:.0f} MB/s |'
        )
    return rows


def bench_real_data():
    rows = []
    if not REAL_DATA.is_dir():
        return rows
    for name in (
        'medaka_heart/croppedCORRJpeg',
        'trackpy_brightfield',
        'trackpy_bulk_water',
        'ctc_timelapse_napari/2D_timelapse.tif',
        'cardiomyocyte_beating/adult_gray.tif',
        'sima_2p/example.tif',
    ):
        seconds, [(data, kwargs, _)], _ = _open(REAL_DATA / name)
        rows.append(
            f'| {name} | {data.shape} {data.dtype} | {seconds:.3f} s |'
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--scratch', type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        scratch = Path(scratch)
        print('| file | opens as | open time | RSS increase | read |')
        print('| --- | --- | --- | --- | --- |')
        print(bench_larger_than_ram(scratch))
        print(bench_compressed(scratch))
        print()
        print('| writer | data | time | throughput |')
        print('| --- | --- | --- | --- |')
        print('\n'.join(bench_writers(scratch)))
        print()
        print('| real recording | shape | open time |')
        print('| --- | --- | --- |')
        print('\n'.join(bench_real_data()))


if __name__ == '__main__':
    main()
