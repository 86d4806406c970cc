"""Driving the motion-correction dock through a run, shared by the dock's
widget tests (tests/qt) and full-viewer tests (tests/viewer)."""

import numpy as np
from napari.utils.notifications import notification_manager

RUN_TIMEOUT_MS = 30_000


def drifting_texture(n_frames):
    """(n_frames, 40, 48) float32 texture drifting 0.5 px per frame in x."""
    y, x = np.mgrid[0:40, 0:48].astype(np.float32)
    shifts = 0.5 * np.arange(n_frames, dtype=np.float32)
    return np.stack([np.sin((x - s) / 3) * np.cos(y / 4) for s in shifts]) + 2


def start_and_collect_messages(qtbot, widget):
    """Start a run, wait for its end; the texts of napari's notifications."""
    messages = []
    notification_manager.notification_ready.connect(messages.append)
    try:
        widget.start()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    finally:
        notification_manager.notification_ready.disconnect(messages.append)
    return [message.message for message in messages]


def start_and_cancel_after_a_batch(qtbot, widget):
    """Start a run and cancel it once its first batch is on screen."""
    widget.start()
    qtbot.waitUntil(
        lambda: (
            widget.outputs.frames_done >= widget.run_panel.batch_size.value
        ),
        timeout=RUN_TIMEOUT_MS,
    )
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    assert not widget.complete
