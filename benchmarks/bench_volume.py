"""Volumes (T, Z, Y, X): 3-D flow accuracy, cost and memory.

Run by hand from the repository root (writes the "Volumes (3-D flow)"
section of docs/benchmarks.md and prints it)::

    python benchmarks/bench_volume.py
    python benchmarks/bench_volume.py --no-write --quick

Everything is measured in the same run on the same machine:

* accuracy on synthetic volumes with exact ground truth
  (``napari_flowscope.synthetic.drifting_volume``: a translation of several
  voxels along every axis plus a smooth deformation defined on the moving
  grid, ground truth by fixed-point iteration), for the three presets, the
  2-D engine plane by plane, and scikit-image's 3-D ``optical_flow_ilk``
  and ``optical_flow_tvl1`` as anchors;
* the same motion applied to real z-stacks (NEUBIAS training resources,
  CC BY 4.0, kept outside the project: ``--real-data``), before/after;
* cost of registering one volume against registering its planes one by
  one with the 2-D engine, timed interleaved (wall clock and CPU time),
  and of the trilinear warp against ``scipy.ndimage.map_coordinates``;
* peak memory (RSS) of ``napari-flowscope correct`` on a short and an
  eight times longer memory-mapped TZYX TIFF.
"""

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from _docs_section import write_section
from _machine import machine
from scipy import ndimage as ndi
from skimage.registration import optical_flow_ilk, optical_flow_tvl1

from napari_flowscope import formats, synthetic
from napari_flowscope.engine import FlowEstimator, FlowParams, warp
from napari_flowscope.engine.volume import (
    PlaneFlowEstimator,
    VolumeFlowEstimator,
    warp_volume,
)
from napari_flowscope.session.stats import normalized_cross_correlation

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs' / 'benchmarks.md'
HEADING = '## Volumes (3-D flow)'
REAL_DATA = ROOT.parent / 'data_extra' / 'neubias'
REAL_STACKS = {
    'Golgi (HeLa, BFA), 25 x 137 x 147': 'xyz_calibrated_16bit__golgi_bfa.tif',
    'nuclei, 37 x 118 x 132': 'xyz_8bit__nuclei_autothresh.tif',
}
TARGET_EPE = 0.15
TARGET_RATIO = 3.0
FRAMES = (1, 3, 5)


# ---------------------------------------------------------------- methods


class Method:
    """``estimator(reference, spacing)`` returns ``f(moving) -> w``."""

    def __init__(self, name, estimator, *, slow=False):
        self.name = name
        self.estimator = estimator
        self.slow = slow


def _ours(preset):
    params = FlowParams.preset(preset)

    def estimator(reference, spacing):
        engine = VolumeFlowEstimator(reference, params, spacing=spacing)
        return lambda moving: engine.estimate(moving).w

    label = 'default' if preset == 'balanced' else preset
    return Method(f'flowscope 3-D {preset} ({label})', estimator)


def _planes(reference, spacing):
    engine = PlaneFlowEstimator(reference)
    return lambda moving: engine.estimate(moving).w


def _unit(volume):
    volume = np.asarray(volume, np.float32)
    low, high = np.percentile(volume, (0.5, 99.5))
    return np.clip((volume - low) / max(high - low, 1e-12), 0, 1)


def _skimage(function, **options):
    def estimator(reference, spacing):
        reference = _unit(reference)

        def estimate(moving):
            # (dz, dy, dx) arrays with reference(p) = moving(p + v(p))
            flow = function(reference, _unit(moving), **options)
            return np.stack(flow[::-1], axis=-1).astype(np.float32)

        return estimate

    return estimator


def methods():
    return [
        _ours('fast'),
        _ours('balanced'),
        _ours('quality'),
        Method('flowscope 2-D balanced, plane by plane', _planes),
        Method('skimage ILK 3-D (radius 7)', _skimage(optical_flow_ilk)),
        Method('skimage TV-L1 3-D', _skimage(optical_flow_tvl1), slow=True),
    ]


# --------------------------------------------------------------- accuracy


def synthetic_cases(quick):
    frames = 4 if quick else 6
    return [
        (
            'drift + deformation, 32 x 128 x 128, noise 0.02',
            synthetic.drifting_volume(
                n_frames=frames, shape=(32, 128, 128), noise=0.02
            ),
        ),
        (
            'same without noise',
            synthetic.drifting_volume(n_frames=frames, shape=(32, 128, 128)),
        ),
        (
            'z voxels 3x deeper, 16 x 128 x 128, noise 0.02',
            synthetic.drifting_volume(
                n_frames=frames,
                shape=(16, 128, 128),
                spacing=(3.0, 1.0, 1.0),
                noise=0.02,
            ),
        ),
    ]


def real_cases(folder, quick):
    cases = []
    for title, name in REAL_STACKS.items():
        path = Path(folder) / name
        if not path.is_file():
            continue
        with tifffile.TiffFile(path) as tif:
            volume = tif.asarray()
            z_spacing = float(tif.imagej_metadata['spacing'])
            pixel = 1 / float(tif.pages[0].resolution[0])
        relative = (z_spacing / pixel, 1.0, 1.0)
        sequence = synthetic.drifting_volume(
            n_frames=4 if quick else 6,
            spacing=relative,
            shift=(4.0, -3.0, 1.5),
            texture=volume,
        )
        cases.append((f'{title} (z {relative[0]:.1f}x deeper)', sequence))
    return cases


def frames_of(sequence, quick):
    return [t for t in FRAMES if t < len(sequence.stack)][: 2 if quick else 3]


def accuracy(method, sequence, frames, *, reliable_only=False):
    """Mean EPE (voxels) over ``frames``; also NCC after registration."""
    estimate = method.estimator(sequence.reference, sequence.spacing)
    errors, ncc = [], []
    reliable = None
    if reliable_only:
        engine = VolumeFlowEstimator(
            sequence.reference, spacing=sequence.spacing
        )
        reliable = engine.reliability >= FlowParams().reliability_threshold
    seconds = []
    for t in frames:
        start = time.perf_counter()
        w = estimate(sequence.stack[t])
        seconds.append(time.perf_counter() - start)
        error = np.linalg.norm(w - sequence.flow[t], axis=-1)
        errors.append(error[sequence.valid].mean())
        if reliable is not None:
            errors[-1] = (errors[-1], error[sequence.valid & reliable].mean())
        ncc.append(
            normalized_cross_correlation(
                warp_volume(sequence.stack[t], w), sequence.reference
            )
        )
    return errors, ncc, min(seconds)


# ------------------------------------------------------------------- cost


def cost(volumes, repeats):
    """Seconds per volume: 3-D vs its planes in 2-D, interleaved."""
    reference, moving = volumes[0], volumes[1:]
    three_d = VolumeFlowEstimator(reference)
    planes = [FlowEstimator(plane) for plane in reference]

    def register_3d(volume):
        warp_volume(volume, three_d.estimate(volume).w)

    def register_planes(volume):
        for estimator, plane in zip(planes, volume, strict=True):
            warp(plane, estimator.estimate(plane).w)

    timings = {'3-D': [], 'planes': []}
    for repeat in range(repeats):
        volume = moving[repeat % len(moving)]
        for name, register in (
            ('3-D', register_3d),
            ('planes', register_planes),
        ):
            wall, cpu = time.perf_counter(), time.process_time()
            register(volume)
            timings[name].append(
                (time.perf_counter() - wall, time.process_time() - cpu)
            )
    setup = []
    for _ in range(2):
        start = time.perf_counter()
        VolumeFlowEstimator(reference)
        setup.append(time.perf_counter() - start)
    return {
        name: (min(t[0] for t in values), min(t[1] for t in values))
        for name, values in timings.items()
    }, min(setup)


def warp_cost(volume, repeats):
    rng = np.random.default_rng(0)
    w = rng.uniform(-2, 2, (*volume.shape, 3)).astype(np.float32)
    z, y, x = np.indices(volume.shape, dtype=np.float32)
    coordinates = [z + w[..., 2], y + w[..., 1], x + w[..., 0]]
    times = {'per-plane remap (ours)': [], 'map_coordinates order 1': []}
    for _ in range(repeats):
        start = time.perf_counter()
        ours = warp_volume(volume, w)
        times['per-plane remap (ours)'].append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = ndi.map_coordinates(
            volume, coordinates, order=1, mode='nearest'
        )
        times['map_coordinates order 1'].append(time.perf_counter() - start)
    difference = float(np.abs(ours - theirs).max())
    return {name: min(values) for name, values in times.items()}, difference


# ----------------------------------------------------------------- memory

# The peak RSS of the process's own memory (VmHWM): getrusage's ru_maxrss
# would also count the parent's RSS at fork time, which Linux carries
# over into the child.
_PEAK = (
    'import sys\n'
    'from napari_flowscope import cli\n'
    'rc = cli.main(sys.argv[1:]) if len(sys.argv) > 1 else 0\n'
    'status = open("/proc/self/status").read().split("VmHWM:")[1]\n'
    'print(rc, int(status.split()[0]))\n'
)


def _peak_rss(arguments):
    """(exit status, peak RSS in MiB) of the CLI in a fresh process."""
    output = subprocess.run(
        [sys.executable, '-c', _PEAK, *arguments],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(output[-2]), int(output[-1]) / 1024


def memory(scratch, lengths, shape):
    """Peak RSS of ``correct`` on TZYX stacks of ``lengths`` volumes."""
    sequence = synthetic.drifting_volume(n_frames=8, shape=shape)
    volumes = np.round(sequence.stack * 3000).astype(np.uint16)
    _, baseline = _peak_rss([])
    rows = []
    for n_frames in lengths:
        path = Path(scratch) / f'long_{n_frames}.tif'
        with formats.ImageJStackWriter(
            path,
            frame_shape=shape,
            dtype=np.uint16,
            n_frames=n_frames,
            axes='TZYX',
        ) as writer:
            for t in range(n_frames):
                writer.write(volumes[t % len(volumes)])
        output = Path(scratch) / f'out_{n_frames}'
        start = time.perf_counter()
        status, peak = _peak_rss(
            ['correct', str(path), '-o', str(output), '-q', '--overwrite']
        )
        elapsed = time.perf_counter() - start
        written = sum(f.stat().st_size for f in output.iterdir())
        rows.append(
            (n_frames, path.stat().st_size, written, peak, elapsed, status)
        )
        path.unlink()
        for file in output.iterdir():
            file.unlink()
    return baseline, rows


# ----------------------------------------------------------------- report


def _table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |']
    lines.append('| ' + ' | '.join('---' for _ in header) + ' |')
    lines += [
        '| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows
    ]
    return '\n'.join(lines)


def run(*, quick=False, real_data=REAL_DATA, scratch=None):
    started = time.perf_counter()
    load_start = os.getloadavg()
    out = [HEADING, '']
    everyone = methods()

    cases = synthetic_cases(quick)
    results = {}
    for method in everyone:
        for title, sequence in cases:
            frames = frames_of(sequence, quick)
            if method.slow:
                frames = frames[-1:]
            results[method.name, title] = accuracy(method, sequence, frames)
        print(f'accuracy: {method.name} done', file=sys.stderr, flush=True)

    real = real_cases(real_data, quick)
    real_results = {}
    for method in everyone[:4]:
        for title, sequence in real:
            real_results[method.name, title] = accuracy(
                method,
                sequence,
                frames_of(sequence, quick),
                reliable_only=True,
            )
    print('real textures done', file=sys.stderr, flush=True)

    big = synthetic.drifting_volume(n_frames=4, shape=(32, 256, 256)).stack
    small = synthetic.drifting_volume(n_frames=4, shape=(64, 128, 128)).stack
    repeats = 2 if quick else 5
    costs = {
        '32 x 256 x 256': cost(big, repeats),
        '64 x 128 x 128': cost(small, repeats),
    }
    warps = warp_cost(big[1], repeats)
    print('cost done', file=sys.stderr, flush=True)

    lengths = (48, 160) if quick else (48, 160, 320)
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        baseline, rss = memory(folder, lengths, (32, 128, 128))
    print('memory done', file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()

    out.append(
        f'`python benchmarks/bench_volume.py{" --quick" if quick else ""}`'
        f' — {datetime.date.today().isoformat()}, {machine()}. Whole run '
        f'{elapsed / 60:.1f} min; load average (1, 5, 15 min) '
        f'{", ".join(f"{v:.1f}" for v in load_start)} at the start and '
        f'{", ".join(f"{v:.1f}" for v in load_end)} at the end (a load '
        'above the number of cores inflates wall-clock times, CPU times '
        'less so).'
    )
    out += [
        '',
        '### Accuracy on synthetic volumes with exact ground truth',
        '',
    ]
    out.append(
        'Mean endpoint error in voxels (lower is better) over every voxel '
        'whose content stays inside the volume (`valid`), averaged over '
        f'volumes {", ".join(map(str, FRAMES))} of 6 against volume 0 '
        '(TV-L1: the last of them only, for time). The motion: a '
        'translation growing to (4, -3, 2.5) voxels along (x, y, z) plus '
        'a smooth deformation of up to 1.5 px, defined on the moving grid '
        '(ground truth by fixed-point iteration). Anchors get intensities '
        'mapped to [0, 1]; scikit-image knows nothing of anisotropic '
        'voxels; the 2-D engine cannot see motion along z.'
    )
    out.append('')
    header = [
        'method',
        *(title for title, _ in cases),
        'NCC after (first case)',
        's per volume (first case)',
    ]
    rows = []
    for method in everyone:
        errors = [np.mean(results[method.name, t][0]) for t, _ in cases]
        _, ncc, seconds = results[method.name, cases[0][0]]
        rows.append(
            [
                method.name,
                *(f'{e:.3f}' for e in errors),
                f'{np.mean(ncc):.4f}',
                f'{seconds:.2f}',
            ]
        )
    out.append(_table(header, rows))
    default = np.mean(results[everyone[1].name, cases[0][0]][0])
    out += [
        '',
        (
            f'Target: default preset mean EPE ≤ {TARGET_EPE} voxel on the '
            f'first case: **{default:.3f}** '
            f'({"met" if default <= TARGET_EPE else "not met"}).'
        ),
    ]

    if real:
        out += ['', '### Real z-stacks moved by known 3-D motion', '']
        out.append(
            'Two z-stacks from the NEUBIAS training resources '
            '(github.com/NEUBIAS/training-resources, `image_data/`, CC BY '
            '4.0; kept outside the project in `--real-data`), each moved by '
            'the same kind of drift and deformation (translation to (4, -3, '
            '1.5) voxels, deformation up to 1.5 px), rendered with cubic '
            'B-splines of the real volume: real texture, real noise, sparse '
            'structures on a dark background, voxels 1.1x and 4.8x deeper '
            "than wide (their files' calibration is passed as `spacing`). "
            'EPE over all `valid` voxels / over textured ones (reliability '
            '≥ 1e-4); NCC of the registered volume with the reference '
            '(before: the moving volume itself).'
        )
        out.append('')
        header = [
            'method',
            'stack',
            'EPE all (voxels)',
            'EPE textured',
            'NCC before',
            'NCC after',
        ]
        rows = []
        for title, sequence in real:
            before = np.mean(
                [
                    normalized_cross_correlation(
                        sequence.stack[t], sequence.reference
                    )
                    for t in frames_of(sequence, quick)
                ]
            )
            for method in everyone[:4]:
                errors, ncc, _ = real_results[method.name, title]
                rows.append(
                    [
                        method.name,
                        title,
                        f'{np.mean([e[0] for e in errors]):.3f}',
                        f'{np.mean([e[1] for e in errors]):.3f}',
                        f'{before:.3f}',
                        f'{np.mean(ncc):.3f}',
                    ]
                )
        out.append(_table(header, rows))

    out += ['', '### Cost: one volume against its planes in 2-D', '']
    out.append(
        f'Seconds to register one volume (flow against a fixed reference, '
        f'set-up excluded, plus the warp), best of {repeats}, 3-D and '
        '2-D plane by plane timed alternately on the same volumes; CPU '
        'time is that of both cores (OpenCV may use two threads).'
    )
    out.append('')
    rows = []
    ratios = []
    for size, (timing, setup) in costs.items():
        ratio = timing['3-D'][0] / timing['planes'][0]
        ratios.append(ratio)
        rows.append(
            [
                size,
                f'{timing["3-D"][0]:.3f} s ({timing["3-D"][1]:.3f} s CPU)',
                (
                    f'{timing["planes"][0]:.3f} s '
                    f'({timing["planes"][1]:.3f} s CPU)'
                ),
                (
                    f'{ratio:.2f}x '
                    f'({timing["3-D"][1] / timing["planes"][1]:.2f}x CPU)'
                ),
                f'{setup:.2f} s',
            ]
        )
    out.append(
        _table(
            [
                'volume',
                '3-D (default preset)',
                '2-D per plane',
                '3-D / planes',
                '3-D reference set-up',
            ],
            rows,
        )
    )
    out += [
        '',
        (
            f'Target: ≤ {TARGET_RATIO:g}x: **{max(ratios):.2f}x** at worst '
            f'({"met" if max(ratios) <= TARGET_RATIO else "not met"}).'
        ),
        '',
    ]
    times, difference = warps
    out.append(
        'Trilinear warp of one 32 x 256 x 256 volume: '
        + ', '.join(f'{name} {t * 1000:.0f} ms' for name, t in times.items())
        + f'; largest difference {difference:.1e} (intensities 0-1).'
    )

    out += ['', '### Memory of a streamed run', '']
    out.append(
        '`napari-flowscope correct` in a fresh process on a memory-mapped '
        'ImageJ TZYX TIFF of 32 x 128 x 128 uint16 volumes (default batch: '
        '16 volumes; one batch is written while the next is computed), all '
        'results streamed to disk; peak RSS of the process (VmHWM; a '
        f'process that only imports the CLI peaks at {baseline:.0f} MiB). '
        'Memory is bounded by the batch if the peak does not grow with the '
        'number of volumes.'
    )
    out.append('')
    rows = [
        [
            n_frames,
            f'{size / 2**20:.0f} MiB',
            f'{written / 2**20:.0f} MiB',
            f'{peak:.0f} MiB',
            f'{elapsed:.0f} s',
        ]
        for n_frames, size, written, peak, elapsed, status in rss
        if status == 0
    ]
    out.append(
        _table(
            ['volumes', 'input', 'results written', 'peak RSS', 'time'],
            rows,
        )
    )
    return '\n'.join(out) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--no-write', action='store_true', help='print, do not edit docs'
    )
    parser.add_argument(
        '--quick', action='store_true', help='fewer volumes and repeats'
    )
    parser.add_argument(
        '--real-data',
        type=Path,
        default=REAL_DATA,
        help='folder holding the NEUBIAS z-stacks (default: %(default)s)',
    )
    parser.add_argument(
        '--scratch', type=Path, default=None, help='folder for big files'
    )
    args = parser.parse_args()
    markdown = run(
        quick=args.quick, real_data=args.real_data, scratch=args.scratch
    )
    print(markdown)
    if not args.no_write:
        write_section(markdown, heading=HEADING)
        print(f'wrote the "{HEADING[3:]}" section of {DOCS}', file=sys.stderr)


if __name__ == '__main__':
    main()
