"""Event-loop stalls of napari while a motion-correction run streams.

A full viewer gets the "Motion correction" and "Motion over time" docks and
a synthetic stack; the run starts through the motion dock's public
``start()``.  A QTimer fires every 10 ms on the main thread and records the
time between its ticks: a gap much longer than 10 ms is a stall the user
feels (the budget is 50 ms).  Also measured: how long ``start()`` itself
blocks, and the time from ``start()`` to the first batch on screen (layers
updated, vectors shown), which the run events report.

Run by hand from the repository root (results go to docs/benchmarks.md,
section "Event loop")::

    python benchmarks/bench_event_loop.py                 # 256² and 512²
    python benchmarks/bench_event_loop.py --size 256 --frames 100
    python benchmarks/bench_event_loop.py --profile       # + pyinstrument

Without a ``DISPLAY`` an ``Xvfb`` server is started (napari's canvas needs
an X server even with ``QT_QPA_PLATFORM=offscreen``).  With the offscreen
platform nothing is painted on screen, so OpenGL drawing of the canvas is
not part of the numbers; everything the Python side does on the main thread
(layer updates, slicing, plots, widgets) is.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROBE_INTERVAL_MS = 10
STALL_BUDGET_MS = 50


def run_under_xvfb(argv):
    """Re-run this script with ``DISPLAY`` set to a fresh Xvfb server.

    The server is stopped after the child exits: stopping it under a live
    napari would kill the process with an X I/O error.
    """
    if not shutil.which('Xvfb'):
        sys.exit('no DISPLAY and no Xvfb: install Xvfb or set DISPLAY')
    for number in range(120, 140):
        if Path(f'/tmp/.X{number}-lock').exists():
            continue
        server = subprocess.Popen(
            ['Xvfb', f':{number}', '-screen', '0', '1600x1000x24'],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                if Path(f'/tmp/.X11-unix/X{number}').exists():
                    env = {**os.environ, 'DISPLAY': f':{number}'}
                    child = [sys.executable, __file__, *argv]
                    return subprocess.run(child, env=env).returncode
                time.sleep(0.05)
        finally:
            server.terminate()
            server.wait(timeout=10)
    sys.exit('could not start Xvfb')


def drifting_stack(n_frames, size, *, seed=0):
    """(T, size, size) float32 tissue texture under a smooth random drift.

    Rendering the synthetic module's exact sequences takes minutes at this
    length; a bilinear shift of one texture per frame takes seconds and
    moves just as much for the purpose of timing.
    """
    import cv2

    from napari_flowscope.synthetic import tissue_texture

    texture = tissue_texture((size, size), seed=seed)
    rng = np.random.default_rng(seed)
    steps = rng.normal(scale=0.4, size=(n_frames, 2))
    drift = np.cumsum(steps, axis=0) - steps[0]
    stack = np.empty((n_frames, size, size), np.float32)
    for frame, (dx, dy) in enumerate(drift):
        matrix = np.array([[1, 0, dx], [0, 1, dy]], np.float64)
        stack[frame] = cv2.warpAffine(
            texture, matrix, (size, size), borderMode=cv2.BORDER_REFLECT
        )
    return stack


class TickProbe:
    """Records the main-thread times of a QTimer firing every 10 ms."""

    def __init__(self):
        from qtpy.QtCore import Qt, QTimer

        self.ticks = []
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(PROBE_INTERVAL_MS)
        self._timer.timeout.connect(self._tick)

    def _tick(self):
        self.ticks.append(time.perf_counter())

    def start(self):
        self.ticks = [time.perf_counter()]
        self._timer.start()

    def stop(self):
        self._timer.stop()
        self._tick()
        return np.diff(self.ticks) * 1e3


class StallSampler:
    """Samples the main thread's stack while its QTimer tick is overdue.

    A thread looks every 5 ms; when the probe has not ticked for 40 ms it
    records which functions the main thread is in, and what the other
    busy threads are in.  Each stall is then named after the frames seen
    most often during it, so the report says which call blocks the event
    loop.  On Linux it also reads the main thread's scheduler statistics,
    which split each stall into time on a core (work), time runnable but
    waiting for a core, and the rest: blocked (waiting for the GIL, a
    lock, or the X server).
    """

    def __init__(self, probe):
        import threading

        self._probe = probe
        self._main = threading.main_thread()
        self._stop = threading.Event()
        self.samples = []  # (tick index the stall ends at, stack, others)
        self.schedule = []  # (time, ns on a core, ns runnable and waiting)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        import threading
        import traceback

        schedstat = Path(f'/proc/self/task/{self._main.native_id}/schedstat')
        if not schedstat.exists():
            schedstat = None
        while not self._stop.wait(0.005):
            if schedstat is not None:
                on_core, waiting, _ = schedstat.read_text().split()
                self.schedule.append(
                    (time.perf_counter(), int(on_core), int(waiting))
                )
            ticks = self._probe.ticks
            if not ticks or time.perf_counter() - ticks[-1] < 0.04:
                continue
            frames = sys._current_frames()
            frame = frames.pop(self._main.ident, None)
            frames.pop(threading.get_ident(), None)
            if frame is not None:
                stack = traceback.extract_stack(frame)
                others = {
                    _innermost(traceback.extract_stack(other))
                    for other in frames.values()
                }
                others.discard(None)
                self.samples.append((len(ticks), _signature(stack), others))

    def blame(self, gaps, budget_ms=STALL_BUDGET_MS):
        """The most frequent stack signature of each stall > budget.

        Returns
        -------
        dict
            Index of the gap (into ``gaps``) -> (signature, innermost
            frames of the other threads busy during it).
        """
        from collections import Counter

        by_stall = {}
        for index, signature, others in self.samples:
            counter, busy = by_stall.setdefault(index, (Counter(), set()))
            counter[signature] += 1
            busy |= others
        causes = {}
        for index, (counter, busy) in by_stall.items():
            # ticks[index] ends gap index - 1
            if index - 1 < len(gaps) and gaps[index - 1] > budget_ms:
                causes[index - 1] = (counter.most_common(1)[0][0], busy)
        return causes

    def main_thread_split(self, began, ended):
        """(on a core, runnable waiting, blocked) ms between two times,
        or None without scheduler statistics."""
        if len(self.schedule) < 2:
            return None
        times, on_core, waiting = np.array(self.schedule, float).T
        on_core_ms = np.diff(np.interp([began, ended], times, on_core))[0]
        waiting_ms = np.diff(np.interp([began, ended], times, waiting))[0]
        on_core_ms, waiting_ms = on_core_ms / 1e6, waiting_ms / 1e6
        blocked_ms = (ended - began) * 1e3 - on_core_ms - waiting_ms
        return on_core_ms, waiting_ms, max(blocked_ms, 0.0)


def _innermost(stack):
    """``module.function`` a busy thread is in; None for an idle one."""
    if not stack:
        return None
    entry = stack[-1]
    module = Path(entry.filename).stem
    if module in ('threading', 'queue', 'selectors'):
        return None  # waiting for work
    return f'{module}.{entry.name}'


def _signature(stack):
    """Outermost and innermost frames of interest of a stack."""
    ours = [
        f'{Path(entry.filename).stem}.{entry.name}'
        for entry in stack
        if 'napari_flowscope' in entry.filename
        and 'bench_event_loop' not in entry.filename
    ]
    libraries = [
        f'{Path(entry.filename).parent.name}/{Path(entry.filename).stem}.'
        f'{entry.name}'
        for entry in stack
        if 'site-packages' in entry.filename
    ]
    outer = ours[0] if ours else (libraries[0] if libraries else '?')
    inner = libraries[-1] if libraries else (ours[-1] if ours else '?')
    return f'{outer} … {inner}'


def measure(size, n_frames, *, batch_size, plots=True, profile_path=None):
    """Two runs in one viewer; a dict of timings (ms) per run.

    The first run creates the output layers, the second reuses them.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    stack = drifting_stack(n_frames, size)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.add_image(stack, name='tissue', scale=(0.1, 1, 1), units='s')
    _, motion = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    plot_dock = None
    if plots:
        _, plot_dock = viewer.window.add_plugin_dock_widget(
            'napari-flowscope', 'Motion over time'
        )
    motion.run_panel.batch_size.value = batch_size
    # Vectors show for the current frame only; frame 0 is the reference
    # (no motion, no vectors), frame 5 is in the first batch.
    viewer.dims.set_current_step(0, 5)
    app = QApplication.instance()
    for _ in range(50):  # let the window settle before measuring
        app.processEvents()
        time.sleep(0.01)
    results = []
    for run in ('first', 'repeat'):
        result = _measure_run(
            viewer,
            motion,
            profile_path=profile_path if run == 'first' else None,
        )
        result.update(
            run=run,
            size=size,
            frames=n_frames,
            batch_size=batch_size,
            plot_images=plot_dock.render_count if plots else None,
        )
        results.append(result)
    viewer.close()
    return results


def _measure_run(viewer, motion, *, profile_path=None):
    """Time one run of the dock: start() to the end of the run."""
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_flowscope._qt.events import run_events

    marks = {}
    events = run_events(viewer)

    def on_batch(batch):
        marks.setdefault('first_batch', time.perf_counter())

    def on_vectors(event):
        if len(event.source.data):
            marks.setdefault('first_vectors', time.perf_counter())

    def on_computing():
        marks.setdefault('computing', time.perf_counter())
        # every output layer exists by now
        for layer in viewer.layers:
            if layer.name.endswith('flow vectors'):
                layer.events.data.connect(on_vectors)

    def on_finished():
        marks['finished'] = time.perf_counter()

    def start():
        marks['start'] = time.perf_counter()
        motion.start()
        marks['start_returned'] = time.perf_counter()
        # The worker starts once the output layers exist.
        motion.worker.started.connect(on_computing)

    profiler = None
    if profile_path is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    probe = TickProbe()
    sampler = StallSampler(probe)
    # napari's own event loop runs the run; it ends 0.5 s after the run
    # (the last throttled plot redraw lands within that).
    loop = QEventLoop()
    events.batch.connect(on_batch)
    events.finished.connect(on_finished)

    def end_soon():
        QTimer.singleShot(500, loop.quit)

    events.finished.connect(end_soon)
    probe.start()
    sampler.start()
    QTimer.singleShot(200, start)
    QTimer.singleShot(3_600_000, loop.quit)
    loop.exec()
    gaps = probe.stop()
    sampler.stop()
    events.batch.disconnect(on_batch)
    events.finished.disconnect(on_finished)
    events.finished.disconnect(end_soon)
    for layer in viewer.layers:
        layer.events.data.disconnect(on_vectors)
    if profiler is not None:
        profiler.stop()
        Path(profile_path).write_text(
            profiler.output_text(unicode=True, show_all=True)
        )

    # only the gaps between start() and the end of the run; a gap belongs
    # to the phase in which it ended
    ticks = np.array(probe.ticks[1:])
    during = gaps[(ticks >= marks['start']) & (ticks <= marks['finished'])]
    layers_phase = gaps[
        (ticks >= marks['start']) & (ticks <= marks['computing'])
    ]
    computing = gaps[
        (ticks > marks['computing']) & (ticks <= marks['finished'])
    ]
    run_s = marks['finished'] - marks['start']
    return {
        'start_call_ms': (marks['start_returned'] - marks['start']) * 1e3,
        'layers_ready_ms': (marks['computing'] - marks['start']) * 1e3,
        'first_batch_ms': (marks['first_batch'] - marks['start']) * 1e3,
        'first_vectors_ms': (marks['first_vectors'] - marks['start']) * 1e3,
        'run_s': run_s,
        'frames_per_s': motion.session.n_frames / run_s,
        'max_gap_ms': float(during.max()),
        'max_gap_layers_ms': float(layers_phase.max(initial=0)),
        'max_gap_computing_ms': float(computing.max()),
        'p99_gap_ms': float(np.percentile(during, 99)),
        'median_gap_ms': float(np.median(during)),
        'gaps_over_budget': int((during > STALL_BUDGET_MS).sum()),
        'gaps_over_budget_computing': int((computing > STALL_BUDGET_MS).sum()),
        'ticks': int(during.size),
        'complete': motion.complete,
        'stalls': [
            _describe_stall(sampler, ticks[index], gaps[index], cause, marks)
            for index, cause in sorted(sampler.blame(gaps).items())
            if marks['start'] <= ticks[index] <= marks['finished']
        ],
    }


def _describe_stall(sampler, ended, gap_ms, cause, marks):
    """One line: when, how long, in which call, and how the main thread
    spent it."""
    signature, busy = cause
    began = ended - gap_ms / 1e3
    line = (
        f'{gap_ms:4.0f} ms stall at +{(began - marks["start"]) * 1e3:.0f} ms '
        f'in {signature}'
    )
    split = sampler.main_thread_split(began, ended)
    if split is not None:
        line += (
            '; main thread on a core {:.0f} ms, waiting for a core {:.0f} ms,'
            ' blocked {:.0f} ms'.format(*split)
        )
    if busy:
        line += f'; also busy: {", ".join(sorted(busy))}'
    return line


def markdown_row(result):
    return (
        f'| {result["size"]}² × {result["frames"]} '
        f'(batch {result["batch_size"]}), {result["run"]} run '
        f'| {result["start_call_ms"]:.0f} ms '
        f'| {result["layers_ready_ms"]:.0f} ms '
        f'(max stall {result["max_gap_layers_ms"]:.0f} ms) '
        f'| {result["first_batch_ms"]:.0f} ms '
        f'| {result["first_vectors_ms"]:.0f} ms '
        f'| {result["max_gap_computing_ms"]:.0f} ms '
        f'({result["gaps_over_budget_computing"]} > 50 ms) '
        f'| {result["max_gap_ms"]:.0f} ms '
        f'| {result["p99_gap_ms"]:.0f} ms '
        f'| {result["median_gap_ms"]:.1f} ms '
        f'| {result["gaps_over_budget"]} / {result["ticks"]} '
        f'| {result["run_s"]:.1f} s ({result["frames_per_s"]:.1f} frames/s) |'
    )


HEADER = (
    '| stack | start() blocks | start → layers ready, computation starts '
    '| start → first batch shown | start → first vectors '
    '| max stall while computing '
    '| max stall from start() | p99 gap | median gap | gaps > 50 ms | run |\n'
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |'
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--size', type=int, nargs='+', default=[256, 512], help='frame side'
    )
    parser.add_argument('--frames', type=int, default=500)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument(
        '--without-plots',
        action='store_true',
        help='dock only "Motion correction" (what the plots dock costs)',
    )
    parser.add_argument(
        '--profile',
        action='store_true',
        help='profile the main thread with pyinstrument (adds overhead); '
        'writes event_loop_profile_<size>.txt in the working directory',
    )
    args = parser.parse_args(argv)
    os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')
    if not os.environ.get('DISPLAY'):
        sys.exit(run_under_xvfb(sys.argv[1:] if argv is None else argv))
    print(
        f'{platform.node()}: {os.cpu_count()} cores, '
        f'{platform.platform()}, {time.strftime("%Y-%m-%d %H:%M")}'
    )
    print(f'load average before: {os.getloadavg()}')
    # The first run of a process pays one-off costs (imports, napari's
    # first Vectors layer, ...): a user's first Start, reported apart.
    cold = measure(128, 32, batch_size=args.batch_size)[0]
    print(
        f'first run of the process: start() blocked '
        f'{cold["start_call_ms"]:.0f} ms, first batch shown after '
        f'{cold["first_batch_ms"]:.0f} ms, max stall '
        f'{cold["max_gap_ms"]:.0f} ms (128² × 32)',
        flush=True,
    )
    print(HEADER)
    for size in args.size:
        profile = f'event_loop_profile_{size}.txt' if args.profile else None
        for result in measure(
            size,
            args.frames,
            batch_size=args.batch_size,
            plots=not args.without_plots,
            profile_path=profile,
        ):
            print(markdown_row(result), flush=True)
            for stall in result.pop('stalls'):
                print(f'    {stall}')
            print(f'<!-- {result} -->', flush=True)
    print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
    main()
