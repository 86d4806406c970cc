"""The npe2 manifest: valid, top-level copy identical to the packaged one."""

from pathlib import Path

import npe2

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / 'src' / 'napari_flowscope' / 'napari.yaml'
TOP_LEVEL = ROOT / 'napari.yaml'


def test_top_level_manifest_is_byte_identical_to_packaged_one():
    assert TOP_LEVEL.read_bytes() == PACKAGED.read_bytes()


def test_manifest_is_valid_and_names_the_distribution():
    manifest = npe2.PluginManifest.from_file(PACKAGED)
    assert manifest.name == 'napari-flowscope'
    assert {'Registration', 'Measurement', 'Visualization'} <= set(
        manifest.categories
    )


def test_installed_plugin_resolves_every_command():
    manifest = npe2.PluginManifest.from_distribution('napari-flowscope')
    manifest.validate_imports()
    command_ids = {command.id for command in manifest.contributions.commands}
    widget_commands = {w.command for w in manifest.contributions.widgets}
    assert widget_commands <= command_ids
