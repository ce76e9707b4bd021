"""One slide, one job: what the command line and the cohort runner do per slide.

A job cleans up what a killed earlier run left of its slide, skips the slide when its
completion marker exists and recorded the same settings (resume; other settings make the
slide fail unless it is overwritten), opens it, runs, writes its outputs as one set (all
or none replace the old ones) and returns a status row; it never raises for a bad slide,
so one broken file does not stop a cohort. A row is a dict: ``slide`` (path), ``status``
(``done``, ``skipped`` or ``failed``), ``detail`` (what was made, or why it failed) and
``seconds``. Jobs on feature files instead of slides (``segment --features``) are in
:mod:`napari_care.core.feature_jobs`, in the same frame.
"""

from __future__ import annotations

import csv
import functools
import glob
import inspect
import io
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_care.core.atomic import atomic_open, output_set
from napari_care.core.encoders import create_encoder
from napari_care.core.extract import extract_features
from napari_care.core.feature_files import features_path
from napari_care.core.features import PatchFeatures, save_features
from napari_care.core.outputs import (
    SUFFIXES,
    care_fingerprint,
    file_sha256,
    output_paths,
    recorded_settings,
    settings_differences,
    write_outputs,
)
from napari_care.core.preflight import open_calibrated
from napari_care.core.progress import Progress, run_to_end
from napari_care.core.segment import NoTissueError, SegmentOptions, segment
from napari_care.core.slide.backends import slide_stem
from napari_care.core.slide.levels import SlideDataWarning, TileShownGreyWarning
from napari_care.core.tiling import tile_grid
from napari_care.core.tissue import tissue_mask

Row = dict[str, Any]
ProgressCallback = Callable[[Progress], None] | None
Settings = dict[str, Any]
ROW_FIELDS = ("slide", "status", "seconds", "detail")
UNCHECKED = "already done; its settings could not be checked (outputs written before they were recorded)"


@dataclass(frozen=True)
class SlideJob:
    """A slide to process and its optional pixel size.

    ``mpp`` (micrometres per level-0 pixel) is used only when the file has no calibration,
    or always with ``force_mpp`` (a slide list's ``mpp`` column, ``--force-mpp``).
    """

    path: Path
    mpp: float | None = None
    force_mpp: bool = False

    @property
    def stem(self) -> str:
        """The slide's name without its slide suffixes (:func:`~napari_care.core.slide.slide_stem`)."""
        return slide_stem(self.path)


def expand_slides(
    arguments: list[str], mpp: float | None = None, *, force_mpp: bool = False
) -> list[SlideJob]:
    """Slides from paths, glob patterns, and CSV files (column ``path``, optional ``mpp``).

    A CSV's relative paths are taken from the CSV's folder. A CSV's ``mpp`` value is that
    slide's pixel size, over the file's; ``mpp`` applies to the other slides, only to those
    whose file has none unless ``force_mpp``. Paths come back absolute (workers may run in
    other folders); a slide named twice (a path and a pattern) is kept once, the first time.
    """
    jobs: list[SlideJob] = []
    for argument in arguments:
        if argument.lower().endswith(".csv") and Path(argument).is_file():
            jobs += _read_csv(Path(argument), mpp, force_mpp)
        elif any(ch in argument for ch in "*?["):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                raise ValueError(f"{argument}: no file matches this pattern")
            jobs += [SlideJob(Path(m), mpp, force_mpp) for m in matches]
        else:
            jobs.append(SlideJob(Path(argument), mpp, force_mpp))
    unique: dict[str, SlideJob] = {}
    for job in jobs:  # absolute, for workers elsewhere; not resolved: a link is a slide of its own name
        path = os.path.abspath(job.path)
        unique.setdefault(path, SlideJob(Path(path), job.mpp, job.force_mpp))
    return list(unique.values())


def _read_csv(path: Path, default_mpp: float | None, force_mpp: bool = False) -> list[SlideJob]:
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
            jobs.append(SlideJob(slide, mpp, force_mpp or bool(text)))  # the slide's own mpp wins
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


def remove_partial_outputs(targets: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Delete what a killed run left while writing ``targets`` (each in its own folder, as
    :func:`remove_partial_files` does for the files of one folder)."""
    removed = []
    for target in dict.fromkeys(Path(t) for t in targets):
        for path in target.parent.glob(f".{glob.escape(target.name)}.????????.part"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class JobSkipped(Exception):
    """Raised by a job's work to end it as a ``skipped`` row; the message is the row's detail."""


def _row(job: SlideJob, status: str, detail: str, started: float | None = None) -> Row:
    seconds = 0.0 if started is None else round(time.perf_counter() - started, 2)
    return {"slide": str(job.path), "status": status, "seconds": seconds, "detail": detail}


def _reason(error: Exception) -> str:
    """Why a slide failed, in one line: our own errors speak for themselves, others say their
    type; notes added to the error (what was damaged in the slide) follow."""
    text = " ".join(str(error).split())
    reason = text if isinstance(error, (ValueError, OSError)) and text else f"{type(error).__name__}: {text}"
    return "; ".join([reason, *getattr(error, "__notes__", ())])


def damage_notes(caught: list[warnings.WarningMessage], name: str) -> list[str]:
    """The :class:`~napari_care.core.slide.levels.SlideDataWarning` messages among ``caught``
    that name the file ``name`` (threads of a cohort worker share the warnings), each once."""
    messages = (
        str(w.message)
        for w in caught
        if issubclass(w.category, SlideDataWarning) and not issubclass(w.category, TileShownGreyWarning)
    )
    return list(dict.fromkeys(" ".join(m.split()) for m in messages if name in m))


def failed_row(job: SlideJob, error: Exception, started: float | None = None) -> Row:
    """The ``failed`` row of a slide whose job raised ``error``."""
    return _row(job, "failed", _reason(error), started)


def job_settings(
    options: SegmentOptions,
    job: SlideJob,
    kind: str = "segment",
    *,
    tiles: bool = False,
    overview: bool = False,
) -> Settings:
    """The settings that decide what a job writes for a slide, as JSON values; a rerun compares them.

    Parameters
    ----------
    options
        The run's options; weights and a CARE checkpoint count by their SHA-256, batch size
        and device not at all.
    job
        The slide (a forced pixel size counts; a fallback for uncalibrated files does not).
    kind
        ``"segment"`` (also CARE's settings and ``tiles``) or ``"extract"`` (the features only).
    tiles
        Whether ``segment`` writes per-tile objects.
    overview
        Whether it writes the PNG overview (recorded only when it does, so that sets made
        without one still resume).
    """
    settings: Settings = {
        "encoder": options.encoder,
        "encoder_weights_sha256": file_sha256(options.encoder_weights),
        "magnification": None if options.mpp else options.magnification,
        "mpp": options.mpp,
        "tile_size_px": options.tile_size_px,
        "min_tissue": options.min_tissue,
        "tissue_threshold": options.tissue_threshold,
        "slide_mpp": job.mpp if getattr(job, "force_mpp", False) else None,  # a fallback changes nothing
    }
    if kind == "segment":
        settings |= {
            "care_model": care_fingerprint(options.care_checkpoint),
            "k": options.k,
            "n_groups": options.n_groups,
            "e_star": options.e_star,
            "lambda_spf": options.lambda_spf,
            "tiles": bool(tiles),
        }
        if overview:
            settings["overview"] = True
    elif kind != "extract":
        raise ValueError(f"kind must be 'segment' or 'extract', got {kind!r}")
    return json.loads(json.dumps(settings))  # as they come back from a file


def _resumed_row(job: SlideJob, marker: Path, wanted: Settings | None) -> Row:
    """The row of a slide whose outputs exist: skipped when they have ``wanted`` settings, else failed."""
    if wanted is None:
        return _row(job, "skipped", "already done")
    recorded = recorded_settings(marker)
    if recorded is None:
        return _row(job, "skipped", UNCHECKED)
    differences = settings_differences(recorded, wanted)
    if not differences:
        return _row(job, "skipped", "already done")
    return _row(
        job,
        "failed",
        f"settings differ from the existing outputs: {', '.join(differences)}; use --overwrite to redo",
    )


def run_job(
    job: SlideJob,
    marker: Path,
    work: Callable[..., str],
    *,
    overwrite: bool = False,
    settings: Callable[[], Settings] | None = None,
    outputs: Iterable[Path] = (),
) -> Row:
    """The frame of every slide job: clean up, resume, open the slide, run ``work(slide)``, report.

    Parameters
    ----------
    job
        The slide.
    marker
        The output written last, ``<out_dir>/<stem><suffix>``; when it exists the slide is
        finished: skipped when it recorded the settings of this run (or none), else failed.
    work
        Does the work on the open, calibrated slide, writes the outputs, returns the row's
        detail; called as ``work(slide, settings)`` when ``settings`` is given. It may raise
        :class:`JobSkipped` to end as a ``skipped`` row.
    overwrite
        Redo a finished slide (its old outputs are replaced when the new ones are written).
    settings
        Makes the settings of this run (:func:`job_settings`); None: no check, nothing recorded.
    outputs
        The job's files outside the marker's folder (the TRIDENT layout's features), whose
        leftovers of a killed run are cleared too.

    Returns
    -------
    The slide's status row; any exception of the slide becomes a ``failed`` row.
    """

    def on_slide(wanted: Settings | None) -> str:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")  # a missing mpp is this row's reason, not a warning on a worker
            warnings.simplefilter("always", SlideDataWarning)  # damaged data: said in the row
            try:
                with open_calibrated(job.path, job.mpp, force_mpp=job.force_mpp) as slide:
                    if slide.mpp is None:
                        raise ValueError(
                            "the file has no pixel size (mpp); give --mpp or an 'mpp' column in the slide CSV"
                        )
                    detail = work(slide) if settings is None else work(slide, wanted)
            except Exception as error:
                for note in damage_notes(caught, job.path.name):
                    error.add_note(note)
                raise
        return "; ".join([detail, *damage_notes(caught, job.path.name)])

    return run_framed(job, marker, on_slide, overwrite=overwrite, settings=settings, outputs=outputs)


def run_framed(
    job,
    marker: Path,
    work: Callable[[Settings | None], str],
    *,
    overwrite: bool = False,
    settings: Callable[[], Settings] | None = None,
    outputs: Iterable[Path] = (),
) -> Row:
    """The frame of :func:`run_job` around any ``work(settings)``, with or without a slide.

    ``job`` is anything with a ``path`` and a ``stem`` (a :class:`SlideJob`, a
    :class:`~napari_care.core.feature_jobs.FeatureJob`): clean up what a killed run left of
    its outputs, resume (skip or refuse a finished one, see :func:`run_job`), run ``work``
    with the settings of this run (None without ``settings``), and report a row; an
    exception is a ``failed`` row, :class:`JobSkipped` a ``skipped`` one.
    """
    started = time.perf_counter()
    try:
        remove_partial_files(
            marker.parent, job.stem, (*SUFFIXES.values(), marker.name.removeprefix(job.stem))
        )
        remove_partial_outputs(outputs)
        wanted = None if settings is None else settings()
        if marker.exists() and not overwrite:
            return _resumed_row(job, marker, wanted)
        detail = work(wanted)
    except JobSkipped as skipped:
        return _row(job, "skipped", str(skipped), started)
    except Exception as error:  # a bad slide is a row in the summary, not the end of the cohort
        return failed_row(job, error, started)
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
    layout: str = "napari_care",
    overview: bool = False,
    on_progress: ProgressCallback = None,
) -> Row:
    """Segment one slide; write its features, ``.regions.geojson``, ``.slide_features.h5`` and
    ``.care.json`` (the marker).

    ``layout`` says where the features go (:func:`~napari_care.core.outputs.output_paths`:
    ``<stem>.features.h5`` or TRIDENT's ``features_<encoder>/<stem>.h5``). ``on_progress``
    is called with the slide's :class:`~napari_care.core.progress.Progress` reports
    (in-process runs; a cluster shows progress over slides). ``overview`` also writes
    ``<stem>.overview.png``.
    """
    paths = output_paths(out_dir, job.stem, encoder=options.encoder, layout=layout, overview=overview)

    def work(slide, settings: Settings) -> str:
        result = run_to_end(segment(slide, options, encoder=shared_encoder(options)), on_progress)
        write_outputs(
            result, slide, out_dir, job.stem, tiles=tiles, settings=settings, layout=layout, overview=overview
        )
        care = result.care
        made = f"{care.n_patches} patches, {care.n_regions} regions, ROI {care.roi}"
        return made + skipped_note(result.features)

    settings = functools.partial(job_settings, options, job, "segment", tiles=tiles, overview=overview)
    return run_job(
        job, paths["summary"], work, overwrite=overwrite, settings=settings, outputs=paths.values()
    )


def extract_job(
    job: SlideJob,
    out_dir: str | Path,
    options: SegmentOptions,
    *,
    overwrite: bool = False,
    layout: str = "napari_care",
    on_progress: ProgressCallback = None,
) -> Row:
    """Extract one slide's patch features to ``<stem>.features.h5`` or, with ``layout="trident"``,
    ``features_<encoder>/<stem>.h5`` (the marker, where a rerun looks for it).

    ``on_progress`` as in :func:`segment_job`.
    """
    target = features_path(out_dir, job.stem, options.encoder, layout)

    def work(slide, settings: Settings) -> str:
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
        work = extract_features(
            slide,
            grid,
            shared_encoder(options),
            batch_size=options.batch_size,
            on_bad_tile=options.bad_tile_policy,
        )
        features = run_to_end(work, on_progress)
        features.slide_id = job.stem
        with output_set(job.path.name) as files:
            save_features(files.temporary(target), features, settings=settings)
        return f"{len(features)} patches" + skipped_note(features)

    settings = functools.partial(job_settings, options, job, "extract")
    return run_job(job, target, work, overwrite=overwrite, settings=settings, outputs=[target])


def skipped_note(features: PatchFeatures) -> str:
    """``"; N patches skipped (file tiles that could not be decoded)"`` for a row's detail, or ``""``."""
    skipped = features.skipped_patches or 0
    return f"; {skipped} patches skipped (file tiles that could not be decoded)" if skipped else ""


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
