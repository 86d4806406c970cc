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
