"""Label grid -> exact region polygons.

A region grid holds one label per patch-grid cell: ``labels[row, col]`` with ``row`` = grid
y and ``col`` = grid x, region ids ``>= 0`` and ``-1`` for "no region" (glass, background).
Cell ``(row, col)`` covers the level-0 square
``[x0 + col * s, x0 + (col + 1) * s] x [y0 + row * s, y0 + (row + 1) * s]`` where
``(x0, y0)`` is the grid origin and ``s`` the cell (patch) side in level-0 pixels.

Each region becomes the exact union of its cells: a Polygon, or a MultiPolygon when it has
several 4-connected parts, holes kept, valid, rings closed, no collinear vertices. The
exterior rings run counter-clockwise in numeric (x, y) order and the holes clockwise, as RFC
7946 asks (on screen, where y points down, that looks clockwise; QuPath does not care).

How: the boundary is traced over grid edges in numpy instead of unioning cell boxes. Every
cell edge between two different 4-connected components becomes a directed edge with its
component on the left; each edge's successor is the edge of the same component leaving its
end vertex, and the rings are the cycles of that successor permutation, ordered by pointer
doubling. Where one component touches itself diagonally (a "pinch") the trace turns right,
which keeps the component in one piece and splits the background: the result is a hole
touching its shell at one point, which is valid, instead of a self-touching shell, which is
not. Parts of different components only meet at points, which is valid in a MultiPolygon.
On a 800 x 800 grid with 10,000 regions this is several times faster than
``shapely.coverage_union_all`` of cell boxes (see ``benchmarks/bench_geojson.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from skimage.measure import label as label_components

NO_REGION = -1

# Edge directions in counter-clockwise order: a left turn is +1, a right turn is +3 (mod 4).
_EAST, _NORTH, _WEST, _SOUTH = 0, 1, 2, 3
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)


def label_grid_polygons(
    labels: np.ndarray,
    *,
    origin_xy: Sequence[float] = (0.0, 0.0),
    cell_size_px: float = 1.0,
) -> dict[int, Polygon | MultiPolygon]:
    """Trace every region of a label grid into an exact polygon in level-0 pixels.

    Parameters
    ----------
    labels
        ``[rows, cols]`` integer region grid; ids ``>= 0`` are regions, ``-1`` (any negative
        value) is "no region".
    origin_xy
        Level-0 (x, y) of the grid's top-left corner (the corner of cell ``(0, 0)``).
    cell_size_px
        Side of one grid cell (one patch) in level-0 pixels.

    Returns
    -------
    dict
        Region id -> Polygon (one 4-connected part) or MultiPolygon (several parts), for
        every region present in the grid, in increasing id order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 2-D integer array; got shape {labels.shape}, dtype {labels.dtype}"
        )
    if not cell_size_px > 0:
        raise ValueError(f"cell_size_px must be > 0; got {cell_size_px}")
    regions = np.where(labels >= 0, labels.astype(np.int64), NO_REGION)
    if not (regions >= 0).any():
        return {}
    padded = np.pad(regions, 1, constant_values=NO_REGION)
    # 4-connected components of equal labels; 0 = no region, components 1..C.
    components = label_components(padded, background=NO_REGION, connectivity=1).astype(np.int64)
    region_of_component = np.full(components.max() + 1, NO_REGION, dtype=np.int64)
    region_of_component[components.ravel()] = padded.ravel()

    start_xy, direction, owner = _boundary_edges(components)
    successor = _successors(start_xy, direction, owner, labels.shape[1] + 1)
    ring_of_edge, order = _order_cycles(successor)

    # Keep the vertices where the boundary turns: drop collinear points.
    start_xy, direction, ring_of_edge = start_xy[order], direction[order], ring_of_edge[order]
    ring_start = np.flatnonzero(np.r_[True, ring_of_edge[1:] != ring_of_edge[:-1]])
    previous = np.arange(len(order)) - 1
    ring_end = np.r_[ring_start[1:], len(order)] - 1
    previous[ring_start] = ring_end
    corner = direction != direction[previous]
    xy = start_xy[corner].astype(np.float64) * float(cell_size_px) + np.asarray(origin_xy, dtype=np.float64)
    ring_index = np.cumsum(np.r_[True, ring_of_edge[corner][1:] != ring_of_edge[corner][:-1]]) - 1
    rings = shapely.linearrings(xy, indices=ring_index)

    # Each ring belongs to the component on its left; shells are counter-clockwise.
    ring_owner = owner[order][ring_start]
    is_hole = ~shapely.is_ccw(rings)
    by_component = np.lexsort((is_hole, ring_owner))
    owners_sorted = ring_owner[by_component]
    component_ids, polygon_index = np.unique(owners_sorted, return_inverse=True)
    polygons = shapely.polygons(rings[by_component], indices=polygon_index)
    return _group_by_region(polygons, region_of_component[component_ids])


def _boundary_edges(components: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed cell edges between different components, each with its component on the left.

    ``components`` is padded by one cell of 0 on every side; vertex ``(x, y)`` is the corner
    at column ``x`` and row ``y`` of the unpadded grid. Returns start vertices ``[E, 2]``,
    directions ``[E]`` and owning component ids ``[E]``.
    """
    rows, cols = components.shape[0] - 2, components.shape[1] - 2
    starts, directions, owners = [], [], []

    def add(mask: np.ndarray, owner_ids: np.ndarray, ys: np.ndarray, xs: np.ndarray, direction: int) -> None:
        keep = mask & (owner_ids > 0)
        y, x = np.nonzero(keep)
        starts.append(np.stack([x + xs, y + ys], axis=1))
        directions.append(np.full(len(y), direction, dtype=np.int64))
        owners.append(owner_ids[keep])

    # Horizontal edge y = r, x in [c, c + 1], between row r - 1 ("below" in numeric y) and row r.
    below, above = components[0 : rows + 1, 1 : cols + 1], components[1 : rows + 2, 1 : cols + 1]
    differ = below != above
    add(differ, above, 0, 0, _EAST)  # row r walks its y = r edge eastwards
    add(differ, below, 0, 1, _WEST)  # row r - 1 walks the same edge westwards from x = c + 1
    # Vertical edge x = c, y in [r, r + 1], between column c - 1 and column c.
    left, right = components[1 : rows + 1, 0 : cols + 1], components[1 : rows + 1, 1 : cols + 2]
    differ = left != right
    add(differ, right, 1, 0, _SOUTH)  # column c walks its x = c edge southwards from y = r + 1
    add(differ, left, 0, 0, _NORTH)  # column c - 1 walks the same edge northwards from y = r
    return np.concatenate(starts), np.concatenate(directions), np.concatenate(owners)


def _successors(start_xy: np.ndarray, direction: np.ndarray, owner: np.ndarray, width: int) -> np.ndarray:
    """For each edge, the index of the next edge of its ring (turn right at a pinch)."""
    n_vertices = int(start_xy[:, 1].max() + 2) * width
    end_xy = start_xy + _STEP[direction]
    start_key = owner * n_vertices + start_xy[:, 1] * width + start_xy[:, 0]
    end_key = owner * n_vertices + end_xy[:, 1] * width + end_xy[:, 0]
    by_key = np.argsort(start_key, kind="stable")
    sorted_keys = start_key[by_key]
    first = np.searchsorted(sorted_keys, end_key, side="left")
    count = np.searchsorted(sorted_keys, end_key, side="right") - first
    if (count < 1).any() or (count > 2).any():
        raise RuntimeError("boundary tracing found an open ring; the label grid is inconsistent")
    candidate = by_key[first]
    pinch = np.flatnonzero(count == 2)
    if len(pinch):
        # Two ways out of a pinch vertex (a left and a right turn): take the right turn.
        right_turn = (direction[pinch] + 3) % 4
        other = by_key[first[pinch] + 1]
        candidate[pinch] = np.where(direction[candidate[pinch]] == right_turn, candidate[pinch], other)
    return candidate


def _order_cycles(successor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a permutation into cycles and order each from its smallest index.

    Returns the cycle id of every element (its smallest index) and the order that lists the
    cycles one after another, each in successor order. Uses pointer doubling, so the work is
    ``O(E log L)`` numpy operations for ``E`` elements and longest cycle ``L``.
    """
    n = len(successor)
    head, jump = np.arange(n), successor.copy()
    while True:  # cycle minimum: stops once a doubling step changes nothing
        smaller = np.minimum(head, head[jump])
        if np.array_equal(smaller, head):
            break
        head, jump = smaller, jump[jump]
    # Depth from the head by list ranking over predecessors, the head being the root.
    parent = np.empty(n, dtype=np.int64)
    parent[successor] = np.arange(n)
    is_head = head == np.arange(n)
    parent[is_head] = np.flatnonzero(is_head)
    depth = (~is_head).astype(np.int64)
    while not np.array_equal(parent, parent[parent]):
        depth, parent = depth + depth[parent], parent[parent]
    return head, np.lexsort((depth, head))


def _group_by_region(
    polygons: np.ndarray, region_of_polygon: np.ndarray
) -> dict[int, Polygon | MultiPolygon]:
    """Merge component polygons of the same region into one MultiPolygon."""
    order = np.argsort(region_of_polygon, kind="stable")
    regions, first, counts = np.unique(region_of_polygon[order], return_index=True, return_counts=True)
    result: dict[int, Polygon | MultiPolygon] = {}
    for region, start, count in zip(regions.tolist(), first.tolist(), counts.tolist(), strict=True):
        parts = polygons[order[start : start + count]]
        result[region] = parts[0] if count == 1 else MultiPolygon(list(parts))
    return result
