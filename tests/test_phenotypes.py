"""Phenotype groups: region descriptors, weighting, and the map they make."""

import numpy as np
import pytest

from napari_care.core.care_result import CareResult
from napari_care.core.phenotypes import phenotype_groups, region_descriptors


def result_of(region_of_patch: np.ndarray, features: np.ndarray) -> CareResult:
    """A CareResult with the given regions (mean features, uniform weights)."""
    n_regions = int(region_of_patch.max()) + 1
    sizes = np.bincount(region_of_patch, minlength=n_regions)
    region_features = np.stack([features[region_of_patch == r].mean(0) for r in range(n_regions)]).astype(
        np.float32
    )
    weights = np.full(n_regions, 1.0 / n_regions, np.float32)
    n = len(region_of_patch)
    return CareResult(
        region_of_patch=region_of_patch,
        region_features=region_features,
        alpha=(sizes / n).astype(np.float32),
        beta=weights,
        a=weights,
        roi=0,
        roi_feature=region_features[0],
        slide_embedding=region_features.mean(0),
        patch_attention=(weights / sizes)[region_of_patch].astype(np.float32),
        rsl=0.0,
        expected_rank=0.0,
        block_of_patch=region_of_patch,
        candidate_rank=np.zeros(n, np.int64),
        grid=np.stack([np.arange(n), np.zeros(n, np.int64)], axis=1),
        k=8,
        mode="training-free",
    )


@pytest.fixture()
def strip_slide():
    """Regions 0-2 tissue A (x = 0), 3-5 tissue B (x = 10); region 6 is 6 A patches plus a
    4-patch strip of a third tissue at x = 60, so its mean (24) lies nearer B than A."""
    region_of_patch = np.repeat(np.arange(7), 10)
    x = np.repeat([0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 0.0], 10)
    x[-4:] = 60.0
    features = np.stack([x, np.zeros_like(x)], axis=1).astype(np.float32)
    return result_of(region_of_patch, features), features


def test_median_descriptor_keeps_a_region_with_its_majority_tissue(strip_slide):
    result, features = strip_slide
    median = phenotype_groups(result, 2, patch_features=features)  # the default with patch features
    assert median.group_of_region.tolist() == [0, 0, 0, 1, 1, 1, 0]
    mean = phenotype_groups(result, 2, patch_features=features, descriptor="mean")
    assert mean.group_of_region.tolist() == [1, 1, 1, 0, 0, 0, 0]  # the strip drags region 6 to B
    embedding = phenotype_groups(result, 2)  # no patch features: CARE's embedding
    np.testing.assert_array_equal(embedding.group_of_region, mean.group_of_region)
    np.testing.assert_array_equal(median.group_of_patch, median.group_of_region[result.region_of_patch])


def test_descriptors_are_standardised_medians_and_means(strip_slide):
    result, features = strip_slide
    standardised = (features[:, 0] - features[:, 0].mean()) / features[:, 0].std()
    median = region_descriptors(result, features)
    assert median.shape == (7, 2)
    np.testing.assert_allclose(median[6, 0], np.median(standardised[60:]), rtol=1e-6)
    np.testing.assert_allclose(median[:, 1], 0.0)  # a constant dimension stays 0
    mean = region_descriptors(result, features, descriptor="mean")
    np.testing.assert_allclose(mean[6, 0], standardised[60:].mean(), rtol=1e-6)
    raw = region_descriptors(result, features, descriptor="median", standardize=False)
    np.testing.assert_allclose(raw[:, 0], [0, 0, 0, 10, 10, 10, 0])


def test_weighting_seeds_and_bad_options(strip_slide):
    result, features = strip_slide
    uniform = phenotype_groups(result, 2, patch_features=features, weighting="uniform", seed=3)
    assert uniform.n_groups == 2 and uniform.centroids.shape == (2, 2)
    again = phenotype_groups(result, 2, patch_features=features, weighting="uniform", seed=3)
    np.testing.assert_array_equal(again.group_of_region, uniform.group_of_region)
    with pytest.raises(ValueError, match="weighting"):
        phenotype_groups(result, 2, patch_features=features, weighting="area")
    with pytest.raises(ValueError, match="descriptor"):
        phenotype_groups(result, 2, patch_features=features, descriptor="mode")
    with pytest.raises(ValueError, match="needs patch_features"):
        phenotype_groups(result, 2, descriptor="median")
    with pytest.raises(ValueError, match=r"patch_features must have shape \[70, D\]"):
        phenotype_groups(result, 2, patch_features=features[:5])


def test_patch_weighting_lets_a_large_region_pull_the_groups():
    """Regions at x = 0, 7, 10, 17; the one at 10 has 100 patches, the others one each. One
    weight per region splits {0, 7} | {10, 17}; weights by patch count split {0} | {7, 10, 17}."""
    region_of_patch = np.repeat(np.arange(4), [1, 1, 100, 1])
    x = np.repeat([0.0, 7.0, 10.0, 17.0], [1, 1, 100, 1])
    features = np.stack([x, np.zeros_like(x)], axis=1).astype(np.float32)
    result = result_of(region_of_patch, features)
    uniform = phenotype_groups(result, 2, patch_features=features, weighting="uniform").group_of_region
    weighted = phenotype_groups(result, 2, patch_features=features).group_of_region
    assert uniform[0] == uniform[1] != uniform[2] == uniform[3]
    assert weighted[0] != weighted[1] == weighted[2] == weighted[3]
