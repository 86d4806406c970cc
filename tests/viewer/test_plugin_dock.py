"""The manifest's "Motion correction" widget docks in a real viewer."""

import numpy as np

from napari_flowscope._qt.motion_widget import MotionCorrectionWidget


def test_motion_widget_docks_from_the_manifest(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.zeros((4, 32, 32), np.float32), name='stack')
    dock, widget = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    assert isinstance(widget, MotionCorrectionWidget)
    # the widget got the viewer (napari injects it by the annotation)
    assert widget.viewer.layers[0].name == 'stack'
    assert widget.reference.source.value.name == 'stack'
    # it is docked in this window, under napari's "<widget> (<plugin>)" name
    assert dock.name == 'Motion correction (napari-flowscope)'
    assert dock.widget() is widget or widget in dock.findChildren(
        MotionCorrectionWidget
    )
    # asking again returns the docked instance instead of a second one
    _, again = viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    assert again is widget


def _manifest_widgets():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution('napari-flowscope')
    return [widget.display_name for widget in manifest.contributions.widgets]


def test_run_buttons_stay_on_screen_with_every_dock_open(
    make_napari_viewer_proxy, qtbot
):
    from qtpy.QtCore import QPoint, QRect
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer_proxy(show=True)
    viewer.open_sample('napari-flowscope', 'drifting_tissue')
    names = _manifest_widgets()
    assert len(names) == 3
    widgets = {}
    for name in names:
        _, widgets[name] = viewer.window.add_plugin_dock_widget(
            'napari-flowscope', name
        )
    motion = widgets['Motion correction']
    window = motion.window()  # napari's main window (plain Qt API)
    window.resize(1280, 800)
    qtbot.wait(300)  # docks share the column; tabs form after a turn

    # no dock's minimum size pushed the window past the screen
    assert (window.width(), window.height()) == (1280, 800)
    run = motion.run_panel
    for button in (
        run.start_button,
        run.pause_button,
        run.cancel_button,
        run.save_button,
    ):
        native = button.native
        assert native.isVisible()
        # nothing (scrolling, another dock) hides any part of it
        assert native.visibleRegion().boundingRect().size() == native.size()
        corner = native.mapTo(window, QPoint(0, 0))
        assert window.rect().contains(QRect(corner, native.size()))
    # the two analysis docks are tabs of one another, so the motion dock
    # keeps about half of the column
    docks = {
        dock.windowTitle(): dock for dock in window.findChildren(QDockWidget)
    }
    plot = docks['Motion over time (napari-flowscope)']
    tracking = docks['Feature tracking (napari-flowscope)']
    assert tracking in window.tabifiedDockWidgets(plot)
    motion_dock = docks['Motion correction (napari-flowscope)']
    assert motion_dock.height() >= 0.4 * (motion_dock.height() + plot.height())
