"""How long each stage of a run has left, from the pace since its first progress report.

A stage's first report may already count work that cost nothing (tiles from the feature
cache), so the pace is measured from that report on, never from zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from napari_care.core.progress import Progress


class StageClock:
    """When each stage of a run was first reported, and how far it was then.

    Parameters
    ----------
    clock
        Seconds from an arbitrary start (default :func:`time.monotonic`).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first_seen: dict[str, tuple[float, int]] = {}  # stage -> (seconds, done) at its first report

    def reset(self) -> None:
        """Forget the stages seen: a new run starts."""
        self._first_seen = {}

    def saw(self, report: Progress) -> None:
        """Note a report (only the first of each stage starts its clock)."""
        self._first_seen.setdefault(report.stage, (self._clock(), report.done))

    def seconds_left(self, report: Progress) -> float | None:
        """Seconds the report's stage has left at its pace so far; None before any pace is known
        (the first report of the stage, or a stage that is finished)."""
        started, done_then = self._first_seen.get(report.stage, (self._clock(), report.done))
        if not (report.total > 1 and done_then < report.done < report.total):
            return None
        per_second = (report.done - done_then) / max(self._clock() - started, 1e-6)
        return (report.total - report.done) / per_second

    def status_line(self, report: Progress) -> str:
        """The report as one status line: the stage's count and time left, or its message."""
        seconds_left = self.seconds_left(report)
        if seconds_left is None:
            return report.message or report.stage
        return f"{report.stage}: {report.done}/{report.total}, about {seconds_left:.0f} s left"
