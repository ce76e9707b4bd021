"""The number of phenotype groups chosen automatically (``n_groups="auto"``, ``--groups auto``).

The criterion finds the planted number on well-separated clusters; ``"auto"`` is what
``segment()``, the command line and the widget do by default; a fixed N still gives the
groups it gave before ``"auto"`` existed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_phenotypes import result_of

from napari_care.cli import app
from napari_care.core import cohort, open_slide, run_to_end
from napari_care.core.group_count import CRITERIA, criterion_scores, pick_n_groups, weighted_silhouette
from napari_care.core.phenotypes import (
    AUTO,
    AUTO_GROUPS_RANGE,
    DEFAULT_CRITERION,
    choose_n_groups,
    largest_candidate,
    phenotype_groups,
)
from napari_care.core.segment import OptionError, SegmentOptions, check_options, segment
from napari_care.core.synthetic.planted_types import build_planted_slide


def clustered_result(n_clusters: int, seed: int, regions_per_cluster: int = 12, dim: int = 16):
    """A CareResult whose regions come from ``n_clusters`` well-separated clusters of patch
    features (regions of 5 to 40 patches), and its patch features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 8
    cluster_of_region = np.repeat(np.arange(n_clusters), regions_per_cluster)
    sizes = rng.integers(5, 40, len(cluster_of_region))
    region_of_patch = np.repeat(np.arange(len(cluster_of_region)), sizes)
    features = centres[cluster_of_region[region_of_patch]] + rng.normal(size=(len(region_of_patch), dim))
    return (
        result_of(region_of_patch, features.astype(np.float32)),
        features.astype(np.float32),
        cluster_of_region,
    )


@pytest.mark.parametrize("n_clusters", [2, 3, 5, 8, 12])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_criterion_finds_the_planted_number_of_clusters(n_clusters, seed):
    result, features, cluster_of_region = clustered_result(n_clusters, seed)
    choice = choose_n_groups(result, patch_features=features)
    assert choice.criterion == DEFAULT_CRITERION
    assert choice.n_groups == n_clusters
    largest = min(AUTO_GROUPS_RANGE[1], len(cluster_of_region) // 2)
    assert sorted(choice.scores) == list(range(AUTO_GROUPS_RANGE[0], largest + 1))
    groups = phenotype_groups(result, AUTO, patch_features=features)
    assert groups.n_groups == groups.n_groups_chosen == n_clusters
    assert groups.criterion == DEFAULT_CRITERION and groups.scores == choice.scores
    # every planted cluster is one group
    pairs = {(int(c), int(g)) for c, g in zip(cluster_of_region, groups.group_of_region, strict=True)}
    assert len(pairs) == n_clusters


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scores_every_candidate(criterion):
    result, features, _ = clustered_result(4, 3)
    choice = choose_n_groups(result, patch_features=features, criterion=criterion)
    assert set(choice.scores) == set(range(2, 13)) and all(np.isfinite(list(choice.scores.values())))
    assert choice.n_groups in choice.scores
    if criterion != "eigengap":  # the eigengap of clusters this far apart is no contest either
        assert choice.n_groups == 4


def test_auto_is_at_most_the_distinct_regions():
    result, features, _ = clustered_result(7, 0, regions_per_cluster=1)  # 7 regions
    groups = phenotype_groups(result, patch_features=features)  # the default is "auto"
    assert sorted(groups.scores) == [2, 3]  # at most half the regions
    assert (
        largest_candidate(7, 7) == 3 and largest_candidate(100, 5) == 5 and largest_candidate(100, 100) == 12
    )
    assert largest_candidate(3, 3) == 2
    same = result_of(np.repeat(np.arange(4), 5), np.ones((20, 3), np.float32))  # 1 distinct region
    one = phenotype_groups(same, patch_features=np.ones((20, 3), np.float32))
    assert one.n_groups == 1 and one.scores == {} and one.criterion == DEFAULT_CRITERION


def test_a_fixed_number_gives_the_groups_it_gave_before_auto():
    """Today's fixed-N grouping, written out: weighted k-means (10 restarts, seed 0) on the
    standardised median descriptors, groups ordered by patch count."""
    from sklearn.cluster import KMeans

    from napari_care.core.phenotypes import region_descriptors

    result, features, _ = clustered_result(5, 4)
    descriptors = region_descriptors(result, features)
    for n_groups in (3, 5, 6):
        labels = KMeans(n_clusters=n_groups, n_init=10, random_state=0).fit_predict(
            descriptors, sample_weight=result.region_sizes.astype(np.float64)
        )
        patches = np.bincount(labels, weights=result.region_sizes, minlength=n_groups)
        first = [np.flatnonzero(labels == group)[0] for group in range(n_groups)]
        rename = np.empty(n_groups, np.int64)
        rename[np.lexsort((first, -patches))] = np.arange(n_groups)
        groups = phenotype_groups(result, n_groups, patch_features=features)
        np.testing.assert_array_equal(groups.group_of_region, rename[labels])
        assert groups.criterion is None and groups.scores == {} and groups.n_groups_chosen is None
    # "auto" at the N it chose is the fixed grouping of that N
    auto = phenotype_groups(result, AUTO, patch_features=features)
    fixed = phenotype_groups(result, auto.n_groups, patch_features=features)
    np.testing.assert_array_equal(auto.group_of_region, fixed.group_of_region)


def test_silhouette_of_a_perfect_split_and_a_bad_one():
    points = np.array([[0.0], [0.1], [10.0], [10.1]])
    distances = np.abs(points - points.T)
    weights = np.array([1.0, 3.0, 1.0, 1.0])
    good = weighted_silhouette(distances, np.array([0, 0, 1, 1]), weights)
    bad = weighted_silhouette(distances, np.array([0, 1, 0, 1]), weights)
    assert good > 0.98 and bad < 0
    assert pick_n_groups({2: 0.5, 3: 0.49, 4: 0.2}, tolerance=0.0) == 2
    assert pick_n_groups({2: 0.3, 3: 0.5, 4: 0.49}, tolerance=0.1) == 3
    assert pick_n_groups({2: 0.3, 3: 0.48, 4: 0.5}, tolerance=0.2) == 3
    scores = criterion_scores(points, {2: np.array([0, 0, 1, 1])}, weights, "silhouette")
    assert scores == {2: pytest.approx(good)}


def test_bad_n_groups_are_refused():
    result, features, _ = clustered_result(3, 0)
    with pytest.raises(ValueError, match="'auto'"):
        phenotype_groups(result, "many", patch_features=features)
    with pytest.raises(ValueError, match="criterion"):
        phenotype_groups(result, patch_features=features, criterion="elbow")
    assert SegmentOptions().n_groups == AUTO
    check_options(SegmentOptions(n_groups=AUTO))
    check_options(SegmentOptions(n_groups=7))
    for bad in ("Auto", "x", 1, 65, 2.5):
        with pytest.raises(OptionError) as error:
            check_options(SegmentOptions(n_groups=bad))
        assert error.value.option == "n_groups"


@pytest.fixture(scope="module")
def planted_slide(tmp_path_factory):
    """A generated slide with 3 planted tissue types (6144 x 4608 px at 0.5 um/px, ~350 tiles)."""
    path = tmp_path_factory.mktemp("planted") / "planted3.ome.tif"
    return build_planted_slide(path, 3, seed=2, width=6144, height=4608, swatch_px=512, workers=2)


def test_planted_slide_truth(planted_slide):
    from napari_care.core.synthetic.slides import load_synthetic_slide

    truth = load_synthetic_slide(planted_slide.path)
    assert truth.layout == "planted" and len(truth.type_names) == 4 and truth.type_names[0] == "glass"
    assert set(np.unique(truth.labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(truth.labels, planted_slide.labels)


def test_segment_chooses_the_number_of_groups(planted_slide):
    with open_slide(planted_slide.path) as slide:
        result = run_to_end(segment(slide, SegmentOptions()))
        fixed = run_to_end(segment(slide, SegmentOptions(n_groups=4)))
    phenotypes = result.extras["phenotypes"]
    assert phenotypes.criterion == DEFAULT_CRITERION and phenotypes.n_groups_chosen == phenotypes.n_groups
    assert len(phenotypes.scores) >= 2
    assert 2 <= phenotypes.n_groups <= largest_candidate(result.care.n_regions, result.care.n_regions)
    np.testing.assert_array_equal(result.group_of_region, phenotypes.group_of_region)
    assert result.group_of_region.max() + 1 == phenotypes.n_groups
    again = phenotype_groups(result.care, phenotypes.n_groups, patch_features=result.features.features)
    np.testing.assert_array_equal(again.group_of_region, result.group_of_region)
    assert fixed.extras["phenotypes"].criterion is None and fixed.group_of_region.max() == 3


def recorded_options(args: list[str]):
    """Run ``napari-care ARGS`` with the cohort runner faked: (result, the options that reached it)."""
    seen = {}

    def fake_run_cohort(job_function, jobs, **kwargs):
        seen["options"] = kwargs.get("options")
        return []
        yield

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cohort, "cohort_workers", lambda *a, **k: 0)
        patch.setattr(cohort, "run_cohort", fake_run_cohort)
        result = CliRunner().invoke(app.main, args)
    return result, seen.get("options")


@pytest.mark.parametrize(("text", "expected"), [(None, AUTO), ("auto", AUTO), ("AUTO", AUTO), ("5", 5)])
def test_cli_groups_reach_the_core(planted_slide, tmp_path, text, expected):
    args = ["segment", str(planted_slide.path), "--out", str(tmp_path / "out"), "--quiet"]
    result, options = recorded_options(args + ([] if text is None else ["--groups", text]))
    assert result.exit_code == 0, result.output
    assert options.n_groups == expected


@pytest.mark.parametrize("text", ["x", "", "2.5", "autox"])
def test_cli_bad_groups_exit_2_with_one_line(planted_slide, tmp_path, text):
    args = ["segment", str(planted_slide.path), "--out", str(tmp_path / "out"), "--quiet", "--groups", text]
    result, options = recorded_options(args)
    assert result.exit_code == 2 and options is None
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--groups" in errors[0] and "auto" in errors[0]
    assert "Traceback" not in result.output


def test_cli_groups_out_of_range_name_the_flag(planted_slide, tmp_path):
    args = ["segment", str(planted_slide.path), "--out", str(tmp_path / "out"), "--quiet", "--groups", "1"]
    result = CliRunner().invoke(app.main, args)
    assert result.exit_code == 2 and "--groups 1: must be between 2 and 64" in result.output


def test_cli_help_says_the_criterion():
    text = " ".join(CliRunner().invoke(app.main, ["segment", "--help"]).output.split())
    assert "auto" in text and "Calinski-Harabasz" in text and "2-12" in text and "[default: auto]" in text


def test_cli_segment_auto_end_to_end(planted_slide, tmp_path):
    out = tmp_path / "out"
    args = ["segment", str(planted_slide.path), "--out", str(out), "--quiet", "--groups", "auto"]
    result = CliRunner().invoke(app.main, args)
    assert result.exit_code == 0, result.output
    [care_json] = out.glob("*.care.json")
    assert json.loads(care_json.read_text())["settings"]["n_groups"] == AUTO


@pytest.mark.gui
def test_widget_groups_field_offers_auto_and_numbers(viewer_widget):
    _, widget = viewer_widget
    assert widget.n_groups.value == AUTO and widget.segment_options().n_groups == AUTO
    assert list(widget.n_groups.choices) == [AUTO, *range(2, 13)]
    widget.n_groups.value = 5
    assert widget.segment_options().n_groups == 5 and isinstance(widget.segment_options().n_groups, int)
    widget.n_groups.value = AUTO
    assert widget.segment_options() == SegmentOptions()


@pytest.mark.gui
def test_widget_run_with_auto_groups(viewer_widget, qtbot):
    from gui_helpers import run_and_wait

    _, widget = viewer_widget
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)
    result = widget.controller.result
    phenotypes = result.extras["phenotypes"]
    assert result.options.n_groups == AUTO and phenotypes.criterion == DEFAULT_CRITERION
    assert result.group_of_region.max() + 1 == phenotypes.n_groups
