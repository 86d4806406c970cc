"""``napari-flowscope demo`` with a display: napari, the sample, the docks."""

from __future__ import annotations

__all__ = ['open_demo']


def open_demo() -> None:
    """Open napari with the drifting-tissue sample and the plugin's docks.

    Returns when the window is closed.
    """
    import napari

    viewer = napari.Viewer(title='napari-flowscope demo')
    *_ground_truth, stack = viewer.open_sample(
        'napari-flowscope', 'drifting_tissue'
    )
    viewer.layers.selection.active = stack  # the sample adds it last
    viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion correction'
    )
    viewer.window.add_plugin_dock_widget(
        'napari-flowscope', 'Motion over time'
    )
    napari.run()
