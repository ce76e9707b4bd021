"""Opening a saved run in napari: the slide and the same three CARE layers, without re-encoding."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_care._care_layers import ATTENTION, REGIONS, ROI, DisplayOptions, care_layers
from napari_care._geojson_reader import napari_get_geojson_reader, read_geojson_layers
from napari_care._run_reader import read_run_layers, run_layers
from napari_care.core.outputs import write_outputs
from napari_care.core.progress import run_to_end
from napari_care.core.segment import SegmentOptions, segment
from napari_care.core.slide.handle import open_slide


@pytest.fixture(scope="module")
def saved(widget_slide_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    with open_slide(widget_slide_path) as slide:
        result = run_to_end(segment(slide, SegmentOptions(k=4, n_groups=3)))
        write_outputs(result, slide, out, "small", group_names={1: "stroma"})
        original = care_layers(result, slide, DisplayOptions(colour_by="group"))
    return out, original


def test_care_json_and_the_plugins_geojson_open_as_the_run(saved):
    out, original = saved
    assert napari_get_geojson_reader(str(out / "small.care.json")) is read_run_layers
    assert napari_get_geojson_reader(str(out / "small.regions.geojson")) is read_run_layers
    layers = read_run_layers(str(out / "small.care.json"))
    assert [kind for _, _, kind in layers] == ["image", "labels", "image", "shapes"]
    names = [kwargs["name"] for _, kwargs, _ in layers[1:]]
    assert names == [REGIONS, ATTENTION, ROI]
    for (data, kwargs, _), (want, want_kwargs, _) in zip(layers[1:], original, strict=True):
        if isinstance(want, list):
            assert len(data) == len(want)
            for a, b in zip(data, want, strict=True):
                np.testing.assert_allclose(a, b)
        else:
            np.testing.assert_array_equal(np.asarray(data), np.asarray(want))
        for placement in ("scale", "translate", "affine"):
            if placement in want_kwargs:
                np.testing.assert_allclose(np.asarray(kwargs[placement]), np.asarray(want_kwargs[placement]))
    table = layers[1][1]["features"]
    named = {g: n for g, n in zip(table["group"], table["group_name"], strict=True) if g >= 0}
    assert named[1] == "stroma" and named[0] == "CARE group 0"


def test_a_moved_slide_is_found_beside_the_run_or_picked_or_named(saved, widget_slide_path, tmp_path):
    out, _ = saved
    moved = tmp_path / "run"
    shutil.copytree(out, moved)
    document = (
        (moved / "small.care.json")
        .read_text()
        .replace(str(widget_slide_path), str(tmp_path / "gone.ome.tif"))
    )
    (moved / "small.care.json").write_text(document)
    with pytest.raises(FileNotFoundError, match=r"its slide .*gone\.ome\.tif is not there any more"):
        run_layers(moved / "small.care.json", ask=lambda run: None)
    layers = run_layers(
        moved / "small.care.json", ask=lambda run: str(widget_slide_path)
    )  # the user picks it
    assert layers[1][1]["name"] == REGIONS
    shutil.copy(widget_slide_path, moved / "gone.ome.tif")
    assert len(run_layers(moved / "small.care.json", ask=None)) == 4  # found beside the run


def test_other_geojson_still_reads_as_annotations(saved, tmp_path):
    out, _ = saved
    alone = tmp_path / "small.regions.geojson"
    shutil.copy(out / "small.regions.geojson", alone)  # no run files beside it: plain annotations
    assert napari_get_geojson_reader(str(alone)) is read_geojson_layers


def test_a_run_made_with_its_own_mpp_reopens_at_that_calibration(widget_slide_path, tmp_path):
    with open_slide(widget_slide_path, mpp=0.77) as slide:  # as `segment --mpp 0.77`
        result = run_to_end(segment(slide, SegmentOptions(k=4, n_groups=2)))
        write_outputs(result, slide, tmp_path, "forced")
        original = care_layers(result, slide, DisplayOptions(colour_by="group"))
    layers = run_layers(tmp_path / "forced.care.json", ask=None)
    slide_layer = layers[0][1]["metadata"]["slide"]
    assert slide_layer.mpp == pytest.approx((0.77, 0.77))
    np.testing.assert_allclose(np.asarray(layers[1][1]["scale"]), np.asarray(original[0][1]["scale"]))
