"""FlowParams: presets, validation messages, JSON round trip."""

import dataclasses
import json

import numpy as np
import pytest

from napari_flowscope.engine import FlowParams
from napari_flowscope.engine.params import PRESETS


def test_default_is_the_balanced_lucas_kanade_preset():
    assert FlowParams() == FlowParams.preset('balanced')
    assert FlowParams().method == 'lucas_kanade'


@pytest.mark.parametrize('name', ['fast', 'balanced', 'quality'])
def test_presets_are_valid_and_match_their_table(name):
    params = FlowParams.preset(name)
    # presets leave the motion model dense
    assert params.to_dict() == {**PRESETS[name], 'motion_model': 'dense'}


def test_quality_preset_is_variational_and_others_lucas_kanade():
    assert FlowParams.preset('quality').method == 'variational'
    assert FlowParams.preset('fast').method == 'lucas_kanade'


def test_unknown_preset_names_the_allowed_ones():
    with pytest.raises(ValueError, match="'fast', 'balanced', 'quality'"):
        FlowParams.preset('best')


@pytest.mark.parametrize(
    ('field', 'value', 'allowed'),
    [
        ('method', 'horn_schunck', "'lucas_kanade', 'variational'"),
        ('sigma', 0.0, '>= 0.3 and <= 50'),
        ('sigma', float('nan'), '>= 0.3 and <= 50'),
        ('sigma', '2', '>= 0.3 and <= 50'),
        ('reliability_threshold', -1e-3, '>= 0.0 and <= 1.0'),
        ('reliability_threshold', float('inf'), '>= 0.0 and <= 1.0'),
        ('alpha', 0.0, '> 0.0 and <= 10000'),
        ('levels', 0, 'from 1 to 12'),
        ('levels', 2.5, 'from 1 to 12'),
        ('levels', True, 'from 1 to 12'),
        ('iterations', 0, 'from 1 to 10000'),
        ('warps', 101, 'from 1 to 100'),
    ],
)
def test_validation_names_parameter_and_allowed_range(field, value, allowed):
    with pytest.raises(ValueError, match=field) as error:
        FlowParams(**{field: value})
    assert allowed in str(error.value)
    assert repr(value) in str(error.value)


def test_numpy_scalars_are_coerced_to_python_numbers():
    params = FlowParams(sigma=np.float32(2.5), levels=np.int64(3), warps=2.0)
    assert params.sigma == 2.5 and type(params.sigma) is float
    assert params.levels == 3 and type(params.levels) is int
    assert params.warps == 2 and type(params.warps) is int


def test_params_are_frozen_and_replace_validates():
    params = FlowParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.sigma = 1.0
    assert params.replace(sigma=1.5).sigma == 1.5
    with pytest.raises(ValueError, match='sigma'):
        params.replace(sigma=-1)


@pytest.mark.parametrize('name', ['fast', 'balanced', 'quality'])
def test_json_round_trip(name):
    params = FlowParams.preset(name).replace(sigma=1.25, levels=3)
    text = json.dumps(params.to_dict())
    assert FlowParams.from_dict(json.loads(text)) == params


def test_from_dict_fills_defaults_and_rejects_unknown_fields():
    assert FlowParams.from_dict({'sigma': 4}) == FlowParams(sigma=4.0)
    with pytest.raises(ValueError, match="unknown FlowParams field.*'beta'"):
        FlowParams.from_dict({'beta': 1})
