"""Test tiers and the virtual display.

Three tiers (see docs/testing.md):

* pure tests (``tests/engine``, ``tests/session``, ...) need no Qt;
* widget tests (``tests/qt``) need Qt but no OpenGL;
* full-viewer tests (``tests/viewer``) need an X server for napari's canvas.

When no display is set and ``Xvfb`` is installed, one is started for the whole
run. Viewer tests skip cleanly only outside CI; with ``CI`` set they must run.
"""

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
REAL_DATA = SHARED_DATA / 'real'
FLOW_GT_DATA = SHARED_DATA / 'flow_gt'


def _start_xvfb():
    """Start Xvfb for this run; it is stopped after this process exits.

    Stopping it from inside the run (e.g. at unconfigure) makes Qt abort the
    interpreter with an X IO error, so a detached shell waits for this
    process to end and only then stops the server. Xvfb picks a free display
    itself (``-displayfd``), so parallel runs do not collide.
    """
    read_end, write_end = os.pipe()
    watcher = (
        f'(Xvfb -displayfd {write_end} -screen 0 1600x1000x24 -nolisten tcp'
        ' >/dev/null 2>&1 & server=$!;'
        f' while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.5; done;'
        ' kill $server) &'
    )
    subprocess.run(
        ['sh', '-c', watcher],
        pass_fds=(write_end,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    os.close(write_end)
    with os.fdopen(read_end) as announced:
        number = announced.readline().strip()
    if number:
        os.environ['DISPLAY'] = f':{number}'


def display_available():
    return bool(os.environ.get('DISPLAY'))


def pytest_addoption(parser):
    if importlib.util.find_spec('pytest_timeout') is None:
        # pyproject.toml sets pytest-timeout's options (the testing extra
        # installs it); an environment without it runs with no limit
        # rather than failing on unknown options (--strict-config).
        parser.addini('timeout', 'per-test time limit (pytest-timeout)')
        parser.addini('timeout_method', 'how pytest-timeout stops a test')


def pytest_configure(config):
    # Qt must not try to open real windows; Xvfb only provides OpenGL.
    os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')
    if not display_available() and shutil.which('Xvfb'):
        _start_xvfb()
    if os.environ.get('CI') and not display_available():
        raise pytest.UsageError(
            'CI is set, so viewer tests must run, but no X display is '
            'available and Xvfb could not be started'
        )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if 'viewer' in Path(item.path).parent.name:
            item.add_marker(pytest.mark.viewer)
            if not display_available():
                item.add_marker(
                    pytest.mark.skip(reason='no X display (install Xvfb)')
                )


def _shared_folder(path):
    if not path.is_dir():
        if os.environ.get('CI'):
            pytest.fail(f'CI expects the shared data at {path}')
        pytest.skip(f'{path} is not present')
    return path


@pytest.fixture(scope='session')
def real_data():
    """Path of ../shared/data/real; skip when absent (never in CI)."""
    return _shared_folder(REAL_DATA)


@pytest.fixture(scope='session')
def flow_gt_data():
    """Path of ../shared/data/flow_gt (real photographs with ground-truth
    flow); skip when absent (never in CI)."""
    return _shared_folder(FLOW_GT_DATA)
