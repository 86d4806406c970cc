"""Test tiers and the virtual display.

Three tiers (see docs/testing.md):

* pure tests (``tests/engine``, ``tests/session``, ...) need no Qt;
* widget tests (``tests/qt``) need Qt but no OpenGL;
* full-viewer tests (``tests/viewer``) need an X server for napari's canvas.

When no display is set and ``Xvfb`` is installed, one is started for the whole
run. Viewer tests skip cleanly only outside CI; with ``CI`` set they must run.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'real'
_xvfb_process = None


def _start_xvfb():
    global _xvfb_process
    for display_number in range(99, 120):
        lock = Path(f'/tmp/.X{display_number}-lock')
        if lock.exists():
            continue
        _xvfb_process = subprocess.Popen(
            [
                'Xvfb',
                f':{display_number}',
                '-screen',
                '0',
                '1600x1000x24',
                '-nolisten',
                'tcp',
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        socket = Path(f'/tmp/.X11-unix/X{display_number}')
        for _ in range(100):
            if socket.exists():
                os.environ['DISPLAY'] = f':{display_number}'
                return True
            if _xvfb_process.poll() is not None:
                break
            time.sleep(0.05)
    return False


def display_available():
    return bool(os.environ.get('DISPLAY'))


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


def pytest_unconfigure(config):
    if _xvfb_process is not None:
        _xvfb_process.terminate()
        _xvfb_process.wait(timeout=10)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if 'viewer' in Path(item.path).parent.name:
            item.add_marker(pytest.mark.viewer)
            if not display_available():
                item.add_marker(
                    pytest.mark.skip(reason='no X display (install Xvfb)')
                )


@pytest.fixture(scope='session')
def real_data():
    """Path of ../shared/data/real; skip when absent (never in CI)."""
    if not REAL_DATA.is_dir():
        if os.environ.get('CI'):
            pytest.fail(f'CI expects the real data at {REAL_DATA}')
        pytest.skip('../shared/data/real is not present')
    return REAL_DATA
