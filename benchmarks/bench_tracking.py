"""Sparse tracking: drift on noisy spots with exact ground truth, and the
annotated Cell Tracking Challenge crop.

Run by hand from the repository root (results go to docs/benchmarks.md,
section "Feature tracking"); it prints markdown tables::

    python benchmarks/bench_tracking.py
    python benchmarks/bench_tracking.py --quality   # also the slow preset

**Drift on noisy spots.** ``synthetic.drifting_spots``: 40 Gaussian spots
(sigma 1.5-3 px, 100-500 photons at the peak, Poisson noise) moving with
smooth random velocities of 0.5-3 px/frame plus a global drift of up to
8 px, over a drifting, unevenly lit texture, 50 frames of 256 x 256, for
``--sequences`` random seeds. Every spot seeds one track at its true
position in frame 0; each tracked point is compared with the true centre of
its spot. The project's tracker runs with drift correction off, 'auto'
(the default), 'template' and 'spot' (auto + Gaussian spot centre); plain
OpenCV
pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``, window 21, 3 levels,
no forward-backward check) runs on the same seeds and the same 8-bit
frames, so only the tracking differs.

**Cell Tracking Challenge.** ``ctc_timelapse_napari`` (30 x 511 x 511 uint8
nuclei) ships napari tracks
``[id, t, y, x]``. Every track annotated in frame 0 seeds one point there;
in each later frame the tracked point is compared with the annotation of
the same id (while both exist). Annotations are integer nucleus positions
on nuclei about 20 px across, so distances of 1-2 px are at annotation
precision. "No tracking" keeps each seed where it started: the distance
tracking has to beat. Fifteen seeds make a noisy median, so the default,
'template' and 'off' are also compared with the seeds jittered by up to
0.5 px (``--jitter`` draws), on the points all three compare, and with
bootstrap intervals (resampling tracks, or frames). Skips cleanly when the
data folder is absent.
"""

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
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


def error_matrix(tracks_data, annotated, seed_ids, n_frames):
    """(seeds, T) |tracked - annotated|; NaN where either is missing."""
    error = np.full((len(seed_ids), n_frames), np.nan)
    for index, track_id in enumerate(seed_ids):
        truth = annotated[annotated[:, 0] == track_id]
        mine = tracks_data[tracks_data[:, 0] == index]
        times, i, j = np.intersect1d(
            truth[:, 1], mine[:, 1], return_indices=True
        )
        error[index, times.astype(int)] = np.hypot(
            *(truth[i, 2:] - mine[j, 2:]).T
        )
    return error


def still(seeds, n_frames):
    """Tracks data of points that never move (the no-tracking baseline)."""
    ids = np.arange(len(seeds))
    return np.concatenate(
        [np.c_[ids, np.full(len(ids), t), seeds] for t in range(n_frames)]
    )


def load_average():
    try:
        return Path('/proc/loadavg').read_text().split()[:3]
    except OSError:
        return ['?'] * 3


def plain_pyrlk(stack, seeds):
    """OpenCV's pyramidal LK from frame to frame, nothing else.

    The frames are mapped to 8 bits exactly as the project's tracker maps
    them; a point is lost only when OpenCV reports failure or it leaves the
    frame. Returns tracks data ``[id, t, y, x]``.
    """
    from napari_flowscope.tracking.intensity import (
        stack_intensity_range,
        to_uint8,
    )
    from napari_flowscope.tracking.lucas_kanade import inside

    low, high = stack_intensity_range(stack)
    ids = np.arange(len(seeds))
    points = np.asarray(seeds, np.float32)
    rows = [np.c_[ids, np.zeros(len(ids)), points]]
    previous = to_uint8(stack[0], low, high)
    for t in range(1, len(stack)):
        current = to_uint8(stack[t], low, high)
        moved, status, _ = cv2.calcOpticalFlowPyrLK(
            previous,
            current,
            np.ascontiguousarray(points[:, ::-1]).reshape(-1, 1, 2),
            None,
            winSize=(21, 21),
            maxLevel=3,
            criteria=(
                cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS,
                30,
                0.01,
            ),
        )
        points = moved.reshape(-1, 2)[:, ::-1]
        keep = (status.ravel() == 1) & inside(points, current.shape)
        ids, points = ids[keep], points[keep]
        rows.append(np.c_[ids, np.full(len(ids), t), points])
        previous = current
    return np.concatenate(rows)


def spot_errors(data, positions):
    """(T, N) distance of each track to its spot's true centre; NaN where
    the track is gone."""
    n_frames, n_spots = positions.shape[:2]
    error = np.full((n_frames, n_spots), np.nan)
    t, track = data[:, 1].astype(int), data[:, 0].astype(int)
    error[t, track] = np.hypot(*(data[:, 2:] - positions[t, track]).T)
    return error


def drift_benchmark(n_sequences):
    """Markdown tables for the drifting-spots benchmark."""
    from napari_flowscope.synthetic import drifting_spots
    from napari_flowscope.tracking import TrackingParams, track_features

    default = TrackingParams()
    runs = {
        'plain OpenCV PyrLK': None,
        'project, drift correction off': replace(
            default, drift_correction='off'
        ),
        "project, 'auto' (default)": default,
        "project, 'template'": replace(default, drift_correction='template'),
        "project, 'spot' (auto + spot centre)": replace(
            default, drift_correction='spot'
        ),
    }
    errors = {name: [] for name in runs}
    elapsed = dict.fromkeys(runs, 0.0)
    renewed = dict.fromkeys(runs, 0)
    generated = 0.0
    for seed in range(n_sequences):
        start = time.perf_counter()
        spots = drifting_spots(seed=seed)
        generated += time.perf_counter() - start
        seeds = spots.positions[0]
        for name, params in runs.items():
            start = time.perf_counter()
            if params is None:
                data = plain_pyrlk(spots.stack, seeds)
            else:
                tracks = track_features(
                    spots.stack, seeds=seeds, params=params
                )
                data = tracks.data
                renewed[name] += int(
                    np.sum(tracks.features['match'] < params.template_renewal)
                )
            elapsed[name] += time.perf_counter() - start
            errors[name].append(spot_errors(data, spots.positions))
    n_frames, n_spots = spots.positions.shape[:2]
    print(
        f'\n### Drift on noisy spots\n\n{n_sequences} sequences x {n_spots} '
        f'spots x {n_frames} frames of {spots.stack.shape[1]} x '
        f'{spots.stack.shape[2]} (seeds 0-{n_sequences - 1}; generated in '
        f'{generated:.1f} s). Error: distance (px) of each tracked point to '
        f"its spot's true centre, over all frames after the first.\n\n"
        '| tracker | median (px) | 90th pct. (px) | median, last frame (px) '
        '| followed to the end | within 1 px at the end | templates renewed '
        '| time (s) |\n| --- | --- | --- | --- | --- | --- | --- | --- |'
    )
    for name in runs:
        error = np.concatenate(errors[name], axis=1)
        later = error[1:]
        last = error[-1]
        print(
            f'| {name} | {np.nanmedian(later):.3f} | '
            f'{np.nanpercentile(later, 90):.2f} | {np.nanmedian(last):.2f} | '
            f'{np.mean(np.isfinite(last)):.0%} | {np.mean(last < 1):.0%} | '
            f'{renewed[name] if runs[name] is not None else "-"} | '
            f'{elapsed[name]:.2f} |'
        )
    plain = np.nanmedian(np.concatenate(errors['plain OpenCV PyrLK'], 1)[1:])
    print(
        '\nMedian error (px) against frame number (all sequences):\n\n| t | '
        + ' | '.join(runs)
        + ' |\n|'
        + ' --- |' * (len(runs) + 1)
    )
    for t in range(5, n_frames, 5):
        cells = [
            f'{np.nanmedian(np.concatenate(errors[name], axis=1)[t]):.2f}'
            for name in runs
        ]
        print(f'| {t} | ' + ' | '.join(cells) + ' |')
    return plain


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DATA)
    parser.add_argument(
        '--quality',
        action='store_true',
        help="also run dense mode with the 'quality' flow preset (minutes)",
    )
    parser.add_argument(
        '--jitter',
        type=int,
        default=10,
        help='CTC: number of draws of seeds jittered by up to 0.5 px '
        '(default 10)',
    )
    parser.add_argument(
        '--sequences',
        type=int,
        default=3,
        help='number of drifting-spots sequences (default 3)',
    )
    args = parser.parse_args()
    print(
        f'{platform.node()}: {os.cpu_count()} cores, Python '
        f'{platform.python_version()}, OpenCV {cv2.__version__}, '
        f'{time.strftime("%Y-%m-%d %H:%M")}, load average '
        f'{" ".join(load_average())}'
    )
    drift_benchmark(args.sequences)
    if not args.data.is_dir():
        print(f'\nCTC part skipped: {args.data} is absent')
        return 0
    ctc_benchmark(args)
    ctc_noise(args)
    print(f'\nLoad average at the end: {" ".join(load_average())}')
    return 0


def ctc_benchmark(args):
    """Markdown tables for the Cell Tracking Challenge crop."""
    from napari_flowscope.engine import FlowParams
    from napari_flowscope.tracking import TrackingParams, track_features

    stack, annotated = load(args.data)
    n_frames = len(stack)
    first = annotated[annotated[:, 1] == 0]
    seed_ids, seeds = first[:, 0].astype(int), first[:, 2:]

    default = TrackingParams()
    runs = {'no tracking': (None, None)}
    runs['LK, drift correction off'] = (
        replace(default, drift_correction='off'),
        None,
    )
    runs["LK + 'auto' correction (default)"] = (default, None)
    runs["LK + 'template' correction"] = (
        replace(default, drift_correction='template'),
        None,
    )
    runs["LK + 'spot' correction"] = (
        replace(default, drift_correction='spot'),
        None,
    )
    runs["LK + 'template', template 31 px"] = (
        replace(default, drift_correction='template', template_size=31),
        None,
    )
    runs['LK win 31, correction off'] = (
        replace(default, win_size=31, drift_correction='off'),
        None,
    )
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
        f'\n### Cell Tracking Challenge crop\n\n{len(seeds)} seeds; stack '
        f'{stack.shape} {stack.dtype}\n\n'
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
    print(
        '\nThroughput, no seeds (500 Shi-Tomasi corners, re-detection every '
        '5 frames):\n'
    )
    for correction in ('off', 'auto', 'template', 'spot'):
        start = time.perf_counter()
        detected = track_features(
            stack,
            params=TrackingParams(
                max_corners=500, redetect_every=5, drift_correction=correction
            ),
        )
        elapsed = time.perf_counter() - start
        print(
            f'- drift correction {correction!r}: {len(detected.track_ids)} '
            f'tracks, {len(detected)} points in {elapsed:.2f} s '
            f'({n_frames / elapsed:.0f} frames/s)'
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


def ctc_noise(args, n_boot=2000):
    """How much of the CTC medians is noise: jittered seeds, common
    points, bootstrap intervals."""
    from napari_flowscope.tracking import TrackingParams, track_features

    stack, annotated = load(args.data)
    n_frames = len(stack)
    first = annotated[annotated[:, 1] == 0]
    seed_ids, seeds = first[:, 0].astype(int), first[:, 2:]
    modes = ['off', 'auto', 'template']
    rng = np.random.default_rng(0)
    draws = [seeds] + [
        np.clip(
            seeds + rng.uniform(-0.5, 0.5, seeds.shape),
            0,
            np.subtract(stack.shape[1:], 1),
        )
        for _ in range(args.jitter)
    ]
    errors = {
        mode: [
            error_matrix(
                track_features(
                    stack,
                    seeds=start,
                    params=TrackingParams(drift_correction=mode),
                ).data,
                annotated,
                seed_ids,
                n_frames,
            )
            for start in draws
        ]
        for mode in modes
    }

    def median(error):
        return np.median(error[np.isfinite(error)])

    exact = {mode: errors[mode][0] for mode in modes}
    common = np.all([np.isfinite(exact[mode]) for mode in modes], axis=0)
    common[:, 0] = False  # frame 0 is the seed itself
    common_jittered = [
        np.all([np.isfinite(errors[mode][k]) for mode in modes], axis=0)
        & (np.arange(n_frames) > 0)
        for k in range(1, len(draws))
    ]
    boot = {}
    for axis, size in (('tracks', len(seeds)), ('frames', n_frames)):
        picks = rng.integers(0, size, (n_boot, size))
        for mode in modes:
            boot[axis, mode] = np.array(
                [
                    median(
                        np.take(exact[mode], pick, axis=int(axis == 'frames'))
                    )
                    for pick in picks
                ]
            )
    print(
        f'\n### CTC: how much is noise\n\nSeeds exact and jittered by up '
        f'to 0.5 px ({args.jitter} draws); "common points": frames > 0 '
        'where all three runs have a point (no credit for ending hard '
        f'tracks); 95 % bootstrap intervals of the median ({n_boot} '
        'resamples of the 15 tracks, or of the 30 frames), and of the '
        "difference to 'off' on the same resamples.\n\n"
        '| correction | median (px) | points | jittered: mean median '
        '[range] | common points: median (exact / jittered mean) '
        '| bootstrap, tracks | bootstrap, frames '
        "| minus 'off', tracks | minus 'off', frames |\n"
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- |'
    )

    def interval(values):
        low, high = np.percentile(values, [2.5, 97.5])
        return f'[{low:.2f}, {high:.2f}]'

    for mode in modes:
        jittered = [median(error) for error in errors[mode][1:]]
        shared = [
            np.median(error[mask])
            for error, mask in zip(
                errors[mode][1:], common_jittered, strict=True
            )
        ]
        spread = f'{min(jittered):.2f}-{max(jittered):.2f}'
        cells = [
            f'{median(exact[mode]):.2f}',
            f'{np.isfinite(exact[mode]).sum()}',
            f'{np.mean(jittered):.2f} [{spread}]',
            f'{np.median(exact[mode][common]):.2f} / {np.mean(shared):.2f}',
            interval(boot['tracks', mode]),
            interval(boot['frames', mode]),
        ]
        for axis in ('tracks', 'frames'):
            cells.append(
                '-'
                if mode == 'off'
                else interval(boot[axis, mode] - boot[axis, 'off'])
            )
        print(f"| '{mode}' | " + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    sys.exit(main())
