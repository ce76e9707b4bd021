"""The OpenSlide backend, for what tifffile cannot read (MRXS, DICOM, VMS, SCN, BIF, ...).

OpenSlide's ``read_region`` is thread-safe; transparent pixels (outside scanned areas)
become white, the colour of glass. A tile OpenSlide cannot read raises
:class:`~napari_care.core.slide.levels.TileDecodeError`; OpenSlide's errors are sticky, so
after the first one every later read of that slide fails too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_care.core.slide import meta as slide_meta
from napari_care.core.slide.backends import SlideBackend, SlideParts, register_backend
from napari_care.core.slide.levels import BadTileLog, TileDecodeError, tile_box_level0

OPENSLIDE_FIRST = (".mrxs", ".vms", ".vmu", ".scn", ".bif", ".dcm", ".svslide")  # tried before tifffile
DEFAULT_TILE = 512


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) RGBA -> (h, w, 3) RGB over white, so transparent areas become glass."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    # openslide-python un-premultiplies its colours: rgb * alpha + white * (1 - alpha), rounded
    return ((rgb * alpha + 127) // 255 + (255 - alpha)).astype(np.uint8)


class OpenSlideLevelSource:
    """Tiles of one OpenSlide level.

    Parameters
    ----------
    osr
        An ``openslide.OpenSlide``.
    level
        The level index.
    path
        The file, for error messages.
    bad_tiles
        The slide's log of tiles that cannot be read, shared by its levels.
    """

    def __init__(
        self, osr, level: int, *, path: Path | None = None, bad_tiles: BadTileLog | None = None
    ) -> None:
        self.osr = osr
        self.level = level
        self.path = path
        self.bad_tiles = bad_tiles if bad_tiles is not None else BadTileLog(path.name if path else "")
        self.width, self.height = osr.level_dimensions[level]
        props = osr.properties
        self.tile_width = int(props.get(f"openslide.level[{level}].tile-width", DEFAULT_TILE))
        self.tile_height = int(props.get(f"openslide.level[{level}].tile-height", DEFAULT_TILE))
        self.downsample = float(osr.level_downsamples[level])

    def decode_tile(self, ty: int, tx: int) -> np.ndarray:
        """Read tile (ty, tx) through ``OpenSlide.read_region``.

        Raises
        ------
        TileDecodeError
            When OpenSlide cannot read the tile.
        """
        import openslide  # loaded already: this source exists only for an open OpenSlide

        x0 = round(tx * self.tile_width * self.downsample)
        y0 = round(ty * self.tile_height * self.downsample)
        try:
            image = self.osr.read_region((x0, y0), self.level, (self.tile_width, self.tile_height))
        except openslide.OpenSlideError as error:
            box = tile_box_level0(
                ty,
                tx,
                (self.tile_height, self.tile_width),
                (self.height, self.width),
                (self.downsample, self.downsample),
            )
            raise TileDecodeError(self.path, self.level, (tx, ty), box, str(error)) from error
        return composite_on_white(np.asarray(image))


def open_openslide(path: Path, user_mpp: tuple[float, float] | None) -> SlideParts:
    """Read a slide through OpenSlide: its levels, calibration, bounds and associated images.

    Parameters
    ----------
    path
        The file.
    user_mpp
        (x, y) micrometres per pixel given by the user, ahead of what the file says.

    Returns
    -------
    SlideParts

    Raises
    ------
    openslide.OpenSlideError
        When OpenSlide cannot read the file (``OpenSlideUnsupportedFormatError`` when it
        does not know the format).
    """
    import openslide  # a backend loads when a slide of its kind opens

    osr = openslide.OpenSlide(str(path))
    properties = dict(osr.properties)
    candidates = [("user", user_mpp), ("openslide", slide_meta.openslide_mpp(properties))]
    mpp, source = slide_meta.first_calibration(candidates)
    power = slide_meta.objective_from_fields(properties.get("openslide.objective-power"))
    bounds = (int(properties.get("openslide.bounds-x", 0)), int(properties.get("openslide.bounds-y", 0)))

    def loader(name: str) -> Callable[[], np.ndarray]:
        return lambda: composite_on_white(np.asarray(osr.associated_images[name]))

    associated = {
        name: loader(name) for name in osr.associated_images if name in ("label", "macro", "thumbnail")
    }
    log = BadTileLog(path.name)
    return SlideParts(
        [OpenSlideLevelSource(osr, level, path=path, bad_tiles=log) for level in range(osr.level_count)],
        calibration=slide_meta.Calibration(mpp, source, power),
        vendor=properties.get("openslide.vendor", "unknown"),
        properties=properties,
        associated=associated,
        on_close=[osr.close],
        bounds_offset=bounds,
    )


# the generalist: first for its own formats, and for any file that is not a TIFF
register_backend(SlideBackend("openslide", OPENSLIDE_FIRST, open_openslide, rank=10))
