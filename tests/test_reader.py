"""The napari reader: a cheap gate, and slides as multiscale RGB layers in micrometres.

The viewer test (marked ``gui``) needs a display: ``xvfb-run -a pytest tests/test_reader.py``
(pytest-xvfb starts one by itself where it is installed).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_care._reader import napari_get_reader, slide_stem
from napari_care.core.slide.handle import Slide

SCREENSHOT = Path("/tmp/reader_screenshot.png")


def read_layers(path: Path):
    """Run the reader napari would get for ``path``, without the missing-mpp warning."""
    reader = napari_get_reader(str(path))
    assert callable(reader), f"the reader declined {path.name}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return reader(str(path))


def close_layers(layers) -> None:
    for _, kwargs, _ in layers:
        kwargs["metadata"]["slide"].close()


def test_reader_declines_what_it_cannot_show(tmp_path, make_pyramid):
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    deep = tmp_path / "deep.tif"
    tifffile.imwrite(deep, np.zeros((64, 64), np.uint16), tile=(32, 32))
    gray = make_pyramid("gray.tif", samples=1, level_count=1).path
    rgb = make_pyramid("rgb.tif").path
    assert napari_get_reader(str(png)) is None
    assert napari_get_reader(str(deep)) is None  # 16-bit grayscale: napari's own reader shows it
    assert napari_get_reader(str(gray)) is None
    assert napari_get_reader(str(tmp_path / "missing.svs")) is None
    assert napari_get_reader([str(rgb), str(rgb)]) is None
    assert napari_get_reader(12) is None
    assert callable(napari_get_reader(str(rgb)))
    assert callable(napari_get_reader([str(rgb)]))


def test_reader_claims_the_real_svs(shared_slide):
    assert callable(napari_get_reader(str(shared_slide("CMU-1-Small-Region.svs"))))
    assert callable(napari_get_reader(str(shared_slide("kidney-48-5-strip.tif"))))


def assert_reader_names_the_broken_file(path: Path) -> None:
    reader = napari_get_reader(str(path))
    assert callable(reader)  # claimed by its name, so the user hears why it fails
    with pytest.raises(Exception, match=re.escape(path.name)):
        reader(str(path))


def test_broken_svs_error_names_the_file(shared_slide):
    assert_reader_names_the_broken_file(shared_slide("broken.svs"))


def test_generated_broken_svs_error_names_the_file(tmp_path):
    path = tmp_path / "garbage.svs"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1001, dtype=np.uint8).tobytes())
    assert_reader_names_the_broken_file(path)


def test_layer_tuple_of_the_real_svs(shared_slide):
    layers = read_layers(shared_slide("CMU-1-Small-Region.svs"))
    try:
        assert len(layers) == 1
        data, kwargs, layer_type = layers[0]
        assert layer_type == "image"
        assert [level.shape for level in data] == [(2967, 2220, 3), (1483, 1110, 3), (741, 555, 3)]
        assert all(level.dtype == np.uint8 for level in data)
        assert kwargs["multiscale"] is True and kwargs["rgb"] is True
        assert kwargs["contrast_limits"] == (0, 255)
        assert kwargs["scale"] == (0.499, 0.499)
        assert kwargs["units"] == ("micrometer", "micrometer")
        assert kwargs["name"] == "CMU-1-Small-Region"
        info = kwargs["metadata"]["napari_care"]
        assert (
            info["mpp"] == [0.499, 0.499] and info["mpp_source"] == "aperio" and info["objective_power"] == 20
        )
        assert isinstance(kwargs["metadata"]["slide"], Slide)
    finally:
        close_layers(layers)


def test_layer_scale_is_mpp_y_then_x(make_pyramid):
    pyramid = make_pyramid("x.ome.tif", layout="ome", ome_physical_size=(0.25, 0.26, "µm"))
    layers = read_layers(pyramid.path)
    try:
        data, kwargs, _ = layers[0]
        assert kwargs["name"] == "x"
        assert kwargs["scale"] == (0.26, 0.25)
        assert kwargs["units"] == ("micrometer", "micrometer")
        assert [level.shape[:2] for level in data] == [(700, 500), (350, 250), (175, 125)]
        np.testing.assert_array_equal(np.asarray(data[1]), pyramid.rgb(1))
    finally:
        close_layers(layers)


def test_uncalibrated_slide_is_in_pixels(make_pyramid):
    layers = read_layers(make_pyramid("plain.tiff").path)
    try:
        _, kwargs, _ = layers[0]
        assert kwargs["scale"] == (1.0, 1.0)
        assert kwargs["units"] == ("pixel", "pixel")
        assert kwargs["metadata"]["napari_care"]["mpp"] is None
    finally:
        close_layers(layers)


def test_slide_stem():
    assert slide_stem(Path("/a/x.ome.tif")) == "x"
    assert slide_stem(Path("/a/x.OME.TIFF")) == "x"
    assert slide_stem(Path("/a/CMU-1.svs")) == "CMU-1"


@pytest.mark.gui
def test_viewer_opens_the_svs_and_shows_tissue(make_napari_viewer, shared_slide):
    from skimage.io import imsave

    path = shared_slide("CMU-1-Small-Region.svs")
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(path, plugin="napari-care")
    assert len(layers) == 1
    layer = layers[0]
    try:
        assert layer.multiscale and layer.rgb
        assert len(layer.data) == 3 and layer.data[0].shape == (2967, 2220, 3)
        assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
        assert layer.name == "CMU-1-Small-Region"
        viewer.reset_view()
        screenshot = viewer.screenshot(canvas_only=True, flash=False)
        imsave(SCREENSHOT, screenshot, check_contrast=False)
        rgb = screenshot[..., :3].astype(np.int16)
        assert rgb.std() > 20  # not a blank canvas
        red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        pink = (red > 150) & (red - green > 30) & (blue - green > 10)  # eosin-stained tissue
        assert pink.mean() > 0.02
    finally:
        layer.metadata["slide"].close()
