"""One slide, one job: what the command line and the cohort runner do per slide.

A job cleans up what a killed earlier run left of its slide, skips the slide when its
completion marker exists (resume), opens it, runs, writes its outputs atomically and
returns a status row; it never raises for a bad slide, so one broken file does not stop a
cohort. A row is a dict: ``slide`` (path), ``status`` (``done``, ``skipped`` or
``failed``), ``detail`` (what was made, or why it failed) and ``seconds``.
"""

from __future__ import annotations

import csv
import functools
import glob
import inspect
import io
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_care.core.atomic import atomic_open
from napari_care.core.encoders import create_encoder
from napari_care.core.extract import extract_features
from napari_care.core.features import save_features
from napari_care.core.outputs import SUFFIXES, output_paths, write_outputs
from napari_care.core.progress import Progress, run_to_end
from napari_care.core.segment import NoTissueError, SegmentOptions, segment
from napari_care.core.slide.backends import slide_stem
from napari_care.core.slide.handle import open_slide
from napari_care.core.tiling import tile_grid
from napari_care.core.tissue import tissue_mask

Row = dict[str, Any]
ProgressCallback = Callable[[Progress], None] | None
ROW_FIELDS = ("slide", "status", "seconds", "detail")


@dataclass(frozen=True)
class SlideJob:
    """A slide to process and its optional mpp override."""

    path: Path
    mpp: float | None = None

    @property
    def stem(self) -> str:
        """The slide's name without its slide suffixes (:func:`~napari_care.core.slide.slide_stem`)."""
        return slide_stem(self.path)


def expand_slides(arguments: list[str], mpp: float | None = None) -> list[SlideJob]:
    """Slides from paths, glob patterns, and CSV files (column ``path``, optional ``mpp``).

    A CSV's relative paths are taken from the CSV's folder. ``mpp`` applies to slides
    without their own. Paths come back absolute (workers may run in other folders); a slide
    named twice (a path and a pattern) is kept once, the first time.
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
    unique: dict[str, SlideJob] = {}
    for job in jobs:  # absolute, for workers elsewhere; not resolved: a link is a slide of its own name
        path = os.path.abspath(job.path)
        unique.setdefault(path, SlideJob(Path(path), job.mpp))
    return list(unique.values())


def _read_csv(path: Path, default_mpp: float | None) -> list[SlideJob]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "path" not in columns:
            raise ValueError(
                f"{path}: a slide list needs a 'path' column (found: {', '.join(columns) or 'none'})"
            )
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


def check_unique_stems(jobs: Sequence[SlideJob]) -> None:
    """Raise ValueError when two jobs would write the same outputs (one slide twice, or one name twice)."""
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.stem in seen:
            raise ValueError(
                f"{seen[job.stem]} and {job.path} share the name {job.stem!r}: their outputs would collide"
            )
        seen[job.stem] = job.path


def remove_partial_files(
    out_dir: str | Path, stem: str, suffixes: Iterable[str] = SUFFIXES.values()
) -> list[Path]:
    """Delete the temporary files that a killed run left while writing slide ``stem``'s outputs.

    An atomic write removes its temporary file when it fails, but a process that is killed
    (a worker out of memory, a cluster shut down, Ctrl-C twice) leaves it behind. Call this
    only when nobody else is writing this slide's outputs.

    Parameters
    ----------
    out_dir
        The output folder.
    stem
        The slide's name; its outputs are ``<stem><suffix>``.
    suffixes
        The outputs' suffixes (default: those of ``segment`` and ``extract``).

    Returns
    -------
    The files removed.
    """
    removed = []
    for suffix in dict.fromkeys(suffixes):
        # the names napari_care.core.atomic gives its temporary files: ".<target>.<8 random>.part"
        for path in Path(out_dir).glob(f".{glob.escape(stem + suffix)}.????????.part"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _row(job: SlideJob, status: str, detail: str, started: float | None = None) -> Row:
    seconds = 0.0 if started is None else round(time.perf_counter() - started, 2)
    return {"slide": str(job.path), "status": status, "seconds": seconds, "detail": detail}


def _reason(error: Exception) -> str:
    """Why a slide failed, in one line: our own errors speak for themselves, others say their type."""
    text = " ".join(str(error).split())
    return text if isinstance(error, (ValueError, OSError)) and text else f"{type(error).__name__}: {text}"


def run_job(job: SlideJob, marker: Path, work: Callable[[Any], str], *, overwrite: bool = False) -> Row:
    """The frame of every job: clean up, resume, open the slide, run ``work(slide)``, report.

    Parameters
    ----------
    job
        The slide.
    marker
        The output written last, ``<out_dir>/<stem><suffix>``; when it exists the slide is
        finished and skipped.
    work
        Does the work on the open, calibrated slide, writes the outputs, returns the row's detail.
    overwrite
        Redo a finished slide.

    Returns
    -------
    The slide's status row; any exception of the slide becomes a ``failed`` row.
    """
    remove_partial_files(marker.parent, job.stem, (*SUFFIXES.values(), marker.name.removeprefix(job.stem)))
    if marker.exists() and not overwrite:
        return _row(job, "skipped", "already done")
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing mpp is this row's reason, not a warning on a worker
            with open_slide(job.path, mpp=job.mpp) as slide:
                if slide.mpp is None:
                    raise ValueError(
                        "the file has no pixel size (mpp); give --mpp or an 'mpp' column in the slide CSV"
                    )
                detail = work(slide)
    except Exception as error:  # a bad slide is a row in the summary, not the end of the cohort
        return _row(job, "failed", _reason(error), started)
    return _row(job, "done", detail, started)


@functools.lru_cache(maxsize=1)
def _load_encoder(name: str, weights: str | None, device: str | None):
    return create_encoder(name, weights=weights, device=device)


_ENCODER_LOCK = threading.Lock()


def shared_encoder(options: SegmentOptions):
    """The encoder ``options`` name, built once per process: a worker loads its weights once,
    not per slide."""
    with _ENCODER_LOCK:  # two slide threads of one worker must not both load the weights
        return _load_encoder(options.encoder, options.encoder_weights, options.device)


def segment_job(
    job: SlideJob,
    out_dir: str | Path,
    options: SegmentOptions,
    *,
    overwrite: bool = False,
    tiles: bool = False,
    on_progress: ProgressCallback = None,
) -> Row:
    """Segment one slide; write ``<stem>.features.h5``, ``.regions.geojson`` and ``.care.json`` (the marker).

    ``on_progress`` is called with the slide's :class:`~napari_care.core.progress.Progress`
    reports (in-process runs; a cluster shows progress over slides).
    """
    marker = output_paths(out_dir, job.stem)["summary"]

    def work(slide) -> str:
        marker.unlink(missing_ok=True)  # a redo that is interrupted must not look finished
        result = run_to_end(segment(slide, options, encoder=shared_encoder(options)), on_progress)
        write_outputs(result, slide, out_dir, job.stem, tiles=tiles)
        care = result.care
        return f"{care.n_patches} patches, {care.n_regions} regions, ROI {care.roi}"

    return run_job(job, marker, work, overwrite=overwrite)


def extract_job(
    job: SlideJob,
    out_dir: str | Path,
    options: SegmentOptions,
    *,
    overwrite: bool = False,
    on_progress: ProgressCallback = None,
) -> Row:
    """Extract one slide's patch features to ``<stem>.features.h5`` (the marker).

    ``on_progress`` as in :func:`segment_job`.
    """
    target = output_paths(out_dir, job.stem)["features"]

    def work(slide) -> str:
        tissue = tissue_mask(slide, saturation_threshold=options.tissue_threshold)
        grid = tile_grid(
            slide,
            mpp=options.mpp,
            magnification=None if options.mpp else options.magnification,
            tile_size_px=options.tile_size_px,
            min_tissue=options.min_tissue,
            tissue=tissue,
        )
        if len(grid) == 0:
            raise NoTissueError(f"{job.path.name}: no tissue in the slide")
        features = run_to_end(
            extract_features(slide, grid, shared_encoder(options), batch_size=options.batch_size), on_progress
        )
        features.slide_id = job.stem
        save_features(target, features)
        return f"{len(features)} patches"

    return run_job(job, target, work, overwrite=overwrite)


def reports_progress(job_function: Callable[..., Row]) -> bool:
    """Whether a job takes ``on_progress`` (its slide's stages can be shown as they run)."""
    return "on_progress" in inspect.signature(job_function).parameters


def summary_path(out_dir: str | Path, job_function: Callable[..., Row]) -> Path:
    """Where a cohort of ``job_function`` writes its summary: ``<out_dir>/<job>-summary.csv``
    (``segment-summary.csv`` for :func:`segment_job`)."""
    return Path(out_dir) / f"{job_function.__name__.removesuffix('_job')}-summary.csv"


def write_summary(rows: Sequence[Row], path: str | Path) -> Path:
    """Write the status rows as a CSV (slide, status, seconds, detail), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path, "w", newline="") as handle:
        handle.write(text.getvalue())
    return Path(path)
