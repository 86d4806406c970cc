"""Disk sink: the files of architecture.md, atomic on cancel and crash."""

import csv
import hashlib
import json

import numpy as np
import pytest

from napari_flowscope import _reader, formats
from napari_flowscope.engine import FlowParams
from napari_flowscope.session import (
    DiskSink,
    MappedDiskSink,
    MemorySink,
    MotionSession,
    RangeReference,
)

FINAL_NAMES = set(DiskSink.FILE_NAMES.values())


def _finished_looking(directory):
    return sorted(p.name for p in directory.iterdir() if p.name in FINAL_NAMES)


def test_disk_sink_writes_every_file(drifting_uint16, tmp_path):
    out = tmp_path / 'run'
    session = MotionSession(
        drifting_uint16, batch_size=7, reference=RangeReference(0, 3)
    )
    sink = session.run(
        sink=DiskSink(
            out, scale=(2.0, 0.5, 0.5), units=('s', 'um', 'um'), source='in'
        )
    )
    memory = MotionSession(
        drifting_uint16, batch_size=7, reference=RangeReference(0, 3)
    ).run()

    assert sink.complete
    assert sorted(p.name for p in out.iterdir()) == sorted(FINAL_NAMES)
    registered, metadata = formats.open_stack(out / 'registered.tif')
    assert metadata.axes == 'TYX'
    assert registered.dtype == np.uint16
    assert metadata.scale == (2.0, 0.5, 0.5)
    assert metadata.units == ('s', 'um', 'um')
    np.testing.assert_array_equal(registered, memory.registered)

    w, flow_metadata = formats.read_flow(out / 'flow.npy')
    np.testing.assert_array_equal(w, memory.w)
    assert flow_metadata['axes'] == 'TYXC'
    assert flow_metadata['components'] == ['x', 'y']
    assert flow_metadata['scale'] == [2.0, 0.5, 0.5]
    np.testing.assert_array_equal(
        np.load(out / 'reliability.npy'), memory.reliability
    )
    confidence = np.load(out / 'confidence.npy')
    assert confidence.dtype == np.float32
    np.testing.assert_array_equal(confidence, memory.confidence)

    with open(out / 'stats.csv', newline='') as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == [
        'frame',
        'time_s',
        'mean_displacement_um',
        'max_displacement_um',
        'mean_velocity_um_per_s',
        'max_velocity_um_per_s',
        'ncc_before',
        'ncc_after',
        'trusted_fraction',
        'collapsed',
    ]
    assert [int(row['frame']) for row in rows] == list(range(24))
    stats = memory.stats
    # 0.5 um pixels, 2 s per frame
    expected = {
        'time_s': 2.0 * np.arange(24),
        'mean_displacement_um': 0.5 * stats.mean_displacement,
        'max_displacement_um': 0.5 * stats.max_displacement,
        'mean_velocity_um_per_s': 0.25 * stats.mean_velocity,
        'max_velocity_um_per_s': 0.25 * stats.max_velocity,
        'ncc_before': stats.ncc_before,
        'ncc_after': stats.ncc_after,
    }
    for key, values in expected.items():
        np.testing.assert_allclose(
            [float(row[key]) for row in rows], values, rtol=1e-5, atol=1e-6
        )
    assert [int(row['collapsed']) for row in rows] == [0] * 24
    assert min(float(row['trusted_fraction']) for row in rows) > 0.8
    assert rows[0]['mean_velocity_um_per_s'] == 'nan'  # no frame before

    params = json.loads((out / 'params.json').read_text())
    assert FlowParams.from_dict(params['params']) == FlowParams()
    assert params['reference'] == RangeReference(0, 3).to_dict()
    assert params['source'] == 'in'
    assert params['input_dtype'] == 'uint16'
    assert params['stats_units'] == {
        'displacement': 'µm',
        'velocity': 'µm/s',
    }


def test_multichannel_stack_on_disk(drifting_uint16, tmp_path):
    stack = np.stack([drifting_uint16[:5], drifting_uint16[:5] // 2], axis=1)
    session = MotionSession(stack, channel_axis=1)
    session.run(sink=DiskSink(tmp_path))
    registered, metadata = formats.open_stack(tmp_path / 'registered.tif')
    assert metadata.axes == 'TCYX'
    expected = MotionSession(stack, channel_axis=1).run().registered
    np.testing.assert_array_equal(registered, np.moveaxis(expected, -1, 1))


def test_cancel_leaves_no_finished_looking_file(drifting_uint16, tmp_path):
    seen_during_run = []

    def progress(current, total):
        seen_during_run.append(sorted(p.name for p in tmp_path.iterdir()))
        if current >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MotionSession(drifting_uint16, batch_size=5).run(
            sink=DiskSink(tmp_path), progress_callback=progress
        )
    # While running only .partial files exist; after the cancel, nothing.
    assert seen_during_run[0]
    for names in seen_during_run:
        assert all(name.endswith('.partial') for name in names)
    assert list(tmp_path.iterdir()) == []


def test_closing_the_generator_midway_with_a_sink(drifting_uint16, tmp_path):
    """The GUI pattern: drive iter_batches, feed a sink, abort on cancel."""
    session = MotionSession(drifting_uint16, batch_size=8)
    sink = DiskSink(tmp_path)
    sink.open(session)
    batches = session.iter_batches()
    sink.write(next(batches))
    batches.close()
    assert _finished_looking(tmp_path) == []
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_crash_leaves_only_partial_files(drifting_uint16, tmp_path):
    """A crash (no abort) leaves .partial files, never final names."""
    session = MotionSession(drifting_uint16, batch_size=8)
    sink = DiskSink(tmp_path)
    sink.open(session)
    sink.write(next(session.iter_batches()))
    # The process dies here: neither close() nor abort() runs.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names
    assert _finished_looking(tmp_path) == []
    assert all(name.endswith('.partial') for name in names)
    sink.abort()


def _checksums(directory):
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def test_existing_results_need_overwrite(drifting_uint16, tmp_path):
    stack = drifting_uint16[:4]
    MotionSession(stack).run(sink=DiskSink(tmp_path))
    with pytest.raises(FileExistsError, match='already holds results'):
        MotionSession(stack).run(sink=DiskSink(tmp_path))


@pytest.mark.parametrize(
    'failure', [KeyboardInterrupt, RuntimeError, formats.NotEnoughSpaceError]
)
def test_failed_overwrite_keeps_the_old_results(
    drifting_uint16, tmp_path, failure
):
    """Ctrl-C, an error or a full disk during a rerun with overwrite leave
    the earlier results byte for byte (write beside, then swap)."""
    MotionSession(drifting_uint16[:4]).run(sink=DiskSink(tmp_path))
    before = _checksums(tmp_path)
    assert set(before) == FINAL_NAMES

    def stop(current, total):
        raise failure('stopped by the test')

    with pytest.raises(failure):
        MotionSession(drifting_uint16[4:10], batch_size=2).run(
            sink=DiskSink(tmp_path, overwrite=True), progress_callback=stop
        )
    assert _checksums(tmp_path) == before

    # A complete rerun replaces them, every file.
    MotionSession(drifting_uint16[4:10]).run(
        sink=DiskSink(tmp_path, overwrite=True)
    )
    after = _checksums(tmp_path)
    assert set(after) == FINAL_NAMES
    assert all(after[name] != before[name] for name in FINAL_NAMES)
    assert len(np.load(tmp_path / 'reliability.npy')) == 6


def test_a_killed_run_leaves_partials_the_next_run_removes(
    drifting_uint16, tmp_path
):
    session = MotionSession(drifting_uint16[:4])
    killed = DiskSink(tmp_path)
    killed.open(session)  # SIGKILL now: neither close() nor abort() runs
    assert all(p.name.endswith('.partial') for p in tmp_path.iterdir())
    MotionSession(drifting_uint16[:4]).run(sink=DiskSink(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FINAL_NAMES)
    killed.abort()


def test_abort_after_completion_keeps_the_results(drifting_uint16, tmp_path):
    sink = MotionSession(drifting_uint16[:3]).run(sink=DiskSink(tmp_path))
    sink.abort()  # e.g. a late cancel from a GUI
    assert _finished_looking(tmp_path) == sorted(FINAL_NAMES)


def test_memory_sink_matches_batches(drifting_uint16):
    session = MotionSession(drifting_uint16, batch_size=5)
    sink = session.run(sink=MemorySink())
    batches = list(session.iter_batches())
    np.testing.assert_array_equal(
        sink.w, np.concatenate([batch.w for batch in batches])
    )
    np.testing.assert_array_equal(sink.reference, batches[-1].reference)
    assert sink.complete


def test_batches_registered_into_a_memory_sink(drifting_uint16):
    """iter_batches(into=sink): batch arrays are views of the sink, and the
    sink ends up equal to one fed copies of plain batches."""
    session = MotionSession(drifting_uint16, batch_size=7)
    direct = MemorySink()
    direct.open(session)
    for batch in session.iter_batches(into=direct):
        assert np.shares_memory(batch.w, direct.w)
        assert np.shares_memory(batch.stats.ncc_after, direct.stats.ncc_after)
        direct.write(batch)
    copied = MemorySink()
    copied.open(session)
    for batch in MotionSession(drifting_uint16, batch_size=7).iter_batches():
        assert not np.shares_memory(batch.w, copied.w)
        copied.write(batch)
    for name in ('w', 'reliability', 'registered'):
        np.testing.assert_array_equal(
            getattr(direct, name), getattr(copied, name)
        )
    for name, values in copied.stats.as_columns().items():
        np.testing.assert_array_equal(getattr(direct.stats, name), values)
    np.testing.assert_array_equal(direct.reference, copied.reference)


@pytest.mark.parametrize('channels', [False, True])
def test_mapped_disk_sink_reads_like_a_memory_sink(
    drifting_uint16, tmp_path, channels
):
    """The GUI's sink for runs larger than memory: files written as by
    DiskSink, arrays readable (memory maps) during and after the run."""
    stack = drifting_uint16[:8]
    if channels:
        stack = np.stack([stack, stack // 2], axis=-1)
    options = {
        'batch_size': 3,
        'extra_stacks': [drifting_uint16[:8] // 3],
        'channel_axis': 3 if channels else None,
    }
    memory = MotionSession(stack, **options).run()
    sink = MappedDiskSink(tmp_path)
    session = MotionSession(stack, **options)
    sink.open(session)
    assert isinstance(sink.w, np.memmap)
    seen_during_run = []
    for batch in session.iter_batches():
        sink.write(batch)
        seen_during_run.append(sink.w[batch.start].copy())
    sink.close(session)
    for name in ('registered', 'w', 'reliability', 'confidence'):
        np.testing.assert_array_equal(
            getattr(sink, name), getattr(memory, name)
        )
    np.testing.assert_array_equal(sink.extras[0], memory.extras[0])
    np.testing.assert_array_equal(seen_during_run[1], memory.w[3])
    np.testing.assert_array_equal(sink.reference, memory.reference)
    for name, values in memory.stats.as_columns().items():
        np.testing.assert_array_equal(getattr(sink.stats, name), values)
    assert (tmp_path / 'registered_extra0.tif').is_file()
    assert set(FINAL_NAMES) <= {p.name for p in tmp_path.iterdir()}
    reread, _ = formats.open_stack(tmp_path / 'registered.tif')
    expected = np.moveaxis(memory.registered, -1, 1) if channels else None
    np.testing.assert_array_equal(
        reread, memory.registered if expected is None else expected
    )


def test_mapped_disk_sink_abort_frees_the_folder(drifting_uint16, tmp_path):
    session = MotionSession(drifting_uint16[:6], batch_size=3)
    sink = MappedDiskSink(tmp_path)
    sink.open(session)
    sink.write(next(session.iter_batches()))
    sink.abort()
    assert list(tmp_path.iterdir()) == []
    assert sink.w[:3].any()  # still readable until the map is released


def _two_channel_session(stack, **options):
    """``stack`` plus a second channel (half as bright) and a third with
    two sub-channels, corrected with the stack's flow."""
    return MotionSession(
        stack,
        extra_stacks=[stack // 2, np.stack([stack, stack // 3], axis=-1)],
        **options,
    )


def test_extra_channels_round_trip_through_a_results_folder(
    drifting_uint16, tmp_path
):
    stack = drifting_uint16[:9]
    memory = _two_channel_session(stack, batch_size=4).run()
    out = tmp_path / 'run'
    scale, units = (2.0, 0.5, 0.5), ('s', 'um', 'um')
    sink = _two_channel_session(stack, batch_size=4).run(
        sink=DiskSink(
            out,
            scale=scale,
            units=units,
            extra_names=['GFP / 488 nm', 'GFP / 488 nm'],
        )
    )
    files = ['registered_GFP_488_nm.tif', 'registered_GFP_488_nm_2.tif']
    assert [path.name for _, path in sink.extra_files] == files
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*FINAL_NAMES, *files]
    )
    first, first_metadata = formats.open_stack(out / files[0])
    assert first.dtype == np.uint16
    assert first_metadata.scale == scale
    assert first_metadata.units == units
    np.testing.assert_array_equal(first, memory.extras[0])
    second, second_metadata = formats.open_stack(out / files[1])
    assert second_metadata.axes == 'TCYX'
    np.testing.assert_array_equal(second, np.moveaxis(memory.extras[1], -1, 1))
    # the extras really are moved: not copies of the input
    assert not np.array_equal(memory.extras[0], stack // 2)

    params = json.loads((out / 'params.json').read_text())
    assert params['extra_channels'] == [
        {'name': 'GFP / 488 nm', 'file': files[0]},
        {'name': 'GFP / 488 nm', 'file': files[1]},
    ]
    assert set(files) <= set(params['files'].values())

    layers = _reader.get_reader(str(out))(str(out))
    by_name = {
        kwargs['name']: data
        for data, kwargs, _ in layers
        if isinstance(kwargs['name'], str)
    }
    assert list(by_name)[:2] == [
        'run registered',
        'run GFP / 488 nm registered',
    ]
    np.testing.assert_array_equal(
        by_name['run GFP / 488 nm registered'], memory.extras[0]
    )
    # the two-channel extra opens as one layer per channel
    [(data, kwargs, _)] = [
        layer for layer in layers if layer[1].get('channel_axis') == 1
    ]
    assert kwargs['name'] == [
        'run GFP / 488 nm registered ch0',
        'run GFP / 488 nm registered ch1',
    ]
    np.testing.assert_array_equal(data, np.moveaxis(memory.extras[1], -1, 1))


def test_extra_names_default_to_an_index_and_must_match(
    drifting_uint16, tmp_path
):
    stack = drifting_uint16[:4]
    _two_channel_session(stack).run(sink=DiskSink(tmp_path / 'a'))
    assert (tmp_path / 'a' / 'registered_extra0.tif').is_file()
    assert (tmp_path / 'a' / 'registered_extra1.tif').is_file()
    with pytest.raises(ValueError, match='names 1 extra stacks'):
        _two_channel_session(stack).run(
            sink=DiskSink(tmp_path / 'b', extra_names=['one'])
        )
    assert not (tmp_path / 'b').exists()


def test_required_bytes_count_the_extra_channels(drifting_uint16, tmp_path):
    stack = drifting_uint16[:6]
    plain = DiskSink(tmp_path).required_bytes(MotionSession(stack))
    with_extras = DiskSink(tmp_path).required_bytes(
        _two_channel_session(stack)
    )
    # uint16: 2 bytes per pixel, one and two channels
    assert with_extras - plain == stack.size * 2 * 3
    session = MotionSession(stack, extra_stacks=[stack.astype(np.float64)])
    # float64 is written as float32
    assert DiskSink(tmp_path).required_bytes(session) - plain == (
        stack.size * 4
    )


def test_cancel_removes_the_extra_channel_partials(drifting_uint16, tmp_path):
    seen_during_run = []

    def progress(current, total):
        seen_during_run.append(sorted(p.name for p in tmp_path.iterdir()))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _two_channel_session(drifting_uint16[:8], batch_size=4).run(
            sink=DiskSink(tmp_path, extra_names=['a', 'b']),
            progress_callback=progress,
        )
    assert 'registered_a.tif.partial' in seen_during_run[0]
    assert 'registered_b.tif.partial' in seen_during_run[0]
    assert list(tmp_path.iterdir()) == []


def test_overwrite_drops_the_extra_channels_of_the_old_run(
    drifting_uint16, tmp_path
):
    stack = drifting_uint16[:4]
    _two_channel_session(stack).run(
        sink=DiskSink(tmp_path, extra_names=['a', 'b'])
    )
    (tmp_path / 'notes.tif').write_bytes(b'not ours')
    MotionSession(stack).run(sink=DiskSink(tmp_path, overwrite=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*FINAL_NAMES, 'notes.tif']
    )
    params = json.loads((tmp_path / 'params.json').read_text())
    assert params['extra_channels'] == []
