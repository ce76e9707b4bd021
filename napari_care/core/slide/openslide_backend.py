"""The OpenSlide backend, for what tifffile cannot read (MRXS, DICOM, VMS, SCN, BIF, ...).

OpenSlide's ``read_region`` is thread-safe; transparent pixels (outside scanned areas)
become white, the colour of glass.
"""

from __future__ import annotations

import numpy as np

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
    """

    def __init__(self, osr, level: int) -> None:
        self.osr = osr
        self.level = level
        self.width, self.height = osr.level_dimensions[level]
        props = osr.properties
        self.tile_width = int(props.get(f"openslide.level[{level}].tile-width", DEFAULT_TILE))
        self.tile_height = int(props.get(f"openslide.level[{level}].tile-height", DEFAULT_TILE))
        self.downsample = float(osr.level_downsamples[level])

    def decode_tile(self, ty: int, tx: int) -> np.ndarray:
        """Read tile (ty, tx) through ``OpenSlide.read_region``."""
        x0 = round(tx * self.tile_width * self.downsample)
        y0 = round(ty * self.tile_height * self.downsample)
        image = self.osr.read_region((x0, y0), self.level, (self.tile_width, self.tile_height))
        return composite_on_white(np.asarray(image))
