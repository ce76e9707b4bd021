"""Throughput of patch encoders' ``encode()`` on 224-px tiles.

Usage::

    python benchmarks/bench_encoder.py                      # the built-in descriptor
    python benchmarks/bench_encoder.py --encoder uni --weights random --tiles 64
    python benchmarks/bench_encoder.py --calibrate ../shared/data/slides

Tiles are cut from ``CMU-1-Small-Region.svs`` when ``../shared/data`` is present, else
procedural noise tiles. Prints wall-clock tiles/s (what a user sees), tiles per CPU-second
(what one dedicated core would do, less sensitive to other processes on a shared machine)
and the load average. ``--calibrate`` prints the descriptor's reference standardisation
constants for :mod:`napari_care.core.encoders.descriptor_constants`.
"""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"


def load_tiles(count: int, tile_px: int = 224) -> tuple[np.ndarray, str]:
    """``count`` RGB uint8 tiles and a word on where they came from."""
    source = DATA / "CMU-1-Small-Region.svs"
    if source.exists():
        import tifffile

        image = tifffile.imread(source)
        height, width = image.shape[:2]
        grid = [
            image[y : y + tile_px, x : x + tile_px]
            for y in range(0, height - tile_px + 1, tile_px)
            for x in range(0, width - tile_px + 1, tile_px)
        ]
        return np.stack([grid[i % len(grid)] for i in range(count)]), source.name
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, tile_px, tile_px, 3), dtype=np.uint8), "random noise"


def bench(name: str, weights: str | None, count: int, repeats: int) -> None:
    """Print throughput figures of one encoder."""
    from napari_care.core.encoders import create_encoder

    tiles, source = load_tiles(count)
    start = time.perf_counter()
    encoder = create_encoder(name, weights=weights)
    build_s = time.perf_counter() - start
    encoder.encode(tiles[: min(count, 32)])  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        features = encoder.encode(tiles)
        wall.append(time.perf_counter() - wall0)
        cpu.append(time.process_time() - cpu0)
    print(
        f"encoder {name!r} ({encoder.embed_dim} dims), device {getattr(encoder, 'device', 'cpu (numpy)')}, "
        f"built in {build_s:.2f} s; {count} tiles of 224 px from {source}; "
        f"output {features.shape} {features.dtype}"
    )
    print(
        f"  wall: best {count / min(wall):.0f} tiles/s, median {count / float(np.median(wall)):.0f} tiles/s "
        f"over {repeats} runs"
    )
    print(f"  cpu:  {count / min(cpu):.0f} tiles per CPU-second (all threads together)")
    print(f"  load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


def calibrate(slides_dir: str) -> None:
    """Print the descriptor's reference constants (median, robust scale) as Python tuples."""
    from napari_care.core.encoders.descriptor import raw_descriptor
    from napari_care.core.encoders.descriptor_constants import reference_tiles, robust_constants

    median, scale = robust_constants(raw_descriptor(reference_tiles(slides_dir)))
    for name, values in (("REFERENCE_MEDIAN", median), ("REFERENCE_SCALE", scale)):
        body = textwrap.fill(
            ", ".join(f"{value:.6g}" for value in values), 96, initial_indent="    ", subsequent_indent="    "
        )
        print(f"{name} = (\n{body},\n)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="default")
    parser.add_argument("--weights", default=None, help="weights file, hf-hub:..., or 'random'")
    parser.add_argument("--tiles", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calibrate", metavar="SLIDES_DIR", help="print descriptor constants and exit")
    args = parser.parse_args()
    if args.calibrate:
        calibrate(args.calibrate)
    else:
        bench(args.encoder, args.weights, args.tiles, args.repeats)


if __name__ == "__main__":
    main()
