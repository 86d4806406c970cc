"""Every picture in README.md and docs/ is one the screenshot script made."""

import hashlib
import json
import re
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / 'screenshots'
IMAGE = re.compile(r'!\[[^\]]*\]\(([^)\s]+)\)')
DOCUMENTS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]


def _referenced_images():
    found = {}
    for document in DOCUMENTS:
        for target in IMAGE.findall(document.read_text(encoding='utf-8')):
            found.setdefault(target, []).append(document.name)
    return found


def test_docs_show_pictures():
    assert len(_referenced_images()) >= 8


def test_every_referenced_picture_is_in_screenshots_and_exists():
    for target, documents in _referenced_images().items():
        name = target.rsplit('/', 1)[-1]
        assert '/screenshots/' in f'/{target}', (target, documents)
        assert (SCREENSHOTS / name).is_file(), (target, documents)


def test_pictures_are_the_ones_the_script_made_at_this_version():
    manifest = json.loads((SCREENSHOTS / 'manifest.json').read_text())
    current = Version(version('napari-flowscope')).base_version
    assert Version(manifest['version']).base_version == current
    for target in _referenced_images():
        name = target.rsplit('/', 1)[-1]
        digest = hashlib.sha256((SCREENSHOTS / name).read_bytes())
        assert manifest['images'].get(name) == digest.hexdigest(), name
