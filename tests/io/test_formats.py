"""formats: ImageJ stacks, flow files and the atomic streaming writers."""

import json

import numpy as np
import pytest
import tifffile

from napari_flowscope import formats


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _listing(folder):
    return sorted(path.name for path in folder.iterdir())


# ImageJ stacks ------------------------------------------------------------


@pytest.mark.parametrize('dtype', ['uint8', 'uint16', 'int16', 'float32'])
def test_imagej_stack_round_trips_dtype_axes_and_scale(tmp_path, rng, dtype):
    data = (rng.random((4, 2, 12, 10)) * 200).astype(dtype)
    path = formats.write_imagej_stack(
        tmp_path / 'stack.tif',
        data,
        axes='TCYX',
        scale=(0.5, 1.0, 0.2, 0.25),
        units=('s', None, 'micron', 'micron'),
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.series[0].axes == 'TCYX'
        assert tif.imagej_metadata['finterval'] == 0.5
        assert tif.imagej_metadata['unit'] == 'um'
        assert tif.pages[0].resolution == (4.0, 5.0)
    loaded, metadata = formats.open_stack(path)
    assert loaded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded, data)
    assert metadata.axes == 'TCYX'
    assert metadata.scale == (0.5, 1.0, 0.2, 0.25)
    assert metadata.units == ('s', 'pixel', 'um', 'um')
    assert metadata.channel_axis == 1


def test_internal_tyxc_layout_is_stored_as_imagej_tcyx(tmp_path, rng):
    data = rng.integers(0, 4000, (3, 8, 9, 2), dtype=np.uint16)
    formats.write_imagej_stack(
        tmp_path / 's.tif', data, scale=(2.0, 0.3, 0.3, 1.0)
    )
    loaded, metadata = formats.open_stack(tmp_path / 's.tif')
    assert metadata.axes == 'TCYX'
    np.testing.assert_array_equal(loaded, np.moveaxis(data, -1, 1))


def test_z_spacing_and_time_unit_are_kept(tmp_path):
    data = np.zeros((2, 3, 5, 6), np.float32)
    formats.write_imagej_stack(
        tmp_path / 'z.tif',
        data,
        axes='TZYX',
        scale=(1.5, 2.0, 0.4, 0.4),
        units=('min', 'um', 'um', 'um'),
    )
    metadata = formats.read_stack_metadata(tmp_path / 'z.tif')
    assert metadata.axes == 'TZYX'
    assert metadata.scale == (1.5, 2.0, 0.4, 0.4)
    assert metadata.units == ('min', 'um', 'um', 'um')


def test_time_axis_not_first_is_moved_first(tmp_path, rng):
    data = rng.integers(0, 255, (2, 5, 7, 8), dtype=np.uint8)  # C, T, Y, X
    formats.write_imagej_stack(tmp_path / 'c.tif', data, axes='CTYX')
    loaded, metadata = formats.open_stack(tmp_path / 'c.tif')
    assert metadata.axes == 'TCYX'
    np.testing.assert_array_equal(loaded, data.transpose(1, 0, 2, 3))


@pytest.mark.parametrize(
    ('dtype', 'stored'),
    [
        ('bool', 'uint8'),
        ('int8', 'int16'),
        ('float16', 'float32'),
        ('float64', 'float32'),
        ('int32', 'float32'),
        ('uint32', 'float32'),
    ],
)
def test_types_imagej_cannot_store_are_widened(tmp_path, dtype, stored):
    data = (np.arange(2 * 3 * 4) % 2).reshape(2, 3, 4).astype(dtype)
    formats.write_imagej_stack(tmp_path / 'w.tif', data)
    loaded = tifffile.imread(tmp_path / 'w.tif')
    assert loaded.dtype == np.dtype(stored)
    np.testing.assert_array_equal(loaded, data)


def test_integers_beyond_float32_precision_are_refused(tmp_path):
    data = np.full((2, 3, 4), 2**25 + 1, np.int32)
    with pytest.raises(ValueError, match='2\\*\\*24'):
        formats.write_imagej_stack(tmp_path / 'big.tif', data)
    assert _listing(tmp_path) == []


def test_complex_data_is_refused():
    with pytest.raises(ValueError, match='cannot store'):
        formats.imagej_dtype(np.complex64)


# streaming writers --------------------------------------------------------


def test_imagej_writer_commit_gives_the_final_file(tmp_path, rng):
    data = rng.integers(0, 60000, (5, 16, 12), dtype=np.uint16)
    writer = formats.ImageJStackWriter(
        tmp_path / 'reg.tif',
        frame_shape=(16, 12),
        dtype=np.uint16,
        n_frames=5,
        scale=(0.1, 0.5, 0.5),
        units=('s', 'um', 'um'),
    )
    writer.write(data[:2])
    assert _listing(tmp_path) == ['reg.tif.partial']
    writer.write(data[2])
    writer.write(data[3:])
    writer.commit()
    assert _listing(tmp_path) == ['reg.tif']
    np.testing.assert_array_equal(tifffile.imread(tmp_path / 'reg.tif'), data)
    assert formats.read_stack_metadata(tmp_path / 'reg.tif').scale == (
        0.1,
        0.5,
        0.5,
    )


def test_imagej_writer_abort_leaves_no_file(tmp_path):
    writer = formats.ImageJStackWriter(
        tmp_path / 'reg.tif', frame_shape=(4, 4), dtype='uint8', n_frames=3
    )
    writer.write(np.ones((2, 4, 4), np.uint8))
    writer.abort()
    assert _listing(tmp_path) == []


def test_writer_exception_in_context_aborts(tmp_path):
    writer = formats.ImageJStackWriter(
        tmp_path / 'reg.tif', frame_shape=(4, 4), dtype='uint8', n_frames=2
    )
    with pytest.raises(RuntimeError, match='cancelled'), writer:
        writer.write(np.ones((4, 4), np.uint8))
        raise RuntimeError('cancelled')
    assert writer.aborted
    assert _listing(tmp_path) == []


def test_incomplete_commit_refuses_and_cleans_up(tmp_path):
    writer = formats.NpyStackWriter(
        tmp_path / 'r.npy', n_frames=3, frame_shape=(4, 5)
    )
    writer.write(np.zeros((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match='only 2 of 3'):
        writer.commit()
    assert _listing(tmp_path) == []


def test_writer_refuses_wrong_frames(tmp_path):
    with formats.NpyStackWriter(
        tmp_path / 'r.npy', n_frames=1, frame_shape=(4, 5)
    ) as writer:
        with pytest.raises(ValueError, match='shape'):
            writer.write(np.zeros((4, 6), np.float32))
        with pytest.raises(ValueError, match='exceeds n_frames'):
            writer.write(np.zeros((2, 4, 5), np.float32))
        writer.write(np.ones((4, 5), np.float32))
    np.testing.assert_array_equal(np.load(tmp_path / 'r.npy'), 1.0)


# flow files ---------------------------------------------------------------


def test_flow_writer_streams_npy_and_sidecar(tmp_path, rng):
    w = rng.normal(size=(6, 10, 12, 2)).astype(np.float32)
    with formats.FlowWriter(
        tmp_path / 'flow.npy',
        n_frames=6,
        frame_shape=(10, 12),
        scale=(0.5, 0.3, 0.3),
        units=('s', 'um', 'um'),
    ) as writer:
        for start in range(0, 6, 4):
            writer.write(w[start : start + 4])
            assert _listing(tmp_path) == ['flow.npy.partial']
    assert _listing(tmp_path) == ['flow.json', 'flow.npy']
    sidecar = json.loads((tmp_path / 'flow.json').read_text())
    assert sidecar['axes'] == 'TYXC'
    assert sidecar['components'] == ['x', 'y']
    assert sidecar['convention'] == formats.FLOW_CONVENTION
    assert sidecar['scale'] == [0.5, 0.3, 0.3]
    assert sidecar['units'] == ['s', 'um', 'um']
    assert 'version' in sidecar
    loaded, metadata = formats.read_flow(tmp_path / 'flow.npy')
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, w)


def test_flow_writer_abort_leaves_nothing(tmp_path):
    writer = formats.FlowWriter(
        tmp_path / 'flow.npy', n_frames=2, frame_shape=(3, 4)
    )
    writer.write(np.zeros((3, 4, 2), np.float32))
    writer.abort()
    assert _listing(tmp_path) == []


@pytest.mark.parametrize('suffix', ['.npy', '.tif'])
@pytest.mark.parametrize('shape', [(5, 9, 11, 2), (9, 11, 2)])
def test_write_flow_round_trips_bit_for_bit(tmp_path, rng, suffix, shape):
    w = rng.normal(scale=3, size=shape).astype(np.float32)
    scale = (2.0, 0.5, 0.5)[-(len(shape) - 1) :]
    units = ('s', 'um', 'um')[-(len(shape) - 1) :]
    path = formats.write_flow(
        tmp_path / f'flow{suffix}', w, scale=scale, units=units
    )
    loaded, metadata = formats.read_flow(path)
    assert loaded.shape == w.shape
    assert loaded.tobytes() == w.tobytes()
    assert metadata['scale'] == list(scale)
    assert metadata['units'] == list(units)
    assert metadata['axes'] == ('TYXC' if len(shape) == 4 else 'YXC')
    assert not any(p.name.endswith('.partial') for p in tmp_path.iterdir())


def test_flow_tiff_pages_are_components(tmp_path, rng):
    w = rng.normal(size=(3, 4, 5, 2)).astype(np.float32)
    formats.write_flow(tmp_path / 'flow.tif', w)
    with tifffile.TiffFile(tmp_path / 'flow.tif') as tif:
        assert tif.series[0].axes == 'TCYX'
        pages = tif.asarray()
    np.testing.assert_array_equal(pages[:, 0], w[..., 0])
    np.testing.assert_array_equal(pages[:, 1], w[..., 1])


def test_write_flow_refuses_bad_shape_and_suffix(tmp_path):
    # (3, 4, 5, 3) is one volume's flow; these are no flow at all
    for shape in ((3, 4, 5, 4), (2, 3, 4, 5, 2), (4, 5, 3)):
        with pytest.raises(ValueError, match=r'\(T, Y, X, 2\)'):
            formats.write_flow(tmp_path / 'f.npy', np.zeros(shape))
    with pytest.raises(ValueError, match='.npy, .tif'):
        formats.write_flow(tmp_path / 'f.h5', np.zeros((3, 4, 5, 2)))


def test_read_flow_refuses_plain_arrays(tmp_path):
    np.save(tmp_path / 'plain.npy', np.zeros((3, 4, 5, 2), np.float32))
    with pytest.raises(ValueError, match='sidecar'):
        formats.read_flow(tmp_path / 'plain.npy')


# units and natural order --------------------------------------------------


@pytest.mark.parametrize(
    ('raw', 'unit'),
    [
        ('micron', 'um'),
        ('\u00b5m', 'um'),
        ('\\u00B5m', 'um'),
        ('', 'pixel'),
        (None, 'pixel'),
        ('sec', 's'),
        ('micrometer', 'um'),
        ('nm', 'nm'),
    ],
)
def test_units_are_normalised(raw, unit):
    assert formats.normalise_unit(raw) == unit


def test_natural_sort_puts_frame2_before_frame10():
    names = ['frame10.png', 'frame2.png', 'frame1.png', 'Frame3.png']
    assert sorted(names, key=formats.natural_sort_key) == [
        'frame1.png',
        'frame2.png',
        'Frame3.png',
        'frame10.png',
    ]
