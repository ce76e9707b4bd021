"""napari reader for a saved segmentation run: ``<stem>.care.json`` (or the plugin's own
``<stem>.regions.geojson`` with the run's files beside it) opens as the slide and the three CARE
layers, as the run drew them, without re-encoding anything (:mod:`napari_care.core.saved_run`).

The slide is found at the path the run recorded, else under the same name beside the run's
files, else (in a running viewer) the user picks it; the regions are coloured by phenotype
group, and each group's name is in the regions layer's table (column ``group_name``) and
metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_care._care_layers import DisplayOptions, care_layers
from napari_care._reader import read_slide
from napari_care.core.saved_run import RUN_SUFFIX, SUMMARY_SUFFIX, SavedRun, load_run, run_paths

LayerData = tuple[Any, dict, str]


def is_run_file(path: Path) -> bool:
    """A ``<stem>.care.json``, or a ``<stem>.regions.geojson`` whose run files lie beside it."""
    name = path.name.lower()
    if not (name.endswith(SUMMARY_SUFFIX) or name.endswith((".regions.geojson", ".regions.geojson.gz"))):
        return False
    try:
        summary, arrays = run_paths(path)
    except ValueError:
        return False
    return summary.is_file() and arrays.is_file()


def find_slide(run: SavedRun, ask=None) -> Path:
    """The run's slide: as recorded, else of that name beside the run, else ``ask(run)``'s answer.

    Raises
    ------
    FileNotFoundError
        Naming the recorded path and where else it was looked for.
    """
    recorded = run.slide_path
    if recorded is None:
        raise FileNotFoundError(
            f"{run.summary_path}: the run was made from a feature file without its slide; open the "
            "slide first, then segment it from those features (the widget's features file)"
        )
    beside = run.summary_path.with_name(recorded.name)
    for candidate in (recorded, beside):
        if candidate.is_file():
            return candidate
    picked = ask(run) if ask is not None else None
    if picked:
        return Path(picked)
    raise FileNotFoundError(
        f"{run.summary_path}: its slide {recorded} is not there any more (nor {beside}); "
        "put it back, or copy it beside the run's files"
    )


def _ask_for_slide(run: SavedRun) -> str | None:
    """A file dialog for the moved slide, when a Qt application runs (None otherwise)."""
    try:
        from qtpy.QtWidgets import QApplication, QFileDialog  # lazy: Qt only in a running viewer
    except ImportError:
        return None
    if QApplication.instance() is None:
        return None
    name = run.slide_path.name if run.slide_path else "the slide"
    chosen, _ = QFileDialog.getOpenFileName(None, f"Where is {name} now?", str(run.summary_path.parent))
    return chosen or None


def run_layers(path: str | Path, *, ask=_ask_for_slide) -> list[LayerData]:
    """The slide layer and the run's three CARE layers, coloured by phenotype group."""
    run = load_run(path)
    slide_data = read_slide(str(find_slide(run, ask)), mpp=run.result.slide_mpp)  # the run's calibration
    slide = slide_data[0][1]["metadata"]["slide"]
    layers = care_layers(run.result, slide, DisplayOptions(colour_by="group"))
    regions_data, regions_kwargs, kind = layers[0]
    groups = regions_kwargs["features"]["group"]
    regions_kwargs["features"]["group_name"] = [run.group_names.get(int(g), "") for g in groups]
    regions_kwargs["metadata"] |= {"group_names": dict(run.group_names), "run": str(run.summary_path)}
    return [*slide_data, (regions_data, regions_kwargs, kind), *layers[1:]]


def read_run_layers(path: str | list[str]) -> list[LayerData]:
    """npe2 reader function: :func:`run_layers` of the one path."""
    return run_layers(path[0] if isinstance(path, list) else path)


__all__ = ["RUN_SUFFIX", "find_slide", "is_run_file", "read_run_layers", "run_layers"]
