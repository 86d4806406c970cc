"""Global motion models against ImageJ StackReg and pystackreg.

Run by hand from the repository root; it prints markdown tables (the
"Motion models" section of docs/benchmarks.md)::

    pip install pystackreg          # benchmark-only anchor, not a dependency
    python benchmarks/bench_motion_models.py
    python benchmarks/bench_motion_models.py --rounds 5 --frames 40

pystackreg (https://github.com/glichtner/pystackreg) is the Python port of
P. Thevenaz's TurboReg/StackReg; it runs in the same process, on the same
input, interleaved with our runs.

**Accuracy** (needs ../shared/data/real/pc12_stackreg): the PC12 stack is
registered by every method, and each registered frame is compared with
ImageJ StackReg's output for the same model (``pc12-reg-translation.tif``,
``pc12-reg-rigid-body.tif``).  Both outputs are the raw frame resampled
through a transform, so the transform of each is recovered the same way,
as a black box: OpenCV's ECC (``findTransformECC``, translation or
Euclidean, 500 iterations to 1e-8, StackReg's zero-filled border masked
out) aligning the raw frame to the registered one.  The distance between
two transforms is then measured over the frame grid: ``|A(x) - B(x)|``,
the distance between where the two outputs take pixel ``x`` from, averaged
over all pixels (``mean``) and at its largest, a corner (``max``).  The
recovery itself is checked on our runs, whose transforms are known exactly
from the flow they write.

**Speed**: synthetic 512 x 512 uint16 stacks with exact motion, drifting by
up to 6 px (translation) or drifting and rotating by up to 1 degree (rigid),
registered in memory by each method in turn (each round runs every method
once; medians over rounds).  Our error is the mean over the frame of the
distance between our transform and the exact one, at the worst frame.  Ours: a
:class:`MotionSession` with all threads (``frame:0``), and sequentially
(``previous``, StackReg's order); pystackreg: ``register_transform_stack``
(single-threaded), ``reference='previous'`` (ImageJ's behaviour) and
``'first'``.  The load average is printed: the machine may be shared.
CPU time per frame (``time.process_time``, all threads of the process) is
less sensitive to a shared machine than frames/s.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile

from napari_flowscope import synthetic
from napari_flowscope.engine import FlowParams
from napari_flowscope.engine.motion_models import fit_motion
from napari_flowscope.session import (
    FrameReference,
    MotionSession,
    PreviousReference,
)

REAL = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'real'
PC12 = REAL / 'pc12_stackreg'
IMAGEJ_OUTPUTS = {
    'translation': 'pc12-reg-translation.tif',
    'rigid': 'pc12-reg-rigid-body.tif',
}
ECC_MOTION = {
    'translation': cv2.MOTION_TRANSLATION,
    'rigid': cv2.MOTION_EUCLIDEAN,
}
TARGET_PX = 0.25
SPEED_TARGET = 5.0


def _stackreg():
    try:
        from pystackreg import StackReg
    except ImportError:
        raise SystemExit(
            'pystackreg is the anchor of this benchmark: pip install '
            'pystackreg (it is not a dependency of napari-flowscope)'
        ) from None
    return StackReg


def _pystackreg_kind(model):
    stackreg = _stackreg()
    return {
        'translation': stackreg.TRANSLATION,
        'rigid': stackreg.RIGID_BODY,
    }[model]


# -- recovering and comparing transforms ------------------------------------


def recover_transform(registered, raw, model):
    """The ``(2, 3)`` transform ``A`` with ``registered(x) = raw(A x)``.

    ECC aligns the raw frame to the registered one; pixels StackReg filled
    with zeros (outside the raw frame) are masked out.
    """
    registered = np.asarray(registered, np.float32)
    raw = np.asarray(raw, np.float32)
    valid = cv2.erode(
        (registered != 0).astype(np.uint8), np.ones((7, 7), np.uint8)
    )
    (dx, dy), _ = cv2.phaseCorrelate(registered, raw)
    start = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 500, 1e-8)
    _, matrix = cv2.findTransformECC(
        registered, raw, start, ECC_MOTION[model], criteria, valid, 1
    )
    return matrix.astype(np.float64)


def transform_distance(a, b, shape):
    """Mean and max over the frame of ``|a(x) - b(x)|`` (px)."""
    height, width = shape
    y, x = np.mgrid[:height, :width]
    grid = np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
    distance = np.hypot(*((np.asarray(a) - np.asarray(b)) @ grid))
    return float(distance.mean()), float(distance.max())


def _ours(stack, model, reference, **options):
    params = FlowParams(motion_model=model)
    sink = MotionSession(
        stack, reference=reference, params=params, **options
    ).run()
    # the flow of a global model is its transform's field: read it back
    transforms = [
        fit_motion(w, model='affine').matrix for w in np.asarray(sink.w)
    ]
    return sink.registered, transforms


def _pystackreg(stack, model, reference):
    registration = _stackreg()(_pystackreg_kind(model))
    return registration.register_transform_stack(stack, reference=reference)


# -- accuracy on pc12 --------------------------------------------------------


def accuracy_tables():
    raw = tifffile.imread(PC12 / 'pc12-unreg.tif')
    shape = raw.shape[1:]
    lines = []
    recovery_errors = []
    for model, file_name in IMAGEJ_OUTPUTS.items():
        imagej = tifffile.imread(PC12 / file_name)
        truth = [recover_transform(imagej[t], raw[t], model) for t in range(5)]
        rows = {'no correction': [np.eye(2, 3)] * len(raw)}
        for name, reference in (
            ('ours, `--reference frame:0`', FrameReference(0)),
            ('ours, `--reference previous`', PreviousReference()),
        ):
            registered, exact = _ours(raw, model, reference)
            recovered = [
                recover_transform(registered[t], raw[t], model)
                for t in range(len(raw))
            ]
            recovery_errors += [
                transform_distance(a, b, shape)[1]
                for a, b in zip(recovered, exact, strict=True)
            ]
            rows[name] = recovered
        for reference in ('first', 'previous'):
            registered = _pystackreg(raw, model, reference)
            rows[f"pystackreg, reference='{reference}'"] = [
                recover_transform(registered[t], raw[t], model)
                for t in range(len(raw))
            ]
        lines += [
            '',
            (
                f'{model} model against `{file_name}` (mean / max over the '
                'frame, px):'
            ),
            '',
            (
                '| method | frame 1 | frame 2 | frame 3 | frame 4 '
                '| worst mean | worst max |'
            ),
            '| --- | --- | --- | --- | --- | --- | --- |',
        ]
        for name, transforms in rows.items():
            distances = [
                transform_distance(a, b, shape)
                for a, b in zip(transforms, truth, strict=True)
            ][1:]
            cells = [f'{mean:.3f} / {top:.3f}' for mean, top in distances]
            worst_mean = max(mean for mean, _ in distances)
            worst_max = max(top for _, top in distances)
            mark = '**' if name.startswith('ours') else ''
            lines.append(
                f'| {name} | {" | ".join(cells)} | {mark}{worst_mean:.3f}'
                f'{mark} | {worst_max:.3f} |'
            )
    lines += [
        '',
        (
            'Recovery check: the ECC transforms of our outputs are within '
            f'{max(recovery_errors):.4f} px (max over the frame) of the exact '
            'transforms our runs wrote.'
        ),
    ]
    return lines


# -- speed -------------------------------------------------------------------


def speed_stack(n_frames, model):
    sequence = synthetic.rigid_drift(
        n_frames=n_frames,
        shape=(512, 512),
        max_shift=6.0,
        max_rotation=1.0 if model == 'rigid' else 0.0,
        seed=0,
    )
    return np.round(sequence.stack * 3000).astype(np.uint16), sequence


def speed_tables(n_frames, rounds):
    stacks = {model: speed_stack(n_frames, model) for model in ECC_MOTION}
    methods = {}
    for model, (stack, _) in stacks.items():
        methods[(model, 'ours, frame:0, all threads')] = functools.partial(
            _ours, stack, model, FrameReference(0)
        )
        methods[(model, 'ours, previous')] = functools.partial(
            _ours, stack, model, PreviousReference()
        )
        for reference in ('previous', 'first'):
            methods[(model, f"pystackreg, reference='{reference}'")] = (
                functools.partial(_pystackreg, stack, model, reference)
            )
    seconds = {key: [] for key in methods}
    cpu_seconds = {key: [] for key in methods}
    errors = {}
    load_before = os.getloadavg()
    for _ in range(rounds):
        for key, run in methods.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            result = run()
            seconds[key].append(time.perf_counter() - start)
            cpu_seconds[key].append(time.process_time() - cpu_start)
            if key[1].startswith('ours') and key not in errors:
                errors[key] = _error(result[1], stacks[key[0]][1])
    load_after = os.getloadavg()

    lines = [
        '',
        (
            f'{n_frames} frames of 512 x 512 uint16, {rounds} rounds, '
            f'medians; load average {_load(load_before)} before, '
            f'{_load(load_after)} after:'
        ),
        '',
        (
            '| model | method | frames/s | vs pystackreg (previous), same '
            'round | CPU ms per frame (all threads) | error vs exact motion '
            '(px) |'
        ),
        '| --- | --- | --- | --- | --- | --- |',
    ]
    for (model, name), times in seconds.items():
        anchor = seconds[(model, "pystackreg, reference='previous'")]
        ratios = [a / t for a, t in zip(anchor, times, strict=True)]
        error = errors.get((model, name))
        lines.append(
            f'| {model} | {name} | {n_frames / np.median(times):.1f} | '
            f'{np.median(ratios):.1f}x (range {min(ratios):.1f}-'
            f'{max(ratios):.1f}) | '
            f'{1e3 * np.median(cpu_seconds[(model, name)]) / n_frames:.0f} | '
            + ('' if error is None else f'{error:.3f}')
            + ' |'
        )
    return lines


def _error(transforms, sequence):
    """Largest mean-over-frame distance to the exact motion."""
    shape = sequence.flow.shape[1:3]
    worst = 0.0
    for matrix, flow in zip(transforms, sequence.flow, strict=True):
        exact = fit_motion(flow, model='affine').matrix
        worst = max(worst, transform_distance(matrix, exact, shape)[0])
    return worst


def _load(values):
    return ' / '.join(f'{value:.1f}' for value in values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=30)
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args(argv)
    _stackreg()
    import pystackreg

    now = datetime.datetime.now(datetime.timezone.utc)
    print(
        f'bench_motion_models: {now:%Y-%m-%d %H:%M} UTC, '
        f'{platform.node()}, {os.cpu_count()} CPU cores, Python '
        f'{platform.python_version()}, pystackreg '
        f'{getattr(pystackreg, "__version__", "?")}, OpenCV {cv2.__version__}'
    )
    if PC12.is_dir():
        print('\n### Accuracy: pc12 against ImageJ StackReg')
        print('\n'.join(accuracy_tables()))
    else:
        print(f'\n(no {PC12}: accuracy against StackReg skipped)')
    print('\n### Speed: 512 x 512 stack')
    print('\n'.join(speed_tables(args.frames, args.rounds)))


if __name__ == '__main__':
    main()
