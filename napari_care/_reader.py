"""napari reader: whole-slide images as multiscale RGB layers in micrometres.

The reader's gate is cheap and never raises: a file this plugin cannot read gets ``None``
so napari tries its other readers. A file it claims but that turns out broken raises an
error naming the file and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari_care._layers import slide_layer_data
from napari_care.core.slide.backends import get_backend, slide_stem, slide_suffixes
from napari_care.core.slide.handle import open_slide
from napari_care.core.slide.tifffile_backend import is_tiff


def single_path(path: str | list[str]) -> Path | None:
    """The one path napari hands a reader, or None for several paths or something else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path) if isinstance(path, (str, os.PathLike)) else None


def napari_get_reader(path: str | list[str]):
    """Return :func:`read_slide` when ``path`` looks like a slide this plugin reads, else None."""
    path = single_path(path)
    return read_slide if path is not None and is_slide_path(path) else None


def is_slide_path(path: Path) -> bool:
    """Cheap check: a slide suffix, and for the TIFF family an 8-bit RGB(A) first page."""
    suffix = path.suffix.lower()
    if suffix not in slide_suffixes() or not path.exists():
        return False
    if suffix not in get_backend("tifffile").suffixes:
        return True
    try:
        if not is_tiff(path):
            return suffix == ".svs"  # claimed by name: a broken .svs gets a clear error
        import tifffile  # a backend loads when a slide of its kind opens

        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return bool(
                tif.is_svs or tif.is_ndpi or (page.dtype == "uint8" and page.samplesperpixel in (3, 4))
            )
    except Exception:  # the gate never raises
        return suffix == ".svs"


def read_slide(
    path: str | list[str], *, mpp: float | tuple[float, float] | None = None
) -> list[tuple[Any, dict, str]]:
    """Open a slide as one multiscale RGB image layer (data, kwargs, "image"); ``mpp``
    overrides the file's calibration (a reopened run's, made with ``--mpp``)."""
    if isinstance(path, list):
        path = path[0]
    slide = open_slide(path, mpp=mpp)
    return [slide_layer_data(slide, name=slide_stem(Path(path)))]
