"""Sparse tracking against the annotated Cell Tracking Challenge crop.

Run by hand from the repository root (results go to docs/benchmarks.md,
section "Feature tracking")::

    python benchmarks/bench_tracking.py
    python benchmarks/bench_tracking.py --quality   # also the slow preset

``ctc_timelapse_napari`` (30 x 511 x 511 uint8 nuclei) ships napari tracks
``[id, t, y, x]``. Every track annotated in frame 0 seeds one point there;
in each later frame the tracked point is compared with the annotation of
the same id (while both exist). Annotations are integer nucleus positions
on nuclei about 20 px across, so distances of 1-2 px are at annotation
precision. "No tracking" keeps each seed where it started: the distance
tracking has to beat. Skips cleanly when the data folder is absent.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

DATA = (
    Path(__file__).resolve().parents[2]
    / 'shared'
    / 'data'
    / 'real'
    / 'ctc_timelapse_napari'
)


def load(folder):
    import tifffile

    stack = tifffile.imread(folder / '2D_timelapse.tif')
    annotated = np.load(folder / 'timelapse_track.npy')
    return stack, annotated


def distances(tracks_data, annotated, seed_ids, n_frames):
    """Per-frame lists of |tracked - annotated| for the seeded ids."""
    per_frame = [[] for _ in range(n_frames)]
    for index, track_id in enumerate(seed_ids):
        truth = annotated[annotated[:, 0] == track_id]
        mine = tracks_data[tracks_data[:, 0] == index]
        found = dict(zip(mine[:, 1].astype(int), mine[:, 2:], strict=True))
        for t, y, x in truth[:, 1:]:
            if int(t) in found:
                per_frame[int(t)].append(np.hypot(*(found[int(t)] - (y, x))))
    return [np.asarray(values) for values in per_frame]


def still(seeds, n_frames):
    """Tracks data of points that never move (the no-tracking baseline)."""
    ids = np.arange(len(seeds))
    return np.concatenate(
        [np.c_[ids, np.full(len(ids), t), seeds] for t in range(n_frames)]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DATA)
    parser.add_argument(
        '--quality',
        action='store_true',
        help="also run dense mode with the 'quality' flow preset (minutes)",
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f'skipped: {args.data} is absent')
        return 0

    from napari_flowscope.engine import FlowParams
    from napari_flowscope.tracking import TrackingParams, track_features

    stack, annotated = load(args.data)
    n_frames = len(stack)
    first = annotated[annotated[:, 1] == 0]
    seed_ids, seeds = first[:, 0].astype(int), first[:, 2:]

    runs = {'no tracking': (None, None)}
    runs['LK win 21 (default)'] = (TrackingParams(), None)
    runs['LK win 31'] = (TrackingParams(win_size=31), None)
    presets = ['fast', 'balanced'] + (['quality'] if args.quality else [])
    for reference in ('first', 'previous'):
        for preset in presets:
            runs[f'dense, {preset} flow vs {reference} frame'] = (
                TrackingParams(mode='dense_flow', flow_reference=reference),
                FlowParams.preset(preset),
            )

    results = {}
    for name, (params, flow_params) in runs.items():
        start = time.perf_counter()
        if params is None:
            data = still(seeds, n_frames)
        else:
            data = track_features(
                stack, seeds=seeds, params=params, flow_params=flow_params
            ).data
        elapsed = time.perf_counter() - start
        per_frame = distances(data, annotated, seed_ids, n_frames)
        alive = int(np.sum(data[:, 1] == n_frames - 1))
        results[name] = (per_frame, elapsed, alive)

    print(
        f'{platform.node()}: {os.cpu_count()} cores, Python '
        f'{platform.python_version()}, {time.strftime("%Y-%m-%d")}'
    )
    print(
        f'\n{len(seeds)} seeds; stack {stack.shape} {stack.dtype}\n\n'
        '| run | median (px) | 90th pct. (px) | points compared '
        '| alive at last frame | time (s) |\n'
        '| --- | --- | --- | --- | --- | --- |'
    )
    for name, (per_frame, elapsed, alive) in results.items():
        values = np.concatenate(per_frame)
        print(
            f'| {name} | {np.median(values):.2f} | '
            f'{np.percentile(values, 90):.2f} | {len(values)} | '
            f'{alive}/{len(seeds)} | {elapsed:.2f} |'
        )
    start = time.perf_counter()
    detected = track_features(
        stack, params=TrackingParams(max_corners=500, redetect_every=5)
    )
    elapsed = time.perf_counter() - start
    print(
        f'\nThroughput, no seeds (500 Shi-Tomasi corners, re-detection '
        f'every 5 frames): {len(detected.track_ids)} tracks, '
        f'{len(detected)} points in {elapsed:.2f} s '
        f'({n_frames / elapsed:.0f} frames/s).'
    )
    names = list(results)
    print(
        '\nMedian distance (px) per frame:\n\n| t | '
        + ' | '.join(names)
        + ' |\n|'
        + ' --- |' * (len(names) + 1)
    )
    for t in range(n_frames):
        cells = []
        for name in names:
            values = results[name][0][t]
            cells.append(
                f'{np.median(values):.2f} ({len(values)})'
                if len(values)
                else '-'
            )
        print(f'| {t} | ' + ' | '.join(cells) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
