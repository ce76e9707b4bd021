"""The pointing game: does CARE's most attended place lie in the annotation?

CARE's training-free attention is a region's weight spread evenly over its patches
(``a[r] / n_r``), so it is constant within each region and its argmax over patches is only the
first patch in array order of the region with the largest *per-patch* share, which is not the
top-weight region (a small region with a modest ``a`` wins). The game is therefore played on
what the attention can tell apart:

- ``"patch"``: the attention varies within some region (a trained model's, or tiles): the hit is
  whether the highest-attention patch's centre lies in the annotation (ties: the first patch);
- ``"region"``: it is constant within every region: the hit is whether the top-weight region
  (the largest attention sum; ties within a relative :data:`TIE_RTOL`: the lowest region id,
  as CARE's own ``argmax a`` picks it) meets the annotation, that is shares area with it or has
  a cell whose centre lies in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_care.core.review.grid import PatchAttention, RegionGrid, region_of_patches

TIE_RTOL = 1e-9  # relative: attention values (or region sums) this close are equal
PATCH, REGION = "patch", "region"


@dataclass(frozen=True)
class PointingRule:
    """Where the pointing game is played for one run.

    Attributes
    ----------
    on
        ``"patch"`` or ``"region"`` (see the module docstring).
    top_patch
        Index of the highest-attention patch (patch mode; None in region mode).
    top_region
        The top-weight region (region mode), or the region of ``top_patch`` (patch mode; None
        when that patch lies in no region).
    """

    on: str
    top_patch: int | None
    top_region: int | None


def pointing_rule(attention: PatchAttention, grid: RegionGrid) -> PointingRule:
    """How to play the pointing game with ``attention`` over ``grid``'s regions.

    Region mode needs every patch with attention > 0 in a region and the attention constant
    (to :data:`TIE_RTOL` of its largest value) within each region; otherwise patch mode.
    """
    values = np.asarray(attention.attention, dtype=np.float64).ravel()
    region = region_of_patches(attention, grid)
    top_patch = int(np.argmax(values)) if len(values) else None
    scale = float(values.max(initial=0.0))
    in_region = region >= 0
    if scale > 0 and not (values[~in_region] > 0).any():
        n_labels = int(region.max()) + 1
        low, high = np.full(n_labels, np.inf), np.full(n_labels, -np.inf)
        np.minimum.at(low, region[in_region], values[in_region])
        np.maximum.at(high, region[in_region], values[in_region])
        present = np.isfinite(low)
        if (high[present] - low[present] <= TIE_RTOL * scale).all():
            weight = np.bincount(region[in_region], weights=values[in_region], minlength=n_labels)
            top = int(np.flatnonzero(weight >= weight.max() * (1 - TIE_RTOL))[0])
            return PointingRule(REGION, None, top)
    if top_patch is None:
        return PointingRule(PATCH, None, None)
    top_region = int(region[top_patch])
    return PointingRule(PATCH, top_patch, top_region if top_region >= 0 else None)


def pointing_hit(rule: PointingRule, patch_inside: np.ndarray, region_meets: np.ndarray) -> bool:
    """The pointing game's hit for one annotation class.

    Parameters
    ----------
    rule
        From :func:`pointing_rule`.
    patch_inside
        ``[N]`` bool: the patches whose centre lies in the class.
    region_meets
        ``[n_labels]`` bool: the regions that meet the class (area or a cell centre in it).
    """
    if rule.on == REGION:
        top = rule.top_region
        return bool(top is not None and top < len(region_meets) and region_meets[top])
    return bool(rule.top_patch is not None and patch_inside[rule.top_patch])
