"""Where level-0 pixels sit in the viewer's world: the one coordinate conversion of every layer.

The core speaks level-0 pixels, (x, y), with pixel edges at integers. The viewer's world is
(row, col) in micrometres (in pixels for a slide without mpp), and the slide image layer has
``scale`` = mpp and no ``translate``, so napari puts level-0 pixel ``i``'s centre at world
``i * mpp``: a level-0 edge coordinate ``x`` is at world ``(x - 0.5) * mpp``. Every layer
over a slide (the slide image, the CARE rasters, imported annotations) is placed through a
:class:`Level0Frame`, and every layer read back (the writer, the review) goes through it too.

No napari here: :mod:`napari_care._layers` applies frames to slides, layer attributes and
viewers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SLIDE_INFO_KEY = "napari_care"  # a slide layer's metadata holds ``Slide.metadata()`` under this key


@dataclass(frozen=True)
class Level0Frame:
    """Where level-0 pixels sit in the viewer's world, and QuPath's origin shift.

    World (row, col) = ((y - 0.5) * scale[0], (x - 0.5) * scale[1]) for level-0 (x, y).

    Attributes
    ----------
    scale
        (row, col) world units per level-0 pixel: (mpp_y, mpp_x), or (1, 1) without mpp.
    bounds_offset
        The slide's bounds offset (x, y) in level-0 pixels: QuPath's coordinates are relative to
        it, so it is added on import and subtracted on export.
    """

    scale: tuple[float, float] = (1.0, 1.0)
    bounds_offset: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def from_mpp(
        cls, mpp: Sequence[float] | None, bounds_offset: Sequence[float] = (0.0, 0.0)
    ) -> Level0Frame:
        """The frame of a slide with micrometres per level-0 pixel ``mpp`` = (x, y), or None.

        Parameters
        ----------
        mpp
            (x, y) micrometres per level-0 pixel; None (or empty) for an uncalibrated slide.
        bounds_offset
            The slide's bounds offset (x, y) in level-0 pixels.
        """
        return cls(
            (float(mpp[1]), float(mpp[0])) if mpp else (1.0, 1.0),
            (float(bounds_offset[0]), float(bounds_offset[1])),
        )

    @classmethod
    def from_slide_metadata(cls, metadata: Mapping, *, use_bounds: bool = True) -> Level0Frame:
        """The frame of a slide layer from its metadata (``Slide.metadata()`` under :data:`SLIDE_INFO_KEY`).

        Parameters
        ----------
        metadata
            The slide layer's metadata.
        use_bounds
            Keep the slide's bounds offset (QuPath's frame), else no offset.
        """
        info = metadata.get(SLIDE_INFO_KEY) or {}
        offset = info.get("bounds_offset") or (0, 0)
        return cls.from_mpp(info.get("mpp"), offset if use_bounds else (0.0, 0.0))

    @classmethod
    def from_dict(cls, value: Mapping) -> Level0Frame:
        """The frame from :meth:`to_dict`'s values."""
        return cls(tuple(float(v) for v in value["scale"]), tuple(float(v) for v in value["bounds_offset"]))

    def to_dict(self) -> dict:
        """The frame as JSON-ready values (kept in a layer's metadata)."""
        return {"scale": list(self.scale), "bounds_offset": list(self.bounds_offset)}

    @property
    def mpp(self) -> float | None:
        """Micrometres per level-0 pixel along x; None for the uncalibrated frame (scale (1, 1))."""
        return self.scale[1] if self.scale != (1.0, 1.0) else None

    def level0_to_world(self, xy_level0: np.ndarray) -> np.ndarray:
        """``[N, 2]`` level-0 (x, y) pixel-edge coordinates -> ``[N, 2]`` world (row, col)."""
        xy = np.asarray(xy_level0, dtype=np.float64).reshape(-1, 2)
        return np.stack([(xy[:, 1] - 0.5) * self.scale[0], (xy[:, 0] - 0.5) * self.scale[1]], axis=1)

    def world_to_level0(self, rowcol_world: np.ndarray) -> np.ndarray:
        """``[N, 2]`` world (row, col) -> ``[N, 2]`` level-0 (x, y) pixel-edge coordinates."""
        rowcol = np.asarray(rowcol_world, dtype=np.float64).reshape(-1, 2)
        return np.stack([rowcol[:, 1] / self.scale[1] + 0.5, rowcol[:, 0] / self.scale[0] + 0.5], axis=1)

    def level0_to_data(self, xy_level0: np.ndarray) -> np.ndarray:
        """``[N, 2]`` level-0 (x, y) -> the (row, col) = (y, x) data of a layer placed by
        :meth:`placement`."""
        return np.asarray(xy_level0, dtype=np.float64).reshape(-1, 2)[:, [1, 0]]

    def placement(self) -> dict[str, tuple[float, float]]:
        """``scale`` and ``translate`` of a layer whose data are level-0 (row, col) = (y, x) coordinates."""
        return self._placement((0.0, 0.0), 1.0)

    def raster_placement(
        self, origin_level0: Sequence[float], pixel_level0: float
    ) -> dict[str, tuple[float, float]]:
        """``scale`` and ``translate`` of a raster whose pixel (0, 0) covers level-0
        [x0, x0 + p) x [y0, y0 + p).

        Parameters
        ----------
        origin_level0
            (x0, y0): level-0 corner of the raster's pixel (0, 0).
        pixel_level0
            p: the side of one raster pixel in level-0 pixels.

        Notes
        -----
        napari puts an image pixel's centre at index * scale + translate; the raster's pixel
        (0, 0) is centred at level-0 (x0 + p / 2, y0 + p / 2).
        """
        x0, y0 = origin_level0
        half = pixel_level0 / 2
        return self._placement((x0 + half, y0 + half), pixel_level0)

    def data_to_level0(
        self, rowcol: np.ndarray, scale: Sequence[float], translate: Sequence[float]
    ) -> np.ndarray:
        """``[N, 2]`` data (row, col) of a layer placed by ``scale``/``translate`` -> level-0 (x, y).

        Only the last two axes of ``rowcol``, ``scale`` and ``translate`` are used.
        """
        rowcol = np.asarray(rowcol, dtype=np.float64)[:, -2:]
        world = (
            rowcol * np.asarray(scale, dtype=np.float64)[-2:] + np.asarray(translate, dtype=np.float64)[-2:]
        )
        return self.world_to_level0(world)

    def raster_origin(
        self, scale: Sequence[float], translate: Sequence[float]
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """Level-0 (x, y) of a raster's pixel (0, 0) corner and its pixel size (x, y):
        :meth:`raster_placement` undone."""
        corners = self.data_to_level0(np.array([[-0.5, -0.5], [0.5, 0.5]]), scale, translate)
        (x0, y0), size = corners[0].tolist(), (corners[1] - corners[0]).tolist()
        return (float(x0), float(y0)), (float(size[0]), float(size[1]))

    def _placement(self, start_xy: tuple[float, float], step_level0: float) -> dict[str, tuple[float, float]]:
        """The placement of data whose (row, col) = (j, i) is level-0
        (start_x + i * step, start_y + j * step)."""
        ((row, col),) = self.level0_to_world(np.array([start_xy])).tolist()
        return {"scale": (step_level0 * self.scale[0], step_level0 * self.scale[1]), "translate": (row, col)}
