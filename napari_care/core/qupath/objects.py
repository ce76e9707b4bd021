"""QuPath objects in memory: :class:`Annotation` and the colour conventions.

The reader (:mod:`napari_care.core.qupath.read`) returns Annotations and the writer
(:mod:`napari_care.core.qupath.write`) takes them, so a file read and written again keeps
its geometry, classes, colours and measurements. Geometry is in level-0 pixels, (x, y).

What goes to QuPath (see ``docs/qupath-geojson.md`` of the design notes):

- CARE regions are ``"detection"`` objects: QuPath draws tens of thousands of detections
  quickly, lists their measurements in one table and colours them by class, while the same
  number of annotations would each be an editable object in the annotation list and slow
  QuPath down. They are classified ``"CARE group <g>"`` (phenotype group) with a distinct
  colour, or ``"CARE region"`` when no group is known.
- The ROI is an ``"annotation"`` classified ``"CARE ROI"``: the outline of the ROI region
  (not its bounding box, which would also cover tissue that is not in the ROI), so the
  pathologist can see it, edit it and compare it with their own annotations.
- Per-tile attention is a ``"tile"`` object per patch with its values as measurements.
"""

from __future__ import annotations

import re
import uuid
import zlib
from dataclasses import dataclass, field

from shapely.geometry.base import BaseGeometry

Color = tuple[int, int, int]

OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tmaCore")

ROI_CLASS = "CARE ROI"
ROI_COLOR: Color = (255, 200, 0)
REGION_CLASS = "CARE region"
REGION_COLOR: Color = (128, 128, 128)
TILE_CLASS = "CARE tile"
TILE_COLOR: Color = (0, 160, 255)

# The one palette of phenotype groups, in the viewer, the overview PNG and QuPath alike:
# colour-blind friendly (Okabe-Ito, then Tol), then a colour hashed from the class name.
GROUP_PALETTE: tuple[Color, ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (136, 34, 85),
    (68, 170, 153),
    (153, 153, 51),
    (51, 34, 136),
    (221, 204, 119),
)


@dataclass
class Annotation:
    """One QuPath object: geometry plus the properties QuPath reads and writes.

    Parameters
    ----------
    geometry
        Shapely geometry in level-0 pixels (x to the right, y down).
    object_type
        ``"annotation"``, ``"detection"``, ``"cell"``, ``"tile"`` or ``"tmaCore"``.
    name
        The object's own name (``properties.name``), or None.
    class_name
        Classification name; combined classes are joined with ``": "`` as QuPath shows them.
    color
        Display colour (r, g, b): the classification's colour, or the object's own colour
        when it has no classification; None when the file gives neither.
    measurements
        Flat map of measurement name -> finite number.
    id
        The object's UUID string (a fresh one when the file had none or a class name).
    metadata
        String map (``properties.metadata``).
    is_locked
        ``properties.isLocked``.
    """

    geometry: BaseGeometry
    object_type: str = "annotation"
    name: str | None = None
    class_name: str | None = None
    color: Color | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    metadata: dict[str, str] = field(default_factory=dict)
    is_locked: bool = False


_UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def as_uuid(value: object) -> str:
    """``value`` if it is a UUID string, else a fresh UUID (QuPath 0.2 wrote class names as ids)."""
    if isinstance(value, str) and _UUID_PATTERN.fullmatch(value):
        return value
    return str(uuid.uuid4())


def group_class_name(group: int) -> str:
    """QuPath class name of a CARE phenotype group (``"CARE group 3"``)."""
    return f"CARE group {group}"


def group_color(group: int) -> Color:
    """A distinct, stable colour for a phenotype group."""
    if 0 <= group < len(GROUP_PALETTE):
        return GROUP_PALETTE[group]
    return name_color(group_class_name(group))


def name_color(name: str) -> Color:
    """A stable colour derived from a class name (for classes without a given colour)."""
    value = zlib.crc32(name.encode("utf-8"))
    # Keep every channel in 40..215: never near-white or near-black on a slide.
    return tuple(40 + ((value >> shift) & 0xFF) * 175 // 255 for shift in (16, 8, 0))  # type: ignore[return-value]


def argb_to_rgb(value: int) -> Color:
    """QuPath's signed 32-bit ARGB integer (``colorRGB``) -> (r, g, b); -3670016 -> (200, 0, 0)."""
    value = int(value) & 0xFFFFFFFF
    return ((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF)


def rgb_to_argb(color: Color) -> int:
    """(r, g, b) -> QuPath's signed 32-bit ARGB integer (opaque)."""
    r, g, b = (int(c) & 0xFF for c in color)
    value = (0xFF << 24) | (r << 16) | (g << 8) | b
    return value - (1 << 32)
