"""Generated labelled cohorts: label logic of the layouts, determinism, files on disk."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from napari_care.core.synthetic.cohort import (
    ATYPICAL,
    GLASS,
    TUMOUR,
    build_cohort,
    load_cohort,
    slide_layout,
)


def tumour_share(layout: np.ndarray) -> float:
    return float(np.isin(layout, (TUMOUR, ATYPICAL)).sum() / (layout != GLASS).sum())


def test_architecture_label_is_rings_against_cords_of_the_same_tumour():
    shares = {True: [], False: []}
    for seed in range(2):
        for positive in (True, False):
            layout, info = slide_layout("architecture", positive, size_px=2048, mpp=0.5, seed=seed)
            assert layout.shape == (256, 256) and not (layout == ATYPICAL).any()
            assert info == {"structures": 1 if positive else 2, "shape": "ring" if positive else "cord"}
            shares[positive].append(tumour_share(layout))
    rings, cords = np.mean(shares[True]), np.mean(shares[False])
    assert 0.1 < cords < 0.3 and abs(rings - cords) < 0.06  # the same tumour in either class
    again, _ = slide_layout("architecture", False, size_px=2048, mpp=0.5, seed=1)
    np.testing.assert_array_equal(again, layout)  # the last one drawn: seed 1, negative


def test_detail_label_is_atypia_inside_the_same_nests():
    positive, info_pos = slide_layout("detail", True, size_px=1536, mpp=0.5, seed=4)
    negative, info_neg = slide_layout("detail", False, size_px=1536, mpp=0.5, seed=4)
    assert info_neg["atypical_nests"] == 0 and not (negative == ATYPICAL).any()
    assert info_pos["atypical_nests"] >= 1 and 0 < (positive == ATYPICAL).mean() < 0.5 * tumour_share(
        positive
    )
    # the same nests, only the detail inside some of them differs
    np.testing.assert_array_equal(np.isin(positive, (TUMOUR, ATYPICAL)), negative == TUMOUR)


def test_a_layout_that_needs_many_draws_is_found():
    # slide 0 of the seed-3 architecture cohort: its four cords fit only at the 21st draw
    slide_seed = int(np.random.SeedSequence([3, 0, 0]).generate_state(1)[0])
    _, info = slide_layout("architecture", False, size_px=3072, mpp=0.5, seed=slide_seed)
    assert info == {"structures": 4, "shape": "cord"}


def test_too_small_slides_and_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        slide_layout("architecture", True, size_px=1024, mpp=0.5, seed=0)
    with pytest.raises(ValueError, match="even number"):
        build_cohort(tmp_path, "detail", n_slides=3)
    with pytest.raises(ValueError, match="kind"):
        build_cohort(tmp_path, "colour", n_slides=2)


def test_build_is_deterministic_and_reused(tmp_path):
    options = dict(n_slides=2, size_px=1024, swatch_px=256, seed=3, workers=1)
    first = build_cohort(tmp_path / "a", "detail", **options)
    assert first.kind == "detail" and sorted(first.labels) == [0, 1]
    assert first.slide_ids == ("detail_000", "detail_001")
    with open(first.labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["slide_id"], int(r["label"])) for r in rows] == list(
        zip(first.slide_ids, first.labels, strict=True)
    )
    info = json.loads((first.folder / "cohort.json").read_text())
    assert [s["atypical_share"] > 0 for s in info["slides"]] == [bool(label) for label in first.labels]
    second = build_cohort(tmp_path / "b", "detail", **options)
    assert second.labels == first.labels
    for a, b in zip(first.slide_paths, second.slide_paths, strict=True):
        with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
            np.testing.assert_array_equal(ta.series[0].levels[0].asarray(), tb.series[0].levels[0].asarray())
    stamp = first.slide_paths[0].stat().st_mtime_ns
    assert build_cohort(tmp_path / "a", "detail", **options) == first
    assert first.slide_paths[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    assert load_cohort(tmp_path / "a") == first
    with pytest.raises(FileNotFoundError, match=r"cohort\.json"):
        load_cohort(tmp_path)
