"""Where each tissue goes on a synthetic slide: layouts painted on the coarse truth grid.

A layout fills a ``[rows, cols]`` grid of render classes (see
:data:`~napari_care.core.synthetic.textures.RENDER_CLASS_NAMES`) whose cells are
``cell_um`` micrometres wide. Shapes are ellipses and bands drawn in domain-warped
coordinates, so outlines come out lobed and organic instead of straight. Positions and
sizes are fractions of the slide height, so every layout works from a 1 mm test slide to a
full 8 mm section; only textures and the epidermis keep absolute sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from napari_care.core.synthetic.textures import periodic_noise

GLASS, TUMOUR, STROMA, FAT, NECROSIS, EPIDERMIS, LYMPHOCYTES, KERATIN, BASAL = range(9)


class LayoutCanvas:
    """The coarse grid a layout paints on, with its coordinates and noise source.

    Coordinates ``x``, ``y`` are cell centres in units of the slide height (so ``y`` runs
    0..1 and ``x`` runs 0..``aspect``).
    """

    def __init__(self, rows: int, cols: int, cell_um: float, rng: np.random.Generator):
        self.rows, self.cols, self.cell_um, self.rng = rows, cols, cell_um, rng
        self.height_um = rows * cell_um
        self.aspect = cols / rows
        self.y, self.x = (np.mgrid[0:rows, 0:cols].astype(np.float32) + 0.5) / rows

    def noise(self, scale: float) -> np.ndarray:
        """Smooth unit-variance noise with correlation length ``scale`` (slide heights)."""
        return periodic_noise(self.rng, (self.rows, self.cols), max(scale * self.rows, 0.5))

    def warped(self, amplitude: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates displaced by smooth noise: lobes of size ``scale``, both in slide heights.

        Finer warps of about 300 um and 80 um keep outlines irregular at the scale of
        224 px tiles.
        """
        x, y = self.x + amplitude * self.noise(scale), self.y + amplitude * self.noise(scale)
        for scale_um, amplitude_um in ((300.0, 100.0), (80.0, 25.0)):
            fine_scale = scale_um / self.height_um
            fine_amplitude = min(0.3 * amplitude, amplitude_um / self.height_um)
            x += fine_amplitude * self.noise(fine_scale)
            y += fine_amplitude * self.noise(fine_scale)
        return x, y

    def ellipse(
        self,
        xy: tuple[np.ndarray, np.ndarray],
        centre: tuple[float, float],
        radii: tuple[float, float],
        wobble: float = 0.0,
    ) -> np.ndarray:
        """Cells inside an ellipse drawn in (warped) coordinates, its radius wobbling by noise."""
        x, y = xy
        r2 = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
        if wobble:
            r2 = r2 * (1 + wobble * self.noise(0.5 * min(radii)))
        return r2 < 1.0


def paint_epidermis(
    labels: np.ndarray,
    tissue: np.ndarray,
    canvas: LayoutCanvas,
    surface_side: np.ndarray,
    mean_um: float | None = None,
) -> None:
    """Paint a layered squamous epithelium along the outline of ``tissue`` facing ``surface_side``.

    ``surface_side`` marks the glass the skin surface faces; depth is measured from it.
    Keratin lies on top, a dense basal layer at the undulating bottom (rete ridges).
    ``mean_um`` is the mean thickness; by default a tenth of the slide height, about
    600 um on a full-size sample: thicker than real skin, so that 224 px tiles at 2 um/px
    (448 um) fit inside it.
    """
    sky = ~ndimage.binary_fill_holes(tissue) & surface_side  # holes inside tissue have no skin
    if not sky.any():
        return
    depth_um = ndimage.distance_transform_edt(~sky) * canvas.cell_um
    mean_um = 0.1 * canvas.height_um if mean_um is None else mean_um
    thickness_um = mean_um * (1 + 0.2 * canvas.noise(200.0 / canvas.height_um))
    band = tissue & (depth_um < thickness_um)
    labels[band] = EPIDERMIS
    labels[band & (depth_um < 0.1 * mean_um)] = KERATIN
    labels[band & (thickness_um - depth_um < max(24.0, 0.08 * mean_um))] = BASAL


def layout_default(canvas: LayoutCanvas) -> np.ndarray:
    """A skin excision with a tumour: every tissue type, one main piece and a small fragment."""
    c, rng = canvas, canvas.rng
    labels = np.zeros((c.rows, c.cols), np.uint8)
    lobes = c.warped(0.045, 0.15)
    nests = c.warped(0.03, 0.06)
    jitter = lambda size: rng.uniform(-size, size)  # noqa: E731 - seed-driven variation
    cx, cy = 0.43 * c.aspect + jitter(0.02), 0.52 + jitter(0.02)
    rx, ry = 0.32 * c.aspect, 0.36
    main = ndimage.binary_fill_holes(c.ellipse(lobes, (cx, cy), (rx, ry), wobble=0.12))
    fragment = c.ellipse(
        lobes, (0.88 * c.aspect + jitter(0.01), 0.27 + jitter(0.03)), (0.065 * c.aspect, 0.13), wobble=0.2
    )
    fragment &= ~ndimage.binary_dilation(main, iterations=max(2, c.rows // 40))
    labels[main | fragment] = STROMA
    fat_line = cy + 0.14 + 0.05 * c.noise(0.12)  # subcutis below a wavy line
    labels[main & (lobes[1] > fat_line)] = FAT

    tx, ty = cx + jitter(0.04), cy - 0.01 + jitter(0.02)
    tumour = c.ellipse(nests, (tx, ty), (0.19, 0.15), wobble=0.3)
    for angle in rng.uniform(0, 2 * math.pi, 3):  # satellite nests
        tumour |= c.ellipse(
            nests, (tx + 0.24 * math.cos(angle), ty + 0.18 * math.sin(angle)), (0.04, 0.035), wobble=0.3
        )
    labels[main & tumour] = TUMOUR
    labels[main & tumour & c.ellipse(nests, (tx + jitter(0.02), ty), (0.095, 0.075), wobble=0.3)] = NECROSIS
    for angle in rng.uniform(0, 2 * math.pi, 1) + np.array([0.3, 2.4, 4.2]):
        aggregate = c.ellipse(
            nests, (tx + 0.25 * math.cos(angle), ty + 0.2 * math.sin(angle)), (0.085, 0.07), wobble=0.3
        )
        labels[main & aggregate & (labels == STROMA)] = LYMPHOCYTES
    frag_core = c.ellipse(nests, (0.88 * c.aspect, 0.3), (0.05, 0.08), wobble=0.3)
    labels[fragment & frag_core] = TUMOUR
    top = (c.y < cy) & (np.abs(c.x - cx) < 0.85 * rx)
    paint_epidermis(labels, main, c, top)
    return labels


def layout_islands(canvas: LayoutCanvas) -> np.ndarray:
    """Several separate fragments, each stroma or fat with an inclusion of another type."""
    c, rng = canvas, canvas.rng
    labels = np.zeros((c.rows, c.cols), np.uint8)
    lobes = c.warped(0.035, 0.1)
    centres: list[tuple[float, float, float]] = []
    for _ in range(400):  # rejection sampling of non-overlapping fragments
        r = rng.uniform(0.1, 0.17)
        x, y = rng.uniform(r + 0.04, c.aspect - r - 0.04), rng.uniform(r + 0.04, 1 - r - 0.04)
        if all(math.hypot(x - x2, y - y2) > r + r2 + 0.06 for x2, y2, r2 in centres):
            centres.append((x, y, r))
        if len(centres) == 7:
            break
    inclusions = [TUMOUR, LYMPHOCYTES, NECROSIS, EPIDERMIS, TUMOUR, LYMPHOCYTES, NECROSIS]
    for index, (x, y, r) in enumerate(centres):
        island = c.ellipse(lobes, (x, y), (r, r * rng.uniform(0.7, 1.1)), wobble=0.2)
        labels[island] = FAT if index % 3 == 2 else STROMA
        kind = inclusions[index % len(inclusions)]
        core = c.ellipse(
            lobes, (x + rng.uniform(-0.3, 0.3) * r, y + 0.2 * r), (0.55 * r, 0.45 * r), wobble=0.3
        )
        if kind == EPIDERMIS:
            paint_epidermis(labels, island, c, c.y < y, mean_um=min(0.1, 0.35 * r) * c.height_um)
        elif kind == NECROSIS:
            labels[island & core] = TUMOUR
            labels[island & c.ellipse(lobes, (x, y + 0.2 * r), (0.35 * r, 0.28 * r), wobble=0.3)] = NECROSIS
        else:
            labels[island & core] = kind
    return labels


def layout_bands(canvas: LayoutCanvas) -> np.ndarray:
    """One large piece cut into wavy layers: epidermis, stroma, lymphocytes, tumour, necrosis, fat."""
    c, rng = canvas, canvas.rng
    labels = np.zeros((c.rows, c.cols), np.uint8)
    angle = rng.uniform(-0.25, 0.25)
    x, y = c.warped(0.03, 0.12)
    cx = c.aspect / 2
    along = (x - cx) * math.cos(angle) + (y - 0.5) * math.sin(angle)
    depth = -(x - cx) * math.sin(angle) + (y - 0.5) * math.cos(angle) + 0.5
    tissue = (np.abs(along) < 0.44 * c.aspect) & (depth > 0.08) & (depth < 0.92)
    labels[tissue] = STROMA
    wave = 0.025 * c.noise(0.1)
    edges = np.cumsum([0.08, 0.16, 0.08, 0.14, 0.14, 0.12, 0.12, 0.1])  # band tops, top to bottom
    kinds = (LYMPHOCYTES, TUMOUR, NECROSIS, TUMOUR, STROMA, FAT)
    for top, bottom, kind in zip(edges[1:-1], edges[2:], kinds, strict=True):
        labels[tissue & (depth + wave >= top) & (depth + wave < bottom)] = kind
    labels[tissue & (depth + wave >= edges[-1])] = FAT
    paint_epidermis(labels, tissue, c, (depth < 0.3) & (np.abs(along) < 0.42 * c.aspect))
    return labels


LAYOUTS: dict[str, Callable[[LayoutCanvas], np.ndarray]] = {
    "default": layout_default,
    "islands": layout_islands,
    "bands": layout_bands,
}
