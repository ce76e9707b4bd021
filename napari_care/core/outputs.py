"""What a segmentation run leaves on disk: features (HDF5), regions and ROI (QuPath GeoJSON)
and a JSON summary, each written atomically, so an interrupted run leaves no half file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_care import __version__
from napari_care.core.atomic import atomic_open
from napari_care.core.features import save_features
from napari_care.core.qupath.objects import Annotation
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.write import (
    RegionTable,
    care_metadata,
    region_features,
    roi_features,
    tile_features,
    write_geojson,
)
from napari_care.core.regions import region_raster, region_table, roi_regions
from napari_care.core.segment import SegmentResult
from napari_care.core.slide.handle import Slide

SUFFIXES = {"features": ".features.h5", "geojson": ".regions.geojson", "summary": ".care.json"}


def output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Where :func:`write_outputs` puts each file of slide ``stem``."""
    return {kind: Path(out_dir) / f"{stem}{suffix}" for kind, suffix in SUFFIXES.items()}


def region_polygons(result: SegmentResult) -> dict[int, Any]:
    """Region id -> shapely polygon in level-0 pixels, exact on patch-grid edges."""
    raster = region_raster(result)
    return label_grid_polygons(
        raster.values, origin_xy=raster.origin_level0, cell_size_px=raster.stride_level0
    )


def geojson_features(
    result: SegmentResult,
    *,
    roi_threshold: float = 1.0,
    tiles: bool = False,
    polygons: dict[int, Any] | None = None,
) -> list[Annotation]:
    """Regions (detections by phenotype group), ROIs (annotations "CARE ROI") and optional tiles."""
    table = region_table(result)
    rois = tuple(int(r) for r in roi_regions(result, roi_threshold))
    measurements = RegionTable(
        region_id=table["region"],
        n_patches=table["patches"],
        alpha=table["alpha"],
        beta=table["beta"],
        a=table["a"],
        area_um2=table["area_um2"] if result.slide_mpp else None,
        group=table["group"],
        roi_ids=rois,
    )
    mpp = result.slide_mpp[0] if result.slide_mpp else None
    metadata = care_metadata(encoder=result.options.encoder, k=result.care.k, mpp=mpp, mode=result.care.mode)
    polygons = polygons if polygons is not None else region_polygons(result)
    features = region_features(polygons, measurements, mpp=mpp, metadata=metadata)
    features += roi_features(polygons, rois, table=measurements, mpp=mpp, metadata=metadata)
    if tiles:
        care = result.care
        features += tile_features(
            result.features.coords,
            result.grid.tile_size_level0,
            {
                "CARE attention": care.patch_attention,
                "CARE region id": care.region_of_patch,
            },
        )
    return features


def summary(result: SegmentResult, slide: Slide) -> dict[str, Any]:
    """The JSON summary: slide, options, per-region table, ROI, embedding size."""
    table = region_table(result)
    regions = []
    for i in range(len(table["region"])):
        row = {name: values[i].item() for name, values in table.items()}
        if not np.isfinite(row["area_um2"]):
            row["area_um2"] = None
        regions.append(row)
    care = result.care
    return {
        "software": f"napari-care {__version__}",
        "slide": {
            "path": str(slide.path),
            "mpp": list(slide.mpp) if slide.mpp else None,
            "mpp_source": slide.mpp_source,
            "dimensions": list(slide.dimensions[0]),
        },
        "options": result.options.to_dict(),
        "box_level0": list(result.box) if result.box else None,
        "mode": care.mode,
        "patches": care.n_patches,
        "patch_size_level0": result.grid.tile_size_level0,
        "regions_count": care.n_regions,
        "roi": int(care.roi),
        "rsl": float(care.rsl),
        "expected_rank": float(care.expected_rank),
        "slide_embedding_size": int(care.slide_embedding.shape[-1]),
        "regions": regions,
    }


def write_outputs(
    result: SegmentResult,
    slide: Slide,
    out_dir: str | Path,
    stem: str,
    *,
    roi_threshold: float = 1.0,
    tiles: bool = False,
) -> dict[str, Path]:
    """Write ``<stem>.features.h5``, ``<stem>.regions.geojson`` and ``<stem>.care.json``.

    The summary is written last: its presence marks a finished slide (cohort runs skip it).
    """
    paths = output_paths(out_dir, stem)
    save_features(paths["features"], result.features)
    write_geojson(
        paths["geojson"],
        geojson_features(result, roi_threshold=roi_threshold, tiles=tiles),
        bounds_offset=slide.bounds_offset,
    )
    with atomic_open(paths["summary"], "w") as handle:
        json.dump(summary(result, slide), handle, indent=2)
    return paths
