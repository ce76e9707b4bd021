"""Corrections of CARE's regions: merge, split, reassign, regroup; weights follow the new regions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_care.core.models.care_free import CareFreeConfig, segment_free
from napari_care.core.region_edits import (
    EDITED,
    Edit,
    merge_regions,
    move_patches,
    painted_patches,
    reassign_patches,
    repartition,
    set_group,
    split_region,
    two_means,
)


@pytest.fixture(scope="module")
def edit() -> Edit:
    """Four tissue types in quadrants of a 16 x 16 patch grid, training-free regions, two groups."""
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(16), np.arange(16))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    kind = (grid[:, 0] >= 8) + 2 * (grid[:, 1] >= 8)
    centres = rng.normal(size=(4, 12)) * 4
    features = (centres[kind] + rng.normal(size=(len(grid), 12))).astype(np.float32)
    care = segment_free(features, grid, CareFreeConfig(k=4))
    groups = (np.arange(care.n_regions) % 2).astype(np.int64)
    return Edit(care, groups, features)


def test_repartition_with_the_same_labels_gives_the_training_free_weights(edit):
    same = repartition(edit, edit.care.region_of_patch, edit.group_of_region)
    for name in ("alpha", "beta", "a", "patch_attention", "slide_embedding"):
        np.testing.assert_allclose(getattr(same.care, name), getattr(edit.care, name), rtol=1e-5, atol=1e-7)
    assert same.care.roi == edit.care.roi and same.care.mode == EDITED
    np.testing.assert_array_equal(same.group_of_region, edit.group_of_region)


def test_merge_joins_two_regions_and_the_weights_follow(edit):
    sizes = edit.care.region_sizes
    merged = merge_regions(edit, [1, 3])
    care = merged.care
    assert care.n_regions == edit.care.n_regions - 1
    assert care.region_sizes[1] == sizes[1] + sizes[3]
    assert np.isclose(care.alpha.sum(), 1.0) and np.isclose(care.a.sum(), 1.0, atol=1e-5)
    np.testing.assert_allclose(care.alpha[1], (sizes[1] + sizes[3]) / sizes.sum(), rtol=1e-6)
    before = np.flatnonzero(np.isin(edit.care.region_of_patch, [1, 3]))
    assert set(care.region_of_patch[before]) == {1}
    larger = 1 if sizes[1] >= sizes[3] else 3
    assert merged.group_of_region[1] == edit.group_of_region[larger]
    assert care.roi == int(np.argmax(care.a))
    np.testing.assert_allclose(care.patch_attention.sum(), care.a.sum(), rtol=1e-5)
    assert edit.care.n_regions == len(edit.group_of_region)  # the original is untouched
    with pytest.raises(ValueError, match="two regions or more"):
        merge_regions(edit, [2, 2])
    with pytest.raises(ValueError, match="region 999 does not exist"):
        merge_regions(edit, [0, 999])


def test_split_cuts_a_mixed_region_along_its_tissue(edit):
    mixed = merge_regions(edit, _regions_of_two_kinds(edit))
    target = int(mixed.care.region_of_patch[_first_patch_of_kind(edit, 0)])
    split = split_region(mixed, target)
    assert split.care.n_regions == mixed.care.n_regions + 1
    members = np.flatnonzero(mixed.care.region_of_patch == target)
    kinds = _kinds(edit)[members]
    parts = split.care.region_of_patch[members]
    # each part holds one tissue type: the split follows the features
    for part in np.unique(parts):
        assert len(np.unique(kinds[parts == part])) == 1
    assert set(split.group_of_region[np.unique(parts)]) == {mixed.group_of_region[target]}
    single = np.flatnonzero(edit.care.region_sizes == 1)
    if single.size:
        with pytest.raises(ValueError, match="nothing to split"):
            split_region(edit, int(single[0]))


def test_reassign_paints_patches_into_a_region_or_a_new_one(edit):
    patches = np.flatnonzero(edit.care.region_of_patch == 0)[:3]
    into = reassign_patches(edit, patches, 2)
    moved = into.care.region_of_patch[patches]
    assert len(set(moved)) == 1 and into.care.n_regions <= edit.care.n_regions
    assert set(into.care.region_of_patch[np.flatnonzero(edit.care.region_of_patch == 2)]) == set(moved)
    alone = reassign_patches(edit, patches, None)
    assert alone.care.n_regions == edit.care.n_regions + (
        0 if len(patches) == edit.care.region_sizes[0] else 1
    )
    assert alone.care.region_sizes[alone.care.region_of_patch[patches[0]]] == len(patches)
    with pytest.raises(ValueError, match="patch indices must be in"):
        reassign_patches(edit, [10_000], 0)
    with pytest.raises(ValueError, match="no patch"):
        reassign_patches(edit, [], 0)


def test_set_group_changes_the_group_only(edit):
    regrouped = set_group(edit, 0, int(edit.group_of_region.max()) + 1)  # a new group
    assert regrouped.group_of_region[0] == edit.group_of_region.max() + 1
    assert regrouped.care is edit.care
    with pytest.raises(ValueError, match="group 9 does not exist"):
        set_group(edit, 0, 9)


def _kinds(edit: Edit) -> np.ndarray:
    grid = edit.care.grid
    return (grid[:, 0] >= 8) + 2 * (grid[:, 1] >= 8)


def _first_patch_of_kind(edit: Edit, kind: int) -> int:
    return int(np.flatnonzero(_kinds(edit) == kind)[0])


def _regions_of_two_kinds(edit: Edit) -> list[int]:
    """Two regions, each pure in its own tissue type (0 and 1)."""
    kinds, regions = _kinds(edit), edit.care.region_of_patch
    chosen = []
    for kind in (0, 1):
        for region in np.unique(regions[kinds == kind]):
            if set(kinds[regions == region]) == {kind} and (regions == region).sum() >= 4:
                chosen.append(int(region))
                break
    assert len(chosen) == 2
    return chosen


def test_an_edited_and_renamed_run_saves_as_a_new_version(widget_slide_path, tmp_path):
    from dataclasses import replace

    from napari_care.core.outputs import write_outputs
    from napari_care.core.progress import run_to_end
    from napari_care.core.run_versions import next_version_stem, save_version
    from napari_care.core.saved_run import load_run
    from napari_care.core.segment import SegmentOptions, segment
    from napari_care.core.slide.handle import open_slide

    with open_slide(widget_slide_path) as slide:
        result = run_to_end(segment(slide, SegmentOptions(k=4, n_groups=3)))
        write_outputs(result, slide, tmp_path, "small")
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        run = load_run(tmp_path / "small.care.json")
        edit = merge_regions(
            Edit(run.result.care, run.result.group_of_region, run.result.features.features), [0, 1]
        )
        edited = replace(run.result, care=edit.care, group_of_region=edit.group_of_region)
        path = save_version(run, edited, slide=slide, group_names={0: "tumour"})
    assert path == tmp_path / "small.v2.care.json"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before  # untouched
    again = load_run(path)
    assert again.result.care.n_regions == result.care.n_regions - 1 and again.result.care.mode == EDITED
    assert again.group_names[0] == "tumour" and again.features_loaded  # the original's features file
    assert not (tmp_path / "small.v2.features.h5").exists()
    assert next_version_stem(tmp_path, "small.v2") == "small.v3"


def test_one_brush_stroke_moves_patches_into_several_regions_at_once(edit):
    regions = edit.care.region_of_patch
    into_0 = np.flatnonzero(regions == 1)[:5]
    into_new = np.flatnonzero(regions == 2)[:4]
    new_id = edit.care.n_regions + 3  # a label no region has: a new region
    moved = move_patches(edit, {0: into_0, new_id: into_new})
    after = moved.care.region_of_patch
    assert set(after[into_0]) == {after[np.flatnonzero(regions == 0)[0]]}
    assert len(set(after[into_new])) == 1 and moved.care.n_regions == edit.care.n_regions + 1
    assert moved.group_of_region[after[into_new[0]]] == edit.group_of_region[2]  # their old group
    assert moved.care.region_sizes.sum() == len(regions)
    with pytest.raises(ValueError, match="two regions at once"):
        move_patches(edit, {0: into_0, 1: into_0[:1]})
    with pytest.raises(ValueError, match="no patch"):
        move_patches(edit, {0: []})


def test_painted_patches_are_the_patch_cells_whose_label_changed():
    cells = np.array([[0, 0], [1, 0], [2, 1], [5, 5]])  # (gx, gy); the last lies off the grid
    drawn = np.array([[1, 1, 0], [0, 0, 2]])
    painted = drawn.copy()
    painted[0, 1] = 2  # patch 1 -> label 2
    painted[1, 2] = 0  # patch 2 erased: patches cannot leave CARE's tissue
    painted[1, 0] = 3  # a cell with no patch
    moves = painted_patches(cells, drawn, painted)
    assert list(moves) == [2] and moves[2].tolist() == [1]
    with pytest.raises(ValueError, match="shape"):
        painted_patches(cells, drawn, painted[:1])


def test_two_means_finds_two_blobs_the_same_way_each_time():
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(0, 1, (300, 8)), rng.normal(6, 1, (100, 8))])
    parts = two_means(points, seed=1)
    assert len(set(parts[:300])) == 1 and len(set(parts[300:])) == 1 and parts[0] != parts[-1]
    np.testing.assert_array_equal(parts, two_means(points, seed=1))
