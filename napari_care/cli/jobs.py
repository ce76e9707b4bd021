"""The cohort runner behind ``segment`` and ``extract``: their shared options, the checks
before work, the run over the slides or feature files (dask or in this process) and the summary.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from napari_care.cli.common import (
    EXIT_FAILED,
    StageBars,
    core_option,
    drive,
    fail,
    keyword_defaults,
    warn,
)


def segment_defaults() -> dict:
    """:class:`~napari_care.core.segment.SegmentOptions`' defaults (click reads them when it needs them)."""
    from napari_care.core.segment import SegmentOptions  # lazy: CLI start-up

    return SegmentOptions().to_dict()


def preflight_defaults() -> dict:
    """The defaults of the checks before a run (:func:`~napari_care.core.preflight.preflight`)."""
    from napari_care.core.preflight import preflight  # lazy: CLI start-up

    return keyword_defaults(preflight)


#: The command-line flag of each field of SegmentOptions that is an option of ``segment``/``extract``.
FLAG_OF_OPTION = {
    "k": "--k",
    "n_groups": "--groups",
    "tile_size_px": "--tile-size",
    "magnification": "--magnification",
    "min_tissue": "--min-tissue",
    "max_tiles": "--max-tiles",
}


class GroupCount(click.types.IntParamType):
    """``--groups``: ``auto`` (the number chosen per slide) or a whole number, as click's INT reads it."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"{value!r} is neither 'auto' nor a whole number", param, ctx)


GROUPS_HELP = (
    "Phenotype groups: auto (per slide, of N = 2-12 and at most the slide's regions, the smallest N "
    "whose k-means grouping of the regions has a patch-weighted Calinski-Harabasz index within 20% "
    "of the best) or a number, 2-64 (at most the slide's regions)."
)
TILE_SIZE_HELP = (
    "Tile side in pixels at the target magnification, 16-4096 [default: the encoder's preset: "
    "224 for default and timm: models, 256 for uni, 512 for conch_v1_5, ...]."
)
DEVICE_HELP = "cuda, mps or cpu; default: CUDA, then MPS, then CPU."
LAYOUT_HELP = (
    "Where patch features go: napari_care (<stem>.features.h5) or trident (features_<encoder>/<stem>.h5, "
    "with TRIDENT's attributes)."
)


def fail_option(error) -> None:
    """Exit 2 for an :class:`~napari_care.core.segment.OptionError`, naming the command-line flag."""
    fail(f"{FLAG_OF_OPTION.get(error.option, error.option)} {error.value}: {error.expected}")


def cluster_defaults() -> dict:
    """The defaults of a local dask cluster (:func:`~napari_care.core.cohort.cohort_client`)."""
    from napari_care.core.cohort import cohort_client  # lazy: CLI start-up

    return keyword_defaults(cohort_client)


def segment_options(function):
    """The options shared by ``segment`` and ``extract``: what to compute, where, and on which cluster."""
    options = [
        core_option(
            segment_defaults,
            "--encoder",
            type=str,
            help="Patch encoder: default, a preset (uni, conch_v1_5, ...) or timm:<model name>.",
        ),
        click.option(
            "--weights",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="Local weights file for the encoder.",
        ),
        core_option(
            segment_defaults,
            "--magnification",
            type=float,
            help="Target magnification, above 0 and not above the scan's (see --allow-upsampling).",
        ),
        click.option(
            "--allow-upsampling",
            is_flag=True,
            help="Accept a --magnification above the scan's (more than 10% above is refused otherwise).",
        ),
        click.option("--tile-size", "tile_size_px", type=int, default=None, help=TILE_SIZE_HELP),
        core_option(
            preflight_defaults,
            "--max-tiles",
            type=int,
            help="Refuse a slide whose whole-slide grid at these options would have more tiles.",
        ),
        core_option(
            segment_defaults, "--min-tissue", type=float, help="Minimum tissue share of a tile, 0-1."
        ),
        click.option(
            "--mpp",
            type=float,
            default=None,
            help="Micrometres per level-0 pixel for slides whose file has none (a CSV's mpp column "
            "is that slide's, over the file's).",
        ),
        click.option(
            "--force-mpp", is_flag=True, help="Use --mpp for every slide, over the file's calibration."
        ),
        click.option(
            "--strict",
            is_flag=True,
            help="Fail a slide on a file tile that cannot be decoded (default: skip its patches, warn, "
            "and count them in the summary).",
        ),
        click.option("--device", default=None, metavar="DEVICE", help=DEVICE_HELP),
        click.option(
            "--layout",
            type=click.Choice(["napari_care", "trident"]),
            default="napari_care",
            show_default=True,
            help=LAYOUT_HELP,
        ),
        click.option(
            "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder."
        ),
        click.option(
            "--overwrite", is_flag=True, help="Redo slides whose outputs exist (default: skip them)."
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=None,
            help="Worker processes of the local dask cluster [default: one per two cores, at most one "
            "per slide]; 0 runs in this process (the default for a single slide).",
        ),
        core_option(
            cluster_defaults,
            "--threads-per-worker",
            type=click.IntRange(min=1),
            help="Slides each worker runs at once.",
        ),
        click.option(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="Run on an existing dask cluster (e.g. tcp://host:8786) instead of a local one.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def run_jobs(
    job_function,
    slides: tuple[str, ...],
    mpp: float | None,
    *,
    out_dir: Path,
    workers: int | None,
    threads_per_worker: int,
    scheduler: str | None,
    quiet: bool,
    options,
    force_mpp: bool = False,
    max_tiles: int,
    allow_upsampling: bool = False,
    **kwargs,
) -> None:
    """Run a per-slide job over the slides (a dask cohort, or in this process), print and save a summary.

    Everything that can be checked is checked first (:func:`~napari_care.core.preflight.preflight`).
    Exits 2 on bad arguments (no slides, a missing slide, colliding names, an option out of
    range, an unusable checkpoint, device or output folder, an unreachable scheduler) and 1
    when any slide failed or the run was interrupted.
    """
    from napari_care.core.jobs import check_unique_stems, expand_slides  # lazy: CLI start-up
    from napari_care.core.preflight import PreflightError, preflight  # lazy: CLI start-up
    from napari_care.core.segment import OptionError  # lazy: CLI start-up

    check_cluster_options(workers, scheduler)
    if force_mpp and mpp is None:
        fail("--force-mpp needs --mpp")
    try:
        jobs = expand_slides(list(slides), mpp, force_mpp=force_mpp)
        check_unique_stems(jobs)
    except (ValueError, OSError) as error:
        fail(str(error))
    if not jobs:
        fail("no slides to process")
    try:
        notes = preflight(jobs, out_dir, options, max_tiles=max_tiles, allow_upsampling=allow_upsampling)
    except OptionError as error:
        fail_option(error)
    except PreflightError as error:
        warn(error.notes)
        fail(str(error))
    check_device(options.device)
    warn(notes)
    run_planned(
        job_function,
        jobs,
        out_dir=out_dir,
        workers=workers,
        threads_per_worker=threads_per_worker,
        scheduler=scheduler,
        quiet=quiet,
        options=options,
        **kwargs,
    )


def run_feature_jobs(
    source: Path,
    slides: tuple[str, ...],
    mpp: float | None,
    *,
    encoder: str | None,
    patch_size_px: int | None,
    out_dir: Path,
    workers: int | None,
    threads_per_worker: int,
    scheduler: str | None,
    quiet: bool,
    options,
    force_mpp: bool = False,
    **kwargs,
) -> None:
    """``segment --features``: one job per feature file of ``source``, with the slides matched by name.

    The checks (:func:`~napari_care.core.feature_jobs.check_feature_run`), the cohort, the
    summary (``segment-summary.csv``) and the exit codes are those of :func:`run_jobs`.
    """
    from napari_care.core.feature_jobs import (  # lazy: CLI start-up
        check_feature_run,
        feature_jobs,
        segment_features_job,
    )
    from napari_care.core.jobs import segment_job, summary_path  # lazy: CLI start-up
    from napari_care.core.segment import OptionError  # lazy: CLI start-up

    check_cluster_options(workers, scheduler)
    if force_mpp and mpp is None:
        fail("--force-mpp needs --mpp")
    if patch_size_px is not None and patch_size_px < 1:
        fail(f"--patch-size {patch_size_px}: must be at least 1")
    try:
        jobs, notes = feature_jobs(
            source, encoder=encoder, slides=slides, mpp=mpp, force_mpp=force_mpp, patch_size_px=patch_size_px
        )
        check_feature_run(jobs, out_dir, options)
    except OptionError as error:
        fail_option(error)
    except (ValueError, OSError) as error:  # PreflightError included; the messages name the file
        fail(str(error))
    warn(notes)
    run_planned(
        segment_features_job,
        jobs,
        out_dir=out_dir,
        workers=workers,
        threads_per_worker=threads_per_worker,
        scheduler=scheduler,
        quiet=quiet,
        options=options,
        summary=summary_path(out_dir, segment_job),
        **kwargs,
    )


def check_cluster_options(workers: int | None, scheduler: str | None) -> None:
    """Exit 2 for ``--workers`` with ``--scheduler``."""
    if scheduler is not None and workers is not None:
        fail("--workers sizes a local cluster; it cannot be given with --scheduler")


def check_device(device: str | None) -> None:
    """Exit 2 for a ``--device`` that torch does not know or this machine lacks (None: nothing to check)."""
    if device is None:
        return
    from napari_care.core.encoders.device import pick_device  # lazy: torch, only for --device

    try:
        pick_device(device)
    except ValueError as error:
        fail(f"--device: {error}")


def run_planned(
    job_function,
    jobs: list,
    *,
    out_dir: Path,
    workers: int | None,
    threads_per_worker: int,
    scheduler: str | None,
    quiet: bool,
    options,
    summary: Path | None = None,
    **kwargs,
) -> None:
    """Run checked jobs (a dask cohort, or in this process), print and save the summary
    (``summary``, default :func:`~napari_care.core.jobs.summary_path` of the job); exit 1
    when any failed or the run was interrupted."""
    from napari_care.core.cohort import cohort_workers, run_cohort  # lazy: CLI start-up
    from napari_care.core.jobs import reports_progress, summary_path  # lazy: CLI start-up

    summary = summary or summary_path(out_dir, job_function)
    n_workers = cohort_workers(len(jobs), workers=workers, scheduler=scheduler)  # 0: in this process
    finished: list[dict] = []  # in finishing order, for a run that is interrupted
    try:
        with contextlib.ExitStack() as stack:
            client = None
            if n_workers != 0:
                client = start_cluster(stack, scheduler, n_workers, threads_per_worker, len(jobs))
            elif reports_progress(job_function):  # a bar per stage of the slide
                kwargs["on_progress"] = stack.enter_context(contextlib.closing(StageBars(quiet=quiet)))
            work = run_cohort(
                job_function,
                jobs,
                client=client,
                on_row=finished.append,
                out_dir=Path(out_dir).absolute(),
                options=options,
                **kwargs,
            )
            with contextlib.closing(work):
                rows = drive(work, quiet=quiet, unit="slide")
    except KeyboardInterrupt:
        print_table(finished)
        save_summary(finished, summary)
        fail(
            f"interrupted after {len(finished)} of {len(jobs)} slides; run the same command again to resume",
            EXIT_FAILED,
        )
    print_table(rows)
    save_summary(rows, summary)
    if any(row["status"] == "failed" for row in rows):
        sys.exit(EXIT_FAILED)


def save_summary(rows: list[dict], path: Path) -> None:
    """Write the summary CSV and say where; a failure is a one-line error (exit 1), not a traceback."""
    from napari_care.core.jobs import write_summary  # lazy: CLI start-up

    try:
        click.echo(f"summary: {write_summary(rows, path)}")
    except OSError as error:
        fail(f"cannot write the summary {path}: {error.strerror or error}", EXIT_FAILED)


def start_cluster(
    stack: contextlib.ExitStack,
    scheduler: str | None,
    n_workers: int | None,
    threads_per_worker: int,
    n_slides: int,
):
    """A dask client, closed with ``stack``: on a new local cluster of ``n_workers`` or on ``scheduler``.

    Prints the cluster's size and dashboard; exits 2 when the scheduler cannot be reached.
    """
    from napari_care.core.cohort import cohort_client, dashboard_link  # lazy: CLI start-up

    try:
        client = stack.enter_context(
            cohort_client(scheduler, n_workers=n_workers, threads_per_worker=threads_per_worker)
        )
    except (OSError, ValueError) as error:  # unreachable or malformed address
        fail(f"cannot reach the dask scheduler at {scheduler}: {error}")
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    click.echo(
        f"{n_slides} slides on {workers} dask workers; dashboard: {dashboard_link(client) or 'none'}",
        err=True,
    )
    return client


def print_table(rows: list[dict]) -> None:
    """A plain summary table: slide, status, seconds, detail."""
    width = max([len(Path(r["slide"]).name) for r in rows] + [5])
    click.echo(f"{'slide':{width}}  {'status':8} {'seconds':>8}  detail")
    for row in rows:
        click.echo(
            f"{Path(row['slide']).name:{width}}  {row['status']:8} {row['seconds']:8.1f}  {row['detail']}"
        )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items()))


COHORT_HELP = """
    SLIDES are paths, glob patterns or CSV files with a 'path' column (and optional 'mpp').
    Several slides run as a cohort on dask.distributed, one task per slide: on a local
    cluster (--workers, --threads-per-worker) or on a running one (--scheduler). A single
    slide, or --workers 0, runs in this process. Finished slides are skipped, so a rerun
    resumes; a slide that fails is a row of the summary (also saved as CSV in --out) and
    the exit code is 1.
"""
