"""Runs whose results do not fit in memory: a results folder, shown from
disk (#15). Memory is made to look small; the stacks are tiny."""

import collections
import os

import numpy as np
import pytest

from dock_runs import (
    drifting_texture,
    start_and_cancel_after_a_batch,
    start_and_collect_messages,
)
from napari_flowscope import formats
from napari_flowscope._qt import motion_widget
from napari_flowscope._qt.motion_widget import (
    disk_results_folder,
)
from napari_flowscope.session import DiskSink, MemorySink, MotionSession

TIMEOUT_MS = 30_000


@pytest.fixture
def little_memory(monkeypatch, tmp_path):
    """1 kB of memory available; results folders go under tmp_path."""
    monkeypatch.setattr(motion_widget, 'available_memory', lambda: 1000)
    monkeypatch.setattr(
        motion_widget, 'disk_results_folder', lambda source: tmp_path / 'run'
    )
    return tmp_path / 'run'


def test_run_larger_than_half_the_memory_is_kept_on_disk(
    qtbot, widget, little_memory, tmp_path
):
    stack = drifting_texture(10)
    widget.viewer.add_image(stack, name='drift')
    membrane = widget.viewer.add_image(stack[:, ::-1] * 3, name='membrane')
    widget.reference.also_correct.value = [membrane]
    widget.run_panel.batch_size.value = 4
    messages = start_and_collect_messages(qtbot, widget)
    assert widget.complete
    results = widget.results
    assert results.folder == little_memory
    assert isinstance(results.sink.w, np.memmap)
    needed = MemorySink.required_bytes(widget.session)
    assert messages[0] == (
        f"Motion correction: this run's results "
        f'({formats.format_size(needed)}) need more than half of the '
        f'1 kB of memory available; they are written to {little_memory} '
        'and shown from there.'
    )
    assert messages[-1] == (
        f'Motion correction: the results are in {little_memory}'
    )
    # the folder is a finished run, equal to a headless one
    headless = MotionSession(
        stack, batch_size=4, extra_stacks=[membrane.data]
    ).run()
    registered, _ = formats.open_stack(little_memory / 'registered.tif')
    np.testing.assert_array_equal(registered, headless.registered)
    w, _ = formats.read_flow(little_memory / 'flow.npy')
    np.testing.assert_array_equal(w, headless.w)
    # the layers show the files, not copies in memory
    layer = widget.outputs['registered']
    assert np.shares_memory(np.asarray(layer.data), results.sink.registered)
    np.testing.assert_array_equal(np.asarray(layer.data), headless.registered)
    # and Save writes the same files elsewhere
    widget.save(tmp_path / 'saved')
    qtbot.waitUntil(lambda: widget.save_worker is None, timeout=TIMEOUT_MS)
    saved, _ = formats.read_flow(tmp_path / 'saved' / 'flow.npy')
    np.testing.assert_array_equal(saved, headless.w)
    # the other channel too, shown from its file and saved with the run
    extra_layer = widget.viewer.layers['membrane registered']
    assert np.shares_memory(
        np.asarray(extra_layer.data), results.sink.extras[0]
    )
    for folder in (little_memory, tmp_path / 'saved'):
        extra, _ = formats.open_stack(folder / 'registered_membrane.tif')
        np.testing.assert_array_equal(extra, headless.extras[0])


def test_cancelled_disk_run_leaves_no_files(qtbot, widget, little_memory):
    widget.viewer.add_image(drifting_texture(40), name='drift')
    widget.run_panel.batch_size.value = 2
    start_and_cancel_after_a_batch(qtbot, widget)
    assert list(little_memory.iterdir()) == []
    # what was computed stays on screen until the next run
    assert np.asarray(widget.outputs['registered'].data)[:2].any()


def test_no_room_in_memory_nor_on_disk_says_both(
    qtbot, widget, little_memory, monkeypatch
):
    usage = collections.namedtuple('usage', 'total used free')
    monkeypatch.setattr(
        formats.shutil, 'disk_usage', lambda path: usage(1, 0, 1000)
    )
    widget.viewer.add_image(drifting_texture(10), name='drift')
    (message,) = start_and_collect_messages(qtbot, widget)
    assert message.startswith(
        "Motion correction cannot start: this run's results"
    )
    assert 'half of the 1 kB of memory available' in message
    assert 'not enough free space' in message
    assert widget.session is None


def test_results_folder_beside_the_source_or_in_the_cache(
    widget, tmp_path, monkeypatch
):
    layer = widget.viewer.add_image(drifting_texture(10), name='cells 1')
    layer.metadata['source_path'] = str(tmp_path / 'data' / 'cells.tif')
    (tmp_path / 'data').mkdir()
    folder = disk_results_folder(layer)
    assert folder.parent == tmp_path / 'data'
    assert folder.name.startswith('cells_1-flowscope-')
    # no source file: the user's cache folder
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    layer.metadata.pop('source_path')
    folder = disk_results_folder(layer)
    assert folder.is_relative_to(tmp_path / 'cache')
    assert os.access(tmp_path, os.W_OK)


def test_a_run_that_fits_stays_in_memory(qtbot, widget, tmp_path):
    widget.viewer.add_image(drifting_texture(10), name='drift')
    start_and_collect_messages(qtbot, widget)
    assert widget.results.folder is None
    assert type(widget.results.sink) is MemorySink
    assert not isinstance(widget.results.sink, DiskSink)
