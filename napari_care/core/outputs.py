"""What a segmentation run leaves on disk: features (HDF5), regions and ROI (QuPath GeoJSON),
the CARE slide embedding (HDF5) and a JSON summary, written as one set
(:func:`~napari_care.core.atomic.output_set`), so an interrupted or failed run leaves the
previous set as it was and no half file; and the settings each set records, which a rerun
compares with its own."""

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
from napari_care.core.feature_files import LAYOUTS, features_path
from napari_care.core.features import SETTINGS_ATTRIBUTE, save_features
from napari_care.core.measurements import group_measurements, region_measurements, write_measurements_csv
from napari_care.core.models.care_hf import care_source_fingerprint, parse_care_source
from napari_care.core.overview import write_overview
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
from napari_care.core.saved_run import save_run_arrays
from napari_care.core.segment import SegmentResult
from napari_care.core.slide.handle import Slide
from napari_care.core.slide_features import save_slide_features, slide_features_path

#: The suffix of each file of a slide's output set in ``--out`` (the features' in the default
#: layout; the TRIDENT layout puts them in ``features_<encoder>/<stem>.h5``).
SUFFIXES = {
    "features": ".features.h5",
    "geojson": ".regions.geojson",
    "slide_features": ".slide_features.h5",
    "run": ".care.npz",  # what reopening the run needs (core.saved_run)
    "measurements": ".measurements.csv",
    "overview": ".overview.png",  # only when asked for (segment --overview)
    "summary": ".care.json",
}
SETTINGS_KEY = "settings"  # the summary's key for the settings of the run
TRAINING_FREE = "CARE (training-free)"  # the slide encoder recorded for the training-free generator


def output_paths(
    out_dir: str | Path,
    stem: str,
    *,
    encoder: str = "default",
    layout: str = "napari_care",
    features: bool = True,
    overview: bool = False,
) -> dict[str, Path]:
    """Where :func:`write_outputs` puts each file of slide ``stem``, the marker (``"summary"``) last.

    Parameters
    ----------
    out_dir
        The output folder.
    stem
        The slide's name.
    encoder
        The patch encoder (its name is the features' folder in the TRIDENT layout).
    layout
        ``"napari_care"`` (``<stem>.features.h5``) or ``"trident"``
        (``features_<encoder>/<stem>.h5``), see :func:`~napari_care.core.feature_files.features_path`.
    features
        Whether the set holds the patch features (not when they were read from a file).
    overview
        Whether it holds the PNG overview.
    """
    out_dir = Path(out_dir)
    paths = {kind: out_dir / f"{stem}{suffix}" for kind, suffix in SUFFIXES.items()}
    if features:
        paths["features"] = features_path(out_dir, stem, encoder, layout)
    else:
        del paths["features"]
    paths["slide_features"] = slide_features_path(out_dir, stem)
    if not overview:
        del paths["overview"]
    paths["summary"] = paths.pop("summary")  # written last: its presence marks a finished slide
    return paths


def slide_encoder_name(care_checkpoint: str | os.PathLike[str] | None) -> str:
    """What made the slide embedding: :data:`TRAINING_FREE`, or ``"CARE (<checkpoint file name>)"``."""
    return TRAINING_FREE if not care_checkpoint else f"CARE ({Path(care_checkpoint).name})"


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
    group_names: Mapping[int, str] | None = None,
) -> list[Annotation]:
    """Regions (detections classified by phenotype group: its name and colour), ROIs
    (annotations "CARE ROI") and optional tiles; ``group_names`` as in :func:`write_outputs`."""
    table = region_table(result)
    measured = region_measurements(result)
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
        tissue_share=measured["tissue_share"],
        mean_attention=measured["mean_attention"],
        group_names=group_names,
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


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def group_records(result: SegmentResult, names: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """The ``"groups"`` of ``care.json``: per phenotype group its id, name, colour ([r, g, b]) and
    measurements (:func:`~napari_care.core.measurements.group_measurements`)."""
    table = group_measurements(result, names)
    records = []
    for i, group in enumerate(table["group"].tolist()):
        color = str(table["color"][i])
        records.append(
            {
                "id": int(group),
                "name": str(table["name"][i]),
                "color": [int(color[k : k + 2], 16) for k in (1, 3, 5)],
                "regions": int(table["regions"][i]),
                "patches": int(table["patches"][i]),
                "area_um2": _finite(table["area_um2"][i]),
                "tissue_share": float(table["tissue_share"][i]),
                "a": float(table["a"][i]),
                "mean_attention": float(table["mean_attention"][i]),
            }
        )
    return records


def phenotype_record(result: SegmentResult) -> dict[str, Any] | None:
    """How the number of groups was decided: asked for, chosen, the criterion and its scores."""
    phenotypes = result.extras.get("phenotypes")
    if phenotypes is None:
        return None
    scores = getattr(phenotypes, "scores", None) or {}
    return {
        "requested": result.options.n_groups,
        "n_groups": int(phenotypes.n_groups),
        "criterion": getattr(phenotypes, "criterion", None),
        "scores": {str(n): _finite(v) for n, v in scores.items()},
    }


def summary(
    result: SegmentResult,
    slide: Slide | None,
    *,
    features_file: str | os.PathLike[str] | None = None,
    group_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The JSON summary: slide, options, per-region table, ROI, embedding size.

    Without ``slide`` (a run on a feature file alone) the slide's path, calibration source
    and size are null and its mpp is the features' (scaled to level 0), when they say it.
    ``features_file`` is recorded as ``"features_file"`` when the features were read from one.
    """
    table = region_table(result)
    regions = []
    for i in range(len(table["region"])):
        row = {name: values[i].item() for name, values in table.items()}
        if not np.isfinite(row["area_um2"]):
            row["area_um2"] = None
        regions.append(row)
    care = result.care
    if slide is not None:
        slide_record = {
            "path": str(slide.path),
            "mpp": list(slide.mpp) if slide.mpp else None,
            "mpp_source": slide.mpp_source,
            "dimensions": list(slide.dimensions[0]),
            "bounds_offset": list(slide.bounds_offset),
        }
    else:
        mpp = list(result.slide_mpp) if result.slide_mpp else None
        source = "features" if mpp else None
        slide_record = {
            "path": None,
            "mpp": mpp,
            "mpp_source": source,
            "dimensions": None,
            "bounds_offset": None,
        }
    document = {
        "software": f"napari-care {__version__}",
        "slide": slide_record,
        "options": result.options.to_dict(),
        "box_level0": list(result.box) if result.box else None,
        "mode": care.mode,
        "method": care.method_label,
        "roi_rule": care.roi_rule,
        "slide_encoder": care.slide_encoder or slide_encoder_name(result.options.care_checkpoint),
        "regions_from": care.mode,  # the name the authors' model runs ask for
        "patches": care.n_patches,
        "patch_size_level0": result.grid.tile_size_level0,
        "regions_count": care.n_regions,
        "roi": int(care.roi),
        "rsl": float(care.rsl),
        "expected_rank": float(care.expected_rank),
        "slide_embedding_size": int(care.slide_embedding.shape[-1]),
        "groups": group_records(result, group_names),
        "phenotype_groups": phenotype_record(result),
        "regions": regions,
    }
    if features_file is not None:
        document["features_file"] = str(features_file)
    return document


def write_outputs(
    result: SegmentResult,
    slide: Slide | None,
    out_dir: str | Path,
    stem: str,
    *,
    roi_threshold: float = 1.0,
    tiles: bool = False,
    settings: Mapping[str, Any] | None = None,
    layout: str = "napari_care",
    features_file: str | os.PathLike[str] | None = None,
    group_names: Mapping[int, str] | None = None,
    overview: bool = False,
) -> dict[str, Path]:
    """Write a slide's output set: the patch features, ``<stem>.regions.geojson``,
    ``<stem>.slide_features.h5`` (CARE's slide embedding) and ``<stem>.care.json``.

    All of them replace the old ones only when all were written; the summary comes last:
    its presence marks a finished slide (cohort runs skip it). ``settings`` (those of the
    run, see :func:`settings_differences`) are recorded in the summary and the HDF5 files.

    Parameters
    ----------
    result
        The segmentation.
    slide
        The slide, or None for features read from a file alone: the GeoJSON then has no
        bounds offset (QuPath's, for formats such as MRXS) and the summary no slide record.
    out_dir, stem
        Where, and the slide's name.
    roi_threshold, tiles
        Regions drawn as ROIs (``a >= roi_threshold * max a``); per-tile objects too.
    settings
        The settings of the run, recorded.
    layout
        Where the patch features go (:func:`output_paths`).
    features_file
        The file the features were read from: recorded in the summary, not written again.
    group_names
        Group id -> the name a user gave it (default ``"CARE group <id>"``): in ``care.json``,
        the GeoJSON's classes and the measurements.
    overview
        Also write ``<stem>.overview.png`` (:func:`~napari_care.core.overview.write_overview`);
        only with a slide.

    Returns
    -------
    The files written, by kind (:func:`output_paths`).

    Raises
    ------
    OSError
        :class:`~napari_care.core.atomic.OutputError` naming the slide and the file when one
        cannot be written (a full disk: "no space left on device"); the old set is kept.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    options = result.options
    overview = overview and slide is not None
    paths = output_paths(
        out_dir,
        stem,
        encoder=options.encoder,
        layout=layout,
        features=features_file is None,
        overview=overview,
    )
    document = summary(result, slide, features_file=features_file, group_names=group_names)
    if settings is not None:
        document[SETTINGS_KEY] = dict(settings)
    label = Path(slide.path).name if slide is not None else Path(features_file or stem).name
    with output_set(label) as files:
        if "features" in paths:
            save_features(files.temporary(paths["features"]), result.features, settings=settings)
        features = geojson_features(result, roi_threshold=roi_threshold, tiles=tiles, group_names=group_names)
        write_geojson(
            files.temporary(paths["geojson"]),
            features,
            bounds_offset=slide.bounds_offset if slide is not None else (0, 0),
            gzip=paths["geojson"].name.endswith(".gz"),
        )
        save_slide_features(
            files.temporary(paths["slide_features"]),
            np.asarray(result.care.slide_embedding, dtype=np.float32),
            slide_encoder=result.care.slide_encoder or slide_encoder_name(options.care_checkpoint),
            patch_encoder=options.encoder,
            settings=settings,
        )
        save_run_arrays(files.temporary(paths["run"]), result)
        if overview:
            write_overview(result, slide, files.temporary(paths["overview"]), names=group_names)
        write_measurements_csv(files.temporary(paths["measurements"]), result, group_names)
        with atomic_open(files.temporary(paths["summary"]), "w") as handle:
            json.dump(document, handle, indent=2, allow_nan=False)
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


def care_fingerprint(care: str | os.PathLike[str] | None) -> str | None:
    """What identifies the CARE model of a run, for its settings: None (training-free),
    ``"sha256:<hex>"`` of a checkpoint file, or the authors' model's revision
    (``"Zipper-1/CARE@<commit>"``) or content hash for ``--care hf:<id>`` / a snapshot folder
    (:func:`~napari_care.core.models.care_hf.care_source_fingerprint`)."""
    if not care:
        return None
    source = parse_care_source(care)
    return care_source_fingerprint(source) if source is not None else f"sha256:{file_sha256(care)}"


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
