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
from napari_care.core.slide.handle import open_slide

SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".dcm", ".svslide",
)  # fmt: skip
TIFF_FAMILY = (".svs", ".tif", ".tiff", ".ndpi")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


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
    if suffix not in SLIDE_SUFFIXES or not path.exists():
        return False
    if suffix not in TIFF_FAMILY:
        return True
    try:
        with open(path, "rb") as handle:
            if handle.read(4) not in TIFF_MAGIC:
                return suffix == ".svs"  # claimed by name: a broken .svs gets a clear error
        import tifffile  # a backend loads when a slide of its kind opens

        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return bool(tif.is_svs or tif.is_ndpi or (page.dtype == "uint8" and page.samplesperpixel in (3, 4)))
    except Exception:  # the gate never raises
        return suffix == ".svs"


def slide_stem(path: Path) -> str:
    """The file name without its slide suffixes (``a.ome.tif`` -> ``a``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_slide(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    """Open a slide as one multiscale RGB image layer (data, kwargs, "image")."""
    if isinstance(path, list):
        path = path[0]
    slide = open_slide(path)
    return [slide_layer_data(slide, name=slide_stem(Path(path)))]
