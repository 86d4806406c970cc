"""Flow engine: accuracy, confidence and speed against OpenCV and scikit-image.

Run by hand from the repository root (writes the "Flow engine" section of
docs/benchmarks.md and prints it)::

    python benchmarks/bench_engine.py
    python benchmarks/bench_engine.py --no-write     # print only
    python benchmarks/bench_engine.py --quick        # fewer timing repeats

Everything is measured in one run, on the same machine and the same input
for every method:

* **real photographs with dense ground truth**: the three Middlebury
  training pairs of ../shared/data/flow_gt (reference = frame10, moving =
  frame11, ``w`` should equal ``flow10.flo``; values above 1e9 have no
  ground truth), converted to grey; endpoint error (EPE) and average
  angular error (AAE) over the valid pixels, per pair and mean;
* **synthetic sequences** of ``napari_flowscope.synthetic`` with exact
  ground truth, noise-free and **photon-limited**: Poisson noise with 30,
  100 and 1000 photons at the brightest pixel of the sequence, a camera
  offset of 100 counts and Gaussian read noise of sigma 2 counts, stored as
  uint16;
* **confidence**: the share of pixels trusted on failures (motion beyond
  the pyramid's reach, an unrelated frame, pure noise) and on good pairs;
* **speed**: registering a 512 x 512 stack to a fixed reference with the
  default preset and with OpenCV DIS (medium), frame by frame interleaved;
  one 512 x 512 pair including set-up (live preview); one 640 x 480 pair per
  preset; frames/s of every method;
* the real recordings in ../shared/data/real when present: pc12 against
  ImageJ StackReg, SIMA 2-photon against its temporal mean.

Anchors: OpenCV DIS (ultrafast, fast, medium presets), OpenCV Farneback
(OpenCV's sample values), scikit-image TV-L1 and ILK (library defaults), on
frames mapped to [0, 1] by their 0.5-99.5 percentiles (uint8 for OpenCV).
Every method's flow is converted to the project convention
``moving(x + w(x)) ~ reference(x)`` with ``w[..., 0] = x``, checked by
``check_conventions`` before anything is measured.
"""

import argparse
import datetime
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from _docs_section import write_section
from _machine import machine
from skimage.registration import (
    optical_flow_ilk,
    optical_flow_tvl1,
    phase_cross_correlation,
)

from napari_flowscope import synthetic
from napari_flowscope.engine import (
    CONFIDENCE_THRESHOLD,
    FlowEstimator,
    FlowParams,
    estimate_flow,
    warp,
)
from napari_flowscope.engine.params import PRESETS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs' / 'benchmarks.md'
SHARED = ROOT.parent / 'shared' / 'data'
REAL = SHARED / 'real'
MIDDLEBURY = SHARED / 'flow_gt' / 'middlebury'
MIDDLEBURY_PAIRS = ('Grove2', 'Hydrangea', 'Urban2')
HEADING = '## Flow engine'
BORDER = 8
PHOTON_LEVELS = (30, 100, 1000)
CAMERA_OFFSET = 100
READ_NOISE = 2.0
DEFAULT = 'balanced'
# Shifts (dy, dx) of pc12-unreg against frame 0 listed in the data README
# (phase correlation, upsample 10).
PC12_README_SHIFTS = [
    (0, 0),
    (8.5, -0.1),
    (13.7, 0.1),
    (15.3, 0.8),
    (12.4, -0.3),
]


# --------------------------------------------------------------- methods


def _unit(image):
    """Robust 0.5-99.5 percentile range mapped to [0, 1], float32."""
    image = np.asarray(image, np.float32)
    low, high = np.percentile(image, (0.5, 99.5))
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0, 1)


def _u8(image):
    return np.round(_unit(image) * 255).astype(np.uint8)


def _skimage_to_w(flow):
    """scikit-image (2, H, W) (row, col) flow to (H, W, 2) [x, y]."""
    return np.ascontiguousarray(np.moveaxis(flow[::-1], 0, -1), np.float32)


class Method:
    """A flow method: per-pair call and per-stack (fixed reference) call.

    ``threaded(reference)`` is the per-stack call that threads may share.
    """

    def __init__(
        self, name, pair, stack=None, *, slow=False, preset=None, threaded=None
    ):
        self.name = name
        self.pair = pair
        self.stack = stack or (lambda reference: lambda m: pair(reference, m))
        self.threaded = threaded or self.stack
        self.slow = slow
        self.preset = preset

    @property
    def ours(self):
        return self.preset is not None


def _flowscope(preset):
    params = FlowParams.preset(preset)

    def pair(reference, moving):
        return estimate_flow(reference, moving, params).w

    def stack(reference):
        estimator = FlowEstimator(reference, params)
        return lambda moving: estimator.estimate(moving).w

    label = f'flowscope {preset}'
    if preset == DEFAULT:
        label += ' (default)'
    return Method(label, pair, stack, preset=preset)


def _farneback(reference, moving):
    # OpenCV's own sample values; calcOpticalFlowFarneback(prev, next)
    # returns prev(x) ~ next(x + flow): our convention.
    return cv2.calcOpticalFlowFarneback(
        _u8(reference), _u8(moving), None, 0.5, 5, 15, 3, 5, 1.2, 0
    )


def _dis(preset):
    def pair(reference, moving):
        return cv2.DISOpticalFlow_create(preset).calc(
            _u8(reference), _u8(moving), None
        )

    def stack(reference):
        dis = cv2.DISOpticalFlow_create(preset)
        reference = _u8(reference)
        return lambda moving: dis.calc(reference, _u8(moving), None)

    def threaded(reference):
        # one instance per thread: a DIS object is not thread-safe
        local = threading.local()
        reference = _u8(reference)

        def estimate(moving):
            dis = getattr(local, 'dis', None)
            if dis is None:
                dis = local.dis = cv2.DISOpticalFlow_create(preset)
            return dis.calc(reference, _u8(moving), None)

        return estimate

    return pair, stack, threaded


def _ilk(reference, moving):
    return _skimage_to_w(optical_flow_ilk(_unit(reference), _unit(moving)))


def _tvl1(reference, moving):
    return _skimage_to_w(optical_flow_tvl1(_unit(reference), _unit(moving)))


DIS_MEDIUM = 'OpenCV DIS medium'


def _dis_method(name, preset):
    pair, stack, threaded = _dis(preset)
    return Method(name, pair, stack, threaded=threaded)


def methods():
    ours = [_flowscope(name) for name in PRESETS]
    anchors = [
        Method('OpenCV Farneback', _farneback),
        _dis_method(
            'OpenCV DIS ultrafast', cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST
        ),
        _dis_method('OpenCV DIS fast', cv2.DISOPTICAL_FLOW_PRESET_FAST),
        _dis_method(DIS_MEDIUM, cv2.DISOPTICAL_FLOW_PRESET_MEDIUM),
        Method('skimage ILK', _ilk, slow=True),
        Method('skimage TV-L1', _tvl1, slow=True),
    ]
    return ours, anchors


def check_conventions(all_methods):
    """Every method recovers a known (dx, dy) = (2.5, 1.5) with our sign."""
    sequence = synthetic.large_translation(
        n_frames=2, shift=np.hypot(2.5, 1.5)
    )
    truth = sequence.flow[1][0, 0]
    inner = np.s_[32:-32, 32:-32]
    for method in all_methods:
        w = method.pair(sequence.reference, sequence.stack[1])
        found = np.median(w[inner], axis=(0, 1))
        if not np.allclose(found, truth, atol=0.3):
            raise AssertionError(
                f'{method.name}: expected {truth}, got {found} — '
                'convention conversion is wrong'
            )


# --------------------------------------------------------------- data


def read_flo(path):
    """Middlebury ``.flo``: (H, W, 2) float32 (u, v); > 1e9 = unknown."""
    with open(path, 'rb') as file:
        tag = np.fromfile(file, '<f4', 1)[0]
        if tag != np.float32(202021.25):
            raise ValueError(f'{path} is not a .flo file (tag {tag})')
        width, height = np.fromfile(file, '<i4', 2)
        data = np.fromfile(file, '<f4', 2 * width * height)
    return data.reshape(height, width, 2)


def middlebury_pairs():
    """(name, reference, moving, truth, valid) of each Middlebury pair."""
    pairs = []
    for name in MIDDLEBURY_PAIRS:
        folder = MIDDLEBURY / name
        frames = [
            cv2.cvtColor(
                cv2.imread(str(folder / f'frame{index}.png')),
                cv2.COLOR_BGR2GRAY,
            )
            for index in (10, 11)
        ]
        truth = read_flo(folder / 'flow10.flo')
        valid = (np.abs(truth) < 1e9).all(axis=-1)
        truth = np.where(valid[..., None], truth, 0).astype(np.float32)
        pairs.append((name, *frames, truth, valid))
    return pairs


def photon_limited(frames, photons, *, seed):
    """Camera counts of ``frames`` with ``photons`` at the brightest pixel.

    Poisson shot noise, a camera offset of 100 counts and Gaussian read
    noise (sigma 2 counts), rounded and stored as uint16.  ``frames`` is
    a stack (or a list of frames) scaled together, so bleaching stays.
    """
    frames = np.asarray(frames, np.float64)
    scale = photons / frames.max()
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.clip(frames, 0, None) * scale).astype(np.float64)
    counts += CAMERA_OFFSET + rng.normal(0, READ_NOISE, frames.shape)
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def _border_mask(shape):
    mask = np.zeros(shape, bool)
    mask[BORDER:-BORDER, BORDER:-BORDER] = True
    return mask


def _to_reference(sequence, indices):
    """Pairs (reference, moving, truth, valid) against the reference."""
    valid = sequence.valid & _border_mask(sequence.valid.shape)
    return [
        (sequence.stack[0], sequence.stack[t], sequence.flow[t], valid)
        for t in indices
    ]


def _disk_pairs(sequence):
    size = sequence.reference.shape[0]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    step = sequence.flow[1][0, 0]
    pairs = []
    for t in (0, 5, 10):
        centre = np.float32(size / 3) + t * step
        valid = np.hypot(x - centre[0], y - centre[1]) <= 8 + 2
        pairs.append(
            (sequence.stack[t], sequence.stack[t + 1], sequence.flow[1], valid)
        )
    return pairs


def _particle_pairs(sequence, clean):
    # Consecutive frames: the flow is always flow[1] (see the generator).
    return [
        (
            sequence.stack[t],
            sequence.stack[t + 1],
            sequence.flow[1],
            clean.stack[t] > np.exp(-2.0),
        )
        for t in (0, 10, 20)
    ]


def _with_stack(sequence, stack):
    return synthetic.SyntheticSequence(
        stack=stack,
        flow=sequence.flow,
        reference=stack[0],
        valid=sequence.valid,
        name=sequence.name,
    )


def _noisy(sequence, noise, seed=5):
    rng = np.random.default_rng(seed)
    stack = sequence.stack + rng.normal(0, noise, sequence.stack.shape)
    return _with_stack(sequence, stack.astype(np.float32))


def synthetic_sequences():
    """(title, sequence, frames or None for consecutive pairs)."""
    return [
        ('drift + rotation', synthetic.rigid_drift(), (4, 8, 12, 16, 19)),
        ('non-rigid 0-5 px', synthetic.nonrigid_motion(), (5, 10, 15, 19)),
        ('large 15 px', synthetic.large_translation(), (3, 5, 7)),
        (
            'bleaching + illumination',
            synthetic.bleaching_tissue(),
            (10, 20, 30, 39),
        ),
        ('moving disk (t to t+1)', synthetic.moving_disk(), None),
        (
            '3 rotating particles (t to t+1)',
            synthetic.rotating_particles(),
            None,
        ),
    ]


def _pairs(title, sequence, frames, clean=None):
    clean = sequence if clean is None else clean
    if frames is not None:
        return _to_reference(sequence, frames)
    if 'disk' in title:
        return _disk_pairs(sequence)
    return _particle_pairs(sequence, clean)


def noise_free_cases(sequences):
    cases = [(t, _pairs(t, s, f)) for t, s, f in sequences]
    nonrigid = next(s for t, s, _ in sequences if t.startswith('non-rigid'))
    cases.insert(
        4,
        (
            'non-rigid + noise 0.02',
            _to_reference(_noisy(nonrigid, 0.02), (5, 10, 15, 19)),
        ),
    )
    return cases


def photon_cases(sequences, photons):
    cases = []
    for index, (title, sequence, frames) in enumerate(sequences):
        counts = photon_limited(sequence.stack, photons, seed=index)
        noisy = _with_stack(sequence, counts)
        cases.append((title, _pairs(title, noisy, frames, clean=sequence)))
    return cases


# --------------------------------------------------------------- accuracy


def endpoint_and_angular_error(w, truth, valid):
    """Mean EPE (px) and AAE (degrees, Middlebury's definition)."""
    w, truth = w[valid].astype(np.float64), truth[valid].astype(np.float64)
    epe = np.linalg.norm(w - truth, axis=-1).mean()
    dot = 1 + (w * truth).sum(axis=-1)
    norms = np.sqrt((1 + (w * w).sum(-1)) * (1 + (truth * truth).sum(-1)))
    aae = np.degrees(np.arccos(np.clip(dot / norms, -1, 1))).mean()
    return float(epe), float(aae)


def accuracy(method, pairs):
    """Mean EPE over the pairs and pooled R^2 of the flow components."""
    errors, squared, truths = [], [], []
    for reference, moving, truth, valid in pairs:
        w = method.pair(reference, moving)
        if not np.isfinite(w).all():
            return float('nan'), float('nan')
        difference = (w - truth)[valid]
        errors.append(np.linalg.norm(difference, axis=-1).mean())
        squared.append((difference**2).sum())
        truths.append(truth[valid])
    truths = np.concatenate(truths)
    spread = ((truths - truths.mean(axis=0)) ** 2).sum()
    r2 = 1 - sum(squared) / spread if spread > 1e-6 else float('nan')
    return float(np.mean(errors)), float(r2)


def middlebury(all_methods, pairs):
    """{(method, pair name): (EPE, AAE, seconds)}."""
    table = {}
    for method in all_methods:
        for name, reference, moving, truth, valid in pairs:
            start = time.perf_counter()
            w = method.pair(reference, moving)
            seconds = time.perf_counter() - start
            table[method.name, name] = (
                *endpoint_and_angular_error(w, truth, valid),
                seconds,
            )
        print(f'middlebury: {method.name} done', flush=True)
    return table


# --------------------------------------------------------------- confidence


def confidence_cases(middlebury_data):
    """(title, reference, moving, truth or None, good) of the trust table."""
    texture = synthetic.tissue_texture((256, 256), seed=0)
    rng = np.random.default_rng(11)
    cases = []
    for shift in (64, 96):
        truth = np.broadcast_to(
            np.float32([shift, shift // 3]), (*texture.shape, 2)
        )
        cases.append(
            (
                f'tissue shifted ({shift}, {shift // 3}) px',
                texture,
                np.roll(texture, (shift, shift // 3), axis=(1, 0)),
                truth,
                False,
            )
        )
    cases.append(
        (
            'tissue vs unrelated tissue',
            texture,
            synthetic.tissue_texture((256, 256), seed=9),
            None,
            False,
        )
    )
    cases.append(
        (
            'tissue vs pure noise',
            texture,
            rng.normal(size=texture.shape).astype(np.float32),
            None,
            False,
        )
    )
    if middlebury_data:
        grove = middlebury_data[0][1]
        truth = np.broadcast_to(np.float32([80, 0]), (*grove.shape, 2))
        cases.append(
            (
                'Grove2 shifted 80 px',
                grove,
                np.roll(grove, 80, axis=1),
                truth,
                False,
            )
        )
        urban = middlebury_data[2][1]
        cases.append(('Grove2 vs Urban2', grove, urban, None, False))
        for name, reference, moving, truth, _ in middlebury_data:
            cases.append((name, reference, moving, truth, True))
    sequence = synthetic.nonrigid_motion(n_frames=20)
    for photons in (30, 100):
        counts = photon_limited(sequence.stack[[0, 15]], photons, seed=3)
        cases.append(
            (
                f'non-rigid, {photons} photons',
                counts[0],
                counts[1],
                sequence.flow[15],
                True,
            )
        )
    return cases


def trust(presets, cases):
    """{(preset, title): (trusted share, textured trusted share, wrong)}.

    *wrong*: share of the trusted pixels more than 1 px from the truth.
    """
    table = {}
    for preset in presets:
        params = FlowParams.preset(preset)
        for title, reference, moving, truth, _ in cases:
            field = estimate_flow(reference, moving, params)
            trusted = field.confidence >= CONFIDENCE_THRESHOLD
            textured = field.reliability >= params.reliability_threshold
            textured_share = np.count_nonzero(trusted & textured) / max(
                np.count_nonzero(textured), 1
            )
            wrong = float('nan')
            if truth is not None and trusted.any():
                error = np.linalg.norm(field.w - truth, axis=-1)
                wrong = float((error[trusted] > 1).mean())
            table[preset, title] = (trusted.mean(), textured_share, wrong)
    return table


# --------------------------------------------------------------- speed


def speed(method, frames, *, repeats):
    """Frames/s per pair and per stack, and CPU s per stack frame.

    The first frame is the reference.  Rates are the best over the frames
    measured: the other rooms' load only ever slows a frame down.
    """
    reference, movings = frames[0], frames[1 : repeats + 1]
    method.pair(reference, movings[0])  # imports, OpenCL/IPP warm-up
    per_pair = []
    for moving in movings:
        start = time.perf_counter()
        method.pair(reference, moving)
        per_pair.append(time.perf_counter() - start)
    start = time.perf_counter()
    estimate = method.stack(reference)
    setup = time.perf_counter() - start
    per_frame = []
    cpu_start = time.process_time()
    for moving in movings:
        start = time.perf_counter()
        estimate(moving)
        per_frame.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu_start) / len(movings)
    # The stack rate includes the one-off reference set-up spread over
    # the frames measured.
    per_stack = min(per_frame) + setup / len(movings)
    return 1 / min(per_pair), 1 / per_stack, cpu


def stack_race(contenders, stack, *, rounds, threads):
    """Register ``stack[1:]`` to ``stack[0]`` with each contender in turn,
    ``rounds`` times, interleaved round by round.

    With ``threads`` > 1 the frames are spread over a thread pool, as
    :class:`~napari_flowscope.session.MotionSession` does: one estimator
    shared by the threads for flowscope, one DIS instance per thread (its
    ``calc`` releases the GIL and keeps OpenCV's own threads).  Each round
    builds a fresh estimator, so the reference set-up is counted.

    Returns {name: (median s per frame, best s per frame)}.
    """
    times = {method.name: [] for method in contenders}
    for _ in range(rounds):
        for method in contenders:
            start = time.perf_counter()
            estimate = method.threaded(stack[0])
            if threads == 1:
                for moving in stack[1:]:
                    estimate(moving)
            else:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(estimate, stack[1:]))
            elapsed = time.perf_counter() - start
            times[method.name].append(elapsed / (len(stack) - 1))
    return {
        name: (float(np.median(runs)), float(min(runs)))
        for name, runs in times.items()
    }


def cpu_per_frame(contenders, stack):
    """Median CPU ms per frame with OpenCV on one thread (work, not wall
    time: the steadiest figure on a shared machine)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        result = {}
        for method in contenders:
            estimate = method.stack(stack[0])
            estimate(stack[1])
            cpu = []
            for moving in stack[1:]:
                start = time.process_time()
                estimate(moving)
                cpu.append(time.process_time() - start)
            result[method.name] = float(np.median(cpu))
        return result
    finally:
        cv2.setNumThreads(threads)


def preview_time(params, frames, *, repeats):
    """Median seconds of one 512^2 pair with all set-up (live preview)."""
    estimate_flow(frames[0], frames[1], params)
    times = []
    for index in range(repeats):
        moving = frames[1 + index % (len(frames) - 1)]
        start = time.perf_counter()
        estimate_flow(frames[0], moving, params)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# --------------------------------------------------------------- real data


def _register(method, reference, stack):
    estimate = method.stack(reference)
    registered, flows = [], []
    for frame in stack:
        w = estimate(frame)
        flows.append(w)
        registered.append(warp(frame.astype(np.float32), w))
    return np.stack(registered), np.stack(flows)


def _ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def pc12(all_methods):
    """Registered to frame 0 vs StackReg translation; cell flow vs README."""
    import tifffile

    folder = REAL / 'pc12_stackreg'
    stack = tifffile.imread(folder / 'pc12-unreg.tif').astype(np.float32)
    stackreg = tifffile.imread(folder / 'pc12-reg-translation.tif').astype(
        np.float32
    )
    inner = np.s_[20:-20, 20:-20]
    # The cell: the brightest fifth of the reference; the rest is dark
    # background, where several methods report no motion at all.
    cell = stack[0] > np.percentile(stack[0], 80)
    rows = []
    for method in all_methods:
        registered, flows = _register(method, stack[0], stack)
        residuals, means = [], []
        for t in range(1, len(stack)):
            shift, _, _ = phase_cross_correlation(
                stackreg[t][inner], registered[t][inner], upsample_factor=10
            )
            residuals.append(float(np.hypot(*shift)))
            means.append(np.median(flows[t][cell], axis=0))
        rows.append((method.name, residuals, means))
    return rows


def sima(all_methods):
    """Registered to the temporal mean: NCC of each frame with the mean."""
    import tifffile

    stack = tifffile.imread(REAL / 'sima_2p' / 'example.tif').astype(
        np.float32
    )
    mean = stack.mean(axis=0)

    def smooth(image):
        # Raw 2-photon frames are shot-noise dominated (NCC ~ 0 whatever
        # the alignment); compare structure at sigma = 2 px.
        return cv2.GaussianBlur(image, (0, 0), 2)

    inner = np.s_[10:-10, 10:-10]
    before = [_ncc(smooth(f)[inner], smooth(mean)[inner]) for f in stack]
    rows = [('unregistered', before)]
    for method in all_methods:
        registered, _ = _register(method, mean, stack)
        rows.append(
            (
                method.name,
                [
                    _ncc(smooth(f)[inner], smooth(mean)[inner])
                    for f in registered
                ],
            )
        )
    return rows


# --------------------------------------------------------------- run


def _load():
    return ' '.join(open('/proc/loadavg').read().split()[:3])


def run(*, quick=False):
    ours, anchors = methods()
    everyone = ours + anchors
    started = time.perf_counter()
    load_start = _load()
    check_conventions(everyone)
    results = {'load_start': load_start}

    pairs = middlebury_pairs() if MIDDLEBURY.is_dir() else []
    results['middlebury'] = middlebury(everyone, pairs) if pairs else None

    sequences = synthetic_sequences()
    accuracy_tables = {None: noise_free_cases(sequences)}
    for photons in PHOTON_LEVELS:
        accuracy_tables[photons] = photon_cases(sequences, photons)
    tables = {}
    for level, cases in accuracy_tables.items():
        for method in everyone:
            for title, case_pairs in cases:
                tables[level, method.name, title] = accuracy(
                    method, case_pairs
                )
        print(f'synthetic, photons {level}: done', flush=True)
    results['synthetic'] = (accuracy_tables, tables)

    results['trust_cases'] = confidence_cases(pairs)
    results['trust'] = trust(list(PRESETS), results['trust_cases'])
    print('confidence done', flush=True)

    stack512 = synthetic.nonrigid_motion(n_frames=21, shape=(512, 512)).stack
    (default,) = (m for m in ours if m.preset == DEFAULT)
    (medium,) = (m for m in anchors if m.name == DIS_MEDIUM)
    rounds = 2 if quick else 4
    results['race'] = {
        threads: stack_race(
            [default, medium], stack512, rounds=rounds, threads=threads
        )
        for threads in (os.cpu_count() or 1, 1)
    }
    results['race_cpu'] = cpu_per_frame([default, medium], stack512[:8])
    results['preview'] = preview_time(
        FlowParams.preset(DEFAULT), stack512[:6], repeats=5 if quick else 15
    )
    if pairs:
        name, reference, moving, _, _ = pairs[0]
        per_pair = {}
        for method in ours:
            times = []
            for _ in range(2 if quick else 3):
                start = time.perf_counter()
                method.pair(reference, moving)
                times.append(time.perf_counter() - start)
            per_pair[method.name] = float(np.median(times))
        results['pair640'] = per_pair
    frames = {
        256: synthetic.nonrigid_motion(n_frames=6, shape=(256, 256)).stack,
        512: stack512[:6],
    }
    rates = {}
    for method in everyone:
        for size, stack in frames.items():
            repeats = 2 if method.slow or quick else 5
            rates[method.name, size] = speed(method, stack, repeats=repeats)
        print(f'speed: {method.name} done', flush=True)
    results['rates'] = rates

    results['real'] = None
    if (REAL / 'pc12_stackreg').is_dir() and (REAL / 'sima_2p').is_dir():
        fast_anchors = [m for m in everyone if 'TV-L1' not in m.name]
        results['real'] = (pc12(everyone), sima(fast_anchors))
        print('real data done', flush=True)
    results['elapsed'] = time.perf_counter() - started
    results['load_end'] = _load()
    return report(ours, anchors, results)


# --------------------------------------------------------------- report


def _format(value, digits=3):
    if value is None or not np.isfinite(value):
        return '—'
    return f'{value:.{digits}f}'


def _row(*cells):
    return '| ' + ' | '.join(str(cell) for cell in cells) + ' |'


def _header(*titles):
    return [_row(*titles), _row(*(['---'] * len(titles)))]


def _met(condition):
    return 'yes' if condition else '**no**'


def _finite(value):
    return value if np.isfinite(value) else np.inf


MIDDLEBURY_NOTE = (
    'Three training pairs of the Middlebury optical-flow benchmark '
    '(`../shared/data/flow_gt/middlebury`, Baker et al. 2011; real '
    'photographs, occlusions, sensor noise), grey, reference = frame10, '
    'moving = frame11. EPE: mean endpoint error (px); AAE: average angular '
    'error (degrees); both over the pixels with ground truth. Lower is '
    'better. Seconds: one pair, all set-up included.'
)
ACCURACY_NOTE = (
    "Mean endpoint error in px (lower is better) on each sequence's "
    f'`valid` mask minus an {BORDER} px border, averaged over the frames '
    'listed in `synthetic_sequences()` (against frame 0, except the disk '
    'and the particles: consecutive frames). The particles are round, so '
    'their spin about their own centres (part of the true rigid rotation) '
    'is invisible: every method that follows the particles as translating '
    'blobs scores about 0.70 px there.'
)
PHOTON_NOTE = (
    'The same sequences and frames as camera counts: Poisson shot noise '
    'with the given number of photons at the brightest pixel of the '
    f'sequence, an offset of {CAMERA_OFFSET} counts and Gaussian read '
    f'noise of σ = {READ_NOISE:g} counts, stored as uint16 '
    '(`photon_limited()`); every method gets the same uint16 frames.'
)
TRUST_NOTE = (
    'Share of the pixels whose confidence is ≥ 0.5 (trusted). Failures '
    "(top): motion beyond the pyramid's reach (`np.roll`, so the truth is "
    'the shift), a frame of another scene, pure noise — target ≤ 10 %. '
    'Good pairs (bottom): share of the *textured* pixels (reliability ≥ '
    'threshold) trusted — target ≥ 80 %. *Wrong*: share of the trusted '
    'pixels more than 1 px from the truth.'
)
SPEED_NOTE = (
    'Frames per second (best of 5 frames; of 2 for the scikit-image '
    'methods) on smooth non-rigid tissue texture. *Per pair*: one call '
    'with a new reference each time (`estimate_flow`, all set-up '
    'included). *Per stack*: many frames against one reference '
    '(`FlowEstimator` reused; the reference set-up is spread over the '
    'frames measured). CPU time counts both cores.'
)
PC12_NOTE = (
    '**pc12** (`pc12_stackreg/pc12-unreg.tif`, 5 × 201 × 199 uint16, rigid '
    'drift up to 15 px): every frame registered to frame 0, then the '
    "global shift between our registered frame and ImageJ StackReg's "
    '`pc12-reg-translation.tif` measured with '
    '`phase_cross_correlation(upsample_factor=10)` on the frame minus a '
    '20 px border (0 = same alignment as StackReg). Cell flow is the '
    'median of `w` over the cell (the brightest 20 % of frame 0), shown '
    'as (dy, dx). The README lists the drift of frames 1-4 as '
    + ', '.join(f'({dy}, {dx})' for dy, dx in PC12_README_SHIFTS[1:])
    + ', the shifts that register each frame, i.e. minus the displacement '
    'of its content; `w` is that displacement, hence the opposite signs.'
)
SIMA_NOTE = (
    '**SIMA 2-photon** (`sima_2p/example.tif`, 20 × 128 × 256 uint16, low '
    'SNR): every frame registered to the temporal mean; normalised '
    'cross-correlation of each frame with the mean (both smoothed with a '
    'σ = 2 px Gaussian, 10 px border excluded) before and after. TV-L1 '
    'left out for time.'
)


def report(ours, anchors, results):
    everyone = ours + anchors
    today = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        HEADING,
        '',
        (
            f'`python benchmarks/bench_engine.py` — '
            f'{today:%Y-%m-%d %H:%M} UTC, {machine(opencv_threads=True)}. '
            'Whole run '
            f'{results["elapsed"] / 60:.1f} min; load average (1, 5, 15 '
            f'min) {results["load_start"]} at the start and '
            f'{results["load_end"]} at the end. Timings under load are '
            'lower bounds; compare only rates from the same run.'
        ),
        '',
    ]
    if results['middlebury'] is not None:
        lines += _middlebury_report(everyone, results['middlebury'])
    lines += _synthetic_report(everyone, *results['synthetic'])
    lines += _trust_report(ours, results['trust'], results['trust_cases'])
    lines += _speed_report(everyone, results)
    lines += ['', '### Targets (issue 14), this run', '']
    lines += _targets(ours, anchors, results)
    if results['real'] is not None:
        lines += _real_report(*results['real'])
    return '\n'.join(lines) + '\n'


def _middlebury_report(everyone, table):
    lines = [
        '### Real photographs with ground truth (Middlebury)',
        '',
        MIDDLEBURY_NOTE,
        '',
    ]
    titles = [f'{name} EPE / AAE' for name in MIDDLEBURY_PAIRS]
    lines += _header('method', *titles, 'mean EPE', 'mean AAE', 's per pair')
    for method in everyone:
        cells = [table[method.name, name] for name in MIDDLEBURY_PAIRS]
        lines.append(
            _row(
                method.name,
                *(f'{epe:.3f} / {aae:.2f}' for epe, aae, _ in cells),
                f'{np.mean([c[0] for c in cells]):.3f}',
                f'{np.mean([c[1] for c in cells]):.2f}',
                f'{np.mean([c[2] for c in cells]):.2f}',
            )
        )
    return lines + ['']


def _synthetic_report(everyone, cases_by_level, table):
    lines = []
    for level, cases in cases_by_level.items():
        titles = [title for title, _ in cases]
        if level is None:
            lines += [
                '### Synthetic sequences, noise-free',
                '',
                ACCURACY_NOTE,
                '',
            ]
        else:
            lines += [
                f'### Synthetic sequences, {level} photons',
                '',
                PHOTON_NOTE if level == PHOTON_LEVELS[0] else '',
                '',
            ]
        lines += _header('method', *titles)
        for method in everyone:
            cells = [_format(table[level, method.name, t][0]) for t in titles]
            lines.append(_row(method.name, *cells))
        lines.append('')
    return lines


def _trust_report(ours, table, cases):
    lines = ['### Confidence', '', TRUST_NOTE, '']
    lines += _header('case', *(f'{m.name}: trusted (wrong)' for m in ours))
    for title, _, _, _, good in cases:
        cells = []
        for method in ours:
            share, textured, wrong = table[method.preset, title]
            shown = textured if good else share
            cells.append(
                f'{shown:.1%}'
                + (f' ({wrong:.1%})' if np.isfinite(wrong) else '')
            )
        label = f'{title} (textured px)' if good else title
        lines.append(_row(label, *cells))
    return lines + ['']


def _speed_report(everyone, results):
    lines = [
        '### Speed',
        '',
        (
            'Registering a 512 × 512 stack (20 frames of smooth non-rigid '
            'tissue) to frame 0 with the default preset and with OpenCV DIS '
            'medium, the two alternating round by round; each round builds '
            'a fresh estimator (set-up counted). *Threads*: frames spread '
            'over a pool of that many threads, as `MotionSession` does '
            '(one shared `FlowEstimator`; one DIS instance per thread, '
            "which keeps OpenCV's own threads too). Median (best) ms per "
            'frame of the rounds; *CPU*: median CPU time per frame with '
            'OpenCV on one thread.'
        ),
        '',
    ]
    lines += _header(
        'method', 'threads', 'ms per frame', 'frames/s', 'best frames/s'
    )
    for threads, race in results['race'].items():
        for name, (median, best) in race.items():
            lines.append(
                _row(
                    name,
                    threads,
                    f'{median * 1000:.1f}',
                    f'{1 / median:.1f}',
                    f'{1 / best:.1f}',
                )
            )
    lines += [
        '',
        'CPU per frame (one thread): '
        + ', '.join(
            f'{name} {seconds * 1000:.1f} ms'
            for name, seconds in results['race_cpu'].items()
        )
        + '.',
    ]
    lines += [
        '',
        (
            'Live preview (one 512 × 512 pair, estimator set-up included, '
            f'default preset): median {results["preview"] * 1000:.0f} ms.'
        ),
    ]
    if 'pair640' in results:
        lines += [
            '',
            'One 640 × 480 pair (Grove2, all set-up included, median of 3): '
            + ', '.join(
                f'{name} {seconds:.2f} s'
                for name, seconds in results['pair640'].items()
            )
            + '.',
        ]
    lines += ['', SPEED_NOTE, '']
    lines += _header(
        'method',
        '256² per pair',
        '256² per stack',
        '512² per pair',
        '512² per stack',
        'CPU ms per 512² stack frame',
    )
    for method in everyone:
        p256, s256, _ = results['rates'][method.name, 256]
        p512, s512, cpu512 = results['rates'][method.name, 512]
        lines.append(
            _row(
                method.name,
                f'{p256:.1f}',
                f'{s256:.1f}',
                f'{p512:.1f}',
                f'{s512:.1f}',
                f'{cpu512 * 1000:.0f}',
            )
        )
    return lines


def _targets(ours, anchors, results):
    lines = _header('target', 'flowscope', 'anchor', 'ratio', 'met')
    (default,) = (m for m in ours if m.preset == DEFAULT)
    (medium,) = (m for m in anchors if m.name == DIS_MEDIUM)
    table = results['middlebury']
    if table is not None:
        for name in MIDDLEBURY_PAIRS:
            mine = table[default.name, name][0]
            theirs = table[medium.name, name][0]
            lines.append(
                _row(
                    f'{name}: default EPE ≤ DIS medium',
                    f'{mine:.3f}',
                    f'{theirs:.3f}',
                    f'{mine / theirs:.2f}',
                    _met(mine <= theirs),
                )
            )

        def mean_epe(method):
            return np.mean(
                [table[method.name, n][0] for n in MIDDLEBURY_PAIRS]
            )

        best_ours = min(ours, key=mean_epe)
        best_anchor = min(anchors, key=lambda m: _finite(mean_epe(m)))
        mine, theirs = mean_epe(best_ours), mean_epe(best_anchor)
        lines.append(
            _row(
                'Middlebury mean: best preset EPE ≤ 0.8 × best anchor',
                f'{best_ours.name} {mine:.3f}',
                f'{best_anchor.name} {theirs:.3f}',
                f'{mine / theirs:.2f}',
                _met(mine <= 0.8 * theirs),
            )
        )
        seconds = results['pair640'][best_ours.name]
        lines.append(
            _row(
                f'{best_ours.name}: ≤ 1 s per 640 × 480 pair',
                f'{seconds:.2f} s',
                '',
                '',
                _met(seconds <= 1),
            )
        )
    cases, synthetic_table = results['synthetic']
    for level in PHOTON_LEVELS:
        if level < 100:
            continue
        worse = []
        for title, _ in cases[level]:
            mine = synthetic_table[level, default.name, title][0]
            theirs = synthetic_table[level, medium.name, title][0]
            if mine > theirs:
                worse.append(f'{title} ({mine:.3f} vs {theirs:.3f})')
        lines.append(
            _row(
                f'{level} photons: default EPE ≤ DIS medium on every sequence',
                'worse on: ' + ('; '.join(worse) or 'none'),
                '',
                '',
                _met(not worse),
            )
        )
    threads = max(results['race'])
    race = results['race'][threads]
    mine, theirs = race[default.name][0], race[medium.name][0]
    lines.append(
        _row(
            f'512² stack ({threads} threads): default ≥ 2 × DIS medium '
            'frames/s',
            f'{1 / mine:.1f} /s',
            f'{1 / theirs:.1f} /s',
            f'{theirs / mine:.2f}',
            _met(theirs >= 2 * mine),
        )
    )
    preview = results['preview'] * 1000
    lines.append(
        _row(
            'live preview: one 512² pair ≤ 100 ms (default)',
            f'{preview:.0f} ms',
            '',
            '',
            _met(preview <= 100),
        )
    )
    trust_table = results['trust']
    failures = [c for c in results['trust_cases'] if not c[4]]
    goods = [c for c in results['trust_cases'] if c[4]]
    for method in ours:
        preset = method.preset
        # A "failure" the preset actually solved (most trusted pixels
        # within 1 px of the truth) is left out of its row, and named.
        solved = [c[0] for c in failures if trust_table[preset, c[0]][2] < 0.5]
        worst_failure = max(
            trust_table[preset, c[0]][0]
            for c in failures
            if c[0] not in solved
        )
        note = f' (solved, left out: {", ".join(solved)})' if solved else ''
        lines.append(
            _row(
                f'confidence ({method.name}): failures ≤ 10 % trusted',
                f'worst {worst_failure:.1%}{note}',
                '',
                '',
                _met(worst_failure <= 0.1),
            )
        )
        worst_good = min(trust_table[preset, c[0]][1] for c in goods)
        lines.append(
            _row(
                f'confidence ({method.name}): good pairs ≥ 80 % of '
                'textured px trusted',
                f'worst {worst_good:.1%}',
                '',
                '',
                _met(worst_good >= 0.8),
            )
        )
    return lines


def _real_report(pc12_rows, sima_rows):
    lines = ['', '### Real recordings', '', PC12_NOTE, '']
    lines += _header(
        'method',
        'residual vs StackReg, frames 1-4 (px)',
        'cell flow (dy, dx), frames 1-4',
    )
    for name, residuals, means in pc12_rows:
        lines.append(
            _row(
                name,
                ', '.join(f'{r:.2f}' for r in residuals),
                ', '.join(f'({m[1]:.1f}, {m[0]:.1f})' for m in means),
            )
        )
    lines += ['', SIMA_NOTE, '']
    lines += _header('method', 'mean NCC', 'min NCC', 'frame 1 NCC')
    for name, values in sima_rows:
        lines.append(
            _row(
                name,
                f'{np.mean(values):.3f}',
                f'{np.min(values):.3f}',
                f'{values[1]:.3f}',
            )
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--no-write', action='store_true', help='print, do not edit docs'
    )
    parser.add_argument(
        '--quick', action='store_true', help='fewer repeats of every timing'
    )
    args = parser.parse_args()
    markdown = run(quick=args.quick)
    print(markdown)
    if not args.no_write:
        write_section(markdown, heading=HEADING)
        print(f'wrote the "{HEADING[3:]}" section of {DOCS}')


if __name__ == '__main__':
    main()
