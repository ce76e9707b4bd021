"""What every ``napari-care`` command module shares: exit codes, one-line failures, progress
bars, and options whose defaults are the core's.

Kept apart from :mod:`napari_care.cli.app` so that command modules registered there
(:mod:`napari_care.cli.train`, :mod:`napari_care.cli.review`) can import it without a cycle.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print a one-line error and exit with ``code``."""
    click.echo(f"napari-care: {message}", err=True)
    sys.exit(code)


def warn(notes: Iterable[str]) -> None:
    """Print each warning on its own line of stderr."""
    for note in notes:
        click.echo(f"napari-care: warning: {note}", err=True)


class StageBars:
    """Progress reports shown as tqdm bars on stderr, one bar per stage (the previous one closes).

    A stage's bar shows from its first report of work done: a run that stops on bad input
    before doing any prints its error alone.
    """

    def __init__(self, *, quiet: bool = False, unit: str = "it") -> None:
        self.quiet, self.unit = quiet, unit
        self.bars: dict = {}

    def __call__(self, report) -> None:
        from tqdm import tqdm  # lazy: CLI start-up

        bar = self.bars.get(report.stage)
        if bar is None:
            if report.done <= 0:
                return
            self.close()
            bar = self.bars[report.stage] = tqdm(
                total=max(report.total, 1),
                desc=report.stage,
                unit=self.unit,
                disable=self.quiet,
                leave=False,
                file=sys.stderr,
            )
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


class CoreDefault(click.Option):
    """A click option whose default is the core's default of the same name, shown in the help.

    ``defaults`` returns the core's defaults by name (:func:`field_defaults` of an options
    class, :func:`keyword_defaults` of a function) and imports that core module itself:
    click calls it only when the command runs or shows its help, so ``napari-care --help``
    imports no core module. A default that is None is not shown.
    """

    def __init__(
        self, param_decls: list[str], *, defaults: Callable[[], Mapping[str, Any]], **attrs: Any
    ) -> None:
        attrs.setdefault("show_default", True)
        super().__init__(param_decls, **attrs)
        self.defaults = defaults

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        """The core's default (click's own would be ``(dynamic)`` in the help for a function)."""
        return self.defaults()[self.name]


def core_option(defaults: Callable[[], Mapping[str, Any]], *param_decls: str, **attrs: Any):
    """``click.option`` with the core's default (see :class:`CoreDefault`); give ``type`` explicitly."""
    return click.option(*param_decls, cls=CoreDefault, defaults=defaults, **attrs)


def field_defaults(options_type: type) -> dict[str, Any]:
    """The defaults of a dataclass's fields, by name (fields without one are left out)."""
    defaults = {}
    for option in dataclasses.fields(options_type):
        if option.default is not dataclasses.MISSING:
            defaults[option.name] = option.default
        elif option.default_factory is not dataclasses.MISSING:
            defaults[option.name] = option.default_factory()
    return defaults


def keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The defaults of a function's parameters, by name."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
