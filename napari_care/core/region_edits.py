"""A pathologist's corrections of CARE's regions: merge, split, reassign patches, regroup.

Each edit takes a :class:`~napari_care.core.care_result.CareResult` with the phenotype group
of each region and gives new ones; nothing is changed in place, so the original run stays as
it was (an edited run is saved as a new version beside it). After an edit the regions are
numbered 0..R-1 again in the order of their smallest old id, and every region-level value is
recomputed from the new partition with the training-free rule
(:func:`~napari_care.core.models.care_free.segment_free`): the region feature is the mean of
its patches' features, ``alpha`` its share of the patches, ``beta`` its novelty (distance of
its mean standardised feature from the slide's mean), ``a = lambda_spf * alpha +
(1 - lambda_spf) * beta``, the ROI the argmax of ``a`` (lowest id on ties), each patch's
attention ``a / n``. That holds whatever made the original regions, so an edited result has
``mode = "edited"``: a trained model's weights do not carry over to regions it did not draw.

>>> edited = merge_regions(Edit(result, group_of_region, features), [3, 7])  # doctest: +SKIP
>>> edited = split_region(edited, 2)  # doctest: +SKIP
>>> edited.care.roi, edited.group_of_region  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from napari_care.core.care_result import CareResult
from napari_care.core.models.care_blocks import DEFAULT_LAMBDA_SPF, dense_labels, feature_moments, group_mean
from napari_care.core.segment import SegmentResult

EDITED = "edited"  # CareResult.mode of a corrected partition


@dataclass(frozen=True)
class Edit:
    """A CARE result, the group of each of its regions and the patch features it came from.

    Attributes
    ----------
    care
        The regions and their weights.
    group_of_region
        ``[R]`` int64 phenotype group of each region.
    features
        ``[N, D]`` patch features of ``care``'s patches (what the weights are recomputed from).
    lambda_spf
        The SPF balance of coverage and novelty used when the weights are recomputed.
    """

    care: CareResult
    group_of_region: np.ndarray
    features: np.ndarray
    lambda_spf: float = DEFAULT_LAMBDA_SPF

    def __post_init__(self) -> None:
        n_regions = self.care.n_regions
        groups = np.asarray(self.group_of_region, dtype=np.int64)
        if groups.shape != (n_regions,):
            raise ValueError(f"group_of_region has shape {groups.shape}, expected ({n_regions},)")
        if len(self.features) != len(self.care.region_of_patch):
            raise ValueError(
                f"{len(self.features)} feature rows but {len(self.care.region_of_patch)} patches"
            )
        object.__setattr__(self, "group_of_region", groups)


def _check_region(edit: Edit, region: int) -> int:
    if not 0 <= int(region) < edit.care.n_regions:
        raise ValueError(f"region {region} does not exist (regions 0..{edit.care.n_regions - 1})")
    return int(region)


def repartition(edit: Edit, region_of_patch: np.ndarray, group_of_old: np.ndarray) -> Edit:
    """The edit with a new patch -> region labelling (any integers) and every weight recomputed.

    Parameters
    ----------
    edit
        What is edited.
    region_of_patch
        ``[N]`` new region label of each patch; renumbered 0..R-1 by increasing label.
    group_of_old
        ``[L]`` group of each label used in ``region_of_patch`` (indexed by label).
    """
    labels = np.asarray(region_of_patch, dtype=np.int64)
    dense, kept = dense_labels(labels)
    n_regions = int(dense.max()) + 1
    features = np.asarray(edit.features, dtype=np.float32)
    mean, std = feature_moments(features)
    region_features = group_mean(features, dense, n_regions)
    sizes = np.bincount(dense, minlength=n_regions).astype(np.float64)
    alpha = sizes / len(dense)
    novelty = np.linalg.norm((region_features - mean) / std, axis=1)
    beta = novelty / novelty.sum() if novelty.sum() > 0 else np.full(n_regions, 1.0 / n_regions)
    a = edit.lambda_spf * alpha + (1.0 - edit.lambda_spf) * beta
    roi = int(np.argmax(a))  # the lowest id on ties, as CARE's own argmax
    care = replace(
        edit.care,
        region_of_patch=dense,
        region_features=region_features,
        alpha=alpha.astype(np.float32),
        beta=beta.astype(np.float32),
        a=a.astype(np.float32),
        roi=roi,
        roi_feature=region_features[roi].copy(),
        slide_embedding=(a @ region_features).astype(np.float32),
        patch_attention=(a / sizes)[dense].astype(np.float32),
        mode=EDITED,
    )
    return replace(edit, care=care, group_of_region=np.asarray(group_of_old, np.int64)[kept])


def merge_regions(edit: Edit, regions: Sequence[int]) -> Edit:
    """Join ``regions`` into one (the id of the first); it takes the group of the largest.

    Raises
    ------
    ValueError
        Fewer than two distinct regions, or one that does not exist.
    """
    chosen = sorted({_check_region(edit, r) for r in regions})
    if len(chosen) < 2:
        raise ValueError(f"merging needs two regions or more, got {list(regions)}")
    sizes = edit.care.region_sizes
    largest = chosen[int(np.argmax(sizes[chosen]))]
    labels = edit.care.region_of_patch.copy()
    labels[np.isin(labels, chosen)] = chosen[0]
    groups = edit.group_of_region.copy()
    groups[chosen[0]] = edit.group_of_region[largest]
    return repartition(edit, labels, groups)


def two_means(points: np.ndarray, *, seed: int = 0, n_init: int = 4, iterations: int = 100) -> np.ndarray:
    """The 0/1 part of each row of ``points`` [N, D] by 2-means (k-means++ starts, Lloyd steps;
    the start of least within-part squares is kept). numpy alone: importing scikit-learn in the
    panel's worker held the GUI thread 150 ms on a first split."""
    rng = np.random.default_rng(seed)
    squares = (points**2).sum(axis=1)
    best_parts, best_cost = np.zeros(len(points), np.int64), np.inf
    for _ in range(n_init):
        first = points[rng.integers(len(points))]
        distance = np.maximum(squares - 2 * points @ first + first @ first, 0)
        second = points[rng.choice(len(points), p=distance / distance.sum())] if distance.sum() > 0 else first
        centres = np.stack([first, second])
        parts = np.full(len(points), -1, np.int64)
        for _ in range(iterations):
            distances = squares[:, None] - 2 * points @ centres.T + (centres**2).sum(axis=1)[None, :]
            new_parts = np.argmin(distances, axis=1)
            if np.array_equal(new_parts, parts):
                break
            parts = new_parts
            centres = np.stack(
                [points[parts == k].mean(axis=0) if (parts == k).any() else centres[k] for k in (0, 1)]
            )
        cost = float(np.maximum(distances[np.arange(len(points)), parts], 0).sum())
        if cost < best_cost and len(np.unique(parts)) == 2:
            best_parts, best_cost = parts, cost
    return best_parts


def split_region(edit: Edit, region: int, *, seed: int = 0) -> Edit:
    """Cut ``region`` in two by its patches' features (2-means of their standardised features);
    both parts keep the region's group. The part holding the region's first patch keeps its id.

    Raises
    ------
    ValueError
        When the region does not exist, has fewer than two patches, or its patches' features
        are all alike.
    """
    region = _check_region(edit, region)
    members = np.flatnonzero(edit.care.region_of_patch == region)
    if len(members) < 2:
        raise ValueError(f"region {region} has {len(members)} patch(es): nothing to split")
    mean, std = feature_moments(np.asarray(edit.features, np.float32))
    points = (np.asarray(edit.features, np.float64)[members] - mean) / std
    if len(np.unique(points.round(9), axis=0)) < 2:
        raise ValueError(f"region {region}: its patches' features are all alike; nothing to split by")
    parts = two_means(points, seed=seed)
    new_label = edit.care.n_regions  # after every existing id: numbered last until renumbered
    labels = edit.care.region_of_patch.copy()
    labels[members[parts != parts[0]]] = new_label
    groups = np.append(edit.group_of_region, edit.group_of_region[region])
    return repartition(edit, labels, groups)


def reassign_patches(edit: Edit, patches: Sequence[int] | np.ndarray, region: int | None) -> Edit:
    """Move ``patches`` (indices, e.g. painted with the Labels brush) into ``region``, or into a
    new region of their own (``region=None``) that takes the group most of them had.

    Raises
    ------
    ValueError
        No patch, a patch index out of range, or a region that does not exist.
    """
    patches = np.unique(np.asarray(patches, dtype=np.int64))
    n = len(edit.care.region_of_patch)
    if patches.size == 0:
        raise ValueError("no patch to reassign")
    if patches.min() < 0 or patches.max() >= n:
        raise ValueError(f"patch indices must be in 0..{n - 1}")
    labels = edit.care.region_of_patch.copy()
    groups = edit.group_of_region.copy()
    if region is None:
        old_groups = groups[labels[patches]]
        labels[patches] = edit.care.n_regions
        groups = np.append(groups, np.bincount(old_groups).argmax())
    else:
        labels[patches] = _check_region(edit, region)
    return repartition(edit, labels, groups)


def move_patches(edit: Edit, moves: Mapping[int, Sequence[int] | np.ndarray]) -> Edit:
    """Several reassignments at once (what one stroke of the Labels brush does): region id ->
    the patches moved into it. An id from ``n_regions`` on makes a new region, which takes the
    group most of its patches had; a region left with no patch is gone.

    Raises
    ------
    ValueError
        No patch, a patch index out of range, a negative region id, or a patch moved twice.
    """
    n = len(edit.care.region_of_patch)
    chosen = {int(region): np.unique(np.asarray(patches, np.int64)) for region, patches in moves.items()}
    chosen = {region: patches for region, patches in chosen.items() if patches.size}
    if not chosen:
        raise ValueError("no patch to reassign")
    every = np.concatenate(list(chosen.values()))
    if every.min() < 0 or every.max() >= n:
        raise ValueError(f"patch indices must be in 0..{n - 1}")
    if len(np.unique(every)) != len(every):
        raise ValueError("a patch is moved into two regions at once")
    if min(chosen) < 0:
        raise ValueError(f"region {min(chosen)} does not exist")
    labels = edit.care.region_of_patch.copy()
    groups = list(edit.group_of_region)
    new_ids: dict[int, int] = {}
    for region in sorted(chosen):
        if region >= edit.care.n_regions:  # new regions after every existing id, in the order asked
            new_ids[region] = len(groups)
            groups.append(int(np.bincount(edit.group_of_region[labels[chosen[region]]]).argmax()))
    for region, patches in chosen.items():
        labels[patches] = new_ids.get(region, region)
    return repartition(edit, labels, np.asarray(groups, np.int64))


def set_group(edit: Edit, region: int, group: int) -> Edit:
    """Put ``region`` in phenotype group ``group`` (an existing one, or the next new id); the
    regions and their weights do not change."""
    region = _check_region(edit, region)
    n_groups = int(edit.group_of_region.max()) + 1
    if not 0 <= int(group) <= n_groups:
        raise ValueError(
            f"group {group} does not exist (groups 0..{n_groups - 1}, or {n_groups} for a new one)"
        )
    groups = edit.group_of_region.copy()
    groups[region] = int(group)
    return replace(edit, group_of_region=groups)


def edit_of(result: SegmentResult) -> Edit:
    """The :class:`Edit` of a segmentation run: its regions, their groups and its patch features.

    Raises
    ------
    ValueError
        When the run holds no patch features (a reopened run whose features file is gone):
        corrections recompute the weights from them.
    """
    features = result.features.features
    if features.ndim != 2 or features.shape[1] == 0:
        raise ValueError(
            "this run's patch features are not loaded (its features file is missing): "
            "regions can be renamed but not corrected"
        )
    return Edit(result.care, result.group_of_region, features, lambda_spf=result.options.lambda_spf)


def edited_result(result: SegmentResult, edit: Edit) -> SegmentResult:
    """``result`` with the regions, weights and groups of ``edit`` (the patches stay the same)."""
    return replace(result, care=edit.care, group_of_region=edit.group_of_region)


def painted_patches(cells: np.ndarray, drawn: np.ndarray, painted: np.ndarray) -> dict[int, np.ndarray]:
    """Which patches a Labels brush moved, and where: label value -> patch indices.

    Parameters
    ----------
    cells
        ``[N, 2]`` (gx, gy) grid cell of each patch (column, row of the labels).
    drawn
        The label grid as it was drawn (label = region id + 1, 0 off tissue).
    painted
        The same grid after painting.

    Returns
    -------
    For each label value painted over a patch (>= 1), the indices of those patches. Cells with
    no patch, and patches painted 0 (erased), are left out: only patches CARE saw can move.
    """
    if drawn.shape != painted.shape:
        raise ValueError(f"the painted labels have shape {painted.shape}, the drawn ones {drawn.shape}")
    cells = np.asarray(cells, dtype=np.int64)
    rows, cols = cells[:, 1], cells[:, 0]
    inside = (rows >= 0) & (rows < drawn.shape[0]) & (cols >= 0) & (cols < drawn.shape[1])
    index = np.flatnonzero(inside)
    before, after = drawn[rows[index], cols[index]], painted[rows[index], cols[index]]
    moved = (before != after) & (after > 0)
    return {int(label): index[moved & (after == label)] for label in np.unique(after[moved])}
