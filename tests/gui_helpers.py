"""Helpers of the viewer tests (the fixtures are in conftest.py)."""

from __future__ import annotations

RUN_TIMEOUT_MS = 60_000


def run_and_wait(widget, qtbot) -> None:
    """Press Run on the CARE widget and wait until its worker is done."""
    widget.controller.run()
    qtbot.waitUntil(lambda: not widget.controller.busy, timeout=RUN_TIMEOUT_MS)
