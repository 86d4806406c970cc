"""A full disk is an error with a message, never a signal; nothing is left.

Two ways to fill a disk: an injected ``OSError(ENOSPC)`` from the write
calls (always runs), and a real 2 MB tmpfs (needs ``mount``, so root; it
skips, saying so, where that is not allowed).
"""

import collections
import errno
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from napari_flowscope import cli, formats, synthetic
from napari_flowscope.session import DiskSink, MotionSession

SMALL_DISK_BYTES = 2 << 20


@pytest.fixture(scope='module')
def stack():
    sequence = synthetic.drifting_tissue(n_frames=12, shape=(64, 64), seed=2)
    return np.round(sequence.stack * 3000).astype(np.uint16)


@pytest.fixture
def source(tmp_path, stack):
    path = tmp_path / 'in.tif'
    tifffile.imwrite(path, stack, imagej=True, metadata={'axes': 'TYX'})
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 2 MB mounted for the test."""
    mount_point = tmp_path / 'small-disk'
    mount_point.mkdir()
    command = ['mount', '-t', 'tmpfs', '-o', f'size={SMALL_DISK_BYTES}']
    try:
        mounted = subprocess.run(
            [*command, 'tmpfs', str(mount_point)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f'cannot mount a tmpfs here: {error}')
    if mounted.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
    yield mount_point
    subprocess.run(['umount', str(mount_point)], check=True, timeout=30)


def _fail_writes_after(monkeypatch, n_writes):
    """Every ``os.pwrite`` after the first `n_writes` says: disk full."""
    real_pwrite = os.pwrite
    calls = []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) > n_writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, 'pwrite', pwrite)
    return calls


def _fake_free_space(monkeypatch, free):
    usage = collections.namedtuple('usage', 'total used free')
    monkeypatch.setattr(
        formats.shutil, 'disk_usage', lambda path: usage(free, 0, free)
    )


def _checksums(directory):
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


@pytest.mark.parametrize('n_writes', [0, 4])
def test_disk_full_mid_run_is_an_error_and_leaves_nothing(
    monkeypatch, stack, tmp_path, n_writes
):
    calls = _fail_writes_after(monkeypatch, n_writes)
    with pytest.raises(formats.NotEnoughSpaceError, match='is full') as info:
        MotionSession(stack, batch_size=3).run(sink=DiskSink(tmp_path))
    assert info.value.errno == errno.ENOSPC
    assert len(calls) == n_writes + 1
    assert list(tmp_path.iterdir()) == []


def test_disk_full_only_when_flushing_is_an_error_too(
    monkeypatch, stack, tmp_path
):
    """Network file systems report a full disk at fsync, not at write."""

    def fsync(fd):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, 'fsync', fsync)
    with pytest.raises(formats.NotEnoughSpaceError, match='flushing'):
        MotionSession(stack[:4]).run(sink=DiskSink(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_cli_says_the_disk_is_full_and_keeps_earlier_results(
    monkeypatch, source, tmp_path, capsys
):
    out = tmp_path / 'out'
    assert cli.main(['correct', str(source), '-o', str(out), '-q']) == 0
    before = _checksums(out)
    _fail_writes_after(monkeypatch, 2)
    command = ['correct', str(source), '-o', str(out), '-q', '--overwrite']
    assert cli.main(command) == 1
    error = capsys.readouterr().err
    assert 'is full' in error
    assert 'Errno' not in error
    assert _checksums(out) == before


def test_free_space_is_checked_before_anything_is_computed(
    monkeypatch, source, tmp_path, capsys
):
    _fake_free_space(monkeypatch, 3_000_000)
    computed = []
    monkeypatch.setattr(
        MotionSession,
        'iter_batches',
        lambda *args, **kwargs: computed.append(1),
    )
    out = tmp_path / 'out'
    assert cli.main(['correct', str(source), '-o', str(out), '-q']) == 1
    error = capsys.readouterr().err
    # 12 frames of 64 x 64: uint16 registered + flow + reliability +
    # confidence + 1 MB
    needed = 12 * 64 * 64 * (2 + 8 + 4 + 4) + (1 << 20) + 128 * 12
    assert f'need {formats.format_size(needed)}' in error
    assert 'only 3 MB are free' in error
    assert computed == []
    assert list(out.iterdir()) == []


def test_distributed_run_checks_space_before_starting_a_cluster(
    monkeypatch, source, tmp_path
):
    from napari_flowscope.distributed import correct_distributed

    _fake_free_space(monkeypatch, 1_000_000)
    with pytest.raises(formats.NotEnoughSpaceError, match='not enough free'):
        # 'local' would start worker processes: the check comes first.
        correct_distributed(source, tmp_path / 'out', client='local')
    assert list((tmp_path / 'out').iterdir()) == []


def test_real_small_disk_refuses_the_run_up_front(small_disk, source, capsys):
    out = small_disk / 'out'
    assert cli.main(['correct', str(source), '-o', str(out), '-q']) == 1
    error = capsys.readouterr().err
    assert 'not enough free space' in error
    assert 'only 2.1 MB are free' in error
    assert list(out.iterdir()) == []


FILL_THE_DISK = textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_flowscope import formats

    folder = sys.argv[1]
    for writer in (
        formats.ImageJStackWriter(
            folder + '/registered.tif', frame_shape=(256, 256),
            dtype='uint16', n_frames=40,
        ),
        formats.NpyStackWriter(
            folder + '/flow.npy', frame_shape=(256, 256, 2), n_frames=40,
        ),
    ):
        frames = np.ones((4, *writer.frame_shape), writer.dtype)
        try:
            for _ in range(10):
                writer.write(frames)
        except formats.NotEnoughSpaceError as error:
            print('refused:', error)
            writer.abort()
        else:
            print('no error')
    """
)


def test_writing_past_a_real_full_disk_is_an_error_not_a_signal(small_disk):
    """5 MB into 2 MB: through a memory map this was SIGBUS (rc -7)."""
    done = subprocess.run(
        [sys.executable, '-c', FILL_THE_DISK, str(small_disk)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert all(line.startswith('refused: the disk holding') for line in lines)
    assert list(small_disk.iterdir()) == []
