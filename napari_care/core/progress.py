"""Progress reports for long work.

Long work in the core is a generator that yields :class:`Progress` objects and returns its
result (``StopIteration.value``). The CLI drives it with a progress bar, the widget with a
napari thread worker, and tests and scripts with :func:`run_to_end`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of long work.

    Parameters
    ----------
    stage
        What is being done, e.g. ``"tissue"``, ``"extract"``, ``"segment"``.
    done
        Units finished so far in this stage.
    total
        Units in this stage (0 when unknown).
    message
        A short human-readable line for a status bar.
    """

    stage: str
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        """Share of the stage that is done, in [0, 1] (0 when the total is unknown)."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


ProgressGen = Generator[Progress, None, T]


def run_to_end(
    work: Generator[Progress, None, T], on_progress: Callable[[Progress], None] | None = None
) -> T:
    """Drive a progress generator to its end and return its result.

    Parameters
    ----------
    work
        A generator that yields :class:`Progress` and returns a result.
    on_progress
        Called with every progress report, if given.

    Returns
    -------
    The generator's return value.
    """
    while True:
        try:
            report = next(work)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(report)


def map_progress(
    work: Generator[Progress, None, T], change: Callable[[Progress], Progress]
) -> Generator[Progress, None, T]:
    """Pass on ``work``'s reports changed by ``change`` (another stage name, an offset in a larger
    run...) and return its result."""
    while True:
        try:
            report = next(work)
        except StopIteration as stop:
            return stop.value
        yield change(report)
