"""The ``napari-flowscope`` command line.

``napari-flowscope correct INPUT.tif -o OUTDIR`` motion-corrects a TIFF
time-lapse without napari, streaming the files of a session to OUTDIR (see
``docs/architecture.md``); ``napari-flowscope demo`` opens napari with the
drifting-tissue sample and the plugin's docks, or runs the same correction
headless when there is no display.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ['main']

PROG = 'napari-flowscope'
DEFAULT_DEMO_OUTPUT = 'flowscope-demo-output'
# Exit status of a run stopped with Ctrl+C (128 + SIGINT) or SIGTERM
# (128 + 15), as shells report them.
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl+C so that every clean-up path runs."""


class ProgressLine:
    """A one-line progress bar with rate and ETA, for a text stream.

    Call it as a ``progress_callback(current, total)``; on a terminal it
    redraws one line, elsewhere (logs, pipes) it prints one line per call.

    Parameters
    ----------
    label : str
        Shown before the bar.
    stream : file, optional
        Default ``sys.stderr``.
    width : int
        Characters of the bar.
    """

    def __init__(self, label, *, stream=None, width=24):
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self._start = time.perf_counter()
        self._last_length = 0
        self._redraw = bool(getattr(self.stream, 'isatty', lambda: False)())

    def __call__(self, current, total):
        elapsed = time.perf_counter() - self._start
        fraction = current / total if total else 1.0
        filled = int(self.width * fraction)
        bar = '#' * filled + '-' * (self.width - filled)
        rate = current / elapsed if elapsed > 0 else 0.0
        eta = (total - current) / rate if rate > 0 else float('nan')
        line = (
            f'{self.label} [{bar}] {current}/{total} frames '
            f'{100 * fraction:3.0f}%  {rate:.1f} frames/s  '
            f'ETA {_duration(eta)}'
        )
        if self._redraw:
            padding = ' ' * max(self._last_length - len(line), 0)
            self.stream.write('\r' + line + padding)
            if current >= total:
                self.stream.write('\n')
        else:
            self.stream.write(line + '\n')
        self._last_length = len(line)
        self.stream.flush()


def _duration(seconds):
    if not np.isfinite(seconds):
        return '--:--'
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f'{hours}:{minutes:02d}:{seconds:02d}'
    return f'{minutes:02d}:{seconds:02d}'


def _channel(text):
    """``N`` (one channel) or comma-separated weights ``1,0.5``."""
    try:
        if ',' in text:
            return [float(part) for part in text.split(',')]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            'expected a channel index or comma-separated weights; '
            f'got {text!r}'
        ) from None


def _reference(text):
    from napari_flowscope.session import reference_from_string

    try:
        return reference_from_string(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1; got {text}')
    return value


def _spacing(text):
    """``Z,Y,X`` voxel size: three positive numbers."""
    try:
        values = [float(part) for part in text.split(',')]
    except ValueError:
        values = []
    if len(values) != 3 or not all(
        np.isfinite(value) and value > 0 for value in values
    ):
        raise argparse.ArgumentTypeError(
            f'expected three positive numbers Z,Y,X; got {text!r}'
        )
    return tuple(values)


def _smoothing(text):
    from napari_flowscope.session.session import MAX_TEMPORAL_SIGMA

    value = float(text)
    if not np.isfinite(value) or not 0 < value <= MAX_TEMPORAL_SIGMA:
        raise argparse.ArgumentTypeError(
            f'must be between 0 and {MAX_TEMPORAL_SIGMA:g} frames; got {text}'
        )
    return value


def build_parser():
    from napari_flowscope.engine.motion_models import MOTION_MODELS
    from napari_flowscope.engine.params import METHODS, PRESETS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            'Optical-flow motion measurement and correction for microscopy '
            'time-lapses.'
        ),
    )
    commands = parser.add_subparsers(dest='command', required=True)

    correct = commands.add_parser(
        'correct',
        help='motion-correct a TIFF time-lapse (no napari needed)',
        description=(
            'Register every frame of a TIFF time-lapse (or of a folder of '
            'numbered TIFF/PNG/JPEG frames) to a reference and write '
            'registered.tif, flow.npy + flow.json, reliability.npy, '
            'confidence.npy, stats.csv and params.json to OUTDIR. Files '
            'appear under their '
            'final names only when the run is complete.'
        ),
    )
    correct.add_argument(
        'input',
        type=Path,
        metavar='INPUT',
        help=(
            'TIFF stack (T, Y, X) or volumes (T, Z, Y, X), with channels, '
            'or a folder of numbered single-frame TIFF/PNG/JPEG images'
        ),
    )
    correct.add_argument(
        '-o',
        '--output',
        type=Path,
        required=True,
        metavar='OUTDIR',
        help='output folder',
    )
    correct.add_argument(
        '--preset',
        choices=list(PRESETS),
        default='balanced',
        help='flow parameter preset (default: %(default)s)',
    )
    correct.add_argument(
        '--method',
        choices=list(METHODS),
        help="flow method, overriding the preset's",
    )
    correct.add_argument(
        '--motion-model',
        choices=list(MOTION_MODELS),
        default='dense',
        help=(
            'dense: the optical flow, one displacement per pixel; '
            'translation, rigid (+ rotation), affine (+ scaling, shear): '
            'one transform of the whole frame, fitted to the trusted flow '
            'and refined on the images, for drift (default: %(default)s)'
        ),
    )
    correct.add_argument(
        '--reference',
        type=_reference,
        default='frame:0',
        metavar='SPEC',
        help=(
            'frame:N, range:A-B (frames A to B-1), range:A-B:median, '
            'range:A-B:mean:preregister, previous (each frame registered '
            'to the registered frame before it, like StackReg), adaptive '
            'or adaptive:BUFFER:INTERVAL:WEIGHT (default: frame:0)'
        ),
    )
    correct.add_argument(
        '--channel',
        type=_channel,
        default=0,
        metavar='N|W1,W2,...',
        help=(
            'multichannel input: channel used for the flow, or one weight '
            'per channel (default: 0); the flow is applied to all channels'
        ),
    )
    correct.add_argument(
        '--batch-size',
        type=_positive_int,
        default=16,
        help='frames read and registered at a time (default: %(default)s)',
    )
    correct.add_argument(
        '--threads',
        type=_positive_int,
        default=None,
        help='threads per batch (default: all CPU cores)',
    )
    correct.add_argument(
        '--temporal-smoothing',
        type=_smoothing,
        nargs='?',
        const=True,
        default=None,
        metavar='SIGMA',
        help=(
            'smooth frames in time before estimating the flow (no value: '
            '5-tap kernel; SIGMA: Gaussian in frames, at most 10)'
        ),
    )
    correct.add_argument(
        '--interpolation',
        choices=['linear', 'cubic'],
        default='linear',
        help='interpolation of the warp (default: %(default)s)',
    )
    correct.add_argument(
        '--spacing',
        type=_spacing,
        default=None,
        metavar='Z,Y,X',
        help=(
            "volumes: voxel size (z, y, x), overriding the file's; windows "
            'and smoothness are isotropic in these units (default: the '
            "file's calibration, else isotropic)"
        ),
    )
    correct.add_argument(
        '--per-plane',
        action='store_true',
        help=(
            'volumes: register each z plane on its own with 2-D flow, for '
            'stacks whose planes are not a true volume'
        ),
    )
    correct.add_argument(
        '--overwrite',
        action='store_true',
        help=(
            'replace the results of an earlier run in OUTDIR, once the '
            'new run is complete (an interrupted or failed run leaves '
            'them as they were)'
        ),
    )
    correct.add_argument(
        '--scheduler',
        metavar='ADDRESS|local',
        default=None,
        help=(
            'run on a Dask cluster: a scheduler address (tcp://host:8786) '
            "or 'local' for a local cluster of --workers processes; needs "
            'napari-flowscope[distributed] and a fixed reference (see '
            'docs/distributed.md)'
        ),
    )
    correct.add_argument(
        '--workers',
        type=_positive_int,
        default=2,
        help='workers of a --scheduler local cluster (default: %(default)s)',
    )
    correct.add_argument(
        '--chunk-size',
        type=_positive_int,
        default=64,
        help='frames per Dask task with --scheduler (default: %(default)s)',
    )
    correct.add_argument(
        '-q', '--quiet', action='store_true', help='no progress bar'
    )
    correct.set_defaults(func=_correct)

    demo = commands.add_parser(
        'demo',
        help='open napari with a sample and the plugin (or run headless)',
        description=(
            'With a display: open napari with the drifting-tissue sample '
            'and the Motion correction and Motion over time docks. Without '
            'one (or with --headless): correct the same sample and write '
            'the results to a folder.'
        ),
    )
    demo.add_argument(
        '--headless', action='store_true', help='never open a window'
    )
    demo.add_argument(
        '-o',
        '--output',
        type=Path,
        default=Path(DEFAULT_DEMO_OUTPUT),
        help='output folder of the headless run (default: ./%(default)s)',
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    output = getattr(args, 'output', None)
    untouched = (
        f'; nothing in {output} was written or replaced'
        if output is not None
        else ''
    )
    try:
        with _interrupts_as_exceptions():
            return args.func(args)
    except Terminated:
        print(f'{PROG}: terminated{untouched}', file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f'{PROG}: cancelled{untouched}', file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as error:
        print(f'{PROG}: error: {error}', file=sys.stderr)
        return 1


@contextlib.contextmanager
def _interrupts_as_exceptions():
    """SIGINT and SIGTERM raise (KeyboardInterrupt, :class:`Terminated`).

    So a terminated run cleans up like a cancelled one: partial files are
    removed and an earlier run's results stay.  An interrupt that arrives
    while a finished run's files are being renamed waits for the renames
    (:func:`napari_flowscope.formats.defer_interrupt`).  Signal handlers
    can only be set from the main thread; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from napari_flowscope import formats

    def handler(signum, _frame):
        error = (
            Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        )
        if not formats.defer_interrupt(error):
            raise error

    previous = {
        number: signal.signal(number, handler)
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, old_handler in previous.items():
            signal.signal(number, old_handler)


# -- correct ----------------------------------------------------------------


def _correct(args):
    from napari_flowscope import formats
    from napari_flowscope.engine import FlowParams
    from napari_flowscope.session import DiskSink, MotionSession

    if Path(args.input).is_dir():
        stack, metadata = formats.open_image_sequence(args.input, lazy=True)
    else:
        stack, metadata = formats.open_stack(args.input, lazy=True)
    formats.check_time_lapse(metadata, args.input)
    _check_reference(args.reference, metadata.shape[0])
    channel_axis = _channel_axis(metadata)
    spatial = _spatial_axes(metadata)
    scale = [metadata.scale[metadata.axes.index(axis)] for axis in spatial]
    units = [metadata.units[metadata.axes.index(axis)] for axis in spatial]
    spacing = None
    if 'Z' in spatial:
        spacing = tuple(scale[1:]) if args.spacing is None else args.spacing
        scale[1:] = spacing
    elif args.spacing is not None or args.per_plane:
        raise ValueError(
            f'--spacing and --per-plane are for volumes (T, Z, Y, X); the '
            f'stack has axes {metadata.axes}'
        )
    params = FlowParams.preset(args.preset)
    if args.method is not None:
        params = params.replace(method=args.method)
    params = params.replace(motion_model=args.motion_model)
    session = MotionSession(
        stack,
        reference=args.reference,
        params=params,
        channel_axis=channel_axis,
        channel=args.channel,
        batch_size=args.batch_size,
        temporal_smoothing=args.temporal_smoothing,
        n_threads=args.threads,
        interpolation=args.interpolation,
        spacing=spacing,
        per_plane=args.per_plane,
    )
    sink = DiskSink(
        args.output,
        scale=scale,
        units=units,
        source=str(Path(args.input).resolve()),
        extra={'input_axes': metadata.axes},
        overwrite=args.overwrite,
    )
    progress = None if args.quiet else ProgressLine('correct')
    try:
        if args.scheduler is not None:
            # A folder of images goes as its dask array (reading the files).
            source = stack if Path(args.input).is_dir() else args.input
            sink = _correct_on_cluster(
                args, source, params, channel_axis, progress, scale, spacing
            )
        else:
            sink = session.run(sink=sink, progress_callback=progress)
    except FileExistsError as error:
        raise FileExistsError(f'{error} (--overwrite replaces them)') from None
    _print_summary(session, sink)
    return 0


def _correct_on_cluster(
    args, source, params, channel_axis, progress, scale, spacing
):
    from napari_flowscope.distributed import correct_distributed

    if args.temporal_smoothing is not None:
        raise ValueError('--temporal-smoothing does not work with --scheduler')
    return correct_distributed(
        source,
        args.output,
        reference=args.reference,
        params=params,
        chunk_size=args.chunk_size,
        client=args.scheduler,
        n_workers=args.workers,
        channel_axis=channel_axis,
        channel=args.channel,
        batch_size=args.batch_size,
        interpolation=args.interpolation,
        scale=scale,
        spacing=spacing,
        per_plane=args.per_plane,
        overwrite=args.overwrite,
        progress_callback=progress,
    )


def _channel_axis(metadata):
    extra = [axis for axis in metadata.axes if axis not in 'TZYXCS']
    if extra:
        raise ValueError(
            f'the stack has axes {metadata.axes}; only time-lapses of 2-D '
            'frames (T, Y, X) or of volumes (T, Z, Y, X), optionally with '
            'channels, can be corrected'
        )
    if metadata.rgb:
        return metadata.axes.index('S')
    return metadata.channel_axis


def _check_reference(reference, n_frames):
    """Refuse a reference the stack does not have, before any work."""
    from napari_flowscope.session import FrameReference, RangeReference

    if isinstance(reference, RangeReference) and reference.stop > n_frames:
        raise ValueError(
            f'--reference range:{reference.start}-{reference.stop} asks for '
            f'frames {reference.start} to {reference.stop - 1}, but the '
            f'stack has {n_frames} frames (0 to {n_frames - 1})'
        )
    if isinstance(reference, FrameReference) and not (
        -n_frames <= reference.index < n_frames
    ):
        raise ValueError(
            f'--reference frame:{reference.index} is outside the stack, '
            f'which has {n_frames} frames (0 to {n_frames - 1})'
        )


def _spatial_axes(metadata):
    """``'TYX'`` or ``'TZYX'``: the stack's axes without channels."""
    spatial = 'T' + ''.join(a for a in metadata.axes[1:] if a in 'ZYX')
    if spatial not in ('TYX', 'TZYX'):
        raise ValueError(
            f'the stack has axes {metadata.axes}; its spatial axes must '
            'come in the order Z, Y, X'
        )
    if 'Z' in spatial and metadata.rgb:
        raise ValueError('RGB volumes cannot be corrected; split the colours')
    return spatial


def _print_summary(session, sink, *, extra_lines=()):
    """Print what the run measured, in the units of ``stats.csv``."""
    size = ' x '.join(str(n) for n in session.frame_shape[::-1])
    stats, units = sink.stats, sink.motion_units
    displacement = units.displacement(
        [np.mean(stats.mean_displacement), np.max(stats.max_displacement)]
    )
    lines = [
        (
            f'volumes: {session.n_frames} of {size} voxels (x, y, z)'
            + (', each plane on its own' if session.per_plane else '')
            if session.is_volume
            else f'frames: {session.n_frames} of {size} px'
        ),
        (
            'displacement from the reference: mean '
            f'{_measure(displacement[0], units.displacement_unit)}, '
            f'largest {_measure(displacement[1], units.displacement_unit)}'
        ),
    ]
    if session.n_frames > 1:
        velocity = units.velocity(
            [
                np.nanmean(stats.mean_velocity),
                np.nanmax(stats.max_velocity),
            ]
        )
        lines.append(
            'velocity (frame to frame): mean '
            f'{_measure(velocity[0], units.velocity_unit)}, '
            f'largest {_measure(velocity[1], units.velocity_unit)}'
        )
    lines += [
        (
            'NCC with the reference: before '
            f'{np.mean(stats.ncc_before):.3f}, after '
            f'{np.mean(stats.ncc_after):.3f} (mean over frames)'
        ),
        _trust_line(stats),
        *extra_lines,
        f'results: {sink.directory}',
    ]
    print('\n'.join(lines))
    collapsed = np.flatnonzero(stats.collapsed)
    if collapsed.size:
        print(_collapse_warning(collapsed, session.n_frames), file=sys.stderr)


def _trust_line(stats):
    fractions = stats.trusted_fraction
    if np.isnan(fractions).all():
        return 'trusted: none (the reference has no texture)'
    return (
        f'trusted: {np.nanmean(fractions):.0%} of the textured pixels '
        f'(lowest frame {np.nanmin(fractions):.0%})'
    )


def _collapse_warning(frames, n_frames):
    from napari_flowscope.engine import COLLAPSED_TRUSTED_FRACTION

    shown = ', '.join(str(frame) for frame in frames[:10])
    if frames.size > 10:
        shown += f', ... ({frames.size - 10} more)'
    return (
        f'{PROG}: warning: the match collapsed in {frames.size} of '
        f'{n_frames} frames (fewer than '
        f'{COLLAPSED_TRUSTED_FRACTION:.0%} of the textured pixels trusted): '
        f'{shown}. Their flow is unreliable (motion beyond reach, a '
        'different scene, or noise); see stats.csv and confidence.npy.'
    )


def _measure(value, unit):
    return f'{value:.3g} {unit}'


# -- demo -------------------------------------------------------------------


def display_available():
    """Whether a window can be opened (X11/Wayland on Linux, always else)."""
    if not sys.platform.startswith('linux'):
        return True
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


def _demo(args):
    if not args.headless and display_available():
        return _demo_gui()
    return _demo_headless(args.output)


def _demo_gui():
    from napari_flowscope._qt.demo import open_demo

    open_demo()
    return 0


def _demo_headless(output):
    from napari_flowscope import _sample_data
    from napari_flowscope.session import DiskSink, MotionSession

    flow_x, flow_y, stack_layer = _sample_data.drifting_tissue()
    stack, stack_kwargs, _ = stack_layer
    truth = np.stack([flow_x[0], flow_y[0]], axis=-1)
    print(
        f'{PROG} demo (headless): correcting the drifting-tissue sample '
        f'into {output}',
        file=sys.stderr,
    )
    session = MotionSession(stack)
    sink = session.run(
        sink=DiskSink(
            output,
            scale=stack_kwargs['scale'],
            units=stack_kwargs['units'],
            source='napari-flowscope sample: drifting_tissue',
            overwrite=True,
        ),
        progress_callback=ProgressLine('demo'),
    )
    from napari_flowscope import formats

    w, _ = formats.read_flow(sink.paths['flow'], mmap_mode='r')
    error = _interior_error(np.asarray(w), truth)
    _print_summary(
        session,
        sink,
        extra_lines=[
            (
                f'error against the ground-truth flow: {error:.3f} px '
                '(mean end-point error, 10% border excluded)'
            )
        ],
    )
    return 0


def _interior_error(w, truth):
    """Mean end-point error away from the border, where content enters."""
    margin_y, margin_x = (max(1, size // 10) for size in w.shape[1:3])
    inner = np.s_[:, margin_y:-margin_y, margin_x:-margin_x]
    return float(np.linalg.norm(w[inner] - truth[inner], axis=-1).mean())


if __name__ == '__main__':
    sys.exit(main())
