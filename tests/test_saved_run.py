"""A run reopens from its files as it was; groups have names; measurements per region and group."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_care.core.measurements import group_measurements, region_measurements
from napari_care.core.outputs import write_outputs
from napari_care.core.progress import run_to_end
from napari_care.core.qupath.read import read_geojson
from napari_care.core.regions import region_raster
from napari_care.core.saved_run import load_run, run_paths
from napari_care.core.segment import SegmentOptions, segment
from napari_care.core.slide.handle import open_slide


@pytest.fixture(scope="module")
def run(widget_slide_path, tmp_path_factory):
    """The small slide segmented into 3 groups and written, group 0 named "tumour"."""
    out = tmp_path_factory.mktemp("run")
    with open_slide(widget_slide_path) as slide:
        result = run_to_end(segment(slide, SegmentOptions(k=4, n_groups=3)))
        write_outputs(result, slide, out, "small", group_names={0: "tumour"})
    return result, out


def test_a_reopened_run_is_the_run(run, widget_slide_path):
    result, out = run
    saved = load_run(out / "small.care.json")
    care, again = result.care, saved.result.care
    for name in ("region_of_patch", "a", "alpha", "beta", "patch_attention", "slide_embedding", "grid"):
        np.testing.assert_array_equal(getattr(again, name), getattr(care, name))
    assert (again.roi, again.k, again.mode) == (care.roi, care.k, care.mode)
    np.testing.assert_array_equal(saved.result.group_of_region, result.group_of_region)
    np.testing.assert_array_equal(saved.result.grid.coords, result.grid.coords)
    assert saved.result.grid.stride_level0 == result.grid.stride_level0
    assert saved.result.slide_mpp == pytest.approx(result.slide_mpp)
    np.testing.assert_array_equal(region_raster(saved.result).values, region_raster(result).values)
    assert saved.features_loaded  # the features file beside it
    np.testing.assert_array_equal(saved.result.features.features, result.features.features)
    assert saved.slide_path == widget_slide_path
    assert saved.group_names[0] == "tumour" and saved.group_names[1] == "CARE group 1"
    for source in ("small.care.npz", "small.regions.geojson"):
        assert run_paths(out / source) == (out / "small.care.json", out / "small.care.npz")


def test_without_the_features_file_the_layers_still_reopen(run, tmp_path):
    result, out = run
    for name in ("small.care.json", "small.care.npz"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    saved = load_run(tmp_path / "small.care.json")
    assert not saved.features_loaded and saved.result.features.features.shape == (len(result.features), 0)
    np.testing.assert_array_equal(region_raster(saved.result).values, region_raster(result).values)


def test_missing_or_foreign_files_are_named(run, tmp_path):
    _, out = run
    (tmp_path / "old.care.json").write_text((out / "small.care.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"old\.care\.npz not found \(written before"):
        load_run(tmp_path / "old.care.json")
    (tmp_path / "old.care.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"old\.care\.npz: not a run's arrays"):
        load_run(tmp_path / "old.care.json")
    with pytest.raises(ValueError, match="not a file of a segmentation run"):
        load_run(tmp_path / "slide.svs")


def test_group_names_reach_care_json_and_the_geojson_classes(run):
    _, out = run
    document = json.loads((out / "small.care.json").read_text())
    groups = {g["id"]: g for g in document["groups"]}
    assert groups[0]["name"] == "tumour" and len(groups) == 3
    assert sum(g["tissue_share"] for g in groups.values()) == pytest.approx(1.0)
    assert document["phenotype_groups"]["n_groups"] == 3 and document["phenotype_groups"]["requested"] == 3
    classes = {}
    for annotation in read_geojson(out / "small.regions.geojson"):
        if annotation.object_type == "detection":
            classes[int(annotation.measurements["CARE group"])] = (annotation.class_name, annotation.color)
    assert classes[0][0] == "tumour" and classes[1][0] == "CARE group 1"
    assert tuple(classes[0][1]) == tuple(groups[0]["color"])


def test_measurements_by_hand(run):
    result, out = run
    regions = region_measurements(result)
    care = result.care
    patch_area = result.grid.stride_level0**2 * result.slide_mpp[0] * result.slide_mpp[1]
    np.testing.assert_allclose(regions["area_um2"], care.region_sizes * patch_area)
    np.testing.assert_allclose(regions["tissue_share"], care.region_sizes / care.region_sizes.sum())
    np.testing.assert_allclose(regions["mean_attention"], care.a / care.region_sizes, rtol=1e-5)  # a / n
    groups = group_measurements(result, {0: "tumour"})
    for g in groups["group"]:
        members = result.group_of_region == g
        assert groups["regions"][g] == members.sum()
        assert groups["patches"][g] == care.region_sizes[members].sum()
        assert groups["a"][g] == pytest.approx(care.a[members].sum())
    with open(out / "small.measurements.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["level"] for r in rows].count("region") == care.n_regions
    tumour = next(r for r in rows if r["level"] == "group" and r["id"] == "0")
    assert tumour["group_name"] == "tumour" and int(tumour["patches"]) == groups["patches"][0]
    roi = next(r for r in rows if r["level"] == "region" and r["id"] == str(care.roi))
    assert roi["is_roi"] == "true"
    geo = {
        int(a.measurements["CARE region id"]): a.measurements
        for a in read_geojson(out / "small.regions.geojson")
        if a.object_type == "detection"
    }
    assert geo[care.roi]["CARE % of tissue"] == pytest.approx(
        100 * regions["tissue_share"][care.roi], abs=1e-3
    )
    assert geo[care.roi]["CARE mean attention"] == pytest.approx(
        regions["mean_attention"][care.roi], rel=1e-4
    )
