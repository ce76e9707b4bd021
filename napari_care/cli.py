"""``napari-care``: the command line. Thin: parse, call the core, print.

Exit codes: 0 done, 1 the work failed, 2 bad input (unreadable file, wrong option).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click

from napari_care import __version__

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print a one-line error and exit with ``code``."""
    click.echo(f"napari-care: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="napari-care")
def main() -> None:
    """Whole-slide images, CARE adaptive regions, ROIs and attention, from the command line."""


def drive(work, *, quiet: bool = False):
    """Run a progress generator with one tqdm bar per stage; return its result."""
    from tqdm import tqdm

    from napari_care.core.progress import run_to_end

    bars: dict[str, tqdm] = {}

    def show(report) -> None:
        bar = bars.get(report.stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[report.stage] = tqdm(total=max(report.total, 1), desc=report.stage, unit="it",
                                            disable=quiet, leave=False, file=sys.stderr)
        bar.total = max(report.total, 1)
        bar.n = min(report.done, bar.total)
        bar.set_postfix_str(report.message[-60:], refresh=True)

    try:
        return run_to_end(work, show)
    finally:
        for bar in bars.values():
            bar.close()


def open_or_fail(path: Path, mpp: float | None):
    """Open a slide, or exit 2 with a one-line message."""
    from napari_care.core.slide import SlideReadError, open_slide

    try:
        return open_slide(path, mpp=mpp)
    except (FileNotFoundError, SlideReadError, ValueError) as error:
        fail(str(error))


@main.command()
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("--mpp", type=float, default=None, help="Micrometres per level-0 pixel, overriding the file.")
def info(slide: Path, mpp: float | None) -> None:
    """Print a slide's metadata as JSON: levels, mpp and its source, objective, vendor."""
    from napari_care.core.slide import SlideReadError, open_slide

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing mpp shows as null in the JSON
            handle = open_slide(slide, mpp=mpp)
    except (FileNotFoundError, SlideReadError, ValueError) as error:
        fail(str(error))
    with handle:
        click.echo(json.dumps(handle.metadata(), indent=2))


def segment_options(function):
    """The options shared by ``segment`` and ``extract``."""
    options = [
        click.option("--encoder", default="default", show_default=True,
                     help="Patch encoder: default, a preset (uni, conch_v1_5, ...) or timm:<model name>."),
        click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Local weights file for the encoder."),
        click.option("--magnification", type=float, default=20.0, show_default=True, help="Target magnification."),
        click.option("--tile-size", "tile_size_px", type=int, default=224, show_default=True,
                     help="Tile side in pixels at the target magnification."),
        click.option("--min-tissue", type=float, default=0.25, show_default=True,
                     help="Minimum tissue share of a tile."),
        click.option("--mpp", type=float, default=None,
                     help="Micrometres per level-0 pixel for slides without one (CSV mpp wins)."),
        click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder."),
        click.option("--overwrite", is_flag=True, help="Redo slides whose outputs exist (default: skip them)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def run_jobs(job_function, slides: tuple[str, ...], mpp: float | None, **kwargs) -> None:
    """Run a per-slide job over the slides, print a summary table, exit 1 if any failed."""
    from napari_care.core.jobs import expand_slides

    try:
        jobs = expand_slides(list(slides), mpp)
    except (ValueError, OSError) as error:
        fail(str(error))
    rows = [job_function(job, **kwargs) for job in jobs]
    print_table(rows)
    if any(row["status"] == "failed" for row in rows):
        sys.exit(EXIT_FAILED)


def print_table(rows: list[dict]) -> None:
    """A plain summary table: slide, status, seconds, detail."""
    width = max([len(Path(r["slide"]).name) for r in rows] + [5])
    click.echo(f"{'slide':{width}}  {'status':8} {'seconds':>8}  detail")
    for row in rows:
        click.echo(f"{Path(row['slide']).name:{width}}  {row['status']:8} {row['seconds']:8.1f}  {row['detail']}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items()))


@main.command()
@click.argument("slides", nargs=-1, required=True)
@segment_options
@click.option("--k", type=int, default=8, show_default=True, help="Block side in patches.")
@click.option("--care", "care_checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A trained CARE checkpoint (default: training-free).")
@click.option("--groups", "n_groups", type=int, default=6, show_default=True, help="Phenotype groups.")
@click.option("--tiles", is_flag=True, help="Also write per-tile attention as QuPath tile objects.")
def segment(slides, encoder, weights, magnification, tile_size_px, min_tissue, mpp, out_dir, overwrite, k,
            care_checkpoint, n_groups, tiles) -> None:
    """Segment slides into CARE regions; write <stem>.features.h5, .regions.geojson, .care.json.

    SLIDES are paths, glob patterns or CSV files with a 'path' column (and optional 'mpp').
    """
    from napari_care.core.jobs import segment_job
    from napari_care.core.segment import SegmentOptions

    options = SegmentOptions(encoder=encoder, encoder_weights=weights, care_checkpoint=care_checkpoint,
                             magnification=magnification, tile_size_px=tile_size_px, k=k, min_tissue=min_tissue,
                             n_groups=n_groups)
    run_jobs(segment_job, slides, mpp, out_dir=out_dir, options=options, overwrite=overwrite, tiles=tiles)


@main.command()
@click.argument("slides", nargs=-1, required=True)
@segment_options
def extract(slides, encoder, weights, magnification, tile_size_px, min_tissue, mpp, out_dir, overwrite) -> None:
    """Extract patch features to <stem>.features.h5 (TRIDENT/CLAM layout).

    SLIDES are paths, glob patterns or CSV files with a 'path' column (and optional 'mpp').
    """
    from napari_care.core.jobs import extract_job
    from napari_care.core.segment import SegmentOptions

    options = SegmentOptions(encoder=encoder, encoder_weights=weights, magnification=magnification,
                             tile_size_px=tile_size_px, min_tissue=min_tissue)
    run_jobs(extract_job, slides, mpp, out_dir=out_dir, options=options, overwrite=overwrite)


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("napari-care-demo"),
              show_default=True, help="Folder for the results.")
@click.option("--k", type=int, default=8, show_default=True, help="Block side in patches.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out_dir: Path, k: int, quiet: bool) -> None:
    """Build the offline sample slide (once), segment it with the default encoder, write the results.

    Writes the features (HDF5), the regions and ROI (QuPath GeoJSON), a JSON summary and a
    PNG overview, and prints how well the regions follow the planted tissue types.
    """
    from napari_care.core.demo import run_demo

    report = drive(run_demo(out_dir, k=k), quiet=quiet)
    for line in report.lines():
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()


def _register_subcommands() -> None:
    """Attach the training/evaluation commands, kept in their own module for size."""
    from napari_care._cli_train import register

    register(main)


_register_subcommands()
