"""``napari-care review``: agreement of a segmentation output with a pathologist's annotations.

``register(main)`` adds the command to the click group of :mod:`napari_care.cli.app`. Thin, like
the rest of the CLI: read the inputs, call :func:`napari_care.core.review.run.review_files`,
print. Exit codes: 0 done, 1 the work failed (the CSV could not be written), 2 bad input.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from napari_care.cli.common import EXIT_FAILED, drive, fail

# Printed columns (CSV name -> header); the CSV has them all.
SHOWN = {
    "dice": "dice",
    "iou": "iou",
    "target_in_annotation": "in annot.",
    "annotation_in_target": "covered",
    "dice_grid": "dice grid",
    "attention_inside": "attn in",
    "pointing_game": "pointing",
}


def register(main: click.Group) -> None:
    """Add ``review`` to ``main`` (once)."""
    if "review" in main.commands:
        return

    @main.command()
    @click.argument("slide_result", type=click.Path(path_type=Path))
    @click.argument("annotations", type=click.Path(path_type=Path))
    @click.option(
        "--out",
        "out_csv",
        type=click.Path(dir_okay=False, path_type=Path),
        required=True,
        help="CSV file of the agreement rows.",
    )
    @click.option("--stem", default=None, help="The slide's stem when SLIDE_RESULT is an output folder.")
    @click.option(
        "--all-regions", is_flag=True, help="Also list regions that do not touch an annotation class."
    )
    @click.option("--quiet", is_flag=True, help="Print only the CSV path.")
    def review(
        slide_result: Path, annotations: Path, out_csv: Path, stem: str | None, all_regions: bool, quiet: bool
    ) -> None:
        """Agreement of CARE's regions, ROI and attention with ANNOTATIONS (QuPath GeoJSON).

        SLIDE_RESULT is a <stem>.care.json (or <stem>.regions.geojson) written by `napari-care
        segment`, its output folder (with --stem), or DIR/<stem>. Per annotation class: Dice and
        IoU with the ROI and each overlapping region (exact and on the patch grid), the share of
        the ROI inside the annotation and of the annotation covered, attention mass inside and
        outside, and the pointing game. See docs/qupath.md.
        """
        from napari_care.core.qupath.read import GeometryRepairWarning  # lazy: CLI start-up
        from napari_care.core.review.run import iter_review_files  # lazy: CLI start-up

        work = iter_review_files(slide_result, annotations, out_csv, stem=stem, include_disjoint=all_regions)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", GeometryRepairWarning)
                rows = drive(work, quiet=quiet)
        except (FileNotFoundError, ValueError) as error:
            fail(str(error))
        except OSError as error:  # the CSV could not be written
            fail(f"{out_csv}: cannot write ({error.strerror or error})", EXIT_FAILED)
        for warning in caught:  # the reader's repairs: one line per file, none with --quiet
            if not issubclass(warning.category, GeometryRepairWarning):
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
            elif not quiet:
                click.echo(f"note: {warning.message}", err=True)
        if not quiet:
            print_rows(rows)
        click.echo(f"{len(rows)} rows -> {out_csv}")


def print_rows(rows: list[dict]) -> None:
    """A compact table of the main columns."""
    if not rows:
        click.echo("no annotation class overlaps the regions")
        return
    width = max(len(str(row["class"])) for row in rows) + 2
    click.echo(f"{'class':{width}}{'target':8}{'region':>8}" + "".join(f"{h:>11}" for h in SHOWN.values()))
    for row in rows:
        cells = "".join(f"{format_value(row.get(c)):>11}" for c in SHOWN)
        click.echo(f"{row['class']!s:{width}}{row['target']:8}{row['region_id']!s:>8}{cells}")


def format_value(value: object) -> str:
    """Floats with 3 decimals, None as '-', the rest as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
