"""The one level-0 <-> world conversion (no napari needed): placements and their inverses."""

from __future__ import annotations

import numpy as np
import pytest

from napari_care.core.level0_frame import Level0Frame

FRAME = Level0Frame(scale=(0.26, 0.25), bounds_offset=(30.0, 40.0))


def test_level0_pixel_centres_land_on_the_slide_images_pixel_centres():
    # the slide image has scale = mpp and no translate: pixel i's centre is at world i * mpp
    centres = np.array([[0.5, 0.5], [10.5, 3.5]])
    assert np.allclose(FRAME.level0_to_world(centres), [[0.0, 0.0], [3 * 0.26, 10 * 0.25]])
    slide = FRAME.raster_placement((0.0, 0.0), 1.0)
    assert slide == {"scale": (0.26, 0.25), "translate": (0.0, 0.0)}


def test_every_placement_round_trips_to_level0():
    xy = np.array([[0.0, 0.0], [12.25, 7.5], [1000.0, 2000.0]])
    assert np.allclose(FRAME.world_to_level0(FRAME.level0_to_world(xy)), xy)
    place = FRAME.placement()
    data = FRAME.level0_to_data(xy)
    assert np.array_equal(data, xy[:, [1, 0]])
    assert np.allclose(data * place["scale"] + place["translate"], FRAME.level0_to_world(xy))
    assert np.allclose(FRAME.data_to_level0(data, place["scale"], place["translate"]), xy)


@pytest.mark.parametrize(
    ("origin", "pixel"), [((0.0, 0.0), 1.0), ((1000.0, 0.0), 20.0), ((12.5, 7.25), 0.37)]
)
def test_a_raster_placement_is_undone_by_raster_origin(origin, pixel):
    place = FRAME.raster_placement(origin, pixel)
    (x0, y0), size = FRAME.raster_origin(place["scale"], place["translate"])
    assert (x0, y0) == pytest.approx(origin) and size == pytest.approx((pixel, pixel))
    # the centre of raster pixel (row 2, col 3) is level-0 (x0 + 3.5 p, y0 + 2.5 p)
    centre = FRAME.data_to_level0(np.array([[2.0, 3.0]]), place["scale"], place["translate"])
    assert centre[0] == pytest.approx((origin[0] + 3.5 * pixel, origin[1] + 2.5 * pixel))


def test_frames_from_slides_and_layer_metadata():
    assert Level0Frame.from_mpp((0.25, 0.26), (3, 4)) == Level0Frame((0.26, 0.25), (3.0, 4.0))
    assert Level0Frame.from_mpp(None) == Level0Frame()
    assert Level0Frame.from_dict(FRAME.to_dict()) == FRAME
    assert FRAME.mpp == 0.25 and Level0Frame().mpp is None
    metadata = {"napari_care": {"mpp": [0.25, 0.26], "bounds_offset": [3, 4]}}
    assert Level0Frame.from_slide_metadata(metadata, use_bounds=False) == Level0Frame((0.26, 0.25))
