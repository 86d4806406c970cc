"""Latency of the "Motion correction" dock in a real napari viewer.

Measures, on a synthetic 512 x 512 stack (a textured sample drifting by a
known sub-pixel translation):

* preview latency: from a parameter change (a slider release) to the
  preview layers showing the new flow of the current frame, including the
  debounce (target <= 150 ms);
* time to first vectors: from ``start()`` to the vectors layer showing the
  first frame (target <= 1 s);
* main-thread cost of one batch (``worker.yielded`` handler: writing the
  batch into the layers), the event-loop time each batch takes.

Run by hand (needs an X display for napari's canvas; Xvfb is started when
``DISPLAY`` is unset)::

    python benchmarks/bench_widget.py [--size 512] [--frames 64] [--repeat 15]
        [--batch-size 8]
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import time


def _ensure_display():
    os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')
    if os.environ.get('DISPLAY') or not shutil.which('Xvfb'):
        return None
    for number in range(140, 160):
        if os.path.exists(f'/tmp/.X{number}-lock'):
            continue
        process = subprocess.Popen(
            ['Xvfb', f':{number}', '-screen', '0', '1600x1000x24'],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if os.path.exists(f'/tmp/.X11-unix/X{number}'):
                os.environ['DISPLAY'] = f':{number}'
                return process
            time.sleep(0.05)
        process.terminate()
    return None


def drifting_stack(n_frames, size):
    """(T, size, size) float32: a texture shifted by (0.3 t, -0.2 t) px."""
    import cv2
    import numpy as np

    from napari_flowscope.synthetic import tissue_texture

    texture = tissue_texture((size, size)).astype(np.float32)
    frames = []
    for t in range(n_frames):
        shift = np.float32([[1, 0, 0.3 * t], [0, 1, -0.2 * t]])
        frames.append(
            cv2.warpAffine(
                texture,
                shift,
                (size, size),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT,
            )
        )
    return np.stack(frames)


def _wait(app, condition, timeout=60.0):
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError
        app.processEvents()
        time.sleep(0.001)
    return time.perf_counter()


def _vectors_shown(outputs):
    return (
        not outputs.pending
        and 'vectors' in outputs
        and len(outputs['vectors'].data) > 0
    )


def _stats(values_ms):
    values_ms = sorted(values_ms)
    return (
        f'median {statistics.median(values_ms):.0f} ms, '
        f'min {values_ms[0]:.0f} ms, max {values_ms[-1]:.0f} ms '
        f'(n={len(values_ms)})'
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--frames', type=int, default=64)
    parser.add_argument('--repeat', type=int, default=15)
    parser.add_argument('--batch-size', type=int, default=8)
    args = parser.parse_args()
    xvfb = _ensure_display()
    try:
        run(args)
    finally:
        if xvfb is not None:
            xvfb.terminate()


def run(args):
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_flowscope._qt.events import run_events
    from napari_flowscope._qt.motion_widget import MotionCorrectionWidget

    stack = drifting_stack(args.frames, args.size)
    viewer = napari.Viewer(show=False)
    viewer.add_image(stack, name='stack')
    widget = MotionCorrectionWidget(viewer)
    viewer.window.add_dock_widget(widget, name='Motion correction')
    app = QApplication.instance()
    print(
        f'# {platform.node()} · {os.cpu_count()} CPUs · '
        f'{time.strftime("%Y-%m-%d %H:%M %Z")} · stack {stack.shape} '
        f'float32 · load average {os.getloadavg()[0]:.1f}'
    )

    # -- preview latency ---------------------------------------------------
    from napari_flowscope._qt import preview as preview_module

    preview = widget.preview
    compute_times, show_times = [], []
    original_compute = preview_module.compute_preview
    original_show = preview._on_result

    def timed_compute(session, request):
        start = time.perf_counter()
        result = original_compute(session, request)
        compute_times.append((time.perf_counter() - start) * 1e3)
        return result

    def timed_show(result):
        start = time.perf_counter()
        original_show(result)
        show_times.append((time.perf_counter() - start) * 1e3)

    preview_module.compute_preview = timed_compute
    preview._on_result = timed_show  # connected per request: this one
    viewer.dims.set_current_step(0, args.frames // 2)
    widget.parameters.live_preview.value = True
    _wait(app, lambda: preview.last_result is not None)  # warm-up
    _wait(app, lambda: preview.worker is None)
    del compute_times[:], show_times[:]  # layer creation is not an update
    latencies = []
    sigmas = [2.0 + 0.1 * (i % 10 + 1) for i in range(args.repeat)]
    for sigma in sigmas:
        start = time.perf_counter()
        widget.parameters.sigma.value = sigma  # a slider release
        end = _wait(
            app,
            lambda s=sigma: (
                preview.last_result is not None
                and preview.last_result.request.params.sigma == s
            ),
        )
        latencies.append((end - start) * 1e3)
        _wait(app, lambda: preview.worker is None)
    print(f'preview latency (slider -> layers): {_stats(latencies)}')
    print(f'  of which flow of one frame (worker): {_stats(compute_times)}')
    print(f'  of which preview layer update (main): {_stats(show_times)}')
    frame_latencies = []
    for i in range(args.repeat):
        frame = (args.frames // 2 + 1 + i) % args.frames
        start = time.perf_counter()
        viewer.dims.set_current_step(0, frame)  # a time-slider move
        end = _wait(
            app,
            lambda f=frame: preview.last_result.request.frame == f,
        )
        frame_latencies.append((end - start) * 1e3)
        _wait(app, lambda: preview.worker is None)
    print(
        f'preview latency (time slider -> layers): {_stats(frame_latencies)}'
    )
    widget.parameters.live_preview.value = False

    # -- time to first vectors and per-batch main-thread cost --------------
    viewer.dims.set_current_step(0, 0)
    widget.parameters.sigma.value = 2.0
    widget.run_panel.batch_size.value = args.batch_size
    first_vectors, batch_costs, totals = [], [], []
    original_update = widget.outputs.update

    def timed_update(batch):
        start = time.perf_counter()
        original_update(batch)
        batch_costs.append((time.perf_counter() - start) * 1e3)

    widget.outputs.update = timed_update
    start_blocks = []
    for _ in range(3):
        start = time.perf_counter()
        widget.start()
        start_blocks.append((time.perf_counter() - start) * 1e3)
        end = _wait(app, lambda: _vectors_shown(widget.outputs))
        first_vectors.append((end - start) * 1e3)
        done = _wait(app, lambda: widget.worker is None, timeout=600)
        totals.append(done - start)
    print(
        f'time to first vectors after Start (batch size '
        f'{args.batch_size}): {_stats(first_vectors)}'
    )
    print(f'start() blocks the event loop: {_stats(start_blocks)}')
    print(f'main-thread cost per batch (layer updates): {_stats(batch_costs)}')
    print(
        f'whole run: {statistics.median(totals):.1f} s for {args.frames} '
        f'frames ({args.frames / statistics.median(totals):.0f} frames/s)'
    )
    events = run_events(viewer)
    del events
    widget.close_run()
    viewer.close()


if __name__ == '__main__':
    main()
