"""What every ``napari-care`` command module shares: exit codes, one-line failures, progress bars.

Kept apart from :mod:`napari_care.cli.app` so that command modules registered there
(:mod:`napari_care.cli.train`, :mod:`napari_care.cli.review`) can import it without a cycle.
"""

from __future__ import annotations

import sys

import click

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print a one-line error and exit with ``code``."""
    click.echo(f"napari-care: {message}", err=True)
    sys.exit(code)


class StageBars:
    """Progress reports shown as tqdm bars on stderr, one bar per stage (the previous one closes)."""

    def __init__(self, *, quiet: bool = False, unit: str = "it") -> None:
        self.quiet, self.unit = quiet, unit
        self.bars: dict = {}

    def __call__(self, report) -> None:
        from tqdm import tqdm  # lazy: CLI start-up

        bar = self.bars.get(report.stage)
        if bar is None:
            self.close()
            bar = self.bars[report.stage] = tqdm(total=max(report.total, 1), desc=report.stage, unit=self.unit,
                                                 disable=self.quiet, leave=False, file=sys.stderr)
        bar.total = max(report.total, 1)
        bar.n = min(report.done, bar.total)
        bar.set_postfix_str(report.message[-60:], refresh=True)

    def close(self) -> None:
        """Close the bars shown so far."""
        for bar in self.bars.values():
            bar.close()


def drive(work, *, quiet: bool = False, unit: str = "it"):
    """Run a progress generator with one tqdm bar per stage (counting ``unit``); return its result."""
    from napari_care.core.progress import run_to_end  # lazy: CLI start-up

    bars = StageBars(quiet=quiet, unit=unit)
    try:
        return run_to_end(work, bars)
    finally:
        bars.close()
