"""One slide, one job: what the command line and the cohort runner do per slide.

Each job opens its slide, runs, writes its outputs atomically and returns a status row;
it never raises for a bad slide, so one broken file does not stop a cohort.
"""

from __future__ import annotations

import csv
import glob
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_care.core.outputs import output_paths
from napari_care.core.segment import SegmentOptions


@dataclass(frozen=True)
class SlideJob:
    """A slide to process and its optional mpp override."""

    path: Path
    mpp: float | None = None

    @property
    def stem(self) -> str:
        """The slide's name without its slide suffixes."""
        name = self.path.name
        for suffix in (".ome.tiff", ".ome.tif"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return self.path.stem


def expand_slides(arguments: list[str], mpp: float | None = None) -> list[SlideJob]:
    """Slides from paths, glob patterns, and CSV files (column ``path``, optional ``mpp``).

    A CSV's relative paths are taken from the CSV's folder. ``mpp`` applies to slides
    without their own.
    """
    jobs: list[SlideJob] = []
    for argument in arguments:
        if argument.lower().endswith(".csv") and Path(argument).is_file():
            jobs += _read_csv(Path(argument), mpp)
        elif any(ch in argument for ch in "*?["):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                raise ValueError(f"{argument}: no file matches this pattern")
            jobs += [SlideJob(Path(m), mpp) for m in matches]
        else:
            jobs.append(SlideJob(Path(argument), mpp))
    return jobs


def _read_csv(path: Path, default_mpp: float | None) -> list[SlideJob]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "path" not in columns:
            raise ValueError(f"{path}: a slide list needs a 'path' column (found: {', '.join(columns) or 'none'})")
        jobs = []
        for line, row in enumerate(reader, start=2):
            slide = Path(row[columns["path"]].strip())
            slide = slide if slide.is_absolute() else path.parent / slide
            text = (row.get(columns["mpp"]) or "").strip() if "mpp" in columns else ""
            try:
                mpp = float(text) if text else default_mpp
            except ValueError:
                raise ValueError(f"{path}, line {line}: mpp {text!r} is not a number") from None
            jobs.append(SlideJob(slide, mpp))
    return jobs


def segment_job(job: SlideJob, out_dir: str | Path, options: SegmentOptions, *, overwrite: bool = False,
                tiles: bool = False) -> dict[str, Any]:
    """Segment one slide and write its outputs; return a status row (never raises for the slide)."""
    from napari_care.core.outputs import write_outputs
    from napari_care.core.progress import run_to_end
    from napari_care.core.segment import segment
    from napari_care.core.slide import open_slide

    paths = output_paths(out_dir, job.stem)
    if paths["summary"].exists() and not overwrite:
        return {"slide": str(job.path), "status": "skipped", "detail": "already done", "seconds": 0.0}
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_slide(job.path, mpp=job.mpp) as slide:
                result = run_to_end(segment(slide, options))
                write_outputs(result, slide, out_dir, job.stem, tiles=tiles)
    except Exception as error:  # a bad slide is a row in the summary, not the end of the cohort
        return {"slide": str(job.path), "status": "failed", "detail": f"{type(error).__name__}: {error}",
                "seconds": round(time.perf_counter() - started, 2)}
    return {"slide": str(job.path), "status": "done",
            "detail": f"{result.care.n_patches} patches, {result.care.n_regions} regions, ROI {result.care.roi}",
            "seconds": round(time.perf_counter() - started, 2)}


def extract_job(job: SlideJob, out_dir: str | Path, options: SegmentOptions, *, overwrite: bool = False) -> dict[str, Any]:
    """Extract one slide's patch features to ``<stem>.features.h5``; return a status row."""
    from napari_care.core.extract import extract_features
    from napari_care.core.features import save_features
    from napari_care.core.progress import run_to_end
    from napari_care.core.segment import build_encoder
    from napari_care.core.slide import open_slide
    from napari_care.core.tiling import tile_grid
    from napari_care.core.tissue import tissue_mask

    target = output_paths(out_dir, job.stem)["features"]
    if target.exists() and not overwrite:
        return {"slide": str(job.path), "status": "skipped", "detail": "already done", "seconds": 0.0}
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_slide(job.path, mpp=job.mpp) as slide:
                tissue = tissue_mask(slide, saturation_threshold=options.tissue_threshold)
                grid = tile_grid(slide, mpp=options.mpp, magnification=None if options.mpp else options.magnification,
                                 tile_size_px=options.tile_size_px, min_tissue=options.min_tissue, tissue=tissue)
                if len(grid) == 0:
                    raise ValueError(f"{job.path.name}: no tissue")
                features = run_to_end(extract_features(slide, grid, build_encoder(options),
                                                       batch_size=options.batch_size))
                features.slide_id = job.stem
                save_features(target, features)
    except Exception as error:
        return {"slide": str(job.path), "status": "failed", "detail": f"{type(error).__name__}: {error}",
                "seconds": round(time.perf_counter() - started, 2)}
    return {"slide": str(job.path), "status": "done", "detail": f"{len(features)} patches",
            "seconds": round(time.perf_counter() - started, 2)}
