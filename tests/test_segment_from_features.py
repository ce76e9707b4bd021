"""CARE on feature files made earlier (TRIDENT, CLAM, napari_care): the same regions as the slide.

One small generated slide (4096 x 3072 px at 0.5 um/px, about a hundred tissue tiles at 20x)
is extracted once; its features are written as TRIDENT and CLAM would write them, and each
file is segmented without the slide. The regions must be those of segmenting the slide.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_care.core.feature_jobs import NO_PATCHES, FeatureJob, feature_jobs, segment_features_job
from napari_care.core.features import PatchFeatures, load_features
from napari_care.core.jobs import SlideJob, extract_job, job_settings, segment_job
from napari_care.core.outputs import TRAINING_FREE, output_paths, recorded_settings, write_outputs
from napari_care.core.preflight import PreflightError, preflight
from napari_care.core.progress import run_to_end
from napari_care.core.segment import (
    NoTissueError,
    SegmentOptions,
    features_grid,
    segment,
    segment_from_features,
)
from napari_care.core.slide.handle import open_slide

OPTIONS = SegmentOptions(k=4, n_groups=3)


@pytest.fixture(scope="module")
def direct(widget_slide_path):
    """The slide segmented directly: its features and result."""
    with open_slide(widget_slide_path) as slide:
        return run_to_end(segment(slide, OPTIONS))


def write_trident_file(path: Path, features: PatchFeatures) -> Path:
    """A feature file as TRIDENT writes it: features [N, D], coords with TRIDENT's attributes, no others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features.features)
        coords = f.create_dataset("coords", data=features.coords)
        coords.attrs.update(
            {
                "patch_size": features.patch_size_px,
                "patch_size_level0": int(features.patch_size_level0),
                "level0_magnification": 20,
                "target_magnification": 20,
                "overlap": 0,
                "name": path.stem,
            }
        )
    return path


def write_clam_file(path: Path, features: PatchFeatures) -> Path:
    """A CLAM ``h5_files/`` file without attributes: the patch size is the coords' spacing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features.features)
        f.create_dataset("coords", data=features.coords)
    return path


def test_a_trident_file_gives_the_regions_of_the_slide(direct, tmp_path):
    path = write_trident_file(tmp_path / "features_default" / "small.h5", direct.features)
    features = load_features(path)
    result = run_to_end(segment_from_features(features, OPTIONS))
    np.testing.assert_array_equal(result.care.region_of_patch, direct.care.region_of_patch)
    np.testing.assert_array_equal(result.group_of_region, direct.group_of_region)
    assert result.care.roi == direct.care.roi
    np.testing.assert_allclose(result.care.slide_embedding, direct.care.slide_embedding)
    assert result.from_features and not direct.from_features and result.encoded_tiles == 0
    assert result.grid.tile_size_level0 == direct.grid.tile_size_level0
    assert result.slide_mpp == pytest.approx(direct.slide_mpp)  # 20x patches of 224 px over 224 level-0 px
    np.testing.assert_allclose(result.area_um2_of_region, direct.area_um2_of_region)


def test_a_clam_file_without_attributes_gives_the_regions_of_the_slide(direct, tmp_path):
    path = write_clam_file(tmp_path / "clam" / "h5_files" / "small.h5", direct.features)
    [job], notes = feature_jobs(tmp_path / "clam", patch_size_px=224)
    assert job.path == path and job.stem == "small" and not notes
    features = load_features(job.path, patch_size_px=job.patch_size_px)
    assert features.patch_size_level0 == direct.features.patch_size_level0
    result = run_to_end(segment_from_features(features, OPTIONS))
    np.testing.assert_array_equal(result.care.region_of_patch, direct.care.region_of_patch)


def test_clam_pt_files_segment_with_the_coords_of_their_h5(direct, tmp_path):
    import torch

    write_clam_file(tmp_path / "clam" / "h5_files" / "small.h5", direct.features)
    (tmp_path / "clam" / "pt_files").mkdir()
    torch.save(torch.from_numpy(direct.features.features), tmp_path / "clam" / "pt_files" / "small.pt")
    [job], _ = feature_jobs(tmp_path / "clam" / "pt_files")
    assert job.path.suffix == ".pt"
    row = segment_features_job(job, tmp_path / "out", OPTIONS)
    assert row["status"] == "done", row
    document = json.loads((tmp_path / "out" / "small.care.json").read_text())
    assert document["roi"] == direct.care.roi and document["regions_count"] == direct.care.n_regions
    assert document["options"]["tile_size_px"] == 224  # the spacing: patches read at level 0


def test_with_the_slide_the_grid_reads_its_levels_and_the_mpp_is_the_slides(
    direct, widget_slide_path, tmp_path
):
    with open_slide(widget_slide_path) as slide:
        result = run_to_end(segment_from_features(direct.features, OPTIONS, slide=slide))
        grid = features_grid(direct.features, slide)
    assert result.slide_mpp == slide.mpp
    assert (grid.read_level, grid.read_downsample) == (direct.grid.read_level, direct.grid.read_downsample)
    np.testing.assert_array_equal(grid.coords, direct.grid.coords)
    np.testing.assert_array_equal(grid.grid, direct.grid.grid)
    np.testing.assert_array_equal(result.care.region_of_patch, direct.care.region_of_patch)
    assert result.options.encoder == "default" and result.options.tile_size_px == 224


def test_a_box_keeps_the_patches_that_meet_it_and_an_empty_one_is_no_tissue(direct):
    x, y = direct.features.coords[0]
    size = direct.features.patch_size_level0
    box = (x, y, x + 2 * size, y + 2 * size)
    result = run_to_end(segment_from_features(direct.features, OPTIONS, box=box))
    assert 1 <= len(result.features) <= 4 and result.box == box
    with pytest.raises(NoTissueError, match="no patches in the view"):
        run_to_end(segment_from_features(direct.features, OPTIONS, box=(-900, -900, -800, -800)))


def test_the_output_set_holds_the_slide_features(direct, widget_slide_path, tmp_path):
    with open_slide(widget_slide_path) as slide:
        paths = write_outputs(direct, slide, tmp_path, "small", settings={"k": 4})
    assert list(paths) == [
        "features",
        "geojson",
        "slide_features",
        "run",
        "measurements",
        "summary",
    ]  # marker last
    assert paths["slide_features"] == tmp_path / "small.slide_features.h5"
    with h5py.File(paths["slide_features"], "r") as f:
        embedding = np.asarray(f["features"][()]).reshape(-1)
        attributes = {name: (v.decode() if isinstance(v, bytes) else v) for name, v in f.attrs.items()}
    np.testing.assert_allclose(embedding, direct.care.slide_embedding)
    assert embedding.dtype == np.float32
    assert TRAINING_FREE in attributes.values() and "default" in attributes.values()
    assert recorded_settings(paths["summary"]) == {"k": 4}


def test_features_without_a_slide_write_regions_summary_and_slide_features_but_not_features(direct, tmp_path):
    source = write_trident_file(tmp_path / "job" / "features_default" / "small.h5", direct.features)
    row = segment_features_job(FeatureJob(source, "small"), tmp_path / "out", OPTIONS)
    assert row["status"] == "done", row
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "small.care.json",
        "small.care.npz",
        "small.measurements.csv",
        "small.regions.geojson",
        "small.slide_features.h5",
    ]
    document = json.loads((tmp_path / "out" / "small.care.json").read_text())
    assert document["features_file"] == str(source) and document["slide"]["path"] is None
    assert (
        document["slide"]["mpp"] == pytest.approx([0.5, 0.5])
        and document["slide"]["mpp_source"] == "features"
    )
    assert document["regions_count"] == direct.care.n_regions and document["roi"] == direct.care.roi
    assert document["options"]["tile_size_px"] == 224
    again = segment_features_job(FeatureJob(source, "small"), tmp_path / "out", OPTIONS)
    assert (again["status"], again["detail"]) == ("skipped", "already done")
    other = segment_features_job(FeatureJob(source, "small"), tmp_path / "out", SegmentOptions(k=3))
    assert other["status"] == "failed" and "k 4 -> 3" in other["detail"]


def test_an_empty_feature_file_is_a_skipped_row(tmp_path):
    path = tmp_path / "features_default" / "empty.h5"
    empty = PatchFeatures(np.zeros((0, 8), np.float32), np.zeros((0, 2)), 224, 224.0, 0.5, "default")
    write_trident_file(path, empty)
    row = segment_features_job(FeatureJob(path, "empty"), tmp_path / "out", OPTIONS)
    assert (row["status"], row["detail"]) == ("skipped", NO_PATCHES)
    assert not (tmp_path / "out" / "empty.care.json").exists()


def test_feature_jobs_match_slides_by_name_and_say_which_have_none(direct, widget_slide_path, tmp_path):
    for stem in ("small", "other"):
        write_trident_file(tmp_path / "job" / "features_default" / f"{stem}.h5", direct.features)
    jobs, notes = feature_jobs(tmp_path / "job", slides=[str(widget_slide_path)])
    assert [(job.stem, job.slide) for job in jobs] == [
        ("other", None),
        ("small", SlideJob(widget_slide_path)),
    ]
    assert len(notes) == 1 and "1 of 2 feature files have no slide" in notes[0] and "other" in notes[0]
    [single], _ = feature_jobs(
        tmp_path / "job" / "features_default" / "other.h5", slides=[str(widget_slide_path)]
    )
    assert single.slide == SlideJob(widget_slide_path)  # one file, one slide: whatever their names


def test_extract_in_the_trident_layout_and_resume_looks_there(widget_slide_path, tmp_path):
    job = SlideJob(widget_slide_path)
    row = extract_job(job, tmp_path, OPTIONS, layout="trident")
    target = tmp_path / "features_default" / "small.h5"
    assert row["status"] == "done" and target.is_file() and not (tmp_path / "small.features.h5").exists()
    assert extract_job(job, tmp_path, OPTIONS, layout="trident")["status"] == "skipped"
    assert extract_job(job, tmp_path, OPTIONS)["status"] == "done"  # the other layout: another file
    segmented = segment_job(job, tmp_path / "seg", OPTIONS, layout="trident")
    assert segmented["status"] == "done"
    paths = output_paths(tmp_path / "seg", "small", layout="trident")
    assert paths["features"] == tmp_path / "seg" / "features_default" / "small.h5"
    assert all(path.is_file() for path in paths.values())


def test_the_tile_size_is_the_encoders_preset_unless_given(widget_slide_path, tmp_path):
    assert SegmentOptions().tile_size_px == 224  # the built-in descriptor, as before
    assert SegmentOptions(encoder="timm:resnet18").tile_size_px == 224
    assert SegmentOptions(encoder="conch_v1_5").tile_size_px == 512  # no network is built
    assert SegmentOptions(encoder="conch_v15").tile_size_px == 512  # TRIDENT's name for it
    assert SegmentOptions(encoder="uni").tile_size_px == 256
    assert SegmentOptions(encoder="conch_v1_5", tile_size_px=224).tile_size_px == 224
    job = SlideJob(widget_slide_path)
    assert job_settings(SegmentOptions(encoder="conch_v1_5"), job)["tile_size_px"] == 512  # recorded resolved
    with pytest.raises(PreflightError, match="--tile-size 512 at 20x"):
        preflight([job], tmp_path, SegmentOptions(encoder="conch_v1_5"), max_tiles=1)
    with pytest.raises(PreflightError, match="--encoder: unknown encoder 'nope'"):
        preflight([job], tmp_path, SegmentOptions(encoder="nope"))
