"""One RunEvents per viewer, the same through napari's plugin proxy."""

import gc

from napari.components import ViewerModel
from napari.utils._proxies import PublicOnlyProxy

from napari_flowscope._qt.events import RunEvents, run_events


def test_proxy_and_viewer_share_events():
    viewer = ViewerModel()
    events = run_events(viewer)
    assert isinstance(events, RunEvents)
    # each plugin widget gets its own proxy object
    assert run_events(PublicOnlyProxy(viewer)) is events
    assert run_events(PublicOnlyProxy(viewer)) is events
    assert run_events(ViewerModel()) is not events


def test_signals_reach_listeners_of_another_proxy():
    viewer = ViewerModel()
    received = []
    run_events(PublicOnlyProxy(viewer)).batch.connect(received.append)
    run_events(PublicOnlyProxy(viewer)).batch.emit('batch 0')
    assert received == ['batch 0']


def test_events_die_with_the_viewer():
    from napari_flowscope._qt import events as module

    gc.collect()  # viewers of earlier tests
    viewer = ViewerModel()
    run_events(PublicOnlyProxy(viewer))
    before = len(module._EVENTS)
    del viewer
    gc.collect()
    assert len(module._EVENTS) == before - 1
