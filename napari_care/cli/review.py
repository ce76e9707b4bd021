"""``napari-care review``: agreement of a segmentation output with a pathologist's annotations.

``register(main)`` adds the command to the click group of :mod:`napari_care.cli.app`. Thin, like
the rest of the CLI: read the inputs, call :func:`napari_care.core.review.run.iter_review_files_tables`,
print. Exit codes: 0 done, 1 the work failed (a CSV could not be written), 2 bad input (an
unreadable file, or annotations that overlap none of the run's patches).
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
# Printed columns of the class x group table.
SHOWN_BY_GROUP = {
    "area_um2": "um^2",
    "share_of_class": "of class",
    "share_of_group": "of group",
    "dice": "dice",
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
        outside, and the pointing game (on the patches, or on the regions when the attention is
        constant within each region: column pointing_on). Per class also Dice and IoU with each
        phenotype group (target "group", the best one marked best_group), and the class x group
        area table in <out stem>.class_by_group.csv. See docs/qupath.md.
        """
        from napari_care.core.qupath.read import GeometryRepairWarning  # lazy: CLI start-up
        from napari_care.core.review.bounds import AnnotationsPartlyOutsideWarning  # lazy: CLI start-up
        from napari_care.core.review.run import (
            class_table_path,
            iter_review_files_tables,
        )  # lazy: CLI start-up

        work = iter_review_files_tables(
            slide_result, annotations, out_csv, stem=stem, include_disjoint=all_regions
        )
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", GeometryRepairWarning)
                warnings.simplefilter("always", AnnotationsPartlyOutsideWarning)
                tables = drive(work, quiet=quiet)
        except (FileNotFoundError, ValueError) as error:
            fail(str(error))
        except OSError as error:  # a CSV could not be written
            fail(f"{out_csv}: cannot write ({error.strerror or error})", EXIT_FAILED)
        for warning in caught:  # one line each; the reader's repairs (notes) not with --quiet
            if issubclass(warning.category, AnnotationsPartlyOutsideWarning):
                click.echo(f"warning: {warning.message}", err=True)
            elif not issubclass(warning.category, GeometryRepairWarning):
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
            elif not quiet:
                click.echo(f"note: {warning.message}", err=True)
        if not quiet:
            print_rows(tables.rows)
            print_class_table(tables.class_by_group)
            if tables.pointing_on:
                click.echo(f"pointing game on the {POINTING_ON[tables.pointing_on]}")
        click.echo(f"{len(tables.rows)} rows -> {out_csv}")
        if tables.class_by_group:
            click.echo(f"{len(tables.class_by_group)} class x group rows -> {class_table_path(out_csv)}")


def print_rows(rows: list[dict]) -> None:
    """A compact table of the main columns (a group row shows ``g<id>``, ``*g<id>`` for the class's best)."""
    if not rows:
        click.echo("no annotation class overlaps the regions")
        return
    width = max(len(str(row["class"])) for row in rows) + 2
    click.echo(f"{'class':{width}}{'target':8}{'region':>8}" + "".join(f"{h:>11}" for h in SHOWN.values()))
    for row in rows:
        cells = "".join(f"{format_value(row.get(c)):>11}" for c in SHOWN)
        target = row["region_id"]
        if row["target"] == "group":  # its regions are in the CSV; here the group and the best mark
            target = f"{'*' if row.get('best_group') else ''}g{row['group_id']}"
        click.echo(f"{row['class']!s:{width}}{row['target']:8}{target!s:>8}{cells}")


POINTING_ON = {
    "patch": "patches (the highest-attention patch)",
    "region": "regions (attention is constant within each region: the top-weight region)",
}


def print_class_table(rows: list[dict]) -> None:
    """Which group is which class: each class's area per group, the best group marked ``*``."""
    if not rows:
        return
    width = max(len(str(row["class"])) for row in rows) + 2
    group_width = max(len(str(row["group_name"])) for row in rows) + 2
    header = f"{'class':{width}}{'group':{group_width}}" + "".join(
        f"{h:>11}" for h in SHOWN_BY_GROUP.values()
    )
    click.echo(header)
    for row in rows:
        cells = "".join(f"{format_value(row.get(c)):>11}" for c in SHOWN_BY_GROUP)
        mark = " *" if row.get("best_group") else ""
        click.echo(f"{row['class']!s:{width}}{row['group_name']!s:{group_width}}{cells}{mark}")


def format_value(value: object) -> str:
    """Floats with 3 decimals (whole numbers from 1,000 on), None as '-', the rest as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"
    return str(value)
