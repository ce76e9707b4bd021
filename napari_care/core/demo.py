"""The main job on the built-in default: the offline sample, the default encoder, CARE
training-free, every output written, and the regions judged against the planted truth."""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_care.core.models.care_blocks import DEFAULT_K
from napari_care.core.outputs import write_outputs
from napari_care.core.overview import write_overview
from napari_care.core.partition_metrics import (
    adjusted_rand_index,
    fixed_block_partition,
    segmentation_accuracy,
)
from napari_care.core.progress import Progress
from napari_care.core.samples import iter_offline_sample
from napari_care.core.segment import SegmentOptions, segment
from napari_care.core.slide.handle import open_slide
from napari_care.core.synthetic.slides import load_synthetic_slide


@dataclass(frozen=True)
class DemoReport:
    """What the demo did and measured."""

    slide: Path
    outputs: dict[str, Path]
    patches: int
    regions: int
    roi: int
    purity_adaptive: float
    purity_fixed: float
    blocks: int
    group_ari: float
    seconds: float

    def lines(self) -> list[str]:
        """A short human-readable report."""
        lines = [f"slide:    {self.slide}"]
        lines += [f"{kind + ':':9} {path}" for kind, path in self.outputs.items()]
        lines += [
            f"patches:  {self.patches}, adaptive regions: {self.regions} "
            f"(fixed k x k blocks: {self.blocks}), ROI: region {self.roi}",
            f"region purity against the planted tissue types: adaptive {self.purity_adaptive:.3f}, "
            f"fixed blocks {self.purity_fixed:.3f}",
            f"phenotype groups vs planted types: adjusted Rand index {self.group_ari:.3f}",
            f"time:     {self.seconds:.1f} s",
        ]
        return lines


def run_demo(out_dir: str | Path, *, k: int = DEFAULT_K) -> Generator[Progress, None, DemoReport]:
    """Build (once) and segment the offline sample; write features, GeoJSON, summary and overview."""
    started = time.perf_counter()
    path = yield from iter_offline_sample()  # built once, then cached
    out_dir = Path(out_dir)
    stem = "offline-sample"
    with open_slide(path) as slide:
        result = yield from segment(slide, SegmentOptions(k=k))
        outputs = write_outputs(result, slide, out_dir, stem)
        outputs["overview"] = write_overview(result, slide, out_dir / f"{stem}.overview.png")
    truth = load_synthetic_slide(path).truth_at(result.features.coords, result.grid.tile_size_level0)
    grid = result.features.grid
    fixed = fixed_block_partition(grid, k)
    group_of_patch = np.asarray(result.group_of_region)[result.care.region_of_patch]
    return DemoReport(
        slide=path,
        outputs=outputs,
        patches=result.care.n_patches,
        regions=result.care.n_regions,
        roi=result.care.roi,
        purity_adaptive=segmentation_accuracy(result.care.region_of_patch, truth),
        purity_fixed=segmentation_accuracy(fixed, truth),
        blocks=len(np.unique(fixed)),
        group_ari=adjusted_rand_index(group_of_patch, truth),
        seconds=time.perf_counter() - started,
    )
