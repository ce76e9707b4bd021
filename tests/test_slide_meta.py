"""Calibration: the mpp chain, its parsers, and what generated files carry."""

from __future__ import annotations

import warnings

import pytest

from napari_care.core.slide import meta as slide_meta
from napari_care.core.slide.handle import open_slide

UM_PER_INCH = 25400.0


def opened_calibration(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(path) as slide:
            calibration = (slide.mpp, slide.mpp_source, slide.vendor)
    missing_mpp_warned = any("no pixel size" in str(w.message) for w in caught)
    return calibration, missing_mpp_warned


@pytest.mark.parametrize(
    ("resolution", "expected"),
    [
        ((1e4 / 0.25, "centimeter"), (0.25, 0.25)),
        ((UM_PER_INCH / 0.5, "inch"), (0.5, 0.5)),
        ((40000, "none"), None),  # pixels per unknown unit: no calibration
        ((72, "inch"), None),  # a software default, 352.8 um/px, not a scan
        ((300, "inch"), None),
        (None, None),
    ],
)
def test_tiff_resolution_tags(make_pyramid, resolution, expected):
    path = make_pyramid(resolution=resolution, level_count=1).path
    (mpp, source, vendor), warned = opened_calibration(path)
    assert vendor == "generic-tiff"
    if expected is None:
        assert mpp is None and source is None and warned
    else:
        assert mpp == pytest.approx(expected) and source == "tiff-resolution" and not warned


@pytest.mark.parametrize(
    ("physical_size", "expected"),
    [
        ((0.25, 0.26, "µm"), (0.25, 0.26)),
        ((250.0, 260.0, "nm"), (0.25, 0.26)),
        ((0.00025, 0.00025, "mm"), (0.25, 0.25)),
        (None, None),
    ],
)
def test_ome_physical_size_with_units(make_pyramid, physical_size, expected):
    path = make_pyramid("s.ome.tif", layout="ome", ome_physical_size=physical_size, level_count=2).path
    (mpp, source, vendor), warned = opened_calibration(path)
    assert vendor == "ome"
    if expected is None:
        assert mpp is None and warned
    else:
        assert mpp == pytest.approx(expected) and source == "ome" and not warned


def test_ome_wins_over_resolution_tags(make_pyramid):
    path = make_pyramid(
        "s.ome.tif", layout="ome", ome_physical_size=(0.5, 0.5, "µm"), resolution=(1e4 / 0.25, "centimeter")
    ).path
    (mpp, source, _), _ = opened_calibration(path)
    assert mpp == (0.5, 0.5) and source == "ome"


OME_XML = """<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
  <Instrument ID="Instrument:0"><Objective ID="Objective:0" NominalMagnification="40.0"/></Instrument>
  <Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="10" SizeY="10"
    SizeC="3" SizeZ="1" SizeT="1" PhysicalSizeX="0.2277" PhysicalSizeY="0.2278" {unit}/></Image>
</OME>"""


def test_ome_calibration_parser():
    assert slide_meta.ome_calibration(OME_XML.format(unit="")) == ((0.2277, 0.2278), 40.0)
    mpp, _ = slide_meta.ome_calibration(OME_XML.format(unit='PhysicalSizeXUnit="nm" PhysicalSizeYUnit="nm"'))
    assert mpp == pytest.approx((0.0002277, 0.0002278))  # parsed faithfully; plausible() rejects it later
    assert slide_meta.ome_calibration(OME_XML.format(unit='PhysicalSizeXUnit="furlong"')) == (None, 40.0)
    assert slide_meta.ome_calibration("<not xml") == (None, None)


def test_aperio_fields_and_mpp():
    description = (
        "Aperio Image Library v11.2.1\r\n46000x32914 (256x256) JPEG/RGB Q=30"
        "|AppMag = 20|MPP = 0.4990|Filename = CMU-1"
    )
    fields = slide_meta.aperio_fields(description)
    assert fields["AppMag"] == "20" and fields["Filename"] == "CMU-1"
    assert slide_meta.aperio_mpp(fields) == (0.499, 0.499)
    assert slide_meta.aperio_mpp({"AppMag": "20"}) is None
    assert slide_meta.aperio_mpp({"MPP": "n/a"}) is None


def test_openslide_mpp():
    assert slide_meta.openslide_mpp({"openslide.mpp-x": "0.2525", "openslide.mpp-y": "0.2526"}) == (
        0.2525,
        0.2526,
    )
    assert slide_meta.openslide_mpp({"openslide.mpp-x": "0.25"}) is None
    assert slide_meta.openslide_mpp({}) is None


def test_chain_order_and_plausibility():
    chain = [
        ("user", None),
        ("openslide", (352.8, 352.8)),
        ("aperio", (0.5, 0.5)),
        ("tiff-resolution", (0.25, 0.25)),
    ]
    assert slide_meta.first_calibration(chain) == ((0.5, 0.5), "aperio")
    assert slide_meta.first_calibration([("user", (0.3, 0.3)), *chain]) == ((0.3, 0.3), "user")
    assert slide_meta.first_calibration([("ome", (0.001, 0.001))]) == (None, None)
    assert slide_meta.plausible((0.25, 60.0)) is None


def test_objective_power_parsing():
    assert slide_meta.objective_from_fields("20") == 20.0
    assert slide_meta.objective_from_fields("40x") == 40.0
    assert slide_meta.objective_from_fields(None, "bad", "10X") == 10.0
    assert slide_meta.objective_from_fields(None) is None


def test_user_mpp_normalised_and_checked():
    assert slide_meta.normalise_user_mpp(None) is None
    assert slide_meta.normalise_user_mpp(0.5) == (0.5, 0.5)
    assert slide_meta.normalise_user_mpp((0.25, 0.26)) == (0.25, 0.26)
    for bad in (0, -1, float("nan"), float("inf"), 0.001, 100, (0.5,), (1, 2, 3), "x"):
        with pytest.raises(ValueError, match="mpp"):
            slide_meta.normalise_user_mpp(bad)
