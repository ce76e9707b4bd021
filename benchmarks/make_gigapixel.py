"""Build (once) the gigapixel benchmark slide: a 40x-sized scan as Aperio SVS and generic pyramidal TIFF.

    python benchmarks/make_gigapixel.py [--out DIR] [--width 100000 --height 80000] [--seed 0]

The slide is 100,000 x 80,000 px at 0.25 um/px (AppMag 40), JPEG (YCbCr 4:2:0, quality 80)
tiles of 256 px and levels at 4x steps. The tissue is the synthetic generator's planted-types
layout (:func:`~napari_care.core.synthetic.planted_types.planted_layout`: one lobed piece cut
into a mosaic of patches, 6 planted types) on a map of 64-px cells; each level-0 tile is cut
from a bank of pre-rendered texture swatches per type (8 flips/rotations, a random offset per
tile), so no two tiles are alike and painting costs a slice copy. The same tile bytes go into
``<name>.svs`` and ``<name>.tif``; a ``<name>.truth.npz`` holds the type map.

It builds only what is not there yet, prints the size on disk and the build time, and prints
the SVS path as its last line. Default folder: ``$TMPDIR/napari_care_bench``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_care.core.atomic import atomic_open
from napari_care.core.synthetic.layouts import LayoutCanvas
from napari_care.core.synthetic.planted_types import PLANTED_TEXTURES, PlantedTexture, planted_layout
from napari_care.core.synthetic.textures import DEFAULT_PALETTE, make_swatch
from napari_care.core.synthetic.writer import write_svs_pair

TILE_PX = 256
CELL_PX = 64  # type map cell: a quarter tile, so type boundaries are not tile-aligned
SWATCH_PX = 1024
N_TYPES = 6
DEFAULT_OUT = Path(os.environ.get("TMPDIR", "/tmp")) / "napari_care_bench"


@dataclass(frozen=True)
class GigapixelPaths:
    """The files of one benchmark slide."""

    svs: Path
    tiff: Path
    truth: Path

    def exist(self) -> bool:
        """True when all three files are there."""
        return self.svs.is_file() and self.tiff.is_file() and self.truth.is_file()

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the SVS and the TIFF together."""
        return self.svs.stat().st_size + self.tiff.stat().st_size


def slide_paths(out_dir: Path, width: int, height: int, seed: int) -> GigapixelPaths:
    """Where the slide of these arguments lives in ``out_dir``."""
    stem = out_dir / f"gigapixel_{width}x{height}_seed{seed}"
    return GigapixelPaths(Path(f"{stem}.svs"), Path(f"{stem}.tif"), Path(f"{stem}.truth.npz"))


def type_map(width: int, height: int, mpp: float, seed: int) -> tuple[np.ndarray, tuple[PlantedTexture, ...]]:
    """``[rows, cols]`` uint8 slot per 64-px cell (0 glass, ``i + 1`` planted type ``i``) and the types."""
    rng = np.random.default_rng([seed, 17])
    planted = tuple(
        PLANTED_TEXTURES[int(i)] for i in rng.choice(len(PLANTED_TEXTURES), N_TYPES, replace=False)
    )
    rows, cols = math.ceil(height / CELL_PX), math.ceil(width / CELL_PX)
    canvas = LayoutCanvas(rows, cols, CELL_PX * mpp, np.random.default_rng([seed, 18]))
    return planted_layout(canvas, N_TYPES), planted


class TileBank:
    """Level-0 tiles cut from pre-rendered swatches: per slot, 8 orientations, wrap-padded.

    Parameters
    ----------
    labels
        The type map (see :func:`type_map`), one cell per ``CELL_PX`` level-0 pixels.
    planted
        The planted types, slot ``i + 1`` is ``planted[i]``.
    mpp
        Micrometres per level-0 pixel.
    seed
        Seeds the swatches and each tile's orientation and offset.
    """

    def __init__(self, labels: np.ndarray, planted: tuple[PlantedTexture, ...], mpp: float, seed: int):
        self.labels, self.seed = labels, seed
        swatches = [make_swatch(0, seed, SWATCH_PX, mpp, DEFAULT_PALETTE)] + [
            make_swatch(texture.render_class, seed, SWATCH_PX, mpp, texture.palette()) for texture in planted
        ]
        pad = [(0, TILE_PX), (0, TILE_PX), (0, 0)]
        self.oriented = [
            [
                np.pad(np.rot90(flip, k), pad, mode="wrap")
                for flip in (swatch, swatch[:, ::-1])
                for k in range(4)
            ]
            for swatch in swatches
        ]
        self.cells_per_tile = TILE_PX // CELL_PX

    def _piece(self, slot: int, rng: np.random.Generator) -> np.ndarray:
        x, y = rng.integers(0, SWATCH_PX, 2)
        swatch = self.oriented[slot][int(rng.integers(0, 8))]
        return swatch[y : y + TILE_PX, x : x + TILE_PX]

    def render(self, tx: int, ty: int) -> np.ndarray:
        """Level-0 tile (tx, ty), ``[256, 256, 3]`` uint8; cells past the map's edge are glass."""
        n = self.cells_per_tile
        cells = np.zeros((n, n), np.uint8)
        window = self.labels[ty * n : (ty + 1) * n, tx * n : (tx + 1) * n]
        cells[: window.shape[0], : window.shape[1]] = window
        rng = np.random.default_rng([self.seed, ty, tx])
        slots = np.unique(cells)
        tile = self._piece(int(slots[0]), rng).copy()
        for slot in slots[1:]:
            mask = np.repeat(np.repeat(cells == slot, CELL_PX, axis=0), CELL_PX, axis=1)
            tile[mask] = self._piece(int(slot), rng)[mask]
        return tile


def build_gigapixel(
    out_dir: Path,
    *,
    width: int = 100_000,
    height: int = 80_000,
    mpp: float = 0.25,
    seed: int = 0,
    jpeg_quality: int = 80,
    min_level_side_px: int = 2048,
    workers: int = 2,
    report=print,
) -> GigapixelPaths:
    """Write the benchmark slide's SVS, TIFF and truth into ``out_dir`` unless they are all there.

    Returns
    -------
    GigapixelPaths
    """
    paths = slide_paths(out_dir, width, height, seed)
    if paths.exist():
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, planted = type_map(width, height, mpp, seed)
    report(
        f"type map {labels.shape[1]}x{labels.shape[0]} cells of {CELL_PX} px; "
        f"tissue {np.mean(labels > 0):.1%}"
    )
    bank = TileBank(labels, planted, mpp, seed)
    last = 0.0
    build = write_svs_pair(
        paths.svs,
        paths.tiff,
        bank.render,
        width=width,
        height=height,
        mpp=mpp,
        app_mag=10.0 / mpp,
        tile_size=TILE_PX,
        jpeg_quality=jpeg_quality,
        min_level_side_px=min_level_side_px,
        workers=workers,
    )
    for step in build:
        if time.perf_counter() - last > 30 or step.done == step.total:
            report(f"  {step.message}")
            last = time.perf_counter()
    with atomic_open(paths.truth, "wb") as handle:
        np.savez_compressed(
            handle,
            labels=labels,
            downsample=CELL_PX,
            mpp=mpp,
            width=width,
            height=height,
            type_names=np.array(["glass", *(texture.name for texture in planted)]),
            layout="planted",
            seed=seed,
            slide_name=paths.svs.name,
        )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the slide files")
    parser.add_argument("--width", type=int, default=100_000)
    parser.add_argument("--height", type=int, default=80_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="threads painting and encoding tiles")
    args = parser.parse_args()
    if args.width < 1024 or args.height < 1024:
        parser.error(f"--width {args.width} --height {args.height}: both must be at least 1024 px")
    start = time.perf_counter()
    paths = slide_paths(args.out, args.width, args.height, args.seed)
    built = not paths.exist()
    build_gigapixel(args.out, width=args.width, height=args.height, seed=args.seed, workers=args.workers)
    seconds = time.perf_counter() - start
    state = f"built in {seconds:.0f} s" if built else "already there, not rebuilt"
    print(
        f"{args.width}x{args.height} px: SVS {paths.svs.stat().st_size / 2**30:.2f} GiB, TIFF "
        f"{paths.tiff.stat().st_size / 2**30:.2f} GiB ({paths.nbytes:,} bytes together); {state}; "
        f"load average {'/'.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(paths.svs)


if __name__ == "__main__":
    main()
