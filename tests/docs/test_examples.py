"""Every code example in README.md and docs/ runs (issue: docs are tested).

* ``python`` blocks are executed, each in a fresh namespace, in a temporary
  working directory that holds ``input.tif`` (a small drifting time-lapse)
  and ``volumes.tif`` (a small drifting TZYX hyperstack).
* ``bash`` blocks: ``napari-flowscope ...`` lines run through the CLI's
  ``main`` in-process; the README's two set-up commands are checked against
  ``.ci/run`` and the packaging (CI runs the test command itself); ``pip
  install`` lines are installation instructions and are only parsed.
"""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import tifffile

from napari_flowscope import cli, synthetic

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
# docs/benchmarks.md holds tables written by scripts, not examples
DOCUMENTS = [d for d in DOCUMENTS if d.name != 'benchmarks.md']
FENCE = re.compile(r'^```(\w+)\n(.*?)^```', re.MULTILINE | re.DOTALL)
SETUP_DEMO = (
    'python3 -m venv .venv && .venv/bin/pip install -q -e ".[all]" '
    '&& .venv/bin/napari-flowscope demo'
)
SETUP_TESTS = (
    'python3 -m venv .venv && .venv/bin/pip install -q -e ".[testing]" '
    '&& .venv/bin/python -m pytest'
)


def _blocks(language):
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding='utf-8')
        for number, match in enumerate(FENCE.finditer(text)):
            if match.group(1) == language:
                found.append(
                    pytest.param(
                        match.group(2),
                        id=f'{document.relative_to(ROOT)}#{number}',
                    )
                )
    return found


@pytest.fixture
def example_dir(tmp_path, monkeypatch):
    sequence = synthetic.drifting_tissue(n_frames=12, shape=(96, 96))
    stack = (sequence.stack * 4000).astype('uint16')
    tifffile.imwrite(
        tmp_path / 'input.tif',
        stack,
        imagej=True,
        resolution=(1 / 0.65, 1 / 0.65),
        metadata={'axes': 'TYX', 'finterval': 0.5, 'unit': 'um'},
    )
    # docs/volumes.md corrects a small TZYX hyperstack
    volumes = synthetic.drifting_volume(n_frames=3, shape=(8, 32, 32))
    tifffile.imwrite(
        tmp_path / 'volumes.tif',
        (volumes.stack * 4000).astype('uint16'),
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={'axes': 'TZYX', 'spacing': 1.0, 'unit': 'um'},
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize('code', _blocks('python'))
def test_python_example_runs(code, example_dir):
    exec(compile(code, '<doc example>', 'exec'), {'__name__': '__doc__'})


@pytest.mark.parametrize('code', _blocks('python'))
def test_python_example_asserts_its_result(code):
    """An example that only prints would pass whatever it computed."""
    assert re.search(r'^\s*assert ', code, re.MULTILINE)


@pytest.mark.parametrize('code', _blocks('bash'))
def test_shell_example_runs(code, example_dir):
    for line in code.splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        if line.startswith('python3 -m venv'):
            assert line in (SETUP_DEMO, SETUP_TESTS)
        elif line.startswith('pip install'):
            assert 'napari-flowscope' in line
        elif line.startswith('napari-flowscope'):
            arguments = shlex.split(line)[1:]
            if arguments[:1] == ['demo']:
                arguments.append('--headless')
            assert cli.main(arguments) in (0, None)
            # the run's folder holds a finished run (params.json comes last)
            output = _output_folder(arguments)
            assert (output / 'params.json').is_file()
            assert (output / 'registered.tif').is_file()
        else:
            pytest.fail(f'untested shell example: {line}')


def _output_folder(arguments):
    for flag in ('-o', '--output'):
        if flag in arguments:
            return Path(arguments[arguments.index(flag) + 1])
    return Path(cli.DEFAULT_DEMO_OUTPUT)


def test_readme_has_exactly_the_two_setup_commands():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    setup_lines = [
        line
        for line in readme.splitlines()
        if line.startswith('python3 -m venv')
    ]
    assert setup_lines == [SETUP_DEMO, SETUP_TESTS]


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (ROOT / '.ci' / 'run').read_text().splitlines()
    # `|| exit 1`: under `set -e` a failure inside an && chain goes on
    assert f'{SETUP_TESTS} || exit 1' in ci_lines


def _fake_command(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n{body}\n')
    path.chmod(0o755)


CI_STEPS = ['venv', 'pip', 'pytest', 'npe2', 'ruff', 'ruff']


@pytest.mark.parametrize('failing', [None, 'venv', 'pip', 'pytest', 'npe2'])
def test_ci_stops_at_the_first_failing_step(tmp_path, failing):
    """.ci/run on a fake machine where one step fails: the run fails and
    nothing after that step runs; with no failure, every step runs (in a
    fresh .venv) and the run passes."""
    repo, bin_dir, log = tmp_path / 'repo', tmp_path / 'bin', tmp_path / 'log'
    (repo / '.ci').mkdir(parents=True)
    (repo / '.ci' / 'run').write_text((ROOT / '.ci' / 'run').read_text())
    (repo / '.venv').mkdir()
    (repo / '.venv' / 'stale').write_text('left by an earlier run')

    def step(name):
        return f'echo {name} >> {log}; exit {int(name == failing)}'

    templates = tmp_path / 'venv-bin'
    for name, step_name in [
        ('pip', 'pip'),
        ('python', 'pytest'),
        ('npe2', 'npe2'),
        ('ruff', 'ruff'),
    ]:
        _fake_command(templates / name, step(step_name))
    # `python3 -m venv .venv` makes the fake environment (a fresh one: the
    # stale file must be gone by then)
    _fake_command(
        bin_dir / 'python3',
        f'echo venv >> {log}\n'
        f'{"exit 1" if failing == "venv" else ""}\n'
        'test ! -e .venv/stale || exit 3\n'
        f'mkdir -p .venv/bin && cp {templates}/* .venv/bin/',
    )
    _fake_command(bin_dir / 'dpkg-query', "printf 'install ok installed'")
    done = subprocess.run(
        ['bash', str(repo / '.ci' / 'run')],
        env={'PATH': f'{bin_dir}:/usr/bin:/bin', 'HOME': str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    steps = log.read_text().split()
    if failing is None:
        assert done.returncode == 0, done.stderr
        assert steps == CI_STEPS
    else:
        assert done.returncode != 0
        assert steps == CI_STEPS[: CI_STEPS.index(failing) + 1]
