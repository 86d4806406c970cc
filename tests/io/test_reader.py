"""The npe2 reader (pure tier: reader functions called directly)."""

import tracemalloc

import cv2
import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_flowscope import _reader, formats
from napari_flowscope._reader import get_reader

T, C, Y, X = 6, 2, 24, 20


@pytest.fixture
def tcyx():
    # Each pixel encodes its (t, c) so axis mix-ups cannot go unnoticed.
    t, c = np.meshgrid(np.arange(T), np.arange(C), indexing='ij')
    values = (100 * t + 10 * c).astype(np.uint16)
    return np.broadcast_to(values[..., None, None], (T, C, Y, X)).copy()


def _read(path):
    reader = get_reader(str(path))
    assert callable(reader)
    return reader(str(path))


def test_imagej_hyperstack_opens_time_first_with_channels_split(
    tmp_path, tcyx
):
    path = tmp_path / 'hyper.tif'
    tifffile.imwrite(
        path,
        tcyx,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={'axes': 'TCYX', 'unit': 'um', 'finterval': 0.5},
    )
    [(data, kwargs, layer_type)] = _read(path)
    assert layer_type == 'image'
    np.testing.assert_array_equal(data, tcyx)
    assert kwargs['channel_axis'] == 1
    assert kwargs['name'] == ['hyper ch0', 'hyper ch1']
    assert kwargs['scale'] == [pytest.approx((0.5, 0.2, 0.2))] * 2
    assert kwargs['units'] == [('s', 'um', 'um')] * 2
    assert kwargs['axis_labels'] == [('t', 'y', 'x')] * 2


def test_ome_tiff_opens_with_channel_names_and_physical_size(tmp_path, tcyx):
    path = tmp_path / 'cells.ome.tif'
    tifffile.imwrite(
        path,
        tcyx,
        ome=True,
        metadata={
            'axes': 'TCYX',
            'PhysicalSizeX': 0.3,
            'PhysicalSizeXUnit': '\u00b5m',
            'PhysicalSizeY': 0.4,
            'PhysicalSizeYUnit': '\u00b5m',
            'TimeIncrement': 2.0,
            'TimeIncrementUnit': 's',
            'Channel': {'Name': ['GFP', 'mCherry']},
        },
    )
    [(data, kwargs, _)] = _read(path)
    np.testing.assert_array_equal(data, tcyx)
    assert kwargs['name'] == ['cells GFP', 'cells mCherry']
    assert kwargs['channel_axis'] == 1
    assert kwargs['scale'] == [(2.0, 0.4, 0.3)] * 2
    assert kwargs['units'] == [('s', 'um', 'um')] * 2


def test_ome_channel_order_other_than_tcyx_is_normalised(tmp_path, tcyx):
    path = tmp_path / 'ctyx.ome.tif'
    ctyx = tcyx.transpose(1, 0, 2, 3)
    tifffile.imwrite(
        path, ctyx, ome=True, metadata={'axes': 'CTYX', 'TimeIncrement': 3}
    )
    [(data, kwargs, _)] = _read(path)
    metadata = formats.read_stack_metadata(path)
    assert metadata.axes[0] == 'T'
    channel_axis = kwargs['channel_axis']
    np.testing.assert_array_equal(np.moveaxis(data, channel_axis, 1), tcyx)
    assert kwargs['scale'][0][0] == 3.0


def test_plain_multipage_tiff_is_a_time_lapse(tmp_path):
    stack = np.arange(5 * 8 * 9, dtype=np.uint8).reshape(5, 8, 9)
    tifffile.imwrite(tmp_path / 'pages.tif', stack, photometric='minisblack')
    [(data, kwargs, _)] = _read(tmp_path / 'pages.tif')
    np.testing.assert_array_equal(data, stack)
    assert kwargs['axis_labels'] == ('t', 'y', 'x')
    assert kwargs['metadata']['time_source'] == 'I'


def test_imagej_z_stack_opens_as_depth_not_time(tmp_path):
    stack = np.arange(4 * 6 * 7, dtype=np.uint16).reshape(4, 6, 7)
    tifffile.imwrite(
        tmp_path / 'slices.tif',
        stack,
        imagej=True,
        metadata={'axes': 'ZYX', 'spacing': 3.0},
    )
    [(data, kwargs, _)] = _read(tmp_path / 'slices.tif')
    np.testing.assert_array_equal(data, stack)
    assert kwargs['axis_labels'] == ('z', 'y', 'x')
    assert kwargs['scale'][0] == 3.0  # the z spacing
    assert kwargs['metadata']['time_source'] is None


def test_plain_imagej_stack_is_a_time_lapse(tmp_path):
    """ImageJ saves every stack it was not given dimensions for as slices
    (here as StackReg's output is saved): those slices are frames."""
    stack = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    tifffile.imwrite(
        tmp_path / 'stackreg.tif',
        stack,
        description='ImageJ=1.52p\nimages=5\nslices=5\nunit=\nloop=false\n',
        metadata=None,
    )
    [(data, kwargs, _)] = _read(tmp_path / 'stackreg.tif')
    np.testing.assert_array_equal(data, stack)
    assert kwargs['axis_labels'] == ('t', 'y', 'x')
    assert kwargs['metadata']['time_source'] == 'Z'


def test_time_and_z_both_kept(tmp_path):
    stack = np.zeros((3, 2, 6, 7), np.float32)
    tifffile.imwrite(
        tmp_path / 'tz.tif',
        stack,
        imagej=True,
        metadata={'axes': 'TZYX', 'finterval': 4.0},
    )
    [(data, kwargs, _)] = _read(tmp_path / 'tz.tif')
    assert data.shape == (3, 2, 6, 7)
    assert kwargs['axis_labels'] == ('t', 'z', 'y', 'x')
    assert kwargs['scale'][0] == 4.0


def test_rgb_tiff_stack_is_an_rgb_layer(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 255, (3, 8, 9, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / 'rgb.tif', stack, photometric='rgb')
    [(data, kwargs, _)] = _read(tmp_path / 'rgb.tif')
    np.testing.assert_array_equal(data, stack)
    assert kwargs['rgb'] is True
    assert kwargs['axis_labels'] == ('t', 'y', 'x')


# lazy opening -------------------------------------------------------------


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(formats, 'LAZY_THRESHOLD_BYTES', 1_000_000)


@pytest.mark.parametrize(
    ('compression', 'array_type'),
    [(None, np.memmap), ('zlib', da.Array)],
)
def test_stack_above_the_memory_budget_opens_lazily(
    tmp_path, small_budget, compression, array_type
):
    stack = np.arange(40 * 256 * 256, dtype=np.uint32).astype(np.uint16)
    stack = stack.reshape(40, 256, 256)  # 5 MB, 5x the budget
    path = tmp_path / 'big.tif'
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        compression=compression,
        metadata={'axes': 'TYX'},
    )
    tracemalloc.start()
    try:
        [(data, kwargs, _)] = _read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(data, array_type)
    assert peak < stack.nbytes / 10
    assert data.shape == stack.shape
    np.testing.assert_array_equal(np.asarray(data[17]), stack[17])
    np.testing.assert_array_equal(np.asarray(data[-1]), stack[-1])


def test_small_stack_loads_into_memory(tmp_path):
    stack = np.zeros((3, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / 's.tif', stack, photometric='minisblack')
    [(data, _, _)] = _read(tmp_path / 's.tif')
    assert type(data) is np.ndarray


def test_large_image_folder_opens_as_dask(tmp_path, small_budget):
    for t in range(12):
        frame = np.full((300, 300), t, np.uint8)
        cv2.imwrite(str(tmp_path / f'f{t}.png'), frame)
    [(data, _, _)] = _read(tmp_path)
    assert isinstance(data, da.Array)
    assert data.shape == (12, 300, 300)
    np.testing.assert_array_equal(np.asarray(data[:, 5, 5]), np.arange(12))


# folders and lists of frames ---------------------------------------------


@pytest.mark.parametrize('suffix', ['.png', '.tif', '.jpg'])
def test_numbered_folder_opens_in_natural_order(tmp_path, suffix):
    for t in [0, 1, 2, 9, 10, 11]:
        frame = np.full((16, 20), 10 * t, np.uint8)
        name = str(tmp_path / f'frame{t}{suffix}')
        if suffix == '.tif':
            tifffile.imwrite(name, frame)
        else:
            cv2.imwrite(name, frame)
    [(data, kwargs, _)] = _read(tmp_path)
    assert data.shape == (6, 16, 20)
    np.testing.assert_allclose(
        data[:, 8, 10], [0, 10, 20, 90, 100, 110], atol=1
    )
    assert kwargs['name'] == tmp_path.name
    assert kwargs['axis_labels'] == ('t', 'y', 'x')


def test_list_of_files_is_sorted_naturally(tmp_path):
    paths = []
    for t in [10, 2, 1]:
        paths.append(str(tmp_path / f'img_{t}.png'))
        cv2.imwrite(paths[-1], np.full((5, 6), t, np.uint8))
    reader = get_reader(paths)
    [(data, _, _)] = reader(paths)
    np.testing.assert_array_equal(data[:, 0, 0], [1, 2, 10])


def test_folder_in_a_one_item_list(tmp_path):
    for t in range(3):
        cv2.imwrite(str(tmp_path / f'f{t}.png'), np.full((4, 5), t, np.uint8))
    reader = get_reader([str(tmp_path)])
    [(data, _, _)] = reader([str(tmp_path)])
    np.testing.assert_array_equal(data[:, 0, 0], [0, 1, 2])


def test_colour_frames_keep_rgb_order_and_grey_collapses(tmp_path):
    colour = np.zeros((4, 5, 3), np.uint8)
    colour[..., 0] = 200  # red in RGB order
    for t in range(2):
        cv2.imwrite(str(tmp_path / f'c{t}.png'), colour[..., ::-1])  # BGR
    [(data, kwargs, _)] = _read(tmp_path)
    assert kwargs['rgb'] is True
    np.testing.assert_array_equal(data[:, 0, 0], [[200, 0, 0]] * 2)

    grey = tmp_path / 'grey'
    grey.mkdir()
    for t in range(2):
        cv2.imwrite(str(grey / f'g{t}.png'), np.full((4, 5, 3), 7, np.uint8))
    [(data, kwargs, _)] = _read(grey)
    assert data.shape == (2, 4, 5)
    assert 'rgb' not in kwargs


def test_frames_of_different_shapes_are_refused(tmp_path):
    cv2.imwrite(str(tmp_path / 'a1.png'), np.zeros((5, 6), np.uint8))
    cv2.imwrite(str(tmp_path / 'a2.png'), np.zeros((5, 7), np.uint8))
    with pytest.raises(ValueError, match='all frames must match'):
        _read(tmp_path)


# flow files and plain arrays ---------------------------------------------


@pytest.mark.parametrize('suffix', ['.npy', '.tif'])
def test_flow_file_opens_as_vx_vy_layers(tmp_path, suffix):
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 10, 12, 2)).astype(np.float32)
    path = formats.write_flow(
        tmp_path / f'flow{suffix}',
        w,
        scale=(0.5, 2.0, 2.0),
        units=('s', 'um', 'um'),
    )
    assert get_reader(str(path)) is _reader.read_flow_layers
    vx, vy = _read(path)
    np.testing.assert_array_equal(vx[0], w[..., 0])
    np.testing.assert_array_equal(vy[0], w[..., 1])
    assert vx[1]['name'] == 'flow vx'
    assert vy[1]['name'] == 'flow vy'
    limit = np.abs(w[[0, 2, 3]]).max()  # frames sampled for the limits
    assert vx[1]['contrast_limits'] == pytest.approx((-limit, limit))
    assert vx[1]['colormap'] == 'RdBu_r'
    assert vx[1]['scale'] == (0.5, 2.0, 2.0)
    assert vx[1]['units'] == ('s', 'um', 'um')
    assert vx[1]['metadata']['flow_component'] == 'x'


def test_plain_npy_stack_opens_as_image(tmp_path):
    stack = np.random.default_rng(3).random((3, 5, 6)).astype(np.float32)
    np.save(tmp_path / 'reliability.npy', stack)
    [(data, kwargs, _)] = _read(tmp_path / 'reliability.npy')
    np.testing.assert_array_equal(data, stack)
    assert kwargs['axis_labels'] == ('t', 'y', 'x')


# what is not read, and clear errors ---------------------------------------


def test_get_reader_declines_what_it_cannot_read(tmp_path):
    np.save(tmp_path / 'tracks.npy', np.zeros((10, 4)))
    (tmp_path / 'notes.txt').write_text('hello')
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert get_reader(str(tmp_path / 'tracks.npy')) is None
    assert get_reader(str(tmp_path / 'notes.txt')) is None
    assert get_reader(str(tmp_path / 'missing.tif')) is None
    assert get_reader(str(empty)) is None
    assert get_reader([str(tmp_path / 'notes.txt'), 'x.csv']) is None
    assert get_reader(None) is None


def test_non_tiff_file_gives_a_clear_message(tmp_path):
    path = tmp_path / 'fake.tif'
    path.write_bytes(b'this is not an image' * 10)
    with pytest.raises(ValueError, match='not a readable TIFF'):
        _read(path)


def test_truncated_tiff_gives_a_clear_message(tmp_path, tcyx):
    path = tmp_path / 'cut.tif'
    tifffile.imwrite(path, tcyx, imagej=True, metadata={'axes': 'TCYX'})
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match='truncated'):
        _read(path)


def test_corrupt_compressed_tiff_gives_a_clear_message(tmp_path, tcyx):
    path = tmp_path / 'bad.tif'
    tifffile.imwrite(
        path,
        tcyx,
        imagej=True,
        compression='zlib',
        metadata={'axes': 'TCYX'},
    )
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    content = bytearray(path.read_bytes())
    content[offset : offset + 8] = b'\xff' * 8
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match='corrupt'):
        _read(path)


def test_single_2d_tiff_is_not_a_time_lapse(tmp_path):
    tifffile.imwrite(tmp_path / 'one.tif', np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match='single 2-D image'):
        _read(tmp_path / 'one.tif')


def test_single_png_is_not_a_time_lapse(tmp_path):
    cv2.imwrite(str(tmp_path / 'one.png'), np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match='single 2-D image'):
        _read(tmp_path / 'one.png')


def test_folder_of_stacks_is_not_a_sequence_of_frames(tmp_path):
    for name in ('a1.tif', 'a2.tif'):
        tifffile.imwrite(
            tmp_path / name,
            np.zeros((5, 8, 9), np.uint8),
            photometric='minisblack',
        )
    with pytest.raises(ValueError, match='not a single frame'):
        _read(tmp_path)


def test_compressed_stack_opens_bounded_without_zarr(
    tmp_path, small_budget, monkeypatch
):
    monkeypatch.setattr(formats, '_zarr_available', lambda: False)
    stack = np.arange(40 * 128 * 128, dtype=np.uint16).reshape(40, 128, 128)
    tifffile.imwrite(
        tmp_path / 'z.tif',
        stack,
        imagej=True,
        compression='zlib',
        metadata={'axes': 'TYX'},
    )
    [(data, _, _)] = _read(tmp_path / 'z.tif')
    assert isinstance(data, np.memmap)
    np.testing.assert_array_equal(data, stack)


def test_results_folder_opens_as_registered_flow_and_reliability(tmp_path):
    rng = np.random.default_rng(4)
    registered = rng.integers(0, 4000, (4, 10, 12), dtype=np.uint16)
    w = rng.normal(size=(4, 10, 12, 2)).astype(np.float32)
    reliability = rng.random((4, 10, 12)).astype(np.float32)
    confidence = rng.random((4, 10, 12)).astype(np.float32)
    scale, units = (0.5, 0.2, 0.2), ('s', 'um', 'um')
    run = tmp_path / 'run1'
    run.mkdir()
    formats.write_imagej_stack(
        run / 'registered.tif', registered, scale=scale, units=units
    )
    formats.write_flow(run / 'flow.npy', w, scale=scale, units=units)
    np.save(run / 'reliability.npy', reliability)
    np.save(run / 'confidence.npy', confidence)
    assert get_reader(str(run)) is None  # unfinished: no params.json yet
    (run / 'params.json').write_text('{}')
    stack, vx, vy, rel, conf = _read(run)
    np.testing.assert_array_equal(stack[0], registered)
    np.testing.assert_array_equal(vx[0], w[..., 0])
    np.testing.assert_array_equal(vy[0], w[..., 1])
    np.testing.assert_array_equal(rel[0], reliability)
    np.testing.assert_array_equal(conf[0], confidence)
    assert conf[1]['contrast_limits'] == (0.0, 1.0)
    assert [layer[1]['name'] for layer in (stack, vx, vy, rel, conf)] == [
        'run1 registered',
        'run1 vx',
        'run1 vy',
        'run1 reliability',
        'run1 confidence',
    ]
    for layer in (stack, vx, vy, rel, conf):
        assert layer[1]['scale'] == pytest.approx(scale)
        assert layer[1]['units'] == units
