"""Slide calibration: micrometres per pixel and objective power, from whatever the file says.

The mpp chain, first hit wins: the user's ``mpp=``, OpenSlide's ``openslide.mpp-x/y``, the
Aperio description's ``MPP``, OME ``PhysicalSizeX/Y`` (with units), TIFF resolution tags
with their unit. A value outside what a microscope gives is ignored (72 or 300 dpi are
software defaults, not calibrations); with no calibration the slide has ``mpp=None``.
"""

from __future__ import annotations

import numbers
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

PLAUSIBLE_MPP = (0.01, 50.0)  # micrometres per pixel a slide scanner can produce
_UNIT_TO_UM = {"pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
_RESOLUTION_UNIT_UM = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: inch, centimetre


@dataclass(frozen=True)
class Calibration:
    """Pixel size and magnification of level 0 and where they were read."""

    mpp: tuple[float, float] | None
    mpp_source: str | None
    objective_power: float | None


def plausible(mpp: tuple[float, float] | None) -> tuple[float, float] | None:
    """``mpp`` when both values are finite and in the range a scanner produces, else None."""
    if mpp is None:
        return None
    low, high = PLAUSIBLE_MPP
    return mpp if all(low <= v <= high for v in mpp) else None


def _float(text: object) -> float | None:
    try:
        value = float(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def aperio_fields(description: str) -> dict[str, str]:
    """``key = value`` fields of an Aperio ImageDescription."""
    fields: dict[str, str] = {}
    for part in description.split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def openslide_mpp(properties: dict[str, str]) -> tuple[float, float] | None:
    """(x, y) from ``openslide.mpp-x/y``."""
    x, y = _float(properties.get("openslide.mpp-x")), _float(properties.get("openslide.mpp-y"))
    return (x, y) if x and y else None


def aperio_mpp(fields: dict[str, str]) -> tuple[float, float] | None:
    """(x, y) from the Aperio ``MPP`` field (square pixels)."""
    value = _float(fields.get("MPP"))
    return (value, value) if value else None


def ome_calibration(ome_xml: str) -> tuple[tuple[float, float] | None, float | None]:
    """(mpp, nominal magnification) of the first OME image."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None, None
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    mpp = None
    if pixels is not None:
        sizes = []
        for axis in ("X", "Y"):
            value = _float(pixels.get(f"PhysicalSize{axis}"))
            unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
            factor = _UNIT_TO_UM.get(unit)
            sizes.append(value * factor if value and factor else None)
        if all(sizes):
            mpp = (sizes[0], sizes[1])
    objective = next((el for el in root.iter() if el.tag.endswith("}Objective")), None)
    power = _float(objective.get("NominalMagnification")) if objective is not None else None
    return mpp, power


def resolution_mpp(tags) -> tuple[float, float] | None:
    """(x, y) from TIFF XResolution/YResolution (pixels per unit) and ResolutionUnit."""
    unit = tags.get("ResolutionUnit")
    um_per_unit = _RESOLUTION_UNIT_UM.get(int(unit.value)) if unit is not None else None
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if um_per_unit is None or xres is None or yres is None:
        return None
    values = []
    for tag in (xres, yres):
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        if not num or not den:
            return None
        values.append(um_per_unit * den / num)
    return (values[0], values[1])


def first_calibration(
    candidates: list[tuple[str, tuple[float, float] | None]],
) -> tuple[tuple[float, float] | None, str | None]:
    """The first plausible (mpp, source) in chain order, or (None, None)."""
    for source, mpp in candidates:
        mpp = plausible(mpp)
        if mpp is not None:
            return mpp, source
    return None, None


def normalise_user_mpp(mpp: float | tuple[float, float] | None) -> tuple[float, float] | None:
    """The ``mpp=`` argument as (x, y), checked."""
    if mpp is None:
        return None
    try:
        pair = (float(mpp), float(mpp)) if isinstance(mpp, numbers.Real) else (float(mpp[0]), float(mpp[1]))
        if not isinstance(mpp, numbers.Real) and len(mpp) != 2:
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise ValueError(
            f"mpp must be a number or an (x, y) pair of micrometres per pixel, got {mpp!r}"
        ) from None
    low, high = PLAUSIBLE_MPP
    # checked here because the chain would silently skip an implausible value and use the file's
    if not all(low <= v <= high for v in pair):
        raise ValueError(f"mpp must be between {low} and {high} micrometres per pixel, got {mpp!r}")
    return pair


def objective_from_fields(*values: object) -> float | None:
    """The first parseable objective power among ``values``."""
    for value in values:
        power = _float(re.sub(r"[xX]$", "", str(value))) if value is not None else None
        if power:
            return power
    return None
