"""Docks that share napari's dock column.

napari stacks plugin docks in one column on the right.  With every dock
of this plugin open in a 1280 x 800 window, each must give up height
without hiding what matters: the motion dock pins its run buttons above
sections that scroll, the others scroll (:func:`scroll_contents`), and
the two analysis docks share one tab group (:func:`share_tabs`), so the
motion dock keeps half of the column.
"""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QDockWidget,
    QFrame,
    QMainWindow,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

__all__ = ['TAB_GROUP', 'scroll_contents', 'share_tabs']

#: Docks (napari's "<widget> (<plugin>)" titles) that open as tabs of one
#: another rather than as another slice of the column.
TAB_GROUP = (
    'Motion over time (napari-flowscope)',
    'Feature tracking (napari-flowscope)',
)


def scroll_contents(container) -> QScrollArea:
    """Move a magicgui ``Container``'s widgets into a scroll area.

    napari docks ``container.native``, the widget holding the layout, so
    magicgui's own ``scrollable=True`` (which wraps that widget) is lost
    and a long container makes the dock, and then the whole window, as
    tall as its content.  Here the widgets move into a scroll area inside
    ``container.native``; the container keeps them (values, signals).
    Widgets appended to the container later go below the scroll area.

    Parameters
    ----------
    container : magicgui.widgets.Container

    Returns
    -------
    QScrollArea
    """
    layout = container.native.layout()
    body = QWidget()
    column = QVBoxLayout(body)
    column.setContentsMargins(layout.contentsMargins())
    column.setSpacing(layout.spacing())
    while layout.count():
        item = layout.takeAt(0)
        if item.widget() is not None:
            column.addWidget(item.widget())
        else:
            column.addItem(item)
    column.addStretch(1)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(body)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(area)
    return area


def share_tabs(widget, group=TAB_GROUP) -> None:
    """Once ``widget`` is docked, put it in a tab of a dock of ``group``.

    Called from the widget's ``__init__``: napari docks the widget right
    after building it, so the check runs on the next event-loop turn.  A
    widget that is not in a dock of a main window (tests, scripts) is
    left alone; so is one whose group-mates are floating or elsewhere.
    """
    QTimer.singleShot(0, lambda: _tabify(widget, group))


def _tabify(widget, group):
    try:
        dock = _dock_of(widget)
    except RuntimeError:  # deleted before the timer fired
        return
    if dock is None or dock.windowTitle() not in group:
        return
    main = dock.parentWidget()
    if not isinstance(main, QMainWindow) or dock.isFloating():
        return
    area = main.dockWidgetArea(dock)
    for other in main.findChildren(QDockWidget):
        if (
            other is not dock
            and other.windowTitle() in group
            and not other.isFloating()
            and not other.isHidden()
            and main.dockWidgetArea(other) == area
        ):
            main.tabifyDockWidget(other, dock)
            dock.raise_()  # the dock just opened is the one shown
            _share_column(main, dock, area)
            return


def _share_column(main, dock, area):
    """Split the column evenly between ``dock``'s tab group and the
    other docks in it (the group took the slot of the dock it joined)."""
    behind = set(main.tabifiedDockWidgets(dock))
    column = [
        other
        for other in main.findChildren(QDockWidget)
        if other is not dock
        and other not in behind
        and not other.isFloating()
        and not other.isHidden()
        and main.dockWidgetArea(other) == area
    ]
    shown = [*column, dock]
    if len(shown) < 2:
        return
    orientation = (
        Qt.Orientation.Vertical
        if area
        in (
            Qt.DockWidgetArea.LeftDockWidgetArea,
            Qt.DockWidgetArea.RightDockWidgetArea,
        )
        else Qt.Orientation.Horizontal
    )
    total = sum(
        other.height()
        if orientation == Qt.Orientation.Vertical
        else other.width()
        for other in shown
    )
    main.resizeDocks(shown, [total // len(shown)] * len(shown), orientation)


def _dock_of(widget):
    native = getattr(widget, 'native', widget)
    parent = native.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent
