"""How the docks run work off the main thread: :func:`start_job`.

The motion-correction dock (its run, save and preview), the motion-over-time
plot (its renders) and the feature-tracking dock all start, pause, cancel
and stop their computations through a :class:`Job`.  What it takes care of:

* **Nothing big outlives a job.**  napari registers every worker it creates
  with the window's task-status manager, which keeps ``worker.quit`` (so the
  worker) for as long as the window lives, and a worker that was asked to
  quit keeps its suspended generator, with every array the computation
  held: 300 start/cancel cycles took a viewer from 319 MB to 12 GB.  Here
  the worker runs a small generator that reaches the work only through a
  :class:`_Slot`; when the job ends (or is stopped before it started) the
  work is closed, which runs its clean-up (``finally`` blocks: thread pools
  shut down, partial files removed), and the slot is emptied.  The job
  forgets the dock's handlers too, so the kept worker does not keep the
  dock.
* **Nothing waits holding the GIL.**  :meth:`Job.stop` waits on a
  :class:`threading.Event` (which lets go of the GIL) with a time limit.
  Short jobs that are never worth waiting for (plot renders) run on a
  daemon Python thread (``napari_task=False``): a ``QThreadPool`` owned by
  a widget waits for its threads in its destructor, and when the main
  thread destroys it holding the GIL while the pool's thread needs the GIL
  to finish, napari freezes (#15).
* Handlers run on the main thread (queued Qt signals).  Errors go to the
  ``errored`` handler and are never re-raised.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Generator

from qtpy.QtCore import Qt, QThreadPool

__all__ = ['HANDLER_NAMES', 'Job', 'start_job']

#: Worker signals a job's handlers may be given for.
HANDLER_NAMES = (
    'started',
    'yielded',
    'returned',
    'errored',
    'paused',
    'resumed',
    'aborted',
    'finished',
)


# Jobs on daemon threads still running.  At exit the Qt objects are torn
# down, a job's signals among them; a job still running then fails on
# them (or crashes the interpreter), so exit waits for them first (a
# render takes a fraction of a second).  atexit runs the last registered
# function first: it is registered when the first such job starts, after
# napari and Qt registered theirs.
_DAEMON_JOBS = set()
_EXIT_WAIT_S = 2.0
_exit_wait_registered = False


def _let_daemon_jobs_finish():
    for job in list(_DAEMON_JOBS):
        job.cancel()
        job.done.wait(_EXIT_WAIT_S)


class _Slot:
    """The only way the worker reaches the work; emptied when the job ends."""

    __slots__ = ('work',)

    def __init__(self, work):
        self.work = work


def _drive_generator(slot):
    # While suspended this frame holds the slot and, through ``yield
    # from``, the work generator; once that is closed it holds nothing.
    return (yield from slot.work)


def _drive_function(slot):
    return slot.work()
    yield  # a generator, so that every job is a GeneratorWorker


class Job:
    """A computation of a dock running in another thread.

    Made by :func:`start_job`.  Worker signals (``yielded``, ``finished``,
    ...) are reachable as attributes, as on napari's workers, so tests and
    scripts can connect to them or wait for them.

    Attributes
    ----------
    worker : GeneratorWorker
        The napari / superqt worker underneath.
    done : threading.Event
        Set (in the worker's thread) when the worker's thread is done with
        the work.
    ended : bool
        True once the work was closed and the handlers forgotten.
    """

    def __init__(self, worker, slot, handlers, *, on_daemon_thread):
        self.worker = worker
        self.done = threading.Event()
        self.ended = False
        self._slot = slot
        self._handlers = dict(handlers)
        self._on_daemon_thread = on_daemon_thread
        self._started = False
        self._stopped = False
        worker.finished.connect(
            self.done.set, Qt.ConnectionType.DirectConnection
        )
        for name in {*self._handlers, 'finished'}:
            getattr(worker, name).connect(functools.partial(self._relay, name))

    def _relay(self, name, *args):
        if name == 'finished':
            self._on_finished()
            return
        handler = self._handlers.get(name)
        if handler is not None:
            handler(*args)

    def __getattr__(self, name):
        if name in HANDLER_NAMES:
            return getattr(self.worker, name)
        raise AttributeError(
            f'{type(self).__name__!r} object has no attribute {name!r}'
        )

    # -- control ------------------------------------------------------------

    def start(self) -> None:
        """Start the work (once; nothing happens after :meth:`stop`)."""
        if self._started or self._stopped:
            return
        self._started = True
        if self._on_daemon_thread:
            global _exit_wait_registered
            if not _exit_wait_registered:
                atexit.register(_let_daemon_jobs_finish)
                _exit_wait_registered = True
            _DAEMON_JOBS.add(self)
            threading.Thread(
                target=self._run_on_daemon_thread,
                name='flowscope-job',
                daemon=True,
            ).start()
        else:
            self.worker.start()

    def _run_on_daemon_thread(self):
        try:
            self.worker.run()
        except RuntimeError:
            # its Qt signals were deleted (the application is exiting):
            # nobody is left to tell
            pass
        finally:
            _DAEMON_JOBS.discard(self)

    @property
    def is_running(self) -> bool:
        """Whether the worker's thread is working on it now."""
        return self._started and not self.done.is_set()

    @property
    def is_paused(self) -> bool:
        return bool(getattr(self.worker, 'is_paused', False))

    def pause(self) -> None:
        self.worker.pause()

    def resume(self) -> None:
        self.worker.resume()

    def toggle_pause(self) -> None:
        if self.is_paused:
            self.resume()
        else:
            self.pause()

    def send(self, value) -> None:
        """Send ``value`` into the work generator at its next step."""
        self.worker.send(value)

    def cancel(self) -> None:
        """Ask the work to stop after its current step (returns at once).

        The ``finished`` handler runs when it has stopped.
        """
        with contextlib.suppress(RuntimeError):  # the worker is deleted
            self.worker.quit()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Forget the handlers, cancel, wait, and release the work.

        For a closing dock: no handler runs afterwards.  The wait lets go
        of the GIL.  A job that had not started yet never starts.

        Returns
        -------
        bool
            True when the worker's thread will not touch the work again
            (then the work was closed here: its clean-up has run).
        """
        self._stopped = True
        self._forget_handlers()
        self.cancel()
        # Not waited for: done, never started, still queued in the pool, or
        # handed to the pool on a timer (superqt starts workers 10 ms late;
        # waiting would keep the timer from firing) or past its work.  A
        # worker not running checks the quit request before it touches
        # the work.
        stopped = (
            self.done.is_set()
            or not self._started
            or (not self._on_daemon_thread and self._take_off_the_pool())
            or not self._worker_running()
            or self.done.wait(timeout_s)
        )
        if stopped:
            self._release()
        return stopped

    def _take_off_the_pool(self):
        with contextlib.suppress(RuntimeError):  # the worker is deleted
            return QThreadPool.globalInstance().tryTake(self.worker)
        return False

    def _worker_running(self):
        # superqt sets it before its first step and clears it after the
        # last, and checks for a quit request in between
        with contextlib.suppress(RuntimeError):
            return self.worker.is_running
        return False

    # -- ending -------------------------------------------------------------

    def _on_finished(self):
        handler = self._handlers.get('finished')
        self._release()
        self._forget_handlers()
        if handler is not None:
            handler()

    def _release(self):
        """Close the work (its clean-up runs here) and let go of it."""
        work, self._slot.work = self._slot.work, None
        self.ended = True
        if inspect.isgenerator(work):
            with contextlib.suppress(ValueError):  # still executing
                work.close()

    def _forget_handlers(self):
        # The handlers are forgotten, not disconnected from the worker's Qt
        # signals: a worker thread may be emitting one right now, and PyQt
        # deleting the slot's proxy under that emit crashed the interpreter
        # (1 close in 3 under load).  What stays connected reaches only
        # this emptied job.
        self._handlers = {}


def start_job(
    work: Generator | Callable[[], object],
    *,
    handlers: dict[str, Callable] | None = None,
    progress: dict | None = None,
    napari_task: bool = True,
    start: bool = True,
) -> Job:
    """Run ``work`` in another thread.

    Parameters
    ----------
    work : generator or callable
        A generator (each value it yields goes to the ``yielded`` handler,
        values sent with :meth:`Job.send` come back from its ``yield``;
        :meth:`Job.cancel` stops it between steps) or a function without
        arguments (its result goes to ``returned``).
    handlers : dict of str to callable, optional
        Main-thread handlers by signal name (:data:`HANDLER_NAMES`).
        ``finished`` runs last, after the work was closed, whether it
        completed, was cancelled or failed.
    progress : dict, optional
        ``{'total': n, 'desc': text}``: a progress bar in napari's activity
        dock, advanced by each yielded value (``napari_task`` only).
    napari_task : bool
        True: a napari worker on Qt's global thread pool, listed in napari's
        activity dock and cancelled by napari when the window closes.
        False: a daemon thread, for short jobs nobody should ever wait for.
    start : bool
        Start now; otherwise call :meth:`Job.start`.

    Returns
    -------
    Job
    """
    slot = _Slot(work)
    body = _drive_generator if inspect.isgenerator(work) else _drive_function
    if napari_task:
        from napari.qt.threading import create_worker

        options = {'_progress': progress} if progress else {}
        worker = create_worker(body, slot, _ignore_errors=True, **options)
    else:
        from superqt.utils import create_worker

        worker = create_worker(
            body, slot, _ignore_errors=True, _start_thread=False
        )
    job = Job(worker, slot, handlers or {}, on_daemon_thread=not napari_task)
    if start:
        job.start()
    return job
