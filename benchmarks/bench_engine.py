"""Flow engine: accuracy and speed against OpenCV and scikit-image anchors.

Run by hand from the repository root (writes the "Flow engine" section of
docs/benchmarks.md and prints it)::

    python benchmarks/bench_engine.py
    python benchmarks/bench_engine.py --no-write     # print only

Everything is measured in the same run on the same machine:

* accuracy on ``napari_flowscope.synthetic`` sequences with exact ground
  truth: mean endpoint error (EPE) on each sequence's ``valid`` mask minus
  an 8 px border, and R^2 of the flow components;
* speed at 256^2 and 512^2: per pair (``estimate_flow`` including all set-up)
  and per stack against a fixed reference (``FlowEstimator`` reused; the
  anchors have no reference-side state, so they repeat the per-pair call,
  DIS keeping its instance);
* the real recordings in ../shared/data/real when present: pc12 registered
  to frame 0 and compared with ImageJ StackReg's translation result, and the
  SIMA 2-photon stack registered to its mean.

Every method's flow is converted to the project convention
``moving(x + w(x)) ~ reference(x)`` with ``w[..., 0] = x``, checked by
``check_conventions`` before anything is measured.  All methods' registered
frames are produced with the same ``napari_flowscope.engine.warp``.
"""

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import skimage
from skimage.registration import (
    optical_flow_ilk,
    optical_flow_tvl1,
    phase_cross_correlation,
)

from napari_flowscope import synthetic
from napari_flowscope.engine import (
    FlowEstimator,
    FlowParams,
    estimate_flow,
    warp,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs' / 'benchmarks.md'
REAL = ROOT.parent / 'shared' / 'data' / 'real'
HEADING = '## Flow engine'
BORDER = 8
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
    """A flow method: per-pair call and per-stack (fixed reference) call."""

    def __init__(self, name, pair, stack=None, *, slow=False, ours=False):
        self.name = name
        self.pair = pair
        self.stack = stack or (lambda reference: lambda m: pair(reference, m))
        self.slow = slow
        self.ours = ours


def _flowscope(name, params):
    def pair(reference, moving):
        return estimate_flow(reference, moving, params).w

    def stack(reference):
        estimator = FlowEstimator(reference, params)
        return lambda moving: estimator.estimate(moving).w

    return Method(f'flowscope {name}', pair, stack, ours=True)


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

    return pair, stack


def _ilk(reference, moving):
    return _skimage_to_w(optical_flow_ilk(_unit(reference), _unit(moving)))


def _tvl1(reference, moving):
    return _skimage_to_w(optical_flow_tvl1(_unit(reference), _unit(moving)))


def methods():
    ours = [
        _flowscope('fast', FlowParams.preset('fast')),
        _flowscope('balanced (default)', FlowParams()),
        _flowscope('quality', FlowParams.preset('quality')),
    ]
    ultrafast = _dis(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    medium = _dis(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    anchors = [
        Method('OpenCV Farneback', _farneback),
        Method('OpenCV DIS ultrafast', *ultrafast),
        Method('OpenCV DIS medium', *medium),
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


# --------------------------------------------------------------- accuracy


def _border_mask(shape):
    mask = np.zeros(shape, bool)
    mask[BORDER:-BORDER, BORDER:-BORDER] = True
    return mask


def _to_reference(sequence, indices):
    """Pairs (reference, moving, truth, valid) against the reference."""
    valid = sequence.valid & _border_mask(sequence.valid.shape)
    return [
        (sequence.reference, sequence.stack[t], sequence.flow[t], valid)
        for t in indices
    ]


def _noisy(sequence, noise, seed=5):
    rng = np.random.default_rng(seed)
    stack = sequence.stack + rng.normal(0, noise, sequence.stack.shape)
    stack = stack.astype(np.float32)
    return synthetic.SyntheticSequence(
        stack=stack,
        flow=sequence.flow,
        reference=stack[0],
        valid=sequence.valid,
        name=sequence.name,
    )


def _disk_pairs():
    sequence = synthetic.moving_disk()
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


def _particle_pairs():
    # Consecutive frames: the flow is always flow[1] (see the generator).
    sequence = synthetic.rotating_particles()
    return [
        (
            sequence.stack[t],
            sequence.stack[t + 1],
            sequence.flow[1],
            sequence.stack[t] > np.exp(-2.0),
        )
        for t in (0, 10, 20)
    ]


def synthetic_cases():
    """(column title, pairs) of the accuracy table."""
    nonrigid = synthetic.nonrigid_motion()
    drift = synthetic.rigid_drift()
    large = synthetic.large_translation()
    bleaching = synthetic.bleaching_tissue()
    return [
        ('drift + rotation', _to_reference(drift, (4, 8, 12, 16, 19))),
        ('non-rigid 0-5 px', _to_reference(nonrigid, (5, 10, 15, 19))),
        ('large 15 px', _to_reference(large, (3, 5, 7))),
        (
            'bleaching + illumination',
            _to_reference(bleaching, (10, 20, 30, 39)),
        ),
        (
            'non-rigid + noise 0.02',
            _to_reference(_noisy(nonrigid, 0.02), (5, 10, 15, 19)),
        ),
        ('moving disk (t to t+1)', _disk_pairs()),
        ('3 rotating particles (t to t+1)', _particle_pairs()),
    ]


TARGET_CASES = (
    'drift + rotation',
    'non-rigid 0-5 px',
    'large 15 px',
    'bleaching + illumination',
)


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


# --------------------------------------------------------------- report


def _format(value, digits=3):
    if value is None or not np.isfinite(value):
        return '—'
    return f'{value:.{digits}f}'


def machine():
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            model = next(
                line.split(':', 1)[1].strip()
                for line in cpuinfo
                if line.startswith('model name')
            )
    except (OSError, StopIteration):
        model = platform.processor() or 'unknown CPU'
    return (
        f'{os.cpu_count()}-core VM ({model}), Python '
        f'{platform.python_version()}, OpenCV {cv2.__version__}, NumPy '
        f'{np.__version__}, scikit-image {skimage.__version__}'
    )


def run(*, quick=False):
    ours, anchors = methods()
    everyone = ours + anchors
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    check_conventions(everyone)

    cases = synthetic_cases()
    table = {}
    for method in everyone:
        for title, pairs in cases:
            table[method.name, title] = accuracy(method, pairs)
        print(f'accuracy: {method.name} done', flush=True)

    frames = {
        256: synthetic.nonrigid_motion(n_frames=6, shape=(256, 256)).stack,
        512: synthetic.nonrigid_motion(n_frames=6, shape=(512, 512)).stack,
    }
    rates = {}
    for method in everyone:
        for size, stack in frames.items():
            repeats = 2 if method.slow or quick else 5
            rates[method.name, size] = speed(method, stack, repeats=repeats)
        print(f'speed: {method.name} done', flush=True)

    real = None
    if (REAL / 'pc12_stackreg').is_dir() and (REAL / 'sima_2p').is_dir():
        fast_anchors = [m for m in everyone if 'TV-L1' not in m.name]
        real = (pc12(everyone), sima(fast_anchors))
        print('real data done', flush=True)
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()[0]
    return report(
        ours, anchors, cases, table, rates, real, elapsed, load_start, load_end
    )


ACCURACY_NOTE = (
    "Mean endpoint error in px (lower is better) on each sequence's "
    f'`valid` mask minus an {BORDER} px border, averaged over the frames '
    'listed in `synthetic_cases()` (against frame 0, except the disk and '
    'the particles: consecutive frames). Anchors run with their library '
    "defaults (Farneback with OpenCV's sample values) on frames mapped to "
    '[0, 1] (uint8 for OpenCV) by their 0.5-99.5 percentiles. The '
    'particles are round, so their spin about their own centres (part of '
    'the true rigid rotation) is invisible: every method that follows the '
    'particles as translating blobs scores about 0.70 px there.'
)
SPEED_NOTE = (
    'Frames per second (best of 5 frames; of 2 for the scikit-image '
    'methods) on smooth non-rigid tissue texture. *Per pair*: one call '
    'with a new reference each time (`estimate_flow`, all set-up '
    'included). *Per stack*: many frames against one reference '
    '(`FlowEstimator` reused; the reference set-up is spread over the '
    'frames measured). CPU time counts both cores (OpenCV runs its '
    'filters on two threads); wall-clock rates suffer from the other '
    "rooms' load, CPU time much less."
)
PC12_NOTE = (
    '**pc12** (`pc12_stackreg/pc12-unreg.tif`, 5 × 201 × 199 uint16, rigid '
    'drift up to 15 px): every frame registered to frame 0, then the '
    "global shift between our registered frame and ImageJ StackReg's "
    '`pc12-reg-translation.tif` measured with '
    '`phase_cross_correlation(upsample_factor=10)` on the frame minus a '
    '20 px border (0 = same alignment as StackReg). Cell flow is the '
    'median of `w` over the cell (the brightest 20 % of frame 0; the dark '
    'background, where e.g. Farneback reports no motion, left out), shown '
    'as (dy, dx). The README lists '
    'the drift of frames 1-4 as '
    + ', '.join(f'({dy}, {dx})' for dy, dx in PC12_README_SHIFTS[1:])
    + ', the shifts that register each frame (phase correlation), i.e. '
    'minus the displacement of its content; `w` is that displacement '
    '(registered(x) = moving(x + w)), hence the opposite signs.'
)
SIMA_NOTE = (
    '**SIMA 2-photon** (`sima_2p/example.tif`, 20 × 128 × 256 uint16, low '
    'SNR): every frame registered to the temporal mean; normalised '
    'cross-correlation of each frame with the mean (both smoothed with a '
    'σ = 2 px Gaussian, 10 px border excluded) before and after. TV-L1 '
    'left out for time.'
)


def _row(*cells):
    return '| ' + ' | '.join(str(cell) for cell in cells) + ' |'


def _header(*titles):
    return [_row(*titles), _row(*(['---'] * len(titles)))]


def _load_caveat(load):
    if load < 1.5:
        return ''
    return (
        ' (other work shared the cores, so every rate is a lower bound and '
        'only rates from this same run are comparable)'
    )


def report(
    ours, anchors, cases, table, rates, real, elapsed, load_start, load_end
):
    titles = [title for title, _ in cases]
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    everyone = ours + anchors
    lines = [
        HEADING,
        '',
        (
            f'`python benchmarks/bench_engine.py` — {today}, {machine()}. '
            f'Whole run {elapsed / 60:.1f} min; 1-min load average '
            f'{load_start:.1f} at the start and {load_end:.1f} at the end'
            f'{_load_caveat(max(load_start, load_end))}.'
        ),
        '',
        '### Accuracy on synthetic sequences with exact ground truth',
        '',
        ACCURACY_NOTE,
        '',
        *_header('method', *titles),
    ]
    for method in everyone:
        cells = [_format(table[method.name, title][0]) for title in titles]
        lines.append(_row(method.name, *cells))
    lines += [
        '',
        ('R² of the flow components (pooled over the frames; 1 is perfect):'),
        '',
        *_header('method', *titles[:5]),
    ]
    for method in everyone:
        cells = [_format(table[method.name, t][1], 4) for t in titles[:5]]
        lines.append(_row(method.name, *cells))
    lines += ['', '### Speed', '', SPEED_NOTE, '']
    lines += _header(
        'method',
        '256² per pair',
        '256² per stack',
        '512² per pair',
        '512² per stack',
        'CPU ms per 512² stack frame',
    )
    for method in everyone:
        p256, s256, _ = rates[method.name, 256]
        p512, s512, cpu512 = rates[method.name, 512]
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
    lines += ['', '### Targets (issue 3), this run', '']
    lines += _targets(ours, anchors, table, rates)
    if real is not None:
        lines += _real_report(*real)
    return '\n'.join(lines) + '\n'


def _targets(ours, anchors, table, rates):
    lines = _header('target', 'flowscope', 'anchor', 'ratio', 'met')
    for title in TARGET_CASES:
        best_ours = min(ours, key=lambda m: table[m.name, title][0])
        best_anchor = min(
            anchors, key=lambda m: _finite(table[m.name, title][0])
        )
        mine = table[best_ours.name, title][0]
        theirs = table[best_anchor.name, title][0]
        lines.append(
            _row(
                f'{title}: best preset EPE ≤ 0.8 × best anchor',
                f'{best_ours.name} {mine:.4f}',
                f'{best_anchor.name} {theirs:.4f}',
                f'{mine / theirs:.2f}',
                _met(mine <= 0.8 * theirs),
            )
        )
    r2 = max(table[m.name, 'non-rigid 0-5 px'][1] for m in ours)
    lines.append(
        _row('non-rigid: R² ≥ 0.99', f'{r2:.4f}', '', '', _met(r2 >= 0.99))
    )
    (default,) = (m for m in ours if 'default' in m.name)
    (medium,) = (m for m in anchors if 'DIS medium' in m.name)
    mine, theirs = rates[default.name, 512][1], rates[medium.name, 512][1]
    lines.append(
        _row(
            'default preset, 512² stack: ≥ 2 × DIS medium frames/s',
            f'{mine:.1f} /s',
            f'{theirs:.1f} /s',
            f'{mine / theirs:.2f}',
            _met(mine >= 2 * theirs),
        )
    )
    worse = [
        title
        for title in TARGET_CASES
        if table[default.name, title][0] > table[medium.name, title][0]
    ]
    lines.append(
        _row(
            'default preset EPE no worse than DIS medium',
            'worse on: ' + (', '.join(worse) or 'none'),
            '',
            '',
            _met(not worse),
        )
    )
    per_pair_ms = 1000 / rates[default.name, 512][0]
    lines.append(
        _row(
            'live preview: one 512² pair ≤ 100 ms (default preset)',
            f'{per_pair_ms:.0f} ms',
            '',
            '',
            _met(per_pair_ms <= 100),
        )
    )
    return lines


def _met(condition):
    return 'yes' if condition else '**no**'


def _finite(value):
    return value if np.isfinite(value) else np.inf


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


def write_section(markdown, path=DOCS):
    """Replace (or append) only the "## Flow engine" section of the file."""
    text = path.read_text() if path.exists() else '# Benchmarks\n'
    start = text.find(HEADING + '\n')
    if start == -1:
        text = text.rstrip('\n') + '\n\n' + markdown
    else:
        end = text.find('\n## ', start + len(HEADING))
        rest = '' if end == -1 else '\n' + text[end + 1 :]
        text = text[:start] + markdown + rest
    path.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--no-write', action='store_true', help='print, do not edit docs'
    )
    parser.add_argument(
        '--quick', action='store_true', help='2 frames per speed figure'
    )
    args = parser.parse_args()
    markdown = run(quick=args.quick)
    print(markdown)
    if not args.no_write:
        write_section(markdown)
        print(f'wrote the "{HEADING[3:]}" section of {DOCS}')


if __name__ == '__main__':
    main()
