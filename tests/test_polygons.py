"""Label grid -> exact region polygons."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from shapely.geometry import MultiPolygon, Polygon
from skimage.measure import label as label_components

from napari_care.core.qupath.polygons import label_grid_polygons


def cells_union(labels: np.ndarray, region: int, origin=(0.0, 0.0), size=1.0):
    rows, cols = np.nonzero(labels == region)
    x, y = origin[0] + cols * size, origin[1] + rows * size
    return shapely.union_all(shapely.box(x, y, x + size, y + size))


def test_l_shape_is_exact_in_level0_pixels():
    labels = np.array([[5, -1], [5, 5]])
    polygons = label_grid_polygons(labels, origin_xy=(100, 200), cell_size_px=448.0)
    assert list(polygons) == [5]
    polygon = polygons[5]
    assert isinstance(polygon, Polygon)
    assert polygon.area == 3 * 448.0**2
    # Six corners and the closing point: no collinear vertices left.
    assert len(polygon.exterior.coords) == 7
    assert polygon.bounds == (100.0, 200.0, 996.0, 1096.0)
    assert polygon.exterior.coords[0] == polygon.exterior.coords[-1]


def test_rectangle_has_four_corners_and_ccw_exterior():
    polygon = label_grid_polygons(np.zeros((3, 5), dtype=int))[0]
    assert len(polygon.exterior.coords) == 5
    assert polygon.exterior.is_ccw
    assert polygon.equals(shapely.box(0, 0, 5, 3))


def test_hole_is_kept_and_clockwise():
    labels = np.zeros((3, 3), dtype=int)
    labels[1, 1] = 1
    polygons = label_grid_polygons(labels)
    ring = polygons[0]
    assert isinstance(ring, Polygon) and len(ring.interiors) == 1
    assert ring.area == 8 and not ring.interiors[0].is_ccw
    assert polygons[1].equals(shapely.box(1, 1, 2, 2))


def test_diagonal_cells_are_two_parts_touching_at_a_point():
    labels = np.array([[0, -1], [-1, 0]])
    polygon = label_grid_polygons(labels)[0]
    assert isinstance(polygon, MultiPolygon) and len(polygon.geoms) == 2
    assert polygon.is_valid and polygon.area == 2


def test_pinched_ring_gives_a_valid_polygon_with_a_touching_hole():
    # A ring of 7 cells whose top-left corner is missing: the hole touches the outside at a point.
    labels = np.zeros((3, 3), dtype=int)
    labels[1, 1] = labels[0, 0] = -1
    polygon = label_grid_polygons(labels)[0]
    assert isinstance(polygon, Polygon), polygon.wkt
    assert polygon.is_valid and polygon.area == 7 and len(polygon.interiors) == 1


def test_negative_labels_are_no_region_and_empty_grid_gives_nothing():
    assert label_grid_polygons(np.full((4, 4), -1)) == {}
    assert set(label_grid_polygons(np.array([[-3, 2], [-1, 7]]))) == {2, 7}


@pytest.mark.parametrize(
    ("labels", "kwargs", "message"),
    [
        (np.zeros(4, dtype=int), {}, "2-D integer"),
        (np.zeros((2, 2)), {}, "2-D integer"),
        (np.zeros((2, 2), dtype=int), {"cell_size_px": 0}, "cell_size_px"),
    ],
)
def test_bad_input_is_named(labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        label_grid_polygons(labels, **kwargs)


@settings(max_examples=150, deadline=None)
@given(
    labels=arrays(np.int64, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(-1, 3)),
    size=st.sampled_from([1.0, 2.5, 448.0, 224.3]),
    origin=st.tuples(st.floats(-1000, 1000), st.floats(-1000, 1000)),
)
def test_random_grids_trace_exactly(labels, size, origin):
    polygons = label_grid_polygons(labels, origin_xy=origin, cell_size_px=size)
    assert set(polygons) == set(np.unique(labels[labels >= 0]).tolist())
    for region, polygon in polygons.items():
        assert polygon.is_valid, shapely.is_valid_reason(polygon)
        assert polygon.area == pytest.approx((labels == region).sum() * size**2, rel=1e-9)
        assert polygon.symmetric_difference(cells_union(labels, region, origin, size)).area <= 1e-6 * size**2
        n_parts = label_components(labels == region, connectivity=1).max()
        assert len(shapely.get_parts(polygon)) == n_parts
        for part in shapely.get_parts(polygon):
            assert part.exterior.is_ccw and not any(hole.is_ccw for hole in part.interiors)


def test_many_regions_on_a_large_grid():
    rng = np.random.default_rng(0)
    blocks = rng.integers(-1, 2500, size=(50, 50))
    labels = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)  # 400 x 400 cells, k = 8 blocks
    polygons = label_grid_polygons(labels, cell_size_px=448.0)
    geometries = np.array(list(polygons.values()), dtype=object)
    assert shapely.is_valid(geometries).all()
    assert shapely.area(geometries).sum() == (labels >= 0).sum() * 448.0**2
