"""npe2 writers round-trip through the reader bit for bit."""

import numpy as np
import pytest
import tifffile
from napari.layers import Image

from napari_flowscope import _reader, formats
from napari_flowscope._writer import write_flow_layers, write_registered_stack


def _reopen(path):
    reader = _reader.get_reader(str(path))
    assert callable(reader)
    return reader(str(path))


@pytest.mark.parametrize('dtype', ['uint8', 'uint16', 'int16', 'float32'])
def test_registered_stack_round_trips_dtype_and_scale(tmp_path, dtype):
    rng = np.random.default_rng(0)
    data = (rng.random((5, 14, 11)) * 250).astype(dtype)
    layer = Image(
        data,
        scale=(0.25, 0.65, 0.5),
        units=('s', 'um', 'um'),
        axis_labels=('t', 'y', 'x'),
    )
    stack, attributes, _ = layer.as_layer_data_tuple()
    written = write_registered_stack(
        str(tmp_path / 'registered.tif'), stack, attributes
    )
    assert written == [str(tmp_path / 'registered.tif')]
    [(loaded, kwargs, _)] = _reopen(written[0])
    assert loaded.dtype == data.dtype
    assert loaded.tobytes() == data.tobytes()
    assert kwargs['scale'] == pytest.approx((0.25, 0.65, 0.5))
    assert kwargs['units'] == ('s', 'um', 'um')
    assert kwargs['axis_labels'] == ('t', 'y', 'x')


def test_default_labels_mean_t_y_x(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    stack, attributes, _ = Image(data).as_layer_data_tuple()
    [path] = write_registered_stack(str(tmp_path / 'r.tif'), stack, attributes)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == 'TYX'
    np.testing.assert_array_equal(tifffile.imread(path), data)


def test_labelled_z_axis_is_kept(tmp_path):
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    layer = Image(
        data,
        scale=(10.0, 2.0, 0.5, 0.5),
        units=('s', 'um', 'um', 'um'),
        axis_labels=('t', 'z', 'y', 'x'),
    )
    [path] = write_registered_stack(
        str(tmp_path / 'tz.tif'), *layer.as_layer_data_tuple()[:2]
    )
    [(loaded, kwargs, _)] = _reopen(path)
    np.testing.assert_array_equal(loaded, data)
    assert kwargs['axis_labels'] == ('t', 'z', 'y', 'x')
    assert kwargs['scale'] == pytest.approx((10.0, 2.0, 0.5, 0.5))


def test_rgb_stack_keeps_its_samples(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (3, 6, 7, 3), np.uint8)
    layer = Image(data, rgb=True)
    [path] = write_registered_stack(
        str(tmp_path / 'rgb.tif'), *layer.as_layer_data_tuple()[:2]
    )
    [(loaded, kwargs, _)] = _reopen(path)
    assert kwargs['rgb'] is True
    np.testing.assert_array_equal(loaded, data)


def _flow_layer_tuples(tmp_path, w, suffix='.npy'):
    """Flow layers as napari hands them to a writer (via real layers)."""
    path = formats.write_flow(
        tmp_path / f'source{suffix}',
        w,
        scale=(0.5, 0.3, 0.3),
        units=('s', 'um', 'um'),
    )
    return [
        Image(data, **kwargs).as_layer_data_tuple()
        for data, kwargs, _ in _reopen(path)
    ]


@pytest.mark.parametrize('suffix', ['.npy', '.tif'])
def test_flow_layers_round_trip_bit_for_bit(tmp_path, suffix):
    w = np.random.default_rng(2).normal(size=(4, 9, 8, 2)).astype(np.float32)
    layers = _flow_layer_tuples(tmp_path, w)
    out = tmp_path / 'out'
    out.mkdir()
    written = write_flow_layers(str(out / f'flow{suffix}'), layers)
    assert written[0] == str(out / f'flow{suffix}')
    loaded, metadata = formats.read_flow(written[0])
    assert loaded.tobytes() == w.tobytes()
    assert metadata['scale'] == [0.5, 0.3, 0.3]
    assert metadata['units'] == ['s', 'um', 'um']
    vx, vy = _reopen(written[0])
    np.testing.assert_array_equal(vx[0], w[..., 0])
    np.testing.assert_array_equal(vy[0], w[..., 1])


def test_flow_layers_given_in_reverse_order_are_recognised(tmp_path):
    w = np.random.default_rng(3).normal(size=(2, 5, 6, 2)).astype(np.float32)
    vx, vy = _flow_layer_tuples(tmp_path, w)
    # Named layers without metadata, y first.
    vy[1]['metadata'] = {}
    vx[1]['metadata'] = {}
    [path, sidecar] = write_flow_layers(str(tmp_path / 'f.npy'), [vy, vx])
    assert sidecar.endswith('f.json')
    np.testing.assert_array_equal(formats.read_flow(path)[0], w)


def test_flow_writer_needs_two_matching_layers(tmp_path):
    a = Image(np.zeros((2, 4, 5), np.float32)).as_layer_data_tuple()
    b = Image(np.zeros((2, 4, 6), np.float32)).as_layer_data_tuple()
    with pytest.raises(ValueError, match='exactly two'):
        write_flow_layers(str(tmp_path / 'f.npy'), [a])
    with pytest.raises(ValueError, match='same shape'):
        write_flow_layers(str(tmp_path / 'f.npy'), [a, b])
    assert list(tmp_path.iterdir()) == []
