"""What every results file in ``docs/results/`` records about where it came from, and its writing.

A benchmark builds its figures into a dict and hands them to :func:`write_result`, which adds
the experiment's name, the commit (``+uncommitted`` when the tree has changes), the command
and the machine (CPUs, load average at the end), and writes the JSON atomically.
:mod:`make_tables` renders the docs' tables from these files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from napari_care.core.atomic import atomic_open

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


def git_commit() -> str:
    """The repository's HEAD, with ``+uncommitted`` when the work tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def provenance(experiment: str) -> dict:
    """The fields every results file starts with."""
    return {
        "experiment": experiment,
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg())},
    }


def write_result(path: Path, experiment: str, figures: dict) -> Path:
    """Write ``figures`` with :func:`provenance` as ``path`` (atomically); returns the path."""
    document = provenance(experiment) | figures
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")
    return path
