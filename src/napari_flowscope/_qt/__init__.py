"""napari dock widgets: everything here may import qtpy, magicgui and napari.

The widgets are thin controllers over the headless
:class:`napari_flowscope.session.MotionSession`; see ``motion_widget.py``.
"""
