"""A finished segmentation run, saved so that it reopens without re-encoding anything.

``write_outputs`` (:mod:`napari_care.core.outputs`) puts ``<stem>.care.npz`` in every output
set: the :class:`~napari_care.core.care_result.CareResult` arrays (``care_<field>``), the run's
tile grid (``grid_<field>``: coords, grid cells, tile sizes, read level, tissue share), the
phenotype group of each region and the slide's pixel size. :func:`load_run` reads it back with
``<stem>.care.json`` (the options, the slide's path, the group names and colours) into a
:class:`SavedRun` whose ``result`` is a :class:`~napari_care.core.segment.SegmentResult`, so
everything that draws or measures a run (the napari layers, the overview, the measurements)
works on a reopened one as on a fresh one. The patch features come from the run's features
file when it is still there; without it the result holds features of width 0 (the layers,
measurements and exports need none).

>>> run = load_run("out/slide.care.json")  # doctest: +SKIP
>>> run.result.care.roi, run.slide_path, run.group_names  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_care.core.atomic import atomic_open
from napari_care.core.care_result import CareResult
from napari_care.core.features import PatchFeatures, load_features
from napari_care.core.segment import SegmentOptions, SegmentResult
from napari_care.core.tiling import TileGrid

RUN_SUFFIX = ".care.npz"
SUMMARY_SUFFIX = ".care.json"


def save_run_arrays(path: str | os.PathLike[str], result: SegmentResult) -> Path:
    """Write what reopening ``result`` needs to a compressed ``.npz``, atomically."""
    path = Path(path)
    grid = result.grid
    arrays: dict[str, np.ndarray] = {
        f"care_{f.name}": np.asarray(getattr(result.care, f.name)) for f in fields(result.care)
    }
    for f in fields(grid):
        value = getattr(grid, f.name)
        arrays[f"grid_{f.name}"] = np.asarray(np.nan if value is None else value)
    arrays["group_of_region"] = np.asarray(result.group_of_region, np.int64)
    arrays["slide_mpp"] = np.asarray(result.slide_mpp if result.slide_mpp else (np.nan, np.nan), np.float64)
    arrays["box"] = np.asarray(result.box if result.box is not None else (), np.float64)
    arrays["encoded_tiles"] = np.asarray(result.encoded_tiles)
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


@dataclass(frozen=True)
class SavedRun:
    """A run read back from its files.

    Attributes
    ----------
    result
        The run, as a fresh one is.
    summary
        The run's ``care.json``.
    summary_path
        Where it was read from.
    slide_path
        The slide the run was of, as recorded (it may have moved since), or None for a run on
        a feature file without its slide.
    group_names, group_colors
        Name and (r, g, b) colour of each phenotype group, by group id.
    features_loaded
        Whether ``result.features`` holds the patch features (from the run's features file)
        or only their coords (width 0).
    """

    result: SegmentResult
    summary: dict[str, Any]
    summary_path: Path
    slide_path: Path | None
    group_names: dict[int, str]
    group_colors: dict[int, tuple[int, int, int]]
    features_loaded: bool


def run_paths(source: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(care.json, care.npz)`` of a run from its ``care.json``, ``care.npz`` or ``regions.geojson``."""
    source = Path(source)
    name = source.name
    for suffix in (SUMMARY_SUFFIX, RUN_SUFFIX, ".regions.geojson.gz", ".regions.geojson"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return source.with_name(stem + SUMMARY_SUFFIX), source.with_name(stem + RUN_SUFFIX)
    raise ValueError(
        f"{source}: not a file of a segmentation run (<stem>.care.json, .care.npz, .regions.geojson)"
    )


def _care_from(data) -> CareResult:
    values: dict[str, Any] = {}
    for f in fields(CareResult):
        key = f"care_{f.name}"
        if key in data:
            values[f.name] = data[key]
    for name in ("roi", "k"):
        values[name] = int(values[name])
    for name in ("rsl", "expected_rank"):
        values[name] = float(values[name])
    for name in ("mode", "slide_encoder"):
        if name in values:
            values[name] = str(values[name])
    return CareResult(**values)


def _grid_from(data) -> TileGrid:
    values = {f.name: data[f"grid_{f.name}"] for f in fields(TileGrid)}
    for name in ("tile_size_px", "read_level"):
        values[name] = int(values[name])
    for name in ("tile_size_level0", "stride_level0", "read_downsample"):
        values[name] = float(values[name])
    target = float(values["target_mpp"])
    values["target_mpp"] = None if np.isnan(target) else target
    return TileGrid(**values)


def _features_of(summary: dict, summary_path: Path, grid: TileGrid, slide_mpp) -> tuple[PatchFeatures, bool]:
    """The run's patch features from its features file when it is there and fits, else coords only."""
    options = summary.get("options", {})
    candidates = [
        summary.get("features_file"),
        summary_path.with_name(summary_path.name.replace(SUMMARY_SUFFIX, ".features.h5")),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            try:
                features = load_features(candidate)
            except (OSError, ValueError):
                continue
            if len(features) == len(grid.coords) and np.array_equal(features.coords, grid.coords):
                return features, True
    mpp = grid.target_mpp
    empty = PatchFeatures(
        np.zeros((len(grid.coords), 0), np.float32),
        grid.coords,
        grid.tile_size_px,
        grid.tile_size_level0,
        mpp,
        str(options.get("encoder", "")),
        stride_level0=grid.stride_level0,
    )
    return empty, False


def _options_of(summary: dict) -> SegmentOptions:
    known = {f.name for f in fields(SegmentOptions)}
    return SegmentOptions(**{k: v for k, v in summary.get("options", {}).items() if k in known})


def load_run(source: str | os.PathLike[str]) -> SavedRun:
    """Read a run from its ``care.json`` (or ``care.npz`` / ``regions.geojson`` beside it).

    Raises
    ------
    FileNotFoundError
        When ``care.json`` or ``care.npz`` is missing (a run written before ``care.npz``
        existed: segment it again).
    ValueError
        When a file is not what a run writes.
    """
    summary_path, arrays_path = run_paths(source)
    for path in (summary_path, arrays_path):
        if not path.is_file():
            hint = " (written before runs kept it: segment the slide again)" if path == arrays_path else ""
            raise FileNotFoundError(f"{path} not found{hint}")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{summary_path}: not a readable run summary ({error})") from None
    try:
        with np.load(arrays_path, allow_pickle=False) as data:
            care, grid = _care_from(data), _grid_from(data)
            group_of_region = np.asarray(data["group_of_region"], np.int64)
            mpp = np.asarray(data["slide_mpp"], np.float64)
            box = np.asarray(data["box"], np.float64)
            encoded = int(data["encoded_tiles"])
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{arrays_path}: not a run's arrays ({type(error).__name__}: {error})") from None
    slide_mpp = None if np.isnan(mpp).any() else (float(mpp[0]), float(mpp[1]))
    features, loaded = _features_of(summary, summary_path, grid, slide_mpp)
    result = SegmentResult(
        features=features,
        care=care,
        group_of_region=group_of_region,
        grid=grid,
        tissue=None,
        options=_options_of(summary),
        box=tuple(int(v) for v in box) if box.size == 4 else None,
        encoded_tiles=encoded,
        slide_mpp=slide_mpp,
    )
    groups = summary.get("groups") or []
    recorded = (summary.get("slide") or {}).get("path")
    return SavedRun(
        result=result,
        summary=summary,
        summary_path=summary_path,
        slide_path=Path(recorded) if recorded else None,
        group_names={int(g["id"]): str(g["name"]) for g in groups},
        group_colors={int(g["id"]): tuple(int(c) for c in g["color"]) for g in groups},
        features_loaded=loaded,
    )
