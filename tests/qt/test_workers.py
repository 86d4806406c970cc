"""The one way the docks run work: ``_qt/workers.py``."""

import gc
import threading
import time
import weakref

import pytest
from qtpy.QtCore import QTimer

from napari_flowscope._qt.workers import start_job

TIMEOUT_MS = 10_000


class Big:
    """Stands for a run's arrays: only its lifetime matters here."""


def _work(big, cleaned):
    """Endless steps of 5 ms."""
    try:
        step = 0
        while True:
            time.sleep(0.005)
            yield step
            step += 1
    finally:
        cleaned.append(big is not None)


@pytest.mark.parametrize('napari_task', [True, False])
def test_cancelled_job_lets_go_of_its_work(qtbot, napari_task):
    """napari keeps every worker; the worker must not keep the work."""
    big, cleaned, seen = Big(), [], []
    alive = weakref.ref(big)
    job = start_job(
        _work(big, cleaned),
        handlers={'yielded': seen.append},
        napari_task=napari_task,
    )
    del big
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=TIMEOUT_MS)
    kept_by_napari = job.worker
    with qtbot.waitSignal(job.finished, timeout=TIMEOUT_MS):
        job.cancel()
    qtbot.waitUntil(lambda: job.ended, timeout=TIMEOUT_MS)
    gc.collect()
    assert cleaned == [True]  # its finally block ran
    assert alive() is None
    assert kept_by_napari is not None


def test_handlers_run_in_order_on_the_main_thread(qtbot):
    calls = []
    main = threading.get_ident()

    def record(name):
        return lambda *args: calls.append((name, threading.get_ident()))

    def work():
        yield 1
        return 'done'

    job = start_job(
        work(),
        handlers={
            name: record(name)
            for name in ('started', 'yielded', 'returned', 'finished')
        },
    )
    qtbot.waitUntil(lambda: job.ended, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: len(calls) == 4, timeout=TIMEOUT_MS)
    assert [name for name, _ in calls] == [
        'started',
        'yielded',
        'returned',
        'finished',
    ]
    assert {ident for _, ident in calls} == {main}


def test_errors_go_to_the_handler_not_to_the_console(qtbot):
    errors = []

    def fail():
        raise ValueError('frame 3 is NaN')

    job = start_job(fail, handlers={'errored': errors.append})
    qtbot.waitUntil(lambda: job.ended, timeout=TIMEOUT_MS)
    (error,) = errors
    assert str(error) == 'frame 3 is NaN'


def test_stop_waits_disconnects_and_cleans_up(qtbot):
    cleaned, seen = [], []
    job = start_job(
        _work(Big(), cleaned),
        handlers={
            'yielded': seen.append,
            'finished': lambda: seen.append('finished'),
        },
    )
    qtbot.waitUntil(lambda: len(seen) >= 1, timeout=TIMEOUT_MS)
    assert job.stop(timeout_s=5)
    assert cleaned == [True]
    count = len(seen)
    qtbot.wait(50)  # queued signals arrive at no handler
    assert len(seen) == count
    assert 'finished' not in seen


def test_a_job_stopped_before_it_started_never_runs(qtbot):
    cleaned, seen = [], []
    job = start_job(
        _work(Big(), cleaned), handlers={'yielded': seen.append}, start=False
    )
    assert job.stop()
    job.start()
    qtbot.wait(50)
    assert seen == []
    assert job.ended


def test_stop_right_after_start_does_not_wait(qtbot):
    """Started from the event loop (a button), superqt hands a worker to
    the pool on a timer, which cannot fire while the main thread waits:
    stop must not wait for it."""
    cleaned, seen, stopped = [], [], {}

    def click():
        job = start_job(
            _work(Big(), cleaned), handlers={'yielded': seen.append}
        )
        started = time.perf_counter()
        stopped['result'] = job.stop(timeout_s=5)
        stopped['seconds'] = time.perf_counter() - started
        stopped['job'] = job

    QTimer.singleShot(0, click)
    qtbot.waitUntil(lambda: 'job' in stopped, timeout=TIMEOUT_MS)
    assert stopped['result']
    assert stopped['seconds'] < 1
    assert stopped['job'].ended
    qtbot.wait(100)  # the worker starts, sees the quit request, ends
    assert seen == []
    assert cleaned == []  # the work never ran
