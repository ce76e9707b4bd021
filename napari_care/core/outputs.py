"""What a segmentation run leaves on disk: features (HDF5), regions and ROI (QuPath GeoJSON)
and a JSON summary, written as one set (:func:`~napari_care.core.atomic.output_set`), so an
interrupted or failed run leaves the previous set as it was and no half file; and the
settings each set records, which a rerun compares with its own."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_care import __version__
from napari_care.core.atomic import atomic_open, output_set
from napari_care.core.features import SETTINGS_ATTRIBUTE, save_features
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
SETTINGS_KEY = "settings"  # the summary's key for the settings of the run


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
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.features.h5``, ``<stem>.regions.geojson`` and ``<stem>.care.json`` as one set.

    All three replace the old ones only when all three were written; the summary comes last:
    its presence marks a finished slide (cohort runs skip it). ``settings`` (those of the
    run, see :func:`settings_differences`) are recorded in the summary and the features file.

    Raises
    ------
    OSError
        :class:`~napari_care.core.atomic.OutputError` naming the slide and the file when one
        cannot be written (a full disk: "no space left on device"); the old set is kept.
    """
    paths = output_paths(out_dir, stem)
    document = summary(result, slide)
    if settings is not None:
        document[SETTINGS_KEY] = dict(settings)
    with output_set(Path(slide.path).name) as files:
        save_features(files.temporary(paths["features"]), result.features, settings=settings)
        features = geojson_features(result, roi_threshold=roi_threshold, tiles=tiles)
        write_geojson(
            files.temporary(paths["geojson"]),
            features,
            bounds_offset=slide.bounds_offset,
            gzip=paths["geojson"].name.endswith(".gz"),
        )
        with atomic_open(files.temporary(paths["summary"]), "w") as handle:
            json.dump(document, handle, indent=2)
    return paths


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str] | None) -> str | None:
    """The SHA-256 of a file (weights, a checkpoint), computed once per process and file version.

    Returns None for None; raises FileNotFoundError for a missing file.
    """
    if path is None:
        return None
    real = os.path.realpath(path)
    stat = os.stat(real)
    return _sha256_of(real, stat.st_size, stat.st_mtime_ns)


def recorded_settings(marker: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings a finished output set recorded: from a summary's ``settings`` key or an HDF5
    file's :data:`~napari_care.core.features.SETTINGS_ATTRIBUTE`; None when there are none
    (written before settings were recorded) or the file cannot be read."""
    marker = Path(marker)
    try:
        if marker.suffix == ".h5":
            import h5py  # h5py loads only for feature files

            with h5py.File(marker, "r") as f:
                text = f.attrs.get(SETTINGS_ATTRIBUTE)
            if text is None:
                return None
            recorded = json.loads(text.decode() if isinstance(text, bytes) else str(text))
        else:
            recorded = json.loads(marker.read_text(encoding="utf-8")).get(SETTINGS_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a SHA-256: its start tells files apart
    return str(value)


def settings_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """What differs between the settings an output set recorded and those of a new run.

    Only the keys of ``wanted`` count (a features file made by ``segment`` also records its
    CARE settings, which ``extract`` does not have).

    Returns
    -------
    One ``"name old -> new"`` per difference, in the order of ``wanted``; empty when they agree.
    """
    missing = object()
    differences = []
    for name, new in wanted.items():
        old = recorded.get(name, missing)
        if old is missing:
            differences.append(f"{name} (not recorded) -> {_shown(new)}")
        elif old != new:
            differences.append(f"{name} {_shown(old)} -> {_shown(new)}")
    return differences
