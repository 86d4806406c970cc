"""Ctrl-C and SIGTERM during ``napari-flowscope correct``.

The earlier results in the output folder stay byte for byte, no
``.partial`` file is left, and the exit status is the shell's (130, 143).
"""

import hashlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tifffile

from napari_flowscope import cli, formats, synthetic

# The CLI in a child process, slowed down to 50 ms per frame so that a
# signal surely arrives mid-run.
SLOW_CLI = textwrap.dedent(
    """
    import sys
    import time
    from napari_flowscope import cli
    from napari_flowscope.session import MotionSession

    register = MotionSession._register_frame

    def slow_register(*args, **kwargs):
        time.sleep(0.05)
        return register(*args, **kwargs)

    MotionSession._register_frame = slow_register
    sys.exit(cli.main(sys.argv[1:]))
    """
)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    sequence = synthetic.drifting_tissue(n_frames=30, shape=(48, 48), seed=4)
    path = tmp_path_factory.mktemp('input') / 'in.tif'
    tifffile.imwrite(
        path,
        np.round(sequence.stack * 3000).astype(np.uint16),
        imagej=True,
        metadata={'axes': 'TYX'},
    )
    return path


def _checksums(directory):
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


@pytest.mark.parametrize(
    ('signal_number', 'status', 'word'),
    [
        (signal.SIGTERM, cli.EXIT_TERMINATED, 'terminated'),
        (signal.SIGINT, cli.EXIT_INTERRUPTED, 'cancelled'),
    ],
)
def test_signal_mid_overwrite_keeps_earlier_results(
    source, tmp_path, signal_number, status, word
):
    out = tmp_path / 'out'
    command = ['correct', str(source), '-o', str(out), '-q', '--threads', '1']
    assert cli.main(command) == 0
    before = _checksums(out)

    child = subprocess.Popen(
        [sys.executable, '-c', SLOW_CLI, *command, '--overwrite'],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob('*.partial')):
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, 'the run never started'
            time.sleep(0.02)
        child.send_signal(signal_number)
        _, error = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == status, error
    assert f'{word}; nothing in {out} was written or replaced' in error
    assert _checksums(out) == before  # no .partial file either


def test_interrupt_while_files_are_renamed_waits_for_the_renames():
    """The last step, publishing the files, is not cut in half."""
    renamed = []
    with (
        pytest.raises(cli.Terminated),
        cli._interrupts_as_exceptions(),
        formats.publishing(),
    ):
        signal.raise_signal(signal.SIGTERM)
        renamed.append('registered.tif')  # still runs
        renamed.append('params.json')
    assert renamed == ['registered.tif', 'params.json']
    # Handlers are restored afterwards.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
