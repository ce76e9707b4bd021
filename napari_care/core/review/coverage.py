"""An annotation class on the patch lattice: its exact area in every cell, without its union.

The review needs, per annotation class and grid cell, how much of the cell the class covers
(for the exact overlap with the regions, which are unions of cells), whether the cell's centre
lies inside (the grid metrics) and whether the class's boundary runs through the cell (the
grid bound). Tracing the union of 100,000 polygons and intersecting it with every region
costs minutes; here the work follows the polygons instead:

1. :func:`disjoint_parts`: the class's polygons (made valid) as polygons whose interiors do
   not overlap: an STRtree finds the pairs whose interiors meet and only those groups are
   unioned. Areas then add up, part by part and cell by cell.
2. :func:`cover_lattice`: every part is cut along the grid lines by bisection, all parts at
   once, one vectorised shapely call per level: a part inside one cell is never cut, a window
   the part covers entirely is emitted whole (a large tumour outline costs its boundary cells,
   not its area), and the cells it partly covers get the exact area of the part in them.

A cell is *full* when the class covers it (one part covers it, or several parts' areas in it
add up to the cell's, to a relative 1e-9), *crossed* when the class covers a part of it
(``0 < area < cell``: exactly the cells whose interior the class's boundary runs through), and
*inside* when its centre lies
in a part or on a part's edge (tested against the whole part, so a centre on a cut is never
misjudged). Lattice cells are ``(row, col)`` of the grid's lattice extended beyond the grid
(indices may be negative or past its end); cell ``(row, col)`` covers
``[x0 + col * s, x0 + (col + 1) * s] x [y0 + row * s, y0 + (row + 1) * s]``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry.base import BaseGeometry

from napari_care.core.progress import Progress

MAX_LATTICE_CELLS = 50_000_000  # an annotation this many cells large means mismatched units
_POLYGON = int(shapely.GeometryType.POLYGON)
_FULL_TOLERANCE = 1e-9  # relative: areas that add up to a cell within this cover it
_PREPARE_VERTICES = 64  # parts with more vertices are prepared for the centre tests


def polygons_of(geometries: Sequence[BaseGeometry]) -> np.ndarray:
    """The non-empty polygons of ``geometries`` (made valid; lines and points dropped)."""
    geometries = np.asarray(list(geometries), dtype=object).reshape(-1)
    if not len(geometries):
        return np.zeros(0, dtype=object)
    invalid = ~shapely.is_valid(geometries)
    if invalid.any():
        geometries = geometries.copy()
        geometries[invalid] = shapely.make_valid(geometries[invalid])
    parts = shapely.get_parts(shapely.get_parts(geometries))  # twice: a collection may hold MultiPolygons
    return parts[(shapely.get_type_id(parts) == _POLYGON) & ~shapely.is_empty(parts)]


def disjoint_parts(polygons: np.ndarray) -> np.ndarray:
    """Polygons with the same union as ``polygons`` and pairwise disjoint interiors.

    Pairs whose interiors meet are found with an STRtree (bounding boxes) and prepared
    relates; a polygon covered by another is dropped, and each group of the remaining
    overlapping ones is replaced by the polygons of its union. The others are kept as they are.
    """
    polygons = np.asarray(polygons, dtype=object)
    if len(polygons) < 2:
        return polygons
    left, right = shapely.STRtree(polygons).query(polygons)  # bounding boxes meet
    keep = left < right
    left, right = left[keep], right[keep]
    # The polygon with more vertices first, prepared: a large outline against the cells in it.
    vertices = shapely.get_num_coordinates(polygons)
    swap = vertices[left] < vertices[right]
    left, right = np.where(swap, right, left), np.where(swap, left, right)
    shapely.prepare(polygons[np.unique(left)])
    overlap = shapely.relate_pattern(polygons[left], polygons[right], "T********")  # interiors meet
    left, right = left[overlap], right[overlap]
    if not len(left):
        return polygons
    covered = np.zeros(len(polygons), dtype=bool)
    covered[right[shapely.covers(polygons[left], polygons[right])]] = True  # adds nothing to the union
    both = ~covered[left] & ~covered[right]
    left, right = left[both], right[both]
    grouped = np.unique(np.concatenate([left, right]))  # each overlaps another: unioned with its group
    alone = ~covered
    alone[grouped] = False
    unions = []
    if len(grouped):
        n = len(polygons)
        graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n))
        _, component = connected_components(graph, directed=False)
        grouped = grouped[np.argsort(component[grouped], kind="stable")]
        starts = np.flatnonzero(np.diff(component[grouped])) + 1
        unions = [shapely.union_all(group) for group in np.split(polygons[grouped], starts)]
    return np.concatenate([polygons[alone], polygons_of(unions)])


@dataclass(frozen=True)
class LatticeCover:
    """The cells of the lattice an annotation class touches (see the module docstring).

    Attributes
    ----------
    rows, cols
        ``[M]`` lattice indices of every cell the class covers a positive area of.
    area_px2
        ``[M]`` the class's exact area in each cell, level-0 pixels squared.
    full
        ``[M]`` the class covers the whole cell.
    inside
        ``[M]`` the cell's centre lies inside the class or on its edge.
    """

    rows: np.ndarray
    cols: np.ndarray
    area_px2: np.ndarray
    full: np.ndarray
    inside: np.ndarray

    @property
    def crossed(self) -> np.ndarray:
        """``[M]`` the class's boundary runs through the cell's interior."""
        return ~self.full & (self.area_px2 > 0)


def cover_lattice(
    parts: np.ndarray, origin_xy: Sequence[float], cell_size_px: float
) -> Generator[Progress, None, LatticeCover]:
    """The lattice cells covered by interior-disjoint ``parts`` (from :func:`disjoint_parts`).

    Yields ``Progress("cells", done, total)`` per bisection level, ``done`` counting the parts
    finished; returns the :class:`LatticeCover`.

    Raises
    ------
    ValueError
        The parts span more than ``MAX_LATTICE_CELLS`` cells (coordinates not in level-0 pixels?).
    """
    parts = np.asarray(parts, dtype=object)
    size, (x0, y0) = float(cell_size_px), (float(origin_xy[0]), float(origin_xy[1]))
    cell_area = size * size
    empty = LatticeCover(*(np.zeros(0, np.int64),) * 2, np.zeros(0), *(np.zeros(0, bool),) * 2)
    if not len(parts):
        return empty
    bounds = shapely.bounds(parts)
    c0 = np.floor((bounds[:, 0] - x0) / size).astype(np.int64)
    r0 = np.floor((bounds[:, 1] - y0) / size).astype(np.int64)
    c1 = np.maximum(np.ceil((bounds[:, 2] - x0) / size).astype(np.int64), c0 + 1)
    r1 = np.maximum(np.ceil((bounds[:, 3] - y0) / size).astype(np.int64), r0 + 1)
    span = (int(c1.max() - c0.min()), int(r1.max() - r0.min()))
    if span[0] * span[1] > MAX_LATTICE_CELLS:
        raise ValueError(
            f"annotation spans {span[0] * span[1]} grid cells: are its coordinates in "
            f"level-0 pixels and cell_size_px = {size} right?"
        )
    big = shapely.get_num_coordinates(parts) > _PREPARE_VERTICES
    shapely.prepare(parts[big])  # many centre tests each; small parts are cheaper unprepared
    found: list[tuple[np.ndarray, ...]] = []  # (part, rows, cols, area, full) per batch
    node = (np.arange(len(parts)), parts, c0, c1, r0, r1)
    total = len(parts)
    yield Progress("cells", 0, total, f"{total:,} parts on the lattice")
    while len(node[0]):
        part, geometry, c0, c1, r0, r1 = node
        area = shapely.area(geometry)
        n_cells = (c1 - c0) * (r1 - r0)
        # Covered exactly (not by area, which would take a sliver of a gap for full).
        windows = shapely.box(x0 + c0 * size, y0 + r0 * size, x0 + c1 * size, y0 + r1 * size)
        full = shapely.covers(parts[part], windows)
        leaf = full | (n_cells == 1)
        # A leaf is one cell (the part's area in it) or a window the part covers (every cell whole).
        cell_value = np.where(full[leaf], cell_area, area[leaf])
        windows = (c0[leaf], c1[leaf], r0[leaf], r1[leaf])
        found.append(_window_cells(part[leaf], *windows, cell_value, full[leaf]))
        node = _bisect(part[~leaf], geometry[~leaf], c0[~leaf], c1[~leaf], r0[~leaf], r1[~leaf], x0, y0, size)
        done = total - len(np.unique(node[0]))
        yield Progress("cells", done, total, f"{done:,} of {total:,} parts on the lattice")
    part, rows, cols, area, full = (np.concatenate(column) for column in zip(*found, strict=True))
    # The centre test, against the whole part, where the part covers the cell only in part.
    inside = full.copy()
    test = np.flatnonzero(~full)
    inside[test] = shapely.intersects_xy(
        parts[part[test]], x0 + (cols[test] + 0.5) * size, y0 + (rows[test] + 0.5) * size
    )
    return _per_cell(rows, cols, area, full, inside, cell_area)


def _bisect(part, geometry, c0, c1, r0, r1, x0: float, y0: float, size: float) -> tuple[np.ndarray, ...]:
    """Cut each window in two across its longer side; the polygons of each half, with their windows."""
    across_cols = (c1 - c0) >= (r1 - r0)
    mid_c, mid_r = (c0 + c1) // 2, (r0 + r1) // 2
    # First halves, then second halves: [c0, c_hi) x [r0, r_hi) and [c_lo, c1) x [r_lo, r1).
    c_hi, r_hi = np.where(across_cols, mid_c, c1), np.where(across_cols, r1, mid_r)
    c_lo, r_lo = np.where(across_cols, mid_c, c0), np.where(across_cols, r0, mid_r)
    windows = (np.r_[c0, c_lo], np.r_[c_hi, c1], np.r_[r0, r_lo], np.r_[r_hi, r1])
    left, right, top, bottom = windows
    boxes = shapely.box(x0 + left * size, y0 + top * size, x0 + right * size, y0 + bottom * size)
    halves = shapely.intersection(np.concatenate([geometry, geometry]), boxes)
    pieces, of_half = shapely.get_parts(halves, return_index=True)
    keep = (shapely.get_type_id(pieces) == _POLYGON) & (shapely.area(pieces) > 0)
    pieces, of_half = pieces[keep], of_half[keep]
    return (np.concatenate([part, part])[of_half], pieces, *(w[of_half] for w in windows))


def _window_cells(part, c0, c1, r0, r1, cell_value, full) -> tuple[np.ndarray, ...]:
    """Every cell of every window: (part, rows, cols, area in the cell, full)."""
    width, height = c1 - c0, r1 - r0
    count = width * height
    owner = np.repeat(np.arange(len(part)), count)
    offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    rows = r0[owner] + offset // width[owner]
    cols = c0[owner] + offset % width[owner]
    return part[owner], rows, cols, cell_value[owner], full[owner]


def _per_cell(rows, cols, area, full, inside, cell_area: float) -> LatticeCover:
    """Sum the parts' entries per cell."""
    row0, col0 = int(rows.min()), int(cols.min())
    width = int(cols.max()) - col0 + 1
    key = (rows - row0) * width + (cols - col0)
    cells, first, index, n_parts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    area_sum = np.bincount(index, weights=area, minlength=len(cells))
    any_full = np.bincount(index, weights=full, minlength=len(cells)) > 0
    any_inside = np.bincount(index, weights=inside, minlength=len(cells)) > 0
    # Parts that share edges may cover a cell together: their areas add up to it (to rounding).
    covered = any_full | ((n_parts > 1) & (area_sum >= cell_area * (1 - _FULL_TOLERANCE)))
    area_sum = np.where(covered, cell_area, np.minimum(area_sum, cell_area))
    return LatticeCover(rows[first], cols[first], area_sum, covered, any_inside | covered)


@dataclass(frozen=True)
class GridCounts:
    """An annotation class counted on the region grid (what the grid metrics and the bound need).

    Attributes
    ----------
    cells
        Lattice cells whose centre is inside (on the grid or not): ``|A|`` in cells.
    crossed
        Lattice cells the boundary runs through: ``B``.
    inside_per_label, crossed_per_label
        ``[n_labels]`` the same, on the grid, per region label.
    area_per_label
        ``[n_labels]`` the class's exact area in each region, level-0 pixels squared (None
        where the caller computes it from polygons).
    """

    cells: int
    crossed: int
    inside_per_label: np.ndarray
    crossed_per_label: np.ndarray
    area_per_label: np.ndarray | None = None


def count_on_grid(cover: LatticeCover, labels: np.ndarray, n_labels: int) -> GridCounts:
    """Per-label sums of ``cover`` over the grid ``labels`` (``-1`` = no region)."""
    labels = np.asarray(labels)
    rows, cols = cover.rows, cover.cols
    on_grid = (rows >= 0) & (rows < labels.shape[0]) & (cols >= 0) & (cols < labels.shape[1])
    label = np.full(len(cover.rows), -1, dtype=np.int64)
    label[on_grid] = labels[rows[on_grid], cols[on_grid]]
    region = label >= 0
    crossed = cover.crossed

    def per_label(weights: np.ndarray) -> np.ndarray:
        return np.bincount(label[region], weights=weights[region].astype(np.float64), minlength=n_labels)

    return GridCounts(
        int(cover.inside.sum()),
        int(crossed.sum()),
        per_label(cover.inside).astype(np.int64),
        per_label(crossed).astype(np.int64),
        per_label(cover.area_px2),
    )


def inside_points(parts: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the shapely ``points`` that lie in one of ``parts`` or on its edge."""
    inside = np.zeros(len(points), dtype=bool)
    if len(parts) and len(points):
        point, part = shapely.STRtree(parts).query(points)  # bounding boxes first, then exact:
        big = np.unique(part[shapely.get_num_coordinates(parts[part]) > _PREPARE_VERTICES])
        shapely.prepare(parts[big])  # point-in-polygon in log time on large outlines
        hit = shapely.intersects(parts[part], points[point])
        inside[point[hit]] = True
    return inside
