"""Reader, writers and samples through a real napari viewer."""

import numpy as np
import pytest
import tifffile

from napari_flowscope import _sample_data, formats

PLUGIN = 'napari-flowscope'
T, C, Y, X = 5, 2, 20, 24


@pytest.fixture
def tcyx():
    t, c = np.meshgrid(np.arange(T), np.arange(C), indexing='ij')
    values = (100 * t + 10 * c).astype(np.uint16)
    return np.broadcast_to(values[..., None, None], (T, C, Y, X)).copy()


def _units(layer):
    return tuple(str(unit) for unit in layer.units)


def test_imagej_hyperstack_opens_as_channel_layers(
    make_napari_viewer_proxy, tmp_path, tcyx
):
    path = tmp_path / 'hyper.tif'
    tifffile.imwrite(
        path,
        tcyx,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={'axes': 'TCYX', 'unit': 'um', 'finterval': 1.5},
    )
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert [layer.name for layer in layers] == ['hyper ch0', 'hyper ch1']
    for channel, layer in enumerate(layers):
        np.testing.assert_array_equal(layer.data, tcyx[:, channel])
        np.testing.assert_allclose(layer.scale, (1.5, 0.25, 0.25))
        assert _units(layer) == ('second', 'micrometer', 'micrometer')
        assert tuple(layer.axis_labels) == ('t', 'y', 'x')
    # The time axis is the slider, not a z-stack.
    assert tuple(viewer.dims.axis_labels) == ('t', 'y', 'x')


def test_ome_tiff_opens_with_channel_names(
    make_napari_viewer_proxy, tmp_path, tcyx
):
    path = tmp_path / 'cells.ome.tif'
    tifffile.imwrite(
        path,
        tcyx,
        ome=True,
        metadata={
            'axes': 'TCYX',
            'PhysicalSizeX': 0.5,
            'PhysicalSizeY': 0.5,
            'TimeIncrement': 3.0,
            'TimeIncrementUnit': 's',
            'Channel': {'Name': ['GFP', 'mCherry']},
        },
    )
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert [layer.name for layer in layers] == [
        'cells GFP',
        'cells mCherry',
    ]
    np.testing.assert_array_equal(layers[1].data, tcyx[:, 1])
    np.testing.assert_allclose(layers[0].scale, (3.0, 0.5, 0.5))
    assert _units(layers[0]) == ('second', 'micrometer', 'micrometer')


def test_lazy_stack_opens_in_the_viewer(
    make_napari_viewer_proxy, tmp_path, monkeypatch
):
    monkeypatch.setattr(formats, 'LAZY_THRESHOLD_BYTES', 100_000)
    stack = np.arange(20 * 128 * 128, dtype=np.uint16).reshape(20, 128, 128)
    tifffile.imwrite(
        tmp_path / 'big.tif',
        stack,
        imagej=True,
        compression='zlib',
        metadata={'axes': 'TYX'},
    )
    viewer = make_napari_viewer_proxy()
    [layer] = viewer.open(str(tmp_path / 'big.tif'), plugin=PLUGIN)
    assert not isinstance(layer.data, np.ndarray)
    viewer.dims.set_point(0, 13)
    np.testing.assert_array_equal(np.asarray(layer.data[13]), stack[13])


def test_flow_file_opens_as_vx_vy(make_napari_viewer_proxy, tmp_path):
    w = np.random.default_rng(0).normal(size=(3, 8, 9, 2)).astype(np.float32)
    formats.write_flow(
        tmp_path / 'flow.npy',
        w,
        scale=(2.0, 0.5, 0.5),
        units=('s', 'um', 'um'),
    )
    viewer = make_napari_viewer_proxy()
    vx, vy = viewer.open(str(tmp_path / 'flow.npy'), plugin=PLUGIN)
    assert (vx.name, vy.name) == ('flow vx', 'flow vy')
    np.testing.assert_array_equal(vx.data, w[..., 0])
    np.testing.assert_array_equal(vy.data, w[..., 1])
    low, high = vy.contrast_limits
    assert low == -high > -np.inf
    np.testing.assert_allclose(vx.scale, (2.0, 0.5, 0.5))


def test_layers_save_and_reopen_bit_for_bit(
    make_napari_viewer_proxy, tmp_path
):
    data = np.random.default_rng(1).integers(0, 4000, (4, 9, 10), np.uint16)
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_image(
        data,
        name='registered',
        scale=(0.5, 0.2, 0.2),
        units=('s', 'um', 'um'),
        axis_labels=('t', 'y', 'x'),
    )
    [path] = viewer.layers.save(
        str(tmp_path / 'registered.tif'), selected=False, plugin=PLUGIN
    )
    [reopened] = viewer.open(path, plugin=PLUGIN)
    assert reopened.data.dtype == np.uint16
    assert reopened.data.tobytes() == data.tobytes()
    np.testing.assert_allclose(reopened.scale, layer.scale)


def test_flow_layers_save_as_one_flow_file(make_napari_viewer_proxy, tmp_path):
    w = np.random.default_rng(2).normal(size=(3, 6, 7, 2)).astype(np.float32)
    formats.write_flow(tmp_path / 'in.tif', w)
    viewer = make_napari_viewer_proxy()
    viewer.open(str(tmp_path / 'in.tif'), plugin=PLUGIN)
    paths = viewer.layers.save(
        str(tmp_path / 'out.npy'), selected=False, plugin=PLUGIN
    )
    assert paths[0] == str(tmp_path / 'out.npy')
    np.testing.assert_array_equal(formats.read_flow(paths[0])[0], w)


@pytest.mark.parametrize(
    ('key', 'n_layers'),
    [
        ('moving_disk', 1),
        ('rotating_particles', 1),
        ('drifting_tissue', 3),
        ('bleaching_tissue', 1),
    ],
)
def test_sample_opens(make_napari_viewer_proxy, key, n_layers):
    viewer = make_napari_viewer_proxy()
    viewer.open_sample(PLUGIN, key)
    assert len(viewer.layers) == n_layers
    stack = viewer.layers[-1]
    # the data, added last, are selected (not a hidden ground-truth map)
    assert viewer.layers.selection.active == stack
    expected = _sample_data._sequence(key).stack
    np.testing.assert_array_equal(stack.data, expected)
    assert tuple(stack.axis_labels) == ('t', 'y', 'x')
    assert stack.colormap.name == 'gray'


@pytest.mark.realdata
def test_real_recordings_open_in_the_viewer(
    make_napari_viewer_proxy, real_data
):
    viewer = make_napari_viewer_proxy()
    [heart] = viewer.open(
        str(real_data / 'medaka_heart' / 'croppedCORRJpeg'), plugin=PLUGIN
    )
    assert heart.data.shape == (130, 600, 600)
    [pc12] = viewer.open(
        str(real_data / 'pc12_stackreg' / 'pc12-unreg.tif'), plugin=PLUGIN
    )
    assert pc12.data.shape == (5, 201, 199)
    assert tuple(pc12.axis_labels) == ('t', 'y', 'x')


def test_results_folder_of_a_run_opens(make_napari_viewer_proxy, tmp_path):
    from napari_flowscope import synthetic
    from napari_flowscope.session import MotionSession
    from napari_flowscope.session.sinks import DiskSink

    stack = (synthetic.moving_disk(n_frames=6).stack * 1000).astype(np.uint16)
    out = tmp_path / 'run'
    MotionSession(stack).run(
        sink=DiskSink(out, scale=(0.5, 0.2, 0.2), units=('s', 'um', 'um'))
    )
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(str(out), plugin=PLUGIN)
    assert [layer.name for layer in layers] == [
        'run registered',
        'run vx',
        'run vy',
        'run reliability',
        'run confidence',
    ]
    registered, vx, vy, reliability, confidence = layers
    assert registered.data.dtype == np.uint16
    np.testing.assert_array_equal(
        registered.data, tifffile.imread(out / 'registered.tif')
    )
    w, _ = formats.read_flow(out / 'flow.npy')
    np.testing.assert_array_equal(vx.data, w[..., 0])
    np.testing.assert_array_equal(vy.data, w[..., 1])
    np.testing.assert_array_equal(
        confidence.data, np.load(out / 'confidence.npy')
    )
    assert tuple(confidence.contrast_limits) == (0, 1)
    for layer in layers:
        np.testing.assert_allclose(layer.scale, (0.5, 0.2, 0.2))
