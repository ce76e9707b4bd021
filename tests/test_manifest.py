"""The napari manifest: valid, discoverable, and every command it declares imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

import napari_care  # noqa: E402
from napari_care.core.slide.backends import slide_suffixes  # noqa: E402

MANIFEST = Path(napari_care.__file__).resolve().parent / "napari.yaml"
NPE2_CLI = Path(sys.executable).parent / "npe2"


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_file(MANIFEST)


def test_manifest_is_valid_and_its_commands_import(manifest):
    assert manifest.name == "napari-care"
    assert manifest.contributions.commands, "the manifest declares no commands"
    manifest.validate_imports()  # imports every python_name; raises naming the one that fails


def test_every_contribution_points_at_a_declared_command(manifest):
    declared = {command.id for command in manifest.contributions.commands}
    contributions = manifest.contributions
    used = [
        item.command
        for group in ("readers", "writers", "widgets", "sample_data")
        for item in (getattr(contributions, group) or [])
        if hasattr(item, "command")
    ]
    assert used and set(used) <= declared


def test_reader_accepts_slide_files(manifest):
    patterns = {pattern for reader in manifest.contributions.readers for pattern in reader.filename_patterns}
    assert {"*.svs", "*.tif", "*.tiff", "*.ndpi", "*.mrxs"} <= patterns


def test_slide_reader_patterns_are_the_backends_suffixes(manifest):
    """napari.yaml stays static YAML; this keeps its slide patterns in step with the backend registry."""
    (reader,) = [
        reader for reader in manifest.contributions.readers if reader.command == "napari-care.get_reader"
    ]
    assert sorted(reader.filename_patterns) == sorted(f"*{suffix}" for suffix in slide_suffixes())


def test_installed_manifest_is_this_one(manifest):
    installed = npe2.PluginManifest.from_distribution("napari-care")  # through the entry point
    assert installed.model_dump() == manifest.model_dump()


@pytest.mark.skipif(not NPE2_CLI.exists(), reason="no npe2 command next to this Python")
def test_npe2_validate_cli():
    done = subprocess.run(
        [str(NPE2_CLI), "validate", "napari-care"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
