"""Make every picture used in README.md and docs/.

Run from the repository root::

    python docs/make_screenshots.py            # everything
    python docs/make_screenshots.py --only parameters

napari pictures come from a real viewer: on Linux without a display the
script starts Xvfb and uses Qt's xcb platform (Qt's offscreen platform draws
the canvas black). Parameter pictures are made with matplotlib from the
built-in sample data. ``screenshots/manifest.json`` records the version, date
and SHA-256 of every picture so that the test suite can check that the
pictures in the docs are the ones this script made.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / 'screenshots'
REAL_DATA = ROOT.parent / 'shared' / 'data' / 'real'
# Real z-stacks fetched for the volume pictures (NEUBIAS training
# resources, CC BY 4.0), kept outside the project; skipped when absent.
REAL_VOLUMES = ROOT.parent / 'data_extra' / 'neubias'
# What a user first meets: a laptop-sized window; the plugin's pictures
# open every dock of the manifest with its default settings.
WINDOW_SIZE = (1280, 800)
MANIFEST_DOCKS = ('Motion correction', 'Motion over time', 'Feature tracking')


# ---------------------------------------------------------------------------
# parameter pictures (matplotlib, headless)


def _endpoint_error(w, truth, valid):
    difference = (w - truth)[valid]
    return float(np.hypot(difference[:, 0], difference[:, 1]).mean())


def _speed(w):
    return np.hypot(w[..., 0], w[..., 1])


def _figure(panels, path, *, title):
    """Save a row of image panels: (image, title, cmap, limits) tuples."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        1, len(panels), figsize=(3.2 * len(panels), 3.5), layout='constrained'
    )
    for axis, (image, label, cmap, limits) in zip(axes, panels, strict=True):
        shown = axis.imshow(image, cmap=cmap, vmin=limits[0], vmax=limits[1])
        axis.set_title(label, fontsize=9)
        axis.set_axis_off()
        if cmap != 'gray':
            figure.colorbar(shown, ax=axis, shrink=0.7)
    figure.suptitle(title, fontsize=11)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parameter_pictures():
    """Before/after pictures for each parameter, from the sample data."""
    from napari_flowscope import FlowParams, estimate_flow, warp
    from napari_flowscope.engine import smooth_temporal
    from napari_flowscope.synthetic import (
        bleaching_tissue,
        drifting_tissue,
        large_translation,
    )

    made = []
    noisy = drifting_tissue(n_frames=12, shape=(192, 192), noise=0.06)
    t = 7
    truth, valid = noisy.flow[t], noisy.valid
    limits = (0, float(_speed(truth)[valid].max()))

    # sigma: window of the structure tensor
    panels = [(_speed(truth), 'ground-truth speed (px)', 'magma', limits)]
    for sigma in (1.0, 4.0, 10.0):
        params = FlowParams(sigma=sigma)
        w = estimate_flow(noisy.reference, noisy.stack[t], params).w
        error = _endpoint_error(w, truth, valid)
        panels.append(
            (
                _speed(w),
                f'sigma={sigma:g}: error {error:.2f} px',
                'magma',
                limits,
            )
        )
    made.append(
        _save(
            panels,
            'parameter_sigma.png',
            'sigma: window size (noisy drifting tissue)',
        )
    )

    # reliability threshold
    disk_like = drifting_tissue(n_frames=4, shape=(192, 192))
    reference = disk_like.reference.copy()
    reference[:, :70] = reference[:, :70].mean()  # an untextured region
    moving = disk_like.stack[3].copy()
    moving[:, :70] = reference[:, :70].mean()
    panels = []
    for threshold in (0.0, 1e-4, 1e-3):
        field = estimate_flow(
            reference, moving, FlowParams(reliability_threshold=threshold)
        )
        if not panels:
            panels.append(
                (
                    np.log10(field.reliability + 1e-8),
                    'log10 reliability',
                    'viridis',
                    (-8, -1),
                )
            )
        shown = np.where(
            field.reliability >= threshold, _speed(field.w), np.nan
        )
        panels.append(
            (
                shown,
                f'threshold {threshold:g}: speed where reliable',
                'magma',
                (0, 8),
            )
        )
    made.append(
        _save(
            panels,
            'parameter_reliability.png',
            'reliability threshold: flat regions are masked',
        )
    )

    # pyramid levels: a 15 px jump
    large = large_translation(n_frames=4, shape=(192, 192))
    panels = [
        (
            np.abs(large.stack[3] - large.reference),
            '|moving - reference|',
            'gray',
            (0, 0.5),
        )
    ]
    for levels in (1, 3, 5):
        w = estimate_flow(
            large.reference, large.stack[3], FlowParams(levels=levels)
        ).w
        registered = warp(large.stack[3], w)
        error = _endpoint_error(w, large.flow[3], large.valid)
        panels.append(
            (
                np.abs(registered - large.reference),
                f'levels={levels}: error {error:.1f} px',
                'gray',
                (0, 0.5),
            )
        )
    made.append(
        _save(
            panels,
            'parameter_levels.png',
            'pyramid levels: a 15 px jump needs 5 levels',
        )
    )

    # alpha: smoothness of the variational method
    panels = [(_speed(truth), 'ground-truth speed (px)', 'magma', limits)]
    for alpha in (0.05, 1.0, 20.0):
        params = FlowParams.preset('quality').replace(alpha=alpha)
        w = estimate_flow(noisy.reference, noisy.stack[t], params).w
        error = _endpoint_error(w, truth, valid)
        panels.append(
            (
                _speed(w),
                f'alpha={alpha:g}: error {error:.2f} px',
                'magma',
                limits,
            )
        )
    made.append(
        _save(
            panels,
            'parameter_alpha.png',
            'alpha: smoothness (variational, noisy data)',
        )
    )

    # iterations and warps
    bleach = bleaching_tissue(n_frames=12, shape=(192, 192))
    panels = [
        (_speed(bleach.flow[t]), 'ground-truth speed (px)', 'magma', limits)
    ]
    for iterations, warps in ((2, 1), (20, 1), (20, 3)):
        params = FlowParams.preset('quality').replace(
            iterations=iterations, warps=warps
        )
        w = estimate_flow(bleach.reference, bleach.stack[t], params).w
        error = _endpoint_error(w, bleach.flow[t], bleach.valid)
        panels.append(
            (
                _speed(w),
                f'{iterations} it, {warps} warps: {error:.2f} px',
                'magma',
                limits,
            )
        )
    made.append(
        _save(
            panels,
            'parameter_iterations_warps.png',
            'iterations and warps (variational, bleaching)',
        )
    )

    # temporal smoothing
    very_noisy = drifting_tissue(n_frames=12, shape=(192, 192), noise=0.15)
    smoothed = smooth_temporal(very_noisy.stack)
    panels = [(very_noisy.stack[t], 'noisy frame', 'gray', (0, 1))]
    for label, frames in (
        ('raw frames', very_noisy.stack),
        ('5-tap temporal smoothing', smoothed),
    ):
        w = estimate_flow(very_noisy.reference, frames[t]).w
        error = _endpoint_error(w, very_noisy.flow[t], very_noisy.valid)
        panels.append(
            (_speed(w), f'{label}: error {error:.2f} px', 'magma', limits)
        )
    made.append(
        _save(
            panels,
            'parameter_temporal.png',
            'temporal smoothing before estimation (noise 0.15)',
        )
    )
    return made


def _save(panels, name, title):
    _figure(panels, SCREENSHOTS / name, title=title)
    print(f'wrote screenshots/{name}', flush=True)
    return name


# ---------------------------------------------------------------------------
# napari pictures


def _ensure_display():
    """Start Xvfb when there is no display; return the process or None."""
    if sys.platform != 'linux' or os.environ.get('DISPLAY'):
        return None
    if not shutil.which('Xvfb'):
        sys.exit('no display and no Xvfb: install xvfb or set DISPLAY')
    number = next(
        n for n in range(80, 120) if not Path(f'/tmp/.X{n}-lock').exists()
    )
    process = subprocess.Popen(
        ['Xvfb', f':{number}', '-screen', '0', '1920x1200x24'],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if Path(f'/tmp/.X11-unix/X{number}').exists():
            break
        time.sleep(0.05)
    os.environ['DISPLAY'] = f':{number}'
    os.environ['QT_QPA_PLATFORM'] = 'xcb'
    return process


class Session:
    """A napari viewer driven like a user would, with screenshot helpers."""

    def __init__(self):
        import napari
        from qtpy.QtWidgets import QApplication

        self.napari = napari
        self.viewer = napari.Viewer(show=True)
        self.viewer.window.resize(*WINDOW_SIZE)
        self.app = QApplication.instance()

    def dock(self, name, width=430):
        from qtpy.QtCore import Qt

        dock, widget = self.viewer.window.add_plugin_dock_widget(
            'napari-flowscope', name
        )
        self.viewer.window._qt_window.resizeDocks(
            [dock], [width], Qt.Orientation.Horizontal
        )
        return widget

    def wait(self, seconds=0.5, until=None, timeout=180):
        start = time.perf_counter()
        while True:
            self.app.processEvents()
            elapsed = time.perf_counter() - start
            if until is None and elapsed >= seconds:
                return
            if until is not None and (until() or elapsed > timeout):
                self.app.processEvents()
                return
            time.sleep(0.02)

    def shot(self, name):
        self.wait(0.5)
        self.viewer.screenshot(str(SCREENSHOTS / name), canvas_only=False)
        print(f'wrote screenshots/{name}', flush=True)
        return name

    def dock_all(self):
        """Open every dock of the manifest as a user would, in its order,
        at the sizes the plugin chooses; return the widgets by name."""
        widgets = {}
        for name in MANIFEST_DOCKS:
            _, widgets[name] = self.viewer.window.add_plugin_dock_widget(
                'napari-flowscope', name
            )
        self.wait(0.3)
        return widgets

    def widget_shot(self, widget, name):
        """The whole motion dock: its pinned controls, then every section
        unfolded, including what the scroll area hides."""
        from qtpy.QtGui import QPainter, QPixmap
        from qtpy.QtWidgets import QScrollArea

        for section in widget.sections.values():
            section.expand(animate=False)
        self.wait(0.3)
        header = widget.layout().itemAt(0).widget().grab()
        content = widget.findChild(QScrollArea).widget().grab()
        picture = QPixmap(
            max(header.width(), content.width()),
            header.height() + content.height(),
        )
        picture.fill(widget.palette().window().color())
        painter = QPainter(picture)
        painter.drawPixmap(0, 0, header)
        painter.drawPixmap(0, header.height(), content)
        painter.end()
        picture.save(str(SCREENSHOTS / name))
        print(f'wrote screenshots/{name}', flush=True)
        return name

    def close(self):
        self.viewer.close()
        self.wait(0.2)


def _idle(widget):
    return widget.worker is None


def getting_started_pictures():
    """The getting-started steps on the drifting-tissue sample."""
    made = []
    session = Session()
    viewer = session.viewer
    viewer.open_sample('napari-flowscope', 'drifting_tissue')
    made.append(session.shot('step1_open_sample.png'))

    motion = session.dock_all()['Motion correction']
    reference = motion.reference
    reference.mode.value = reference.mode.choices[1]  # mean of a range
    session.wait(0.3)
    made.append(session.shot('step2_reference.png'))

    viewer.dims.set_current_step(0, 25)
    motion.parameters.live_preview.value = True
    session.wait(2.0)
    made.append(session.shot('step3_preview.png'))
    motion.parameters.live_preview.value = False

    motion.start()
    session.wait(until=lambda: _idle(motion))
    viewer.dims.set_current_step(0, 25)
    made.append(session.shot('step4_run.png'))
    made.append(session.widget_shot(motion, 'widget_motion_correction.png'))

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / 'drifting-tissue-results'
        motion.save(folder)
        session.wait(until=lambda: motion.save_worker is None)
        session.close()
        session = Session()
        session.viewer.open(folder, plugin='napari-flowscope')
        for layer in session.viewer.layers:
            layer.visible = True
        session.viewer.grid.enabled = True
        session.viewer.dims.set_current_step(0, 25)
        made.append(session.shot('step5_saved_results.png'))
    session.close()
    return made


def real_data_pictures():
    """The README's first screen, on a real recording."""

    made = []
    heart = REAL_DATA / 'cardiomyocyte_beating' / 'adult_gray.tif'
    if not heart.is_file():
        print('real data absent: skipping real-data pictures', flush=True)
        return made
    session = Session()
    viewer = session.viewer
    # opened with the plugin's reader, every setting at its default
    viewer.open(heart, plugin='napari-flowscope')
    motion = session.dock_all()['Motion correction']
    motion.start()
    session.wait(until=lambda: _idle(motion))
    viewer.dims.set_current_step(0, 21)
    made.append(session.shot('overview_cardiomyocytes.png'))
    session.close()
    return made


def tracking_pictures():
    """The tracking dock with its defaults on real recordings."""
    import imageio.v3 as iio
    import tifffile

    made = []
    cells = REAL_DATA / 'ctc_timelapse_napari' / '2D_timelapse.tif'
    frames = sorted((REAL_DATA / 'trackpy_bulk_water').glob('*.png'))
    if not cells.is_file() or not frames:
        print('real data absent: skipping tracking pictures', flush=True)
        return made
    session = Session()
    viewer = session.viewer
    viewer.add_image(tifffile.imread(cells), name='nuclei (CTC)')
    tracking = session.dock('Feature tracking')
    tracking.start()
    session.wait(until=lambda: _idle(tracking))
    viewer.dims.set_current_step(0, 29)
    made.append(session.shot('tracking_ctc.png'))
    session.close()

    # The green channel, as trackpy's walkthrough uses.
    stack = np.stack([iio.imread(frame)[..., 1] for frame in frames])
    session = Session()
    viewer = session.viewer
    viewer.add_image(stack, name='beads in water (trackpy)')
    tracking = session.dock('Feature tracking')
    # Default settings, except that the whole of every track is drawn.
    tracking.tail_length.value = len(stack)
    tracking.start()
    session.wait(until=lambda: _idle(tracking))
    viewer.dims.set_current_step(0, len(stack) - 1)
    # Beads move a few pixels in 50 frames: zoom in on the centre.
    viewer.camera.center = (0, 212, 320)
    viewer.camera.zoom = 4.5
    made.append(session.shot('tracking_long_tracks.png'))
    session.close()
    return made


def volume_pictures():
    """A volumetric time-lapse run, seen in napari's 3-D view."""
    made = []
    session = Session()
    viewer = session.viewer
    viewer.open_sample('napari-flowscope', 'drifting_volume')
    source = viewer.layers['drifting volume']
    motion = session.dock_all()['Motion correction']
    motion.reference.source.value = source
    motion.start()
    session.wait(until=lambda: _idle(motion))
    # set by hand (the caption says so): the 3-D view, rotated, with the
    # volume's box and the axes
    viewer.dims.ndisplay = 3
    viewer.dims.set_current_step(0, 9)
    viewer.layers['drifting volume registered'].bounding_box.visible = True
    viewer.axes.visible = True
    viewer.axes.colored = True
    session.wait(0.3)
    viewer.reset_view()
    camera = viewer.scene.camera
    camera.angles = (-25, 35, 120)
    camera.zoom *= 0.8
    made.append(session.shot('volume_3d_run.png'))
    session.close()
    return made + real_volume_picture()


def real_volume_picture():
    """Before/after of a real z-stack moved by known 3-D motion."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import tifffile

    from napari_flowscope import compensate, synthetic

    path = REAL_VOLUMES / 'xyz_calibrated_16bit__golgi_bfa.tif'
    if not path.is_file():
        print(f'{path} absent: skipping the real-volume picture', flush=True)
        return []
    with tifffile.TiffFile(path) as tif:
        volume = tif.asarray()
        z_spacing = float(tif.imagej_metadata['spacing'])
        pixel = 1 / float(tif.pages[0].resolution[0])
    spacing = (z_spacing, pixel, pixel)
    sequence = synthetic.drifting_volume(
        n_frames=6,
        spacing=(z_spacing / pixel, 1.0, 1.0),
        shift=(4.0, -3.0, 1.5),
        texture=volume,
    )
    t = 5
    registered, w = compensate(sequence.stack, 0, spacing=spacing)
    error = np.linalg.norm(w[t] - sequence.flow[t], axis=-1)[sequence.valid]

    def overlay(moving):
        # reference green, the other volume magenta: grey where they agree
        def unit(image):
            return np.clip(image / np.percentile(image, 99.5), 0, 1)

        green, magenta = unit(sequence.reference), unit(moving)
        return green, magenta

    figure, axes = plt.subplots(
        2,
        2,
        figsize=(8.0, 5.6),
        layout='constrained',
        gridspec_kw={'height_ratios': (1.0, 0.55)},
    )
    for column, (moving, label) in enumerate(
        (
            (sequence.stack[t], f'before: volume {t} on volume 0'),
            (registered[t], 'after: registered (default preset)'),
        )
    ):
        green, magenta = overlay(moving)
        for row, axis in enumerate((0, 1)):  # max along z, then along y
            rgb = np.stack(
                [magenta.max(axis), green.max(axis), magenta.max(axis)],
                axis=-1,
            )
            shown = axes[row, column]
            shown.imshow(
                rgb,
                aspect=z_spacing / pixel if axis == 1 else 1.0,
                interpolation='nearest',
            )
            shown.set_axis_off()
            view = 'x-y (max over z)' if axis == 0 else 'x-z (max over y)'
            shown.set_title(
                f'{label}\n{view}' if row == 0 else view, fontsize=9
            )
    figure.suptitle(
        'Golgi z-stack (NEUBIAS, CC BY 4.0) moved by a known 3-D drift and '
        'deformation\nvolume 0 green, the other magenta (white where they '
        f'agree); mean error {error.mean():.2f} voxel',
        fontsize=10,
    )
    name = 'volume_real_before_after.png'
    figure.savefig(SCREENSHOTS / name, dpi=110)
    plt.close(figure)
    print(f'wrote screenshots/{name}', flush=True)
    return [name]


def motion_model_pictures():
    """A translation-only correction of the CTC crop: defaults otherwise,
    every dock open, a 1280 x 800 window."""
    import tifffile

    made = []
    cells = REAL_DATA / 'ctc_timelapse_napari' / '2D_timelapse.tif'
    if not cells.is_file():
        print('real data absent: skipping motion-model pictures', flush=True)
        return made
    session = Session()
    viewer = session.viewer
    viewer.add_image(tifffile.imread(cells), name='nuclei (CTC)')
    motion = session.dock_all()['Motion correction']
    motion.parameters.motion_model.value = 'translation'
    motion.start()
    session.wait(until=lambda: _idle(motion))
    viewer.dims.set_current_step(0, 29)
    made.append(session.shot('motion_model_translation_ctc.png'))
    session.close()
    return made


GROUPS = {
    'parameters': parameter_pictures,
    'getting_started': getting_started_pictures,
    'real_data': real_data_pictures,
    'tracking': tracking_pictures,
    'volumes': volume_pictures,
    'motion_models': motion_model_pictures,
}


def _write_manifest(made):
    from importlib.metadata import version

    manifest_path = SCREENSHOTS / 'manifest.json'
    manifest = (
        json.loads(manifest_path.read_text())
        if manifest_path.is_file()
        else {'images': {}}
    )
    for name in made:
        digest = hashlib.sha256((SCREENSHOTS / name).read_bytes())
        manifest['images'][name] = digest.hexdigest()
    manifest['version'] = version('napari-flowscope')
    manifest['date'] = date.today().isoformat()
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--only', choices=sorted(GROUPS), action='append')
    arguments = parser.parse_args(argv)
    SCREENSHOTS.mkdir(exist_ok=True)
    display = _ensure_display()
    try:
        made = []
        for name in arguments.only or GROUPS:
            made += GROUPS[name]()
        _write_manifest(made)
    finally:
        if display is not None:
            display.terminate()


if __name__ == '__main__':
    main()
