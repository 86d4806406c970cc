"""Every recording in ../shared/data/real opens with its documented shape.

Shapes come from ../shared/data/real/README.md. Skips when the folder is
absent (never in CI, where it is present).
"""

import pytest

from napari_flowscope._reader import get_reader

pytestmark = pytest.mark.realdata

TIFF_SHAPES = {
    'pc12_stackreg/pc12-unreg.tif': (5, 201, 199),
    'pc12_stackreg/pc12-reg-translation.tif': (5, 201, 199),
    'pc12_stackreg/pc12-reg-rigid-body.tif': (5, 201, 199),
    'pc12_stackreg/pc12-reg-scaled-rotation.tif': (5, 201, 199),
    'pc12_stackreg/pc12-reg-affine.tif': (5, 201, 199),
    'pc12_stackreg/pc12-reg-bilinear.tif': (5, 201, 199),
    'sima_2p/example.tif': (20, 128, 256),
    'cardiomyocyte_beating/adult_gray.tif': (48, 256, 256),
    'cardiomyocyte_beating/fetal_gray.tif': (48, 256, 256),
    'cardiomyocyte_beating/matrigel_gray.tif': (48, 256, 256),
    'ctc_timelapse_napari/2D_timelapse.tif': (30, 511, 511),
}
FOLDER_SHAPES = {
    'medaka_heart/croppedCORRJpeg': (130, 600, 600),
    'trackpy_brightfield': (50, 500, 500),
    # RGBA PNGs with a constant alpha: colour frames without it.
    'trackpy_bulk_water': (50, 424, 640, 3),
}


def _open(path):
    reader = get_reader(str(path))
    assert callable(reader), f'no reader for {path}'
    [(data, kwargs, _)] = reader(str(path))
    return data, kwargs


def test_every_tiff_is_listed(real_data):
    found = {
        str(path.relative_to(real_data))
        for path in real_data.rglob('*')
        if path.suffix.lower() in ('.tif', '.tiff')
    }
    assert found == set(TIFF_SHAPES)


@pytest.mark.parametrize(('name', 'shape'), TIFF_SHAPES.items())
def test_tiff_opens_as_time_lapse(real_data, name, shape):
    data, kwargs = _open(real_data / name)
    assert data.shape == shape
    assert kwargs['axis_labels'] == ('t', 'y', 'x')


@pytest.mark.parametrize(('name', 'shape'), FOLDER_SHAPES.items())
def test_image_folder_opens_as_time_lapse(real_data, name, shape):
    data, kwargs = _open(real_data / name)
    assert data.shape == shape
    assert kwargs.get('rgb', False) == (len(shape) == 4)


def test_medaka_frames_are_in_timestamp_order(real_data):
    folder = real_data / 'medaka_heart' / 'croppedCORRJpeg'
    files = sorted(folder.glob('*.jpg'))
    data, _ = _open(folder)
    import cv2

    # File names carry SL001 ... SL130 and increasing time stamps.
    last = cv2.imread(str(files[-1]), cv2.IMREAD_UNCHANGED)
    assert (data[-1] == last).all()
