"""``napari-care``: the command line. Thin: parse, call the core, print.

Exit codes: 0 done, 1 the work failed, 2 bad input (unreadable file, wrong option).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from napari_care import __version__
from napari_care.cli.common import core_option, drive, fail
from napari_care.cli.jobs import (
    COHORT_HELP,
    GROUPS_HELP,
    GroupCount,
    fail_option,
    run_feature_jobs,
    run_jobs,
    segment_defaults,
    segment_options,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="napari-care")
def main() -> None:
    """Whole-slide images, CARE adaptive regions, ROIs and attention, from the command line."""


def open_or_fail(path: Path, mpp: float | None):
    """Open a slide, or exit 2 with a one-line message."""
    from napari_care.core.slide.handle import SlideReadError, open_slide  # lazy: CLI start-up

    if Path(path).is_dir():
        fail(f"{path} is a folder, not a slide file")
    try:
        return open_slide(path, mpp=mpp)
    except (FileNotFoundError, SlideReadError, ValueError) as error:
        fail(str(error))


@main.command()
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("--mpp", type=float, default=None, help="Micrometres per level-0 pixel, overriding the file.")
def info(slide: Path, mpp: float | None) -> None:
    """Print a slide's metadata as JSON: levels, mpp and its source, objective, vendor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a missing mpp shows as null in the JSON
        handle = open_or_fail(slide, mpp)
    with handle:
        click.echo(json.dumps(handle.metadata(), indent=2))


#: Options of ``segment`` that only shape an extraction: refused with ``--features``, whose
#: patches (and their encoder, size and resolution) are the file's.
EXTRACTION_ONLY = {
    "weights": "--weights",
    "magnification": "--magnification",
    "allow_upsampling": "--allow-upsampling",
    "tile_size_px": "--tile-size",
    "max_tiles": "--max-tiles",
    "min_tissue": "--min-tissue",
    "strict": "--strict",
    "device": "--device",
    "layout": "--layout",
}
#: Options of ``segment`` that go with ``--features`` only.
FEATURES_ONLY = {"slides_of_features": "--slide", "patch_size_px": "--patch-size"}


def given_options(names: dict[str, str]) -> list[str]:
    """The flags among ``names`` (parameter name -> flag) given on the command line or by the environment."""
    context = click.get_current_context()
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return [flag for name, flag in names.items() if context.get_parameter_source(name) in given]


@main.command(
    help="""Segment slides into CARE regions; write <stem>.features.h5 (or, with --layout trident,
    features_<encoder>/<stem>.h5), .regions.geojson, .slide_features.h5 and .care.json.

    With --features PATH instead of SLIDES: segment feature files made earlier (by
    TRIDENT, CLAM or napari-care extract) without encoding anything and without the
    slides. PATH is a feature file (.h5 or .pt) or a folder: a TRIDENT job (the
    features_<encoder>/ folder; --encoder picks one when there are several), a CLAM
    folder (h5_files/, pt_files/) or a folder of feature files. --slide gives the
    slides (paths, globs or a slide CSV as for SLIDES), matched to the files by name,
    for their pixel size and QuPath offset. The extraction's options (--tile-size,
    --magnification, --weights, --min-tissue, --max-tiles, --strict, --device,
    --layout, --allow-upsampling) are refused with --features. A file without patches
    is a skipped row ("no tissue patches"), not a failure.
"""
    + COHORT_HELP
)
@click.argument("slides", nargs=-1)
@segment_options
@core_option(segment_defaults, "--k", type=int, help="Block side in patches, 1-256.")
@click.option(
    "--care",
    "care_checkpoint",
    type=str,
    default=None,
    help="A trained CARE checkpoint, or the authors' model as the slide encoder: hf:Zipper-1/CARE "
    "(from the Hugging Face cache; pip install 'napari-care[care]') or a snapshot folder of it; "
    "it takes --encoder conch_v15 features, 512 px at 20x (default: training-free).",
)
@core_option(segment_defaults, "--groups", "n_groups", type=GroupCount(), help=GROUPS_HELP)
@click.option("--tiles", is_flag=True, help="Also write per-tile attention as QuPath tile objects.")
@click.option(
    "--overview",
    is_flag=True,
    help="Also write <stem>.overview.png: regions and ROI over the thumbnail, the heatmap, the groups' "
    "legend (with --features, for the files that have a --slide).",
)
@click.option(
    "--features",
    "features_source",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Segment this feature file, or the feature files of this folder (TRIDENT, CLAM, plain), "
    "instead of SLIDES.",
)
@click.option(
    "--slide",
    "--slides",
    "slides_of_features",
    multiple=True,
    metavar="SLIDES",
    help="With --features: the slides of the feature files (paths, glob patterns or a slide CSV), "
    "matched by name; a single feature file takes a single slide whatever its name. Repeatable.",
)
@click.option(
    "--patch-size",
    "patch_size_px",
    type=int,
    default=None,
    help="With --features: the patch side in pixels, for CLAM files that do not record it.",
)
def segment(
    slides,
    encoder,
    weights,
    magnification,
    allow_upsampling,
    tile_size_px,
    max_tiles,
    min_tissue,
    mpp,
    force_mpp,
    strict,
    device,
    layout,
    out_dir,
    overwrite,
    workers,
    threads_per_worker,
    scheduler,
    quiet,
    k,
    care_checkpoint,
    n_groups,
    tiles,
    overview,
    features_source,
    slides_of_features,
    patch_size_px,
) -> None:
    from napari_care.core.jobs import segment_job  # lazy: CLI start-up
    from napari_care.core.segment import SegmentOptions  # lazy: CLI start-up

    cluster = {
        "out_dir": out_dir,
        "workers": workers,
        "threads_per_worker": threads_per_worker,
        "scheduler": scheduler,
        "quiet": quiet,
        "force_mpp": force_mpp,
        "overwrite": overwrite,
        "tiles": tiles,
        "overview": overview,
    }
    if features_source is not None:
        if slides:
            fail("give SLIDES or --features, not both (the slides of feature files go with --slide)")
        refused = given_options(EXTRACTION_ONLY)
        if refused:
            fail(
                f"{', '.join(refused)}: an option of the extraction; with --features the patches are the "
                "file's (give --patch-size for CLAM files without a patch size)"
            )
        options = SegmentOptions(care_checkpoint=care_checkpoint, k=k, n_groups=n_groups)
        run_feature_jobs(
            features_source,
            slides_of_features,
            mpp,
            encoder=encoder if given_options({"encoder": "--encoder"}) else None,
            patch_size_px=patch_size_px,
            options=options,
            **cluster,
        )
        return
    if not slides:
        fail("no slides to process: give SLIDES, or --features with feature files")
    stray = given_options(FEATURES_ONLY)
    if stray:
        fail(f"{', '.join(stray)} goes with --features")
    options = SegmentOptions(
        encoder=encoder,
        encoder_weights=weights,
        care_checkpoint=care_checkpoint,
        magnification=magnification,
        tile_size_px=tile_size_px,
        k=k,
        min_tissue=min_tissue,
        n_groups=n_groups,
        device=device,
        strict=strict,
    )
    run_jobs(
        segment_job,
        slides,
        mpp,
        max_tiles=max_tiles,
        allow_upsampling=allow_upsampling,
        options=options,
        layout=layout,
        **cluster,
    )


@main.command(
    help="""Extract patch features to <stem>.features.h5 (TRIDENT/CLAM layout), or with
    --layout trident to features_<encoder>/<stem>.h5 as TRIDENT names them.

    With --mixmag: mixed-magnification features instead, each region at three
    magnifications, the finest at --magnification, to <stem>.mixmag.h5.
"""
    + COHORT_HELP
)
@click.argument("slides", nargs=-1, required=True)
@segment_options
@click.option("--mixmag", is_flag=True, help="Mixed-magnification features (e.g. 5x, 10x, 20x) instead.")
def extract(
    slides,
    encoder,
    weights,
    magnification,
    allow_upsampling,
    tile_size_px,
    max_tiles,
    min_tissue,
    mpp,
    force_mpp,
    strict,
    device,
    layout,
    out_dir,
    overwrite,
    workers,
    threads_per_worker,
    scheduler,
    quiet,
    mixmag,
) -> None:
    from napari_care.core.jobs import extract_job  # lazy: CLI start-up
    from napari_care.core.mixmag_features import mixmag_job  # lazy: CLI start-up
    from napari_care.core.segment import SegmentOptions  # lazy: CLI start-up

    if mixmag and layout != "napari_care":
        fail("--layout trident: mixed-magnification features have one layout, <stem>.mixmag.h5")
    job_function = mixmag_job if mixmag else extract_job
    options = SegmentOptions(
        encoder=encoder,
        encoder_weights=weights,
        magnification=magnification,
        tile_size_px=tile_size_px,
        min_tissue=min_tissue,
        device=device,
        strict=strict,
    )
    run_jobs(
        job_function,
        slides,
        mpp,
        out_dir=out_dir,
        workers=workers,
        threads_per_worker=threads_per_worker,
        scheduler=scheduler,
        quiet=quiet,
        force_mpp=force_mpp,
        max_tiles=max_tiles,
        allow_upsampling=allow_upsampling,
        options=options,
        overwrite=overwrite,
        **({} if mixmag else {"layout": layout}),
    )


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("napari-care-demo"),
    show_default=True,
    help="Folder for the results.",
)
@core_option(segment_defaults, "--k", type=int, help="Block side in patches, 1-256.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out_dir: Path, k: int, quiet: bool) -> None:
    """Build the offline sample slide (once), segment it with the default encoder, write the results.

    Writes the features (HDF5), the regions and ROI (QuPath GeoJSON), a JSON summary and a
    PNG overview, and prints how well the regions follow the planted tissue types.
    """
    from napari_care.core.demo import run_demo  # lazy: CLI start-up
    from napari_care.core.segment import OptionError, SegmentOptions, check_options  # lazy: CLI start-up

    try:
        check_options(SegmentOptions(k=k))
    except OptionError as error:
        fail_option(error)
    report = drive(run_demo(out_dir, k=k), quiet=quiet)
    for line in report.lines():
        click.echo(line)


def _register_subcommands() -> None:
    """Attach the training, evaluation and review commands, kept in their own modules for size."""
    from napari_care.cli import evaluate as _cli_evaluate  # lazy: CLI start-up
    from napari_care.cli import review as _cli_review  # lazy: CLI start-up
    from napari_care.cli import train as _cli_train  # lazy: CLI start-up

    _cli_train.register(main)
    _cli_evaluate.register(main)
    _cli_review.register(main)


_register_subcommands()


# after the registration, so that `python -m napari_care.cli.app train-mil` finds its command
if __name__ == "__main__":  # pragma: no cover
    main()
