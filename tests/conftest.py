"""Shared fixtures: the real test slides (when present) and small generated pyramids.

``shared_data`` points at ``../shared/data`` next to the repository and skips the test when
that folder is absent (a fresh clone has none). ``make_pyramid`` writes small tiled TIFF
pyramids with tifffile in the test's ``tmp_path``: generic TIFF with SubIFDs, one page per
level, OME-TIFF; any tile shape; JPEG, deflate or no compression; RGB, RGBA or grayscale;
with or without resolution tags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

# torch imports triton when an optimiser is made; triton's bundled LLVM segfaults in its static
# initialisers when Mesa's software OpenGL (which links its own LLVM) is already loaded, i.e. in a
# test that trains after a viewer test. Loaded first, the two coexist.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WHITE = 255


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: tiny models on a shared CPU lose more to thread hand-offs
    than they gain."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real slides and annotations); skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared test data at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_slide(shared_data: Path) -> Callable[[str], Path]:
    """``shared_slide("CMU-1-Small-Region.svs")`` -> its path; skips when the file is absent."""

    def find(name: str) -> Path:
        path = shared_data / "slides" / name
        if not path.is_file():
            pytest.skip(f"no {name} in {path.parent}")
        return path

    return find


@dataclass
class Pyramid:
    """A generated pyramid file and the pixels written to it.

    Attributes
    ----------
    path : Path
        The TIFF file.
    levels : list of numpy.ndarray
        The arrays written, largest first: (h, w, samples) or (h, w) uint8.
    tile_shape : (int, int) or None
        (tile_height, tile_width) in pixels; None for a strip TIFF.
    """

    path: Path
    levels: list[np.ndarray]
    tile_shape: tuple[int, int] | None

    def rgb(self, level: int = 0) -> np.ndarray:
        """Level ``level`` as the (h, w, 3) RGB a Slide should return."""
        pixels = self.levels[level]
        if pixels.ndim == 2:
            return np.repeat(pixels[..., None], 3, axis=-1)
        return pixels[..., :3]


def synthetic_rgb(shape: tuple[int, int], samples: int, seed: int) -> np.ndarray:
    """Smooth colour waves plus pixel noise: JPEG-friendly, yet every pixel differs from its neighbours."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    channels = []
    for c in range(max(samples, 1)):
        wave = 128 + 70 * np.sin(rows / (23 + 7 * c)) * np.cos(cols / (31 + 5 * c))
        channels.append(wave + rng.integers(-25, 26, shape))
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return pixels[..., 0] if samples == 1 else pixels


def expected_region(pixels: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """The (height, width, 3) crop at (x, y) of an RGB array, white outside it (what read_region promises)."""
    out = np.full((height, width, 3), WHITE, dtype=np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, pixels.shape[1]), min(y + height, pixels.shape[0])
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = pixels[y0:y1, x0:x1]
    return out


def write_pyramid(
    path: Path,
    *,
    shape: tuple[int, int] = (700, 500),
    tile_shape: tuple[int, int] | None = (96, 160),
    level_count: int = 3,
    layout: str = "subifd",
    compression: str | None = "deflate",
    samples: int = 3,
    resolution: tuple[float, str] | None = None,
    ome_physical_size: tuple[float, float, str] | None = None,
    associated: tuple[str, ...] = (),
    rows_per_strip: int = 64,
    seed: int = 0,
) -> Pyramid:
    """Write a pyramid TIFF and return what was written.

    Parameters
    ----------
    path
        Where to write.
    shape
        (height, width) of level 0 in pixels.
    tile_shape
        (tile_height, tile_width), multiples of 16; None writes strips of ``rows_per_strip``.
    level_count
        Levels written, each half the size of the previous one.
    layout
        ``"subifd"`` (reduced levels in SubIFDs), ``"pages"`` (one reduced-resolution page
        per level in the main IFD chain, as OpenSlide's generic TIFF wants), ``"series"``
        (one page and one tifffile series per level, no reduced-resolution flag) or
        ``"ome"`` (OME-TIFF with SubIFDs).
    compression
        None, ``"deflate"`` or ``"jpeg"``.
    samples
        3 (RGB), 4 (RGBA) or 1 (grayscale).
    resolution
        (pixels per unit, unit) for the TIFF resolution tags, unit ``"centimeter"``,
        ``"inch"`` or ``"none"``; None writes tifffile's default (no unit).
    ome_physical_size
        (PhysicalSizeX, PhysicalSizeY, unit) for OME-TIFF, e.g. (0.25, 0.25, "µm").
    associated
        Names of small extra images (``"label"``, ``"macro"``) written after the pyramid (OME only).
    """
    if layout not in ("subifd", "pages", "series", "ome"):
        raise ValueError(f"unknown layout {layout!r}")
    level0 = synthetic_rgb(shape, samples, seed)
    levels = [level0[:: 2**k, :: 2**k].copy() for k in range(level_count)]
    photometric = {1: "minisblack", 3: "rgb", 4: "rgb"}[samples]
    options: dict = {"photometric": photometric, "compression": compression}
    if tile_shape is None:
        options["rowsperstrip"] = rows_per_strip
    else:
        options["tile"] = tile_shape
    if samples == 4:
        options["extrasamples"] = ["unassalpha"]
    first: dict = {}
    if resolution is not None:
        first = {"resolution": (resolution[0], resolution[0]), "resolutionunit": resolution[1].upper()}
    ome = layout == "ome"
    with tifffile.TiffWriter(path, ome=ome) as writer:
        if layout == "pages":
            for k, level in enumerate(levels):
                writer.write(
                    level, subfiletype=1 if k else 0, metadata=None, **options, **(first if k == 0 else {})
                )
        elif layout == "series":  # tifffile's "shaped" description makes each page its own series
            for k, level in enumerate(levels):
                writer.write(level, **options, **(first if k == 0 else {}))
        else:
            metadata: dict | None = None
            if ome:
                metadata = {"axes": "YXS" if samples > 1 else "YX", "Name": "slide"}
                if ome_physical_size is not None:
                    size_x, size_y, unit = ome_physical_size
                    metadata.update(
                        PhysicalSizeX=size_x,
                        PhysicalSizeXUnit=unit,
                        PhysicalSizeY=size_y,
                        PhysicalSizeYUnit=unit,
                    )
            writer.write(levels[0], subifds=level_count - 1, metadata=metadata, **options, **first)
            for level in levels[1:]:
                writer.write(level, subfiletype=1, **options)
        for name in associated:
            small = synthetic_rgb((60, 90), 3, seed + len(name))
            writer.write(small, photometric="rgb", metadata={"Name": name} if ome else None)
    return Pyramid(path, levels, tile_shape)


@pytest.fixture
def make_pyramid(tmp_path: Path) -> Callable[..., Pyramid]:
    """Factory: ``make_pyramid(name="slide.tif", **options)`` writes :func:`write_pyramid`
    into ``tmp_path``."""

    def make(name: str = "slide.tif", **options) -> Pyramid:
        return write_pyramid(tmp_path / name, **options)

    return make


@pytest.fixture(scope="session")
def widget_slide_path(tmp_path_factory) -> Path:
    """A small generated H&E slide (4096 x 3072 px at 0.5 um/px, about a hundred tissue tiles at 20x)."""
    from napari_care.core.synthetic.slides import build_synthetic_slide

    path = tmp_path_factory.mktemp("widget") / "small.ome.tif"
    build_synthetic_slide(path, width=4096, height=3072, seed=0, swatch_px=512, tile_size=256)
    return path


@pytest.fixture
def viewer_widget(make_napari_viewer, widget_slide_path, qtbot):
    """A shown viewer with the small slide and the docked CARE widget, its warm-up finished."""
    from gui_helpers import RUN_TIMEOUT_MS
    from napari.layers import Layer

    from napari_care._reader import read_slide
    from napari_care._widget import CareSegmentWidget

    viewer = make_napari_viewer(show=True)
    data, kwargs, kind = read_slide(str(widget_slide_path))[0]
    viewer.add_layer(Layer.create(data, kwargs, kind))
    widget = CareSegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CARE")
    qtbot.waitUntil(lambda: not widget.controller.warming_up, timeout=RUN_TIMEOUT_MS)
    yield viewer, widget
    with contextlib.suppress(RuntimeError):  # a test may have deleted the widget
        widget.controller.cancel()
