"""Volume flow files, their napari reader and writer, the volume sample."""

import numpy as np
import pytest

from napari_flowscope import _reader, _sample_data, formats
from napari_flowscope._writer import write_flow_layers


@pytest.mark.parametrize('suffix', ['.npy', '.tif'])
@pytest.mark.parametrize('shape', [(3, 4, 5, 6, 3), (4, 5, 6, 3)])
def test_volume_flow_round_trips_with_its_axes(tmp_path, suffix, shape):
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    axes = 'TZYX' if len(shape) == 5 else 'ZYX'
    scale = (2.0, 1.5, 0.5, 0.5)[-len(axes) :]
    path = formats.write_flow(tmp_path / f'flow{suffix}', w, scale=scale)
    read, metadata = formats.read_flow(path)
    np.testing.assert_array_equal(read, w)
    assert metadata['axes'] == axes + 'C'
    assert metadata['components'] == ['x', 'y', 'z']
    assert metadata['scale'] == list(scale)


def test_volume_flow_opens_as_three_layers_and_saves_again(tmp_path):
    w = np.random.default_rng(1).normal(size=(2, 3, 5, 6, 3)).astype('f4')
    source = formats.write_flow(
        tmp_path / 'flow.npy',
        w,
        scale=(2.0, 1.5, 0.5, 0.5),
        units=('s', 'um', 'um', 'um'),
    )
    layers = _reader.get_reader(str(source))(str(source))
    assert [kwargs['name'] for _, kwargs, _ in layers] == [
        'flow vx',
        'flow vy',
        'flow vz',
    ]
    for index, (data, kwargs, _) in enumerate(layers):
        np.testing.assert_array_equal(data, w[..., index])
        assert kwargs['axis_labels'] == ('t', 'z', 'y', 'x')
    # napari hands the selected layers over in any order
    written = write_flow_layers(
        str(tmp_path / 'again.npy'), [layers[2], layers[0], layers[1]]
    )
    again, metadata = formats.read_flow(written[0])
    np.testing.assert_array_equal(again, w.astype(np.float32))
    assert metadata['scale'] == [2.0, 1.5, 0.5, 0.5]


def test_flow_writer_refuses_mismatched_volume_layers(tmp_path):
    vx = (np.zeros((2, 3, 4, 5)), {'name': 'vx'}, 'image')
    vz = (np.zeros((2, 3, 4, 6)), {'name': 'vz'}, 'image')
    with pytest.raises(ValueError, match='same shape'):
        write_flow_layers(str(tmp_path / 'f.npy'), [vx, vx, vz])
    with pytest.raises(ValueError, match='three for volumes'):
        write_flow_layers(str(tmp_path / 'f.npy'), [vx] * 4)
    assert list(tmp_path.iterdir()) == []


def test_volume_sample_with_its_ground_truth():
    stack, *truth = _sample_data.drifting_volume()
    data, kwargs, layer_type = stack
    assert layer_type == 'image' and data.ndim == 4
    assert kwargs['axis_labels'] == ('t', 'z', 'y', 'x')
    assert kwargs['scale'] == (5.0, 1.3, 0.65, 0.65)
    sequence = _sample_data._volume_sequence()
    np.testing.assert_array_equal(data, sequence.stack)
    assert [layer[1]['name'] for layer in truth] == [
        'ground truth vx',
        'ground truth vy',
        'ground truth vz',
    ]
    for index, (values, attributes, _) in enumerate(truth):
        np.testing.assert_array_equal(values, sequence.flow[..., index])
        assert attributes['visible'] is False
    # several voxels of drift along every axis by the last volume
    assert (np.abs(sequence.flow[-1][sequence.valid].mean(axis=0)) > 1.5).all()
