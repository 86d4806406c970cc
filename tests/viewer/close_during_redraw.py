"""Close the plot dock, then the viewer, while a render is running.

Run as a script by ``test_job_lifecycle.py`` (a deadlock must not hang the
test session); prints the seconds each close took as JSON. Each render is
slowed to 0.3 s: it lets go of the GIL, then needs it back, which is when
a main thread waiting for it while holding the GIL deadlocked (#15).
"""

import gc
import json
import sys
import time

import napari
import numpy as np
from napari.qt import get_qapp

from napari_flowscope._qt import plots
from napari_flowscope._qt.events import RunInfo, run_events
from napari_flowscope.engine import FlowParams
from napari_flowscope.session import FlowBatch, FrameStats

N_FRAMES = 200
rendering = []
render = plots._MotionFigure.render


def slow_render(figure, data):
    rendering.append(True)
    time.sleep(0.3)
    return render(figure, data)


def wait_for(condition, app, timeout_s=30.0):
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError('no render started')
        app.processEvents()
        time.sleep(0.005)


def open_dock(viewer, app, *, mid_render):
    """Dock the plot, send it a run, return when a render is running (or,
    without `mid_render`, once every render is done)."""
    dock, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion over time'
    )
    rendering.clear()
    events = run_events(viewer)
    events.started.emit(
        RunInfo(
            n_frames=N_FRAMES,
            frame_shape=(8, 8),
            scale=(1.0, 1.0, 1.0),
            units=('pixel',) * 3,
            axis_labels=('t', 'y', 'x'),
            source_name='image',
            params=FlowParams(),
            batch_size=10,
        )
    )
    rng = np.random.default_rng(0)
    for start in range(0, N_FRAMES, 10):
        stats = FrameStats.empty(10)
        for column in stats.as_columns().values():
            column[:] = rng.random(10, np.float32)
        events.batch.emit(
            FlowBatch(
                start,
                start + 10,
                w=np.zeros((10, 8, 8, 2), np.float32),
                reliability=np.zeros((10, 8, 8), np.float32),
                confidence=np.zeros((10, 8, 8), np.float32),
                registered=np.zeros((10, 8, 8), np.float32),
                stats=stats,
                reference=np.zeros((8, 8), np.float32),
            )
        )
    wait_for(lambda: rendering, app)
    if not mid_render:
        wait_for(lambda: not widget.drawing, app)
    return dock


def close_dock(viewer, app, dock):
    start = time.perf_counter()
    viewer.window.remove_dock_widget(dock)
    del dock
    app.processEvents()
    gc.collect()  # deletes the dock's Qt objects, as Python lets go
    return time.perf_counter() - start


def close_viewer(viewer, app):
    start = time.perf_counter()
    viewer.close()
    app.processEvents()
    gc.collect()
    return time.perf_counter() - start


def new_viewer():
    viewer = napari.Viewer(show=False)
    viewer.add_image(np.zeros((N_FRAMES, 8, 8), np.float32), name='image')
    return viewer


def main(mid_render):
    """Close the dock, then the viewer, with a render running (or, without
    `mid_render`, once every render is done: napari's own cost)."""
    plots._MotionFigure.render = slow_render
    app = get_qapp()  # napari's settings (shared OpenGL contexts)
    viewer = new_viewer()
    dock = open_dock(viewer, app, mid_render=mid_render)
    seconds = {'dock': close_dock(viewer, app, dock)}
    open_dock(viewer, app, mid_render=mid_render)
    seconds['viewer'] = close_viewer(viewer, app)
    print(json.dumps(seconds))


if __name__ == '__main__':
    main(sys.argv[1] == 'mid-render')
