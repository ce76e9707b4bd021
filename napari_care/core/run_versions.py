"""An edited run saved as a new version beside the original: ``<stem>.v2.care.json`` and its set.

A pathologist's corrections (:mod:`napari_care.core.region_edits`) and group names never
overwrite a run: each save writes a complete output set under the next free version stem,
and the original's files stay exactly as they were.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_care.core.outputs import write_outputs
from napari_care.core.saved_run import SUMMARY_SUFFIX, SavedRun
from napari_care.core.segment import SegmentResult


def next_version_stem(folder: str | os.PathLike[str], stem: str) -> str:
    """``<stem>.v2``, ``.v3``, ...: the first version of run ``stem`` with no summary in ``folder``
    (a version of a version counts from the original's stem)."""
    head, _, number = stem.rpartition(".v")
    base = head if head and number.isdigit() else stem
    version = 2
    while (Path(folder) / f"{base}.v{version}{SUMMARY_SUFFIX}").exists():
        version += 1
    return f"{base}.v{version}"


def save_version(
    run: SavedRun,
    result: SegmentResult,
    *,
    slide=None,
    group_names: dict[int, str] | None = None,
) -> Path:
    """Write an edited (corrected, renamed) run as a new version beside ``run``: its files under
    :func:`next_version_stem`, the original's left exactly as they were. The patch features are
    not written again: the new summary names the original's features file.

    Returns
    -------
    The new version's ``care.json``.
    """
    folder = run.summary_path.parent
    stem = next_version_stem(folder, run.summary_path.name[: -len(SUMMARY_SUFFIX)])
    features_file = run.summary.get("features_file") or str(
        run.summary_path.with_name(run.summary_path.name.replace(SUMMARY_SUFFIX, ".features.h5"))
    )
    names = dict(run.group_names) | dict(group_names or {})
    paths = write_outputs(result, slide, folder, stem, group_names=names, features_file=features_file)
    return paths["summary"]
