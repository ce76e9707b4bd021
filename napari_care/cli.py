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


if __name__ == "__main__":  # pragma: no cover
    main()
