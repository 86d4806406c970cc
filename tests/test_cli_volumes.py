"""The command line on a volumetric time-lapse (ImageJ TZYX TIFF)."""

import json

import numpy as np
import pytest
import tifffile

from napari_flowscope import _reader, cli, formats, synthetic
from napari_flowscope.session import compensate


@pytest.fixture(scope='module')
def volumes():
    return synthetic.drifting_volume(
        n_frames=4,
        shape=(10, 40, 40),
        spacing=(2.0, 1.0, 1.0),
        shift=(2.0, -1.5, 1.0),
        seed=7,
    )


@pytest.fixture
def source(tmp_path, volumes):
    path = tmp_path / 'tzyx.tif'
    tifffile.imwrite(
        path,
        np.round(volumes.stack * 3000).astype(np.uint16),
        imagej=True,
        resolution=(1 / 0.4, 1 / 0.4),
        metadata={'axes': 'TZYX', 'unit': 'um', 'spacing': 0.8},
    )
    return path


def test_correct_registers_volumes_in_3d(tmp_path, source, volumes, capsys):
    out = tmp_path / 'out'
    status = cli.main(
        ['correct', str(source), '-o', str(out), '-q', '--batch-size', '3']
    )
    assert status == 0
    summary = capsys.readouterr().out
    assert 'volumes: 4 of 40 x 40 x 10 voxels' in summary

    registered, metadata = formats.open_stack(out / 'registered.tif')
    assert metadata.axes == 'TZYX' and registered.dtype == np.uint16
    assert metadata.scale[1:] == pytest.approx((0.8, 0.4, 0.4))
    w, flow_metadata = formats.read_flow(out / 'flow.npy')
    assert w.shape == (4, 10, 40, 40, 3)
    assert flow_metadata['axes'] == 'TZYXC'
    # the file's z spacing (0.8 um against 0.4 um pixels) was used
    params = json.loads((out / 'params.json').read_text())
    assert params['spacing'] == pytest.approx([0.8, 0.4, 0.4])
    error = np.linalg.norm(w - volumes.flow, axis=-1)[:, volumes.valid]
    assert error.mean(axis=1).max() < 0.15
    # exactly what the Python API computes
    stack = tifffile.imread(source)
    expected_registered, expected_w = compensate(
        stack, 0, spacing=(0.8, 0.4, 0.4)
    )
    np.testing.assert_array_equal(w, expected_w)
    np.testing.assert_array_equal(registered, expected_registered)

    # the folder opens in napari as volumes with three flow components
    layers = _reader.get_reader(str(out))(str(out))
    names = [kwargs['name'] for _, kwargs, _ in layers]
    assert names == [
        'out registered',
        'out vx',
        'out vy',
        'out vz',
        'out reliability',
        'out confidence',
    ]
    for data, kwargs, _ in layers:
        assert data.shape == (4, 10, 40, 40)
        assert kwargs['scale'] == pytest.approx((1.0, 0.8, 0.4, 0.4))


def test_per_plane_and_spacing_options(tmp_path, source, capsys):
    out = tmp_path / 'planes'
    command = ['correct', str(source), '-o', str(out), '-q', '--per-plane']
    assert cli.main([*command, '--spacing', '2,0.5,0.5']) == 0
    assert 'each plane on its own' in capsys.readouterr().out
    w, _ = formats.read_flow(out / 'flow.npy')
    assert not w[..., 2].any() and w[..., :2].any()
    params = json.loads((out / 'params.json').read_text())
    assert params['per_plane'] is True
    assert params['spacing'] == pytest.approx([2.0, 0.5, 0.5])
    _, metadata = formats.open_stack(out / 'registered.tif')
    assert metadata.scale[1:] == pytest.approx((2.0, 0.5, 0.5))


def test_volume_options_on_2d_frames_are_refused(tmp_path, capsys):
    source = tmp_path / 'tyx.tif'
    tifffile.imwrite(
        source,
        np.zeros((3, 16, 16), np.uint8),
        imagej=True,
        metadata={'axes': 'TYX'},
    )
    status = cli.main(
        ['correct', str(source), '-o', str(tmp_path / 'o'), '--per-plane']
    )
    assert status == 1
    assert 'volumes (T, Z, Y, X)' in capsys.readouterr().err
