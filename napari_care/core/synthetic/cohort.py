"""Generated slide cohorts with slide labels, for the mixed-magnification experiment.

Two kinds of cohort, half of the slides positive, the same arguments always giving the
same pixels and labels:

``"architecture"``
    The label lives in an arrangement larger than one 20x tile. Every slide shows one
    tumour texture in bands of one width (100-140 um) in stroma. In positive slides the
    bands close into rings (450-650 um across, around a stromal core); in negative slides
    the same bands run straight as cords, two per ring, each half as long as the ring's
    centre line, so both classes hold the same tumour area and about the same
    tumour/stroma boundary. There is one ring (or two cords) per 1.2 mm2 of slide, the same
    count on every slide of a cohort. A 20x tile (112 um) sees a piece of band in either
    class; a field of several hundred micrometres (a 5x tile, 448 um) shows whether it
    curves round.
``"detail"``
    The label lives in nuclear detail. Both classes have tumour nests in stroma drawn the
    same way; in positive slides three in four nests hold a patch of atypical tumour
    (larger, irregular nuclei with prominent nucleoli), spaced so that the nuclear share of
    the tissue stays that of normal tumour: plain to see at 20x, faint at 5x.

Slides are pyramidal JPEG OME-TIFFs painted by the synthetic-slide machinery
(:class:`~napari_care.core.synthetic.render.SlidePainter`,
:func:`~napari_care.core.synthetic.writer.write_pyramid`). A cohort folder holds
``<slide_id>.tif`` files, ``labels.csv`` (``slide_id,label``, label 0 or 1) and
``cohort.json`` (the recipe and, per slide, its label and tumour shares).
"""

from __future__ import annotations

import csv
import json
import math
import os
import uuid
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_care.core.atomic import atomic_open
from napari_care.core.progress import Progress, run_to_end
from napari_care.core.synthetic.render import SlidePainter
from napari_care.core.synthetic.textures import (
    DEFAULT_PALETTE,
    RENDER_CLASS_NAMES,
    jittered_grid,
    make_swatch,
    periodic_noise,
    stains_to_rgb,
    stamp_blobs,
    voronoi_edges,
)
from napari_care.core.synthetic.writer import write_pyramid

KINDS = ("architecture", "detail")
COHORT_VERSION = "3"  # bump whenever the pixels or labels of a given recipe change
# The painter has one texture slot per render class; a cohort uses three of them and puts
# its atypical tumour in the (otherwise unused) last slot.
GLASS, TUMOUR, STROMA = 0, 1, 2
ATYPICAL = len(RENDER_CLASS_NAMES) - 1
CELL_PX = 8  # level-0 pixels per cell of the layout grid (4 um at 0.5 um/px)
SWATCH_VARIANTS = 4  # texture seeds per cohort; each slide draws one
ATYPIA_SCALE = 1.4  # atypical nuclei are this much larger, and spaced this much wider
WARP_UM = (60.0, 10.0)  # outlines wobble by ~10 um over ~60 um, the same in every class
UM2_PER_RING = 1.2e6  # architecture: one ring (positive) or two cords (negative) per 1.2 mm2 of slide
ATYPICAL_NEST_SHARE = 0.75  # detail: share of a positive slide's nests that hold an atypical patch
LAYOUT_TRIES = 100  # layouts drawn per slide until every structure fits (about 1 in 3 do, for cords)
RING_DIAMETER_UM = (450.0, 650.0)  # outer diameter
BAND_WIDTH_UM = (100.0, 140.0)  # width of a ring's wall or of a cord
SEPARATION_UM = 100.0  # stroma kept between structures


@dataclass(frozen=True)
class Cohort:
    """A generated cohort on disk.

    Attributes
    ----------
    folder
        Where the slides, ``labels.csv`` and ``cohort.json`` are.
    kind
        ``"architecture"`` or ``"detail"``.
    slide_ids, labels
        One entry per slide, in slide order; labels are 0 or 1.
    """

    folder: Path
    kind: str
    slide_ids: tuple[str, ...]
    labels: tuple[int, ...]

    @property
    def labels_csv(self) -> Path:
        """The ``slide_id,label`` CSV."""
        return self.folder / "labels.csv"

    @property
    def slide_paths(self) -> list[Path]:
        """The slide files, in slide order."""
        return [self.folder / f"{slide_id}.tif" for slide_id in self.slide_ids]


def _stamp_nuclei(rng, canvas, centres, radius_um, amplitude, mpp, *, size_sd, irregularity, rim):
    """Round-ish nuclei with log-normal sizes (spread ``size_sd``) around ``radius_um``."""
    n = len(centres)
    radius = radius_um / mpp * np.exp(np.clip(rng.normal(0.0, size_sd, n), -2 * size_sd, 2 * size_sd))
    stretch = np.sqrt(1.4 * np.exp(np.clip(rng.normal(0.0, 0.1, n), -0.2, 0.2)))
    amp = amplitude * rng.lognormal(0.0, 0.15, n)
    stamp_blobs(
        canvas,
        rng,
        centres,
        (radius * stretch).astype(np.float32),
        (radius / stretch).astype(np.float32),
        rng.uniform(0, 2 * math.pi, n).astype(np.float32),
        amp.astype(np.float32),
        irregularity=irregularity,
        rim=rim,
        softness_px=max(0.6, 0.4 / mpp),
    )


def paint_atypical_tumour(rng: np.random.Generator, size: int, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin maps of tumour with atypical nuclei (tileable, ``[size, size]``).

    The stroma septa and background are those of the normal tumour texture; nuclei are
    :data:`ATYPIA_SCALE` times larger, more irregular and varied, with a dark rim and large
    nucleoli, and their spacing grows by the same factor, so the share of nuclear area stays
    that of normal tumour (this keeps the 5x view close to normal tumour).
    """
    seeds = jittered_grid(rng, size, 220 / mpp)
    septa = np.exp(-((voronoi_edges(seeds, size, 220 / mpp) * mpp / 4.0) ** 2))
    e = 0.30 + 0.06 * periodic_noise(rng, size, 6 / mpp) + 0.25 * septa
    h = 0.20 + 0.04 * periodic_noise(rng, size, 8 / mpp)
    centres = jittered_grid(rng, size, 14.5 * ATYPIA_SCALE / mpp, 0.45, keep=0.92)
    nuclei = np.zeros_like(h)
    _stamp_nuclei(rng, nuclei, centres, 6.0 * ATYPIA_SCALE, 1.0, mpp, size_sd=0.3, irregularity=0.3, rim=0.65)
    nucleoli = (centres[rng.random(len(centres)) < 0.8] + rng.normal(0, 1.5 / mpp, (1, 2))) % size
    _stamp_nuclei(
        rng, nuclei, nucleoli.astype(np.float32), 2.0, 1.2, mpp, size_sd=0.15, irregularity=0.1, rim=0.0
    )
    h += nuclei * (0.85 + 0.3 * np.clip(periodic_noise(rng, size, 0.8 / mpp), -1.5, 1.5) / 1.5) * (1 - septa)
    return h, e


def _swatch_set(seed: int, variant: int, swatch_px: int, mpp: float) -> list[np.ndarray]:
    """One texture per painter slot for one texture variant (unused slots get glass)."""
    swatch_seed = int(np.random.SeedSequence([seed, 1000 + variant]).generate_state(1)[0])
    glass, tumour, stroma = (make_swatch(k, swatch_seed, swatch_px, mpp) for k in (GLASS, TUMOUR, STROMA))
    rng = np.random.default_rng([swatch_seed, ATYPICAL])
    h, e = paint_atypical_tumour(rng, swatch_px, mpp)
    atypical = stains_to_rgb(h, e, DEFAULT_PALETTE, 0.015 * periodic_noise(rng, swatch_px, 20 / mpp))
    swatches = [glass] * len(RENDER_CLASS_NAMES)
    swatches[TUMOUR], swatches[STROMA], swatches[ATYPICAL] = tumour, stroma, atypical
    return swatches


class _LayoutGrid:
    """Cell centres of a slide's layout grid in micrometres, lightly warped."""

    def __init__(self, cells: int, cell_um: float, rng: np.random.Generator) -> None:
        self.cells, self.cell_um, self.rng = cells, cell_um, rng
        self.size_um = cells * cell_um
        y, x = (np.mgrid[0:cells, 0:cells].astype(np.float32) + 0.5) * cell_um
        scale, amplitude = WARP_UM[0] / cell_um, WARP_UM[1]
        self.x = x + amplitude * periodic_noise(rng, cells, scale)
        self.y = y + amplitude * periodic_noise(rng, cells, scale)
        centre = self.size_um / 2
        radius = np.hypot(self.x - centre, self.y - centre)
        wobble = 1 + 0.04 * periodic_noise(rng, cells, 400 / cell_um)
        self.tissue = radius < 0.48 * self.size_um * wobble
        self.room_um = ndimage.distance_transform_edt(self.tissue) * cell_um  # distance to the tissue's edge
        self.used = np.zeros((cells, cells), dtype=bool)

    def random_point(self, margin_um: float) -> tuple[float, float]:
        inside = np.flatnonzero(self.room_um.ravel() > margin_um)
        cell = inside[self.rng.integers(len(inside))] if len(inside) else self.cells * self.cells // 2
        return ((cell % self.cells + 0.5) * self.cell_um, (cell // self.cells + 0.5) * self.cell_um)

    def place(self, draw, footprint_um: float, separation_um: float, tries: int = 200) -> np.ndarray | None:
        """Draw shapes at random spots until one fits on tissue, clear of shapes placed before.

        ``draw(centre_xy)`` returns ``(shape, reserved)`` cell masks: what gets painted and
        what must stay free of other shapes (a ring reserves its core too).
        """
        clear_um = ndimage.distance_transform_edt(~self.used) * self.cell_um if self.used.any() else None
        for _ in range(tries):
            shape, reserved = draw(self.random_point(footprint_um))
            if not reserved.any() or (self.room_um[reserved] < 40.0).any():
                continue
            if clear_um is not None and (clear_um[reserved] < separation_um).any():
                continue
            self.used |= reserved
            return shape
        return None

    def ring(self, centre, radius_um: float, thickness_um: float):
        distance = np.hypot(self.x - centre[0], self.y - centre[1])
        return np.abs(distance - radius_um) < thickness_um / 2, distance < radius_um + thickness_um / 2

    def cord(self, centre, angle: float, length_um: float, thickness_um: float):
        dx, dy = self.x - centre[0], self.y - centre[1]
        along = dx * math.cos(angle) + dy * math.sin(angle)
        across = dy * math.cos(angle) - dx * math.sin(angle)
        shape = (np.abs(along) < length_um / 2) & (np.abs(across) < thickness_um / 2)
        return shape, shape

    def nest(self, centre, radii_um: tuple[float, float], angle: float):
        dx, dy = self.x - centre[0], self.y - centre[1]
        u = (dx * math.cos(angle) + dy * math.sin(angle)) / radii_um[0]
        v = (dy * math.cos(angle) - dx * math.sin(angle)) / radii_um[1]
        shape = u * u + v * v < 1.0
        return shape, shape


def layout_architecture(grid: _LayoutGrid, positive: bool) -> tuple[np.ndarray, dict, bool]:
    """Rings (positive) or straight cords of the same bands (negative) in stroma.

    Returns the layout, its description and whether every ring (or both cords of each)
    found room: every slide of a cohort of one size has the same number of structures.
    """
    rng = grid.rng
    labels = np.where(grid.tissue, STROMA, GLASS).astype(np.uint8)
    placed, rings = 0, max(1, round(grid.size_um**2 / UM2_PER_RING))
    for _ in range(rings):
        diameter_um, thickness_um = rng.uniform(*RING_DIAMETER_UM), rng.uniform(*BAND_WIDTH_UM)
        centre_line_um = (diameter_um - thickness_um) / 2
        cord_um = math.pi * centre_line_um  # half the ring's centre line: two cords, one ring's tumour
        drawn = (
            [(partial(grid.ring, radius_um=centre_line_um, thickness_um=thickness_um), diameter_um / 2)]
            if positive
            else [
                (partial(grid.cord, angle=angle, length_um=cord_um, thickness_um=thickness_um), cord_um / 3)
                for angle in rng.uniform(0, math.pi, 2)
            ]
        )
        for shape in (grid.place(draw, footprint_um, SEPARATION_UM) for draw, footprint_um in drawn):
            if shape is not None:
                labels[shape & grid.tissue] = TUMOUR
                placed += 1
    expected = rings if positive else 2 * rings
    return labels, {"structures": placed, "shape": "ring" if positive else "cord"}, placed == expected


def layout_detail(grid: _LayoutGrid, positive: bool) -> tuple[np.ndarray, dict, bool]:
    """Tumour nests in stroma; in positive slides some nests hold a patch of atypical tumour.

    Returns the layout, its description and whether it has at least one nest.
    """
    rng = grid.rng
    labels = np.where(grid.tissue, STROMA, GLASS).astype(np.uint8)
    nests = []
    for _ in range(int(rng.integers(4, 7))):
        radii = (rng.uniform(140, 280), rng.uniform(110, 200))
        angle = rng.uniform(0, math.pi)
        shape = grid.place(lambda c, r=radii, a=angle: grid.nest(c, r, a), max(radii), 100.0)
        if shape is not None:
            labels[shape & grid.tissue] = TUMOUR
            nests.append(shape & grid.tissue)
    atypical_nests = 0
    if positive and nests:
        count = max(1, round(ATYPICAL_NEST_SHARE * len(nests)))
        for index in rng.choice(len(nests), count, replace=False):
            cells = np.flatnonzero(nests[index].ravel())
            cell = cells[rng.integers(len(cells))]
            centre = ((cell % grid.cells + 0.5) * grid.cell_um, (cell // grid.cells + 0.5) * grid.cell_um)
            patch = np.hypot(grid.x - centre[0], grid.y - centre[1]) < rng.uniform(110, 170)
            labels[patch & nests[index]] = ATYPICAL
            atypical_nests += 1
    return labels, {"structures": len(nests), "atypical_nests": atypical_nests}, bool(nests)


LAYOUTS = {"architecture": layout_architecture, "detail": layout_detail}


def slide_layout(
    kind: str, positive: bool, *, size_px: int, mpp: float, seed: int
) -> tuple[np.ndarray, dict]:
    """The tissue map of one slide: ``[size_px / 8, size_px / 8]`` uint8 painter classes and its description.

    Layouts are drawn (seeded) until one holds every structure its kind asks for.

    Raises
    ------
    ValueError
        When no layout fits in :data:`LAYOUT_TRIES` draws (the slide is too small).
    """
    rng = np.random.default_rng(seed)
    for _ in range(LAYOUT_TRIES):
        layout, info, complete = LAYOUTS[kind](_LayoutGrid(size_px // CELL_PX, CELL_PX * mpp, rng), positive)
        if complete:
            return layout, info
    raise ValueError(
        f"{kind} slide of {size_px} px at {mpp} um/px: its structures do not fit in "
        f"{LAYOUT_TRIES} tries; use a larger size_px"
    )


PREFIX = {"architecture": "arch", "detail": "detail"}


def _check(kind: str, n_slides: int, size_px: int, mpp: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"cohort kind must be one of {KINDS}, got {kind!r}")
    if n_slides < 2 or n_slides % 2:
        raise ValueError(f"n_slides must be an even number >= 2 (half positive), got {n_slides}")
    if size_px < 1024 or size_px % CELL_PX:
        raise ValueError(f"size_px must be >= 1024 and a multiple of {CELL_PX}, got {size_px}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive micrometres per pixel, got {mpp}")


def load_cohort(folder: str | os.PathLike[str]) -> Cohort:
    """Read a cohort written by :func:`build_cohort` (from its ``cohort.json``)."""
    folder = Path(folder)
    manifest = folder / "cohort.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder}: no cohort.json (not a cohort built by build_cohort)")
    info = json.loads(manifest.read_text(encoding="utf-8"))
    slides = info["slides"]
    return Cohort(
        folder,
        info["recipe"]["kind"],
        tuple(s["slide_id"] for s in slides),
        tuple(int(s["label"]) for s in slides),
    )


def _complete(folder: Path, recipe: dict) -> Cohort | None:
    """The cohort already in ``folder`` when it was built from ``recipe`` and all files are there."""
    try:
        cohort = load_cohort(folder)
        info = json.loads((folder / "cohort.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, KeyError):
        return None
    if info.get("recipe") != recipe or not cohort.labels_csv.is_file():
        return None
    return cohort if all(path.is_file() for path in cohort.slide_paths) else None


def iter_build_cohort(
    folder: str | os.PathLike[str],
    kind: str,
    *,
    n_slides: int = 32,
    size_px: int = 3072,
    mpp: float = 0.5,
    seed: int = 0,
    swatch_px: int = 1024,
    jpeg_quality: int = 85,
    workers: int | None = None,
    reuse: bool = True,
) -> Generator[Progress, None, Cohort]:
    """Write a labelled cohort of synthetic slides (see the module docstring).

    Parameters
    ----------
    folder
        Output folder (created).
    kind
        ``"architecture"`` (label in the arrangement) or ``"detail"`` (label in 20x
        nuclear detail).
    n_slides
        Slides to write, an even number; exactly half are positive.
    size_px
        Side of the square slides in level-0 pixels (3072 at 0.5 um/px: 1.5 mm).
    mpp
        Micrometres per level-0 pixel; structures keep their size in micrometres.
    seed
        Same seed, same slides and labels.
    swatch_px
        Side of the texture swatches in level-0 pixels.
    jpeg_quality
        JPEG quality of the tiles, 1..100.
    workers
        Threads for painting and compression (default: up to 4).
    reuse
        Keep a cohort already in ``folder`` that was built from the same recipe.

    Yields
    ------
    Progress
        ``stage="cohort"``, one report per slide written.

    Returns
    -------
    Cohort
    """
    _check(kind, n_slides, size_px, mpp)
    folder = Path(folder)
    recipe = {
        "version": COHORT_VERSION,
        "kind": kind,
        "n_slides": n_slides,
        "size_px": size_px,
        "mpp": mpp,
        "seed": seed,
        "swatch_px": swatch_px,
        "jpeg_quality": jpeg_quality,
    }
    if reuse and (done := _complete(folder, recipe)) is not None:
        yield Progress("cohort", n_slides, n_slides, f"{folder.name}: {n_slides} slides already built")
        return done
    workers = workers or min(4, os.cpu_count() or 1)
    kind_code = KINDS.index(kind)
    labels = np.random.default_rng([seed, kind_code]).permutation(np.arange(n_slides) % 2)
    with ThreadPoolExecutor(workers) as pool:
        swatch_sets = list(pool.map(lambda v: _swatch_set(seed, v, swatch_px, mpp), range(SWATCH_VARIANTS)))
    yield Progress("cohort", 0, n_slides, f"{kind}: textures painted")
    slides = []
    for index, label in enumerate(labels):
        slide_id = f"{PREFIX[kind]}_{index:03d}"
        slide_seed = int(np.random.SeedSequence([seed, kind_code, index]).generate_state(1)[0])
        layout, info = slide_layout(kind, bool(label), size_px=size_px, mpp=mpp, seed=slide_seed)
        swatches = swatch_sets[slide_seed % SWATCH_VARIANTS]
        painter = SlidePainter.create(
            layout, swatches, CELL_PX, mpp, slide_seed, DEFAULT_PALETTE.variation, 256
        )
        tissue = max(int((layout != GLASS).sum()), 1)
        slides.append(
            {
                "slide_id": slide_id,
                "label": int(label),
                **info,
                "tumour_share": round(float(np.isin(layout, (TUMOUR, ATYPICAL)).sum()) / tissue, 4),
                "atypical_share": round(float((layout == ATYPICAL).sum()) / tissue, 4),
            }
        )
        file_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"napari_care-cohort:{recipe}:{index}"))
        for _ in write_pyramid(
            folder / f"{slide_id}.tif",
            painter.render,
            width=size_px,
            height=size_px,
            mpp=mpp,
            tile_size=256,
            jpeg_quality=jpeg_quality,
            workers=workers,
            uuid=file_uuid,
        ):
            pass
        yield Progress("cohort", index + 1, n_slides, f"{slide_id} (label {label}) written")
    with atomic_open(folder / "cohort.json", "w") as handle:
        json.dump({"recipe": recipe, "slides": slides}, handle, indent=1)
    with atomic_open(folder / "labels.csv", "w", newline="") as handle:  # last: marks the cohort complete
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label"])
        writer.writerows((s["slide_id"], s["label"]) for s in slides)
    return load_cohort(folder)


def build_cohort(folder: str | os.PathLike[str], kind: str, **options) -> Cohort:
    """:func:`iter_build_cohort` run to its end (same arguments), without progress reports."""
    return run_to_end(iter_build_cohort(folder, kind, **options))
