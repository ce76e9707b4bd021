"""The slide backend registry: discovery, the order backends are tried in, suffixes and stems."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import napari_care.core.slide as slide_package
from napari_care.core.slide import backends
from napari_care.core.slide.backends import (
    SlideBackend,
    backends_for,
    register_backend,
    registered_backends,
    slide_stem,
    slide_suffixes,
)
from napari_care.core.slide.handle import SlideReadError, open_slide

# the choice open_slide made before the registry, written out: the order must not change
OLD_OPENSLIDE_FIRST = {".mrxs", ".vms", ".vmu", ".scn", ".bif", ".dcm", ".svslide"}
OLD_SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", *OLD_OPENSLIDE_FIRST}
TIFF_HEADER = b"II*\x00" + bytes(12)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, restored after the test (backends a test adds go away)."""
    registered_backends()  # the package's own backends, found before the copy is taken
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    return backends._REGISTRY


def test_the_package_backends_register_themselves():
    assert [backend.name for backend in registered_backends()] == ["openslide", "tifffile"]
    assert set(slide_suffixes()) == OLD_SLIDE_SUFFIXES
    assert len(slide_suffixes()) == len(set(slide_suffixes()))


@pytest.mark.parametrize("suffix", [*sorted(OLD_SLIDE_SUFFIXES), ".SVS", ".MRXS", ".png", ""])
@pytest.mark.parametrize("content", ["tiff", "other", "folder"])
def test_backends_are_tried_in_the_order_of_before(tmp_path, suffix, content):
    path = tmp_path / f"slide{suffix}"
    if content == "folder":
        path.mkdir()
    else:
        path.write_bytes(TIFF_HEADER if content == "tiff" else b"not a slide")
    tiff_first = suffix.lower() not in OLD_OPENSLIDE_FIRST and content == "tiff"
    expected = ["tifffile", "openslide"] if tiff_first else ["openslide", "tifffile"]
    assert [backend.name for backend in backends_for(path)] == expected


def test_a_file_no_backend_reads_names_every_reason_in_order(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("not a slide")
    with pytest.raises(SlideReadError) as caught:
        open_slide(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read this file as a slide (openslide: ")
    assert message.endswith("; tiff: not a TIFF file)")


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("x.ome.tif", "x"),
        ("x.OME.TIFF", "x"),
        ("CMU-1.svs", "CMU-1"),
        ("a.b.mrxs", "a.b"),
        ("x.ome.svs", "x.ome"),
        ("plain", "plain"),
        ("photo.png", "photo"),
    ],
)
def test_slide_stem(name, stem):
    assert slide_stem(Path("/data") / name) == stem
    assert slide_stem(f"/data/{name}") == stem


def test_register_backend_refuses_a_second_of_a_name_and_odd_suffixes(scratch_registry):
    def never(path, user_mpp):
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="'tifffile' is already registered"):
        register_backend(SlideBackend("tifffile", (".x",), never))
    with pytest.raises(ValueError, match="must be lower case and start with"):
        register_backend(SlideBackend("upper", (".CZI",), never))
    with pytest.raises(ValueError, match="must be lower case and start with"):
        register_backend(SlideBackend("dotless", ("czi",), never))
    assert set(scratch_registry) == {"openslide", "tifffile"}


FAKE_BACKEND = '''
"""A backend of one grey level: what a new backend file looks like."""

from pathlib import Path

import numpy as np

from napari_care.core.slide.backends import SlideBackend, SlideParts, register_backend
from napari_care.core.slide.meta import Calibration


class GreySource:
    height, width, tile_height, tile_width = 300, 400, 128, 128

    def decode_tile(self, ty, tx):
        return np.full((self.tile_height, self.tile_width, 3), 77, np.uint8)


def open_grey(path: Path, user_mpp):
    if path.read_bytes()[:4] != b"grey":
        raise ValueError("not a grey file")
    return SlideParts([GreySource()], calibration=Calibration(user_mpp or (0.5, 0.5), "fake", None),
                      vendor="fake-vendor", properties={}, associated={}, on_close=[])


register_backend(SlideBackend("grey", (".grey",), open_grey))
'''


@pytest.fixture
def grey_backend_file(tmp_path, monkeypatch, scratch_registry):
    """A ``grey_backend.py`` in a folder of the slide package, found the way the package's own are."""
    folder = tmp_path / "more_backends"
    folder.mkdir()
    (folder / "grey_backend.py").write_text(textwrap.dedent(FAKE_BACKEND))
    monkeypatch.setattr(slide_package, "__path__", [*slide_package.__path__, str(folder)])
    monkeypatch.setattr(backends, "_discovered", False)
    yield
    sys.modules.pop(f"{slide_package.__name__}.grey_backend", None)
    if hasattr(slide_package, "grey_backend"):
        delattr(slide_package, "grey_backend")


def test_a_new_backend_file_registers_itself_and_opens_its_files(grey_backend_file, tmp_path):
    assert ".grey" in slide_suffixes()  # discovered: no list was edited
    path = tmp_path / "scan.grey"
    path.write_bytes(b"grey")
    assert backends_for(path)[0].name == "grey"
    with open_slide(path) as slide:
        assert slide.backend == "grey" and slide.vendor == "fake-vendor"
        assert slide.mpp == (0.5, 0.5) and slide.mpp_source == "fake"
        assert slide.dimensions[0] == (400, 300)
        np.testing.assert_array_equal(
            slide.read_region((10, 20), 0, (50, 40)), np.full((40, 50, 3), 77, np.uint8)
        )


def test_a_backend_that_fails_passes_the_file_on(grey_backend_file, tmp_path):
    path = tmp_path / "scan.svs"
    path.write_text("not a slide")
    with pytest.raises(
        SlideReadError, match=r"\(openslide: .*; tiff: not a TIFF file; grey: not a grey file\)$"
    ):
        open_slide(path)  # a backend of the default rank is the last fallback


def test_finding_the_backends_loads_no_file_library():
    code = (
        "import sys, json; from napari_care.core.slide.backends import registered_backends; "
        "registered_backends(); print(json.dumps([m for m in ('tifffile', 'openslide') if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
