"""CareResult: what CARE says about one slide, as numpy arrays (a plain value: no model here).

Both modes produce it: the training-free generator (:mod:`napari_care.core.models.care_free`)
and a trained :class:`napari_care.core.models.care.CareModel`; :mod:`napari_care.core.care_run`
chooses between them. The GUI, the CLI, the GeoJSON export and the review metrics read only this.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_care.core.atomic import atomic_open

#: The name of each mode wherever a user reads which CARE ran (the widget, ``care.json``, the docs).
METHOD_LABELS = {
    "training-free": "CARE (training-free regions)",
    "model": "CARE (trained checkpoint)",
    "edited": "CARE (regions corrected by hand)",
}
#: How each mode picks the ROI (``care.json``'s ``"roi_rule"``; docs/care.md says why).
ROI_RULES = {
    "training-free": (
        "argmax of a = lambda_spf * coverage + (1 - lambda_spf) * novelty, novelty being the distance "
        "of the region's mean feature from the slide's, in standard deviations: the project's rule "
        "(the paper's SPF score comes from a trained scorer)"
    ),
    "model": "argmax of the fused SPF weight a, as published",
    "edited": "the training-free rule, on the corrected regions",
}

#: Fields that files written by earlier versions lack (their defaults apply).
_ADDED_LATER = ("slide_encoder",)


@dataclass(frozen=True)
class CareResult:
    """Adaptive regions, their weights and the slide embedding of one slide.

    Attributes
    ----------
    region_of_patch
        ``[N]`` int64, adaptive region of each patch, dense ids 0..R-1.
    region_features
        ``[R, E]`` float32, one feature per region (ARSA output; training-free: the mean
        patch feature, E = D).
    alpha
        ``[R]`` coverage prior: share of the slide's patches in each region (sums to 1).
    beta
        ``[R]`` semantic weight (gated attention, or the training-free novelty; sums to 1).
    a
        ``[R]`` fused weight ``lambda_spf * alpha + (1 - lambda_spf) * beta`` (sums to 1).
    roi
        Index of the region with the largest ``a``.
    roi_feature
        ``[E]`` float32, ``region_features[roi]``.
    slide_embedding
        ``[E]`` float32, ``sum_r a[r] * region_features[r]``.
    patch_attention
        ``[N]`` float32, ``a`` of the patch's region spread evenly over its patches
        (``a[r] / n_r``); sums to 1 over the slide.
    rsl
        Region structuring loss ``(E_bar - E_star)^2``.
    expected_rank
        ``E_bar``: mean over patches of the expected candidate rank (0 = nearest block).
    block_of_patch
        ``[N]`` int64, the fixed k x k block of each patch (0..B-1).
    candidate_rank
        ``[N]`` int64, rank of the candidate each patch joined (0 = its nearest block).
    grid
        ``[N, 2]`` int64 (gx, gy) patch-grid indices the result was computed on.
    k
        Block side in patches.
    mode
        ``"training-free"`` or ``"model"``: what made the regions and weights; ``"edited"`` for
        regions a user corrected (:mod:`napari_care.core.region_edits`), whose weights follow
        the training-free rule.
    slide_encoder
        What made ``slide_embedding`` when it is not CARE's own ``sum_r a[r] * region_features[r]``
        of this result: the id of the slide encoder (``"Zipper-1/CARE"``, whose 512-d
        ``wsi_embedding`` it then is, of another width than ``region_features``); ``""`` when
        it is CARE's own.
    """

    region_of_patch: np.ndarray
    region_features: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    a: np.ndarray
    roi: int
    roi_feature: np.ndarray
    slide_embedding: np.ndarray
    patch_attention: np.ndarray
    rsl: float
    expected_rank: float
    block_of_patch: np.ndarray
    candidate_rank: np.ndarray
    grid: np.ndarray
    k: int
    mode: str
    slide_encoder: str = ""

    def __post_init__(self) -> None:
        n_patches, n_regions = len(self.region_of_patch), len(self.region_features)
        for name in ("patch_attention", "block_of_patch", "candidate_rank", "grid"):
            if len(getattr(self, name)) != n_patches:
                raise ValueError(
                    f"CareResult.{name} has {len(getattr(self, name))} rows, expected {n_patches}"
                )
        for name in ("alpha", "beta", "a"):
            if getattr(self, name).shape != (n_regions,):
                raise ValueError(
                    f"CareResult.{name} has shape {getattr(self, name).shape}, expected ({n_regions},)"
                )
        if n_patches and (self.region_of_patch.min() < 0 or self.region_of_patch.max() >= n_regions):
            raise ValueError(f"CareResult.region_of_patch must hold ids 0..{n_regions - 1}")
        if not 0 <= self.roi < n_regions:
            raise ValueError(f"CareResult.roi={self.roi} is not a region id 0..{n_regions - 1}")

    @property
    def n_patches(self) -> int:
        """Number of patches N."""
        return len(self.region_of_patch)

    @property
    def n_regions(self) -> int:
        """Number of adaptive regions R."""
        return len(self.region_features)

    @property
    def region_sizes(self) -> np.ndarray:
        """``[R]`` int64 number of patches in each region."""
        return np.bincount(self.region_of_patch, minlength=self.n_regions)

    @property
    def method_label(self) -> str:
        """What ran, in words: ``"CARE (training-free regions)"``, ``"CARE (trained checkpoint)"``
        or ``"CARE (regions corrected by hand)"``."""
        return METHOD_LABELS.get(self.mode, f"CARE ({self.mode})")

    @property
    def roi_rule(self) -> str:
        """How this result's ROI was chosen (see :data:`ROI_RULES`)."""
        return ROI_RULES.get(self.mode, "argmax of a")

    @property
    def roi_mask(self) -> np.ndarray:
        """``[N]`` bool, True for the patches of the ROI region."""
        return self.region_of_patch == self.roi

    def save(self, path: str | Path) -> Path:
        """Write the result to a compressed ``.npz`` file atomically and return its path."""
        path = Path(path)
        with atomic_open(path, "wb") as handle:
            np.savez_compressed(handle, **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> CareResult:
        """Read a result written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                values: dict[str, Any] = {
                    f.name: data[f.name] for f in fields(cls) if f.name in data or f.name not in _ADDED_LATER
                }
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"{path}: not a CareResult file ({error})") from error
        for name in ("roi", "k"):
            values[name] = int(values[name])
        for name in ("rsl", "expected_rank"):
            values[name] = float(values[name])
        for name in ("mode", *_ADDED_LATER):
            if name in values:
                values[name] = str(values[name])
        return cls(**values)
