"""The motion dock on a full disk and on input it cannot correct: an
error message naming the problem, nothing left behind."""

import collections
import errno
import os

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.utils.notifications import notification_manager

from dock_runs import drifting_texture, start_and_collect_messages
from napari_flowscope import formats
from napari_flowscope._qt.motion_widget import MotionCorrectionWidget

TIMEOUT_MS = 30_000


@pytest.fixture
def finished_run(qtbot):
    viewer = ViewerModel()
    widget = MotionCorrectionWidget(viewer)
    qtbot.addWidget(widget)
    y, x = np.mgrid[0:40, 0:48].astype(np.float32)
    stack = np.stack(
        [np.sin((x - 0.5 * t) / 3) * np.cos(y / 4) + 1.5 for t in range(6)]
    )
    viewer.add_image((stack * 1000).astype(np.uint16), name='drift')
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert widget.complete
    yield widget
    widget.close_run()


def _save_and_collect_messages(qtbot, widget, folder):
    messages = []
    notification_manager.notification_ready.connect(messages.append)
    try:
        widget.save(folder)
        qtbot.waitUntil(lambda: widget.save_worker is None, timeout=TIMEOUT_MS)
    finally:
        notification_manager.notification_ready.disconnect(messages.append)
    return [message.message for message in messages]


def test_save_without_room_says_how_much_is_needed(
    qtbot, finished_run, tmp_path, monkeypatch
):
    usage = collections.namedtuple('usage', 'total used free')
    monkeypatch.setattr(
        formats.shutil, 'disk_usage', lambda path: usage(1, 0, 1000)
    )
    (message,) = _save_and_collect_messages(qtbot, finished_run, tmp_path)
    assert message.startswith('Motion correction results were not saved')
    # 6 frames of 40 x 48 px x 18 bytes (uint16, flow, reliability,
    # confidence) + 1 MB
    needed = 6 * 40 * 48 * 18 + (1 << 20) + 6 * 128
    assert f'need {formats.format_size(needed)}' in message
    assert 'only 1 kB are free' in message
    assert list(tmp_path.iterdir()) == []
    assert finished_run.run_panel.save_button.enabled


def test_disk_filling_up_during_save_is_an_error_message(
    qtbot, finished_run, tmp_path, monkeypatch
):
    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, 'pwrite', pwrite)
    (message,) = _save_and_collect_messages(qtbot, finished_run, tmp_path)
    assert message.startswith('Motion correction results were not saved')
    assert 'is full' in message
    assert list(tmp_path.iterdir()) == []


def test_a_z_stack_layer_is_refused_at_start(qtbot, widget):
    widget.viewer.add_image(
        drifting_texture(12), name='slices', axis_labels=('z', 'y', 'x')
    )
    (message,) = start_and_collect_messages(qtbot, widget)
    assert message.startswith('Motion correction cannot start')
    assert "'slices' is a Z-stack (axes z, y, x)" in message
    assert widget.session is None


def test_a_nan_frame_is_named_in_the_error(qtbot, widget):
    stack = drifting_texture(12)
    stack[9, 5, 5] = np.nan
    widget.viewer.add_image(stack, name='drift')
    widget.run_panel.batch_size.value = 4
    (message,) = start_and_collect_messages(qtbot, widget)
    assert message.startswith('Motion correction failed: frame 9 contains')
    assert not widget.complete
