"""The napari-flowscope command line, run in-process."""

import io
import json

import numpy as np
import pytest
import tifffile

from napari_flowscope import cli, formats, synthetic
from napari_flowscope.engine import FlowParams
from napari_flowscope.session import compensate


@pytest.fixture(scope='module')
def sequence():
    return synthetic.drifting_tissue(n_frames=10, shape=(72, 72), seed=5)


@pytest.fixture(scope='module')
def stack_uint16(sequence):
    return np.round(sequence.stack * 3000).astype(np.uint16)


def _write_imagej(path, data, axes):
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.4, 1 / 0.4),
        metadata={'axes': axes, 'unit': 'um', 'finterval': 1.5},
    )


def test_correct_round_trips_a_tiff(tmp_path, sequence, stack_uint16, capsys):
    source = tmp_path / 'in.tif'
    _write_imagej(source, stack_uint16, 'TYX')
    out = tmp_path / 'out'

    status = cli.main(
        ['correct', str(source), '-o', str(out), '--batch-size', '4']
    )

    assert status == 0
    registered, metadata = formats.open_stack(out / 'registered.tif')
    assert metadata.axes == 'TYX'
    assert registered.dtype == np.uint16
    assert metadata.scale == pytest.approx((1.5, 0.4, 0.4))
    assert metadata.units == ('s', 'um', 'um')
    expected_registered, expected_w = compensate(stack_uint16, 0)
    np.testing.assert_array_equal(registered, expected_registered)
    w, flow_metadata = formats.read_flow(out / 'flow.npy')
    np.testing.assert_array_equal(w, expected_w)
    assert flow_metadata['scale'] == pytest.approx([1.5, 0.4, 0.4])
    error = np.linalg.norm(w - sequence.flow, axis=-1)[:, sequence.valid]
    assert error.mean() < 0.5
    params = json.loads((out / 'params.json').read_text())
    assert params['params']['method'] == 'lucas_kanade'
    assert params['input_axes'] == 'TYX'
    captured = capsys.readouterr()
    assert 'frames: 10 of 72 x 72 px' in captured.out
    assert f'results: {out}' in captured.out
    # 0.4 um pixels, 1.5 s frames: the summary speaks um and um/s
    lines = captured.out.splitlines()
    displacement = next(x for x in lines if x.startswith('displacement'))
    velocity = next(x for x in lines if x.startswith('velocity'))
    assert (
        displacement.endswith(' µm') and 'from the reference' in displacement
    )
    assert velocity.endswith(' µm/s') and 'frame to frame' in velocity
    assert '10/10 frames' in captured.err
    assert 'ETA' in captured.err
    assert 'trusted: ' in captured.out
    assert 'collapsed' not in captured.err


def test_correct_warns_about_frames_whose_match_collapsed(
    tmp_path, stack_uint16, capsys
):
    stack = stack_uint16[:5].copy()
    # frames 2 and 3 show another field of view
    stack[2] = np.rot90(stack_uint16[9])
    stack[3] = stack_uint16[7][::-1]
    source = tmp_path / 'in.tif'
    _write_imagej(source, stack, 'TYX')

    status = cli.main(['correct', str(source), '-o', str(tmp_path / 'out')])

    assert status == 0
    captured = capsys.readouterr()
    assert 'match collapsed in 2 of 5 frames' in captured.err
    assert 'trusted): 2, 3.' in captured.err
    stats = (tmp_path / 'out' / 'stats.csv').read_text().splitlines()
    assert stats[0].endswith(',trusted_fraction,collapsed')
    assert [row[-1] for row in stats[1:]] == ['0', '0', '1', '1', '0']


def test_correct_multichannel_keeps_axes(tmp_path, stack_uint16):
    stack = np.stack([stack_uint16, stack_uint16 // 3 + 7], axis=1)
    source = tmp_path / 'tcyx.tif'
    _write_imagej(source, stack, 'TCYX')
    out = tmp_path / 'out'

    status = cli.main(
        [
            'correct',
            str(source),
            '-o',
            str(out),
            '--channel',
            '1',
            '--reference',
            'range:0-3:median',
            '--preset',
            'fast',
            '--threads',
            '2',
            '-q',
        ]
    )

    assert status == 0
    registered, metadata = formats.open_stack(out / 'registered.tif')
    assert metadata.axes == 'TCYX'
    assert registered.shape == stack.shape
    assert registered.dtype == np.uint16
    params = json.loads((out / 'params.json').read_text())
    assert params['channel'] == 1
    assert params['reference'] == {
        'strategy': 'range',
        'start': 0,
        'stop': 3,
        'statistic': 'median',
        'preregister': False,
    }
    assert params['params']['warps'] == 1  # the fast preset


def test_correct_method_overrides_the_preset(tmp_path, stack_uint16):
    source = tmp_path / 'in.tif'
    _write_imagej(source, stack_uint16[:3], 'TYX')
    status = cli.main(
        [
            'correct',
            str(source),
            '-o',
            str(tmp_path / 'out'),
            '--method',
            'variational',
            '-q',
        ]
    )
    assert status == 0
    params = json.loads((tmp_path / 'out' / 'params.json').read_text())
    assert params['params']['method'] == 'variational'


def test_existing_output_is_not_overwritten(tmp_path, stack_uint16, capsys):
    source = tmp_path / 'in.tif'
    _write_imagej(source, stack_uint16[:3], 'TYX')
    out = tmp_path / 'out'
    assert cli.main(['correct', str(source), '-o', str(out), '-q']) == 0
    before = (out / 'flow.npy').stat().st_mtime_ns

    assert cli.main(['correct', str(source), '-o', str(out), '-q']) == 1
    error = capsys.readouterr().err
    assert 'already holds results' in error
    assert '--overwrite' in error
    assert (out / 'flow.npy').stat().st_mtime_ns == before
    command = ['correct', str(source), '-o', str(out), '-q', '--overwrite']
    assert cli.main(command) == 0


@pytest.mark.parametrize(
    'arguments',
    [
        ['--reference', 'middle'],
        ['--batch-size', '0'],
        ['--channel', 'red'],
        ['--preset', 'best'],
    ],
)
def test_bad_options_are_usage_errors(tmp_path, arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['correct', 'in.tif', '-o', str(tmp_path), *arguments])
    assert exit_info.value.code == 2
    assert 'error' in capsys.readouterr().err


def test_demo_headless_writes_results_and_summary(tmp_path, capsys):
    out = tmp_path / 'demo'
    assert cli.main(['demo', '--headless', '-o', str(out)]) == 0
    captured = capsys.readouterr()
    assert f'results: {out}' in captured.out
    line = next(
        line
        for line in captured.out.splitlines()
        if line.startswith('error against the ground-truth flow')
    )
    error = float(line.split(':')[1].split('px')[0])
    assert error < 0.2
    assert 'frames: 40 of 192 x 192 px' in captured.out
    assert (out / 'registered.tif').is_file()
    _, metadata = formats.open_stack(out / 'registered.tif')
    assert metadata.units == ('s', 'um', 'um')


def test_demo_chooses_the_gui_only_with_a_display(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, '_demo_gui', lambda: calls.append('gui') or 0)
    monkeypatch.setattr(
        cli, '_demo_headless', lambda output: calls.append(output) or 0
    )
    monkeypatch.setattr(cli.sys, 'platform', 'linux')
    monkeypatch.setenv('DISPLAY', ':1')
    cli.main(['demo'])
    cli.main(['demo', '--headless', '-o', str(tmp_path)])
    monkeypatch.delenv('DISPLAY')
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    cli.main(['demo'])
    assert calls == ['gui', tmp_path, cli.Path(cli.DEFAULT_DEMO_OUTPUT)]


def test_progress_line_reports_rate_and_eta():
    stream = io.StringIO()
    progress = cli.ProgressLine('correct', stream=stream, width=10)
    progress(5, 20)
    progress(20, 20)
    first, last = stream.getvalue().splitlines()
    assert first.startswith('correct [##--------] 5/20 frames  25%')
    assert 'frames/s' in first
    assert 'ETA' in first
    assert last.startswith('correct [##########] 20/20 frames 100%')
    assert last.endswith('ETA 00:00')


@pytest.mark.viewer
@pytest.mark.skipif(
    not cli.display_available(), reason='needs an X display (Xvfb)'
)
def test_demo_gui_opens_sample_and_docks(monkeypatch, qapp):
    import napari

    seen = {}
    made = []
    viewer_class = napari.Viewer

    def make_viewer(*args, **kwargs):
        # the demo's own viewer (current_viewer() may be another test's)
        made.append(viewer_class(*args, **kwargs))
        return made[-1]

    def run_then_close():
        (viewer,) = made
        seen['layers'] = [layer.name for layer in viewer.layers]
        seen['docks'] = sorted(viewer.window.dock_widgets)
        seen['selected'] = viewer.layers.selection.active.name
        motion = viewer.window.dock_widgets[
            'Motion correction (napari-flowscope)'
        ]
        seen['source'] = motion.reference.source.value.name
        seen['also correct'] = list(motion.reference.also_correct.choices)
        viewer.close()

    monkeypatch.setattr(napari, 'Viewer', make_viewer)
    monkeypatch.setattr(napari, 'run', run_then_close)
    assert cli.main(['demo']) == 0
    assert seen['layers'][-1] == 'drifting tissue'
    # the data, not the sample's hidden ground-truth maps
    assert seen['selected'] == seen['source'] == 'drifting tissue'
    assert seen['also correct'] == []
    assert seen['docks'] == [
        'Motion correction (napari-flowscope)',
        'Motion over time (napari-flowscope)',
    ]


def test_a_folder_of_jpegs_is_a_time_lapse(tmp_path, sequence, capsys):
    import cv2

    folder = tmp_path / 'frames'
    folder.mkdir()
    frames = np.round(sequence.stack[:4] * 250).astype(np.uint8)
    for t, frame in enumerate(frames):
        # numbered 1..4: natural order, not 1, 10, 2
        cv2.imwrite(str(folder / f'frame{t + 1}.jpg'), frame)
    out = tmp_path / 'out'

    assert cli.main(['correct', str(folder), '-o', str(out), '-q']) == 0

    registered, metadata = formats.open_stack(out / 'registered.tif')
    assert registered.shape == frames.shape
    assert registered.dtype == np.uint8
    expected, _ = compensate(formats.open_image_sequence(folder)[0], 0)
    np.testing.assert_array_equal(registered, expected)
    assert 'frames: 4 of 72 x 72 px' in capsys.readouterr().out


@pytest.mark.parametrize(
    ('reference', 'message'),
    [
        ('range:0-50', 'frames 0 to 49, but the stack has 5 frames'),
        ('frame:5', 'outside the stack, which has 5 frames'),
    ],
)
def test_a_reference_beyond_the_stack_is_an_error(
    tmp_path, stack_uint16, capsys, reference, message
):
    source = tmp_path / 'in.tif'
    _write_imagej(source, stack_uint16[:5], 'TYX')
    out = tmp_path / 'out'
    command = ['correct', str(source), '-o', str(out), '--reference']
    assert cli.main([*command, reference]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert cli.main([*command, 'range:0-5', '-q']) == 0


def test_motion_model_is_recorded_and_reproduces(tmp_path, stack_uint16):
    source = tmp_path / 'in.tif'
    _write_imagej(source, stack_uint16[:4], 'TYX')
    out = tmp_path / 'out'
    command = ['correct', str(source), '-o', str(out), '-q']
    assert cli.main([*command, '--motion-model', 'rigid']) == 0

    params = json.loads((out / 'params.json').read_text())
    assert params['params']['motion_model'] == 'rigid'
    saved = FlowParams.from_dict(params['params'])
    registered, w = compensate(stack_uint16[:4], 0, saved)
    np.testing.assert_array_equal(np.load(out / 'flow.npy'), w)
    # one rigid transform per frame: the flow is affine in x and y
    np.testing.assert_allclose(np.diff(w[-1], n=2, axis=1), 0, atol=1e-3)


def test_help_names_the_output_folder_outdir(capsys):
    with pytest.raises(SystemExit):
        cli.main(['correct', '--help'])
    text = capsys.readouterr().out
    assert '-o OUTDIR, --output OUTDIR' in text
    assert 'OUTPUT' not in text
    assert '--motion-model {dense,translation,rigid,affine}' in text
