import pytest
from napari.components import ViewerModel

from napari_flowscope._qt.motion_widget import MotionCorrectionWidget


@pytest.fixture
def widget(qtbot):
    """A motion-correction dock on a viewer model (no window)."""
    widget = MotionCorrectionWidget(ViewerModel())
    qtbot.addWidget(widget)
    yield widget
    widget.close_run()
