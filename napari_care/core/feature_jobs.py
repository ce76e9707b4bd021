"""One feature file, one job: ``napari-care segment --features``, CARE on features made earlier.

A feature file (TRIDENT's, CLAM's or ``napari-care extract``'s) is segmented without its
slide and without encoding a tile: the tiles are the file's coords and patch size. The slide,
when it is given, adds its pixel size, QuPath's bounds offset and its record in the summary.
Each file is a job in the frame of :func:`~napari_care.core.jobs.run_framed` (the same
clean-up, resume by settings and status row as a slide's), and a cohort of them runs through
:func:`~napari_care.core.cohort.run_cohort` like slides. A file without patches (a slide
without tissue) is a ``skipped`` row, "no tissue patches in the feature file".

>>> jobs, notes = feature_jobs("trident_job/20x_512px_0px_overlap", encoder="conch_v15")  # doctest: +SKIP
>>> rows = [segment_features_job(job, "out", SegmentOptions()) for job in jobs]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from napari_care.core.feature_files import NOT_PATCH_FEATURES, find_feature_files
from napari_care.core.features import EmptyFeaturesError, load_features
from napari_care.core.jobs import (
    JobSkipped,
    ProgressCallback,
    Row,
    Settings,
    SlideJob,
    check_unique_stems,
    expand_slides,
    run_framed,
)
from napari_care.core.models.care_hf import check_care_features, parse_care_source, resolve_snapshot
from napari_care.core.outputs import care_fingerprint, file_sha256, output_paths, write_outputs
from napari_care.core.preflight import (
    PreflightError,
    check_output_folder,
    check_slide_paths,
    open_calibrated,
)
from napari_care.core.progress import run_to_end
from napari_care.core.segment import SegmentOptions, check_options, segment_from_features
from napari_care.core.slide.meta import normalise_user_mpp

NO_PATCHES = "no tissue patches in the feature file"


@dataclass(frozen=True)
class FeatureJob:
    """A feature file to segment, and what else is known of its slide.

    Attributes
    ----------
    path
        The feature file (``.h5`` or ``.pt``).
    stem
        The slide's name, the outputs' ``<stem>``.
    slide
        The slide file (with its optional pixel size) when it was given, else None.
    patch_size_px
        Patch side in pixels for files that do not record it (CLAM's ``.pt`` files; see
        :func:`~napari_care.core.features.load_features`); None: the file's.
    mpp
        Micrometres per level-0 pixel for features (without a slide) that do not say it,
        or always with ``force_mpp``.
    force_mpp
        Use ``mpp`` over what the features say.
    """

    path: Path
    stem: str
    slide: SlideJob | None = None
    patch_size_px: int | None = None
    mpp: float | None = None
    force_mpp: bool = False


def feature_jobs(
    source: str | os.PathLike[str],
    *,
    encoder: str | None = None,
    slides: Sequence[str] = (),
    mpp: float | None = None,
    force_mpp: bool = False,
    patch_size_px: int | None = None,
) -> tuple[list[FeatureJob], list[str]]:
    """The jobs of a feature file or folder, each with its slide when ``slides`` has one.

    Parameters
    ----------
    source
        A feature file, or a folder: a TRIDENT job (``features_<encoder>/``), CLAM's
        (``h5_files/``, ``pt_files/``) or plain (:func:`~napari_care.core.feature_files.find_feature_files`).
    encoder
        Which ``features_<encoder>/`` of a TRIDENT job holding several.
    slides
        The slides of the features, as the slide arguments of ``segment`` (paths, glob
        patterns, CSV files with a ``path`` and an optional ``mpp`` column), matched to the
        feature files by name (:func:`~napari_care.core.slide.slide_stem`); one feature file
        and one slide go together whatever their names.
    mpp, force_mpp
        As for slides (:func:`~napari_care.core.jobs.expand_slides`); for features without a
        slide, the level-0 pixel size when the features say none (or always, forced).
    patch_size_px
        Patch side for files that do not record it (CLAM's ``.pt``).

    Returns
    -------
    jobs, notes
        The jobs in the order of the files' names, and warnings to show (feature files
        without a slide when slides were given).

    Raises
    ------
    ValueError
        No feature file at ``source``; two slides or files of one name; a bad slide list.
    """
    found = find_feature_files(source, encoder=encoder)
    files = {stem: Path(path) for stem, path in found.items() if not path.name.endswith(NOT_PATCH_FEATURES)}
    if not files:
        raise ValueError(f"{source}: no patch feature files (.h5 with features and coords, or .pt) there")
    slide_jobs = expand_slides(list(slides), mpp, force_mpp=force_mpp) if slides else []
    check_unique_stems(slide_jobs)
    by_stem = {job.stem: job for job in slide_jobs}
    if len(files) == 1 and len(slide_jobs) == 1:
        by_stem = {next(iter(files)): slide_jobs[0]}  # one file, one slide: whatever their names
    jobs = [
        FeatureJob(
            Path(os.path.abspath(path)),
            stem,
            by_stem.get(stem),
            patch_size_px,
            mpp,
            force_mpp,
        )
        for stem, path in sorted(files.items())
    ]
    check_unique_stems(jobs)
    notes = []
    alone = [job.stem for job in jobs if job.slide is None]
    if slide_jobs and alone:
        shown = ", ".join(alone[:5]) + (f" and {len(alone) - 5} more" if len(alone) > 5 else "")
        notes.append(
            f"{len(alone)} of {len(jobs)} feature files have no slide of their name in --slide ({shown}): "
            "they are segmented without one"
        )
    return jobs, notes


def check_feature_run(
    jobs: Sequence[FeatureJob], out_dir: str | os.PathLike[str], options: SegmentOptions
) -> None:
    """Check a ``segment --features`` run before any file is segmented.

    CARE's options, the slides (each an existing file with a usable given mpp), the given
    mpp, the CARE checkpoint against the width of the first readable feature file, and that
    ``out_dir`` can be written.

    Raises
    ------
    PreflightError
        The first problem found, naming the option or file.
    OptionError
        An option out of its range.
    """
    check_options(options)
    check_slide_paths([job.slide for job in jobs if job.slide is not None])
    for job in jobs:
        try:
            normalise_user_mpp(job.mpp)
        except ValueError as error:
            raise PreflightError(f"--mpp: {error}") from None
    if options.care_checkpoint:
        _check_checkpoint_width(options.care_checkpoint, jobs)
    check_output_folder(out_dir)


def _check_checkpoint_width(checkpoint: str, jobs: Sequence[FeatureJob]) -> None:
    """The CARE model of ``--care`` fits the first readable feature file (its width; for the
    authors' model also 512-px tiles at 20x, and its snapshot is at hand)."""
    from napari_care.core.care_run import load_care_model  # lazy: torch, only with a checkpoint

    try:
        first = load_features(jobs[0].path, patch_size_px=jobs[0].patch_size_px)
    except (OSError, ValueError):
        return  # an unreadable or empty first file is its own row; each job checks its width
    where = f"{first.embed_dim}-d features in {jobs[0].path.name}"
    source = parse_care_source(checkpoint)
    try:
        if source is not None:  # the authors' model: check without loading it
            check_care_features(
                source.label,
                embed_dim=first.embed_dim,
                patch_size_px=first.patch_size_px,
                mpp=first.mpp,
                encoder=first.encoder,
                where=f"the features in {jobs[0].path.name}",
            )
            resolve_snapshot(source)
        else:
            load_care_model(checkpoint, in_dim=first.embed_dim)
    except (OSError, ValueError) as error:
        raise PreflightError(f"--care: {error}" + ("" if source is not None else f" ({where})")) from None


def features_job_settings(options: SegmentOptions, job: FeatureJob, *, tiles: bool = False) -> Settings:
    """The settings that decide what a ``--features`` job writes, as JSON values; a rerun compares them.

    The feature file counts by its SHA-256 (re-extracted features are new input), the slide
    by its file name, the given patch side and forced pixel sizes, and CARE's options as for
    a slide (:func:`~napari_care.core.jobs.job_settings`).
    """
    slide = job.slide
    if slide is not None:
        forced_mpp = slide.mpp if slide.force_mpp else None
    else:
        forced_mpp = job.mpp if job.force_mpp else None
    settings: Settings = {
        "features_sha256": file_sha256(job.path),
        "patch_size_px": job.patch_size_px,
        "slide": slide.path.name if slide is not None else None,
        "slide_mpp": forced_mpp,
        "care_model": care_fingerprint(options.care_checkpoint),
        "k": options.k,
        "n_groups": options.n_groups,
        "e_star": options.e_star,
        "lambda_spf": options.lambda_spf,
        "tiles": bool(tiles),
    }
    return json.loads(json.dumps(settings))  # as they come back from a file


def segment_features_job(
    job: FeatureJob,
    out_dir: str | os.PathLike[str],
    options: SegmentOptions,
    *,
    overwrite: bool = False,
    tiles: bool = False,
    overview: bool = False,
    on_progress: ProgressCallback = None,
) -> Row:
    """Segment one feature file; write ``<stem>.regions.geojson``, ``.slide_features.h5`` and
    ``.care.json`` (the marker). The features are not written again: the summary names their file.

    Never raises: a file that cannot be read (or whose slide cannot) is a ``failed`` row, one
    without patches a ``skipped`` row (:data:`NO_PATCHES`).
    """
    paths = output_paths(out_dir, job.stem, features=False)

    def work(settings: Settings) -> str:
        try:
            features = load_features(job.path, patch_size_px=job.patch_size_px)
        except EmptyFeaturesError:
            raise JobSkipped(NO_PATCHES) from None
        if job.slide is None:
            result = run_to_end(segment_from_features(features, options), on_progress)
            if job.mpp is not None and (job.force_mpp or result.slide_mpp is None):
                result = dataclasses.replace(result, slide_mpp=(float(job.mpp), float(job.mpp)))
            write_outputs(
                result, None, out_dir, job.stem, tiles=tiles, settings=settings, features_file=job.path
            )
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a slide without mpp: the features' or --mpp's, or none
                slide_file = open_calibrated(job.slide.path, job.slide.mpp, force_mpp=job.slide.force_mpp)
            with slide_file as slide:
                result = run_to_end(segment_from_features(features, options, slide=slide), on_progress)
                write_outputs(
                    result,
                    slide,
                    out_dir,
                    job.stem,
                    tiles=tiles,
                    settings=settings,
                    features_file=job.path,
                    overview=overview,
                )
        care = result.care
        return f"{care.n_patches} patches (from the file), {care.n_regions} regions, ROI {care.roi}"

    settings = functools.partial(features_job_settings, options, job, tiles=tiles)
    return run_framed(
        job, paths["summary"], work, overwrite=overwrite, settings=settings, outputs=paths.values()
    )
